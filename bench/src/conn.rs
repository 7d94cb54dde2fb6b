//! Connections to the cluster: `--conns` independent clients, optionally
//! pointed at the leader only (`--target-leader`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cairn_client::{Client, ClientOptions};

use crate::args::Common;

/// Client options for a load generator: one attempt's deadline from the
/// flags, and the retry budget no longer than that, so an outage shows up
/// as errors and latency rather than being hidden behind long retries.
pub fn options(common: &Common) -> ClientOptions {
    ClientOptions {
        request_timeout: common.request_timeout,
        retry_budget: common.request_timeout,
        ..ClientOptions::default()
    }
}

/// The current leader as seen through Maintenance.Status.
#[derive(Debug, Clone)]
pub struct Leader {
    /// Its client URL (normalized, one of the client's endpoints).
    pub endpoint: String,
    pub member_id: u64,
}

/// Asks every endpoint for its status until one of them is the leader the
/// others name, for at most `wait` (an election may be in progress).
pub async fn find_leader(client: &Client, wait: Duration) -> Result<Leader> {
    let deadline = Instant::now() + wait;
    let mut last_err = String::from("no member answered");
    loop {
        for ep in client.endpoints() {
            match client.status(&ep).await {
                Ok(s) => {
                    let me = s.header.as_ref().map_or(0, |h| h.member_id);
                    if s.leader != 0 && s.leader == me {
                        return Ok(Leader {
                            endpoint: ep,
                            member_id: me,
                        });
                    }
                    if s.leader == 0 {
                        last_err = format!("{ep} reports no leader");
                    }
                }
                Err(e) => last_err = format!("{ep}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            bail!("no leader among {:?}: {last_err}", client.endpoints());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--conns` clients over the endpoints (or the leader's alone). A client
/// starts on its first endpoint and stays there while it answers, so client
/// `i` gets the list rotated by `i`: the connections spread over the
/// members as an application's clients do, and each can still fail over.
pub async fn connect(common: &Common) -> Result<Vec<Client>> {
    if common.conns == 0 || common.clients == 0 {
        bail!("--conns and --clients must be at least 1");
    }
    let opts = options(common);
    let mut endpoints = common.endpoints.clone();
    if common.target_leader {
        let probe = Client::connect(endpoints.clone(), opts.clone())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let leader = find_leader(&probe, Duration::from_secs(10)).await?;
        endpoints = vec![leader.endpoint];
    }
    let mut clients = Vec::with_capacity(common.conns);
    for i in 0..common.conns {
        // Each Client owns its channels, so N clients are N HTTP/2 connections per member.
        let mut mine = endpoints.clone();
        mine.rotate_left(i % endpoints.len().max(1));
        clients.push(
            Client::connect(mine, opts.clone())
                .await
                .map_err(|e| anyhow!("{e}"))
                .context("connecting")?,
        );
    }
    Ok(clients)
}
