//! `watch` and `watch-fanout`: N watchers on one prefix, spread over a few
//! watch streams, and one writer putting keys under that prefix.
//!
//! - `watch` reports put-to-event latency: the time from sending a put to a
//!   watcher receiving its event, over every (event, watcher) pair.
//! - `watch-fanout` reports the events delivered per second over all
//!   watchers (the writer runs unthrottled unless `--rate` is given).
//!
//! Every watcher must receive every write exactly once; a missing or extra
//! event is counted as an error, not hidden.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use cairn_client::{KeyRange, PutOptions, WatchOptions};

use crate::args::Common;
use crate::report::Report;
use crate::schedule::Schedule;
use crate::stats::Recorder;

const PREFIX: &str = "/cairn-bench-watch/";

/// Send times of the writes, by sequence number (the key's suffix).
type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

pub async fn run(common: &Common, watchers: usize, streams: usize, fanout: bool) -> Result<Report> {
    let streams = streams.clamp(1, watchers.max(1));
    let clients = crate::conn::connect(common).await?;
    let endpoints = clients[0].endpoints();
    let opts = WatchOptions {
        range: KeyRange::Prefix,
        ..Default::default()
    };
    // Open the streams and all their watches before the first write.
    let mut handles = Vec::new();
    for s in 0..streams {
        let client = &clients[s % clients.len()];
        let n = watchers / streams + usize::from(s < watchers % streams);
        if n == 0 {
            continue;
        }
        let mut w = client
            .watch(PREFIX, opts.clone())
            .await
            .map_err(|e| anyhow!("watch: {e}"))?;
        for _ in 1..n {
            w.create(PREFIX, opts.clone())
                .await
                .map_err(|e| anyhow!("watch: {e}"))?;
        }
        // Wait for the created responses of the extra watches.
        let mut created = 1;
        while created < n {
            let r = w.next().await.map_err(|e| anyhow!("watch: {e}"))?;
            if r.created {
                created += 1;
            }
        }
        handles.push((w, n));
    }

    let sent: Sent = Arc::default();
    let rate = if fanout {
        common.rate
    } else {
        common.rate.or(Some(100.0))
    };
    let sched = Arc::new(Schedule::new(
        common.total,
        common.duration.or(Some(Duration::from_secs(10))),
        rate,
    ));
    let writer = {
        let (client, sent, sched) = (clients[0].clone(), sent.clone(), sched.clone());
        let value = crate::keys::value(common.val_size);
        tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut written = 0u64;
            while let Some(seq) = sched.next().await {
                let key = format!("{PREFIX}{seq:012}");
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seq, Instant::now());
                match client.put(key, value.clone(), PutOptions::default()).await {
                    Ok(_) => written += 1,
                    Err(e) => rec.error(format!("put: {}", crate::workloads::error_kind(&e))),
                }
            }
            (written, rec)
        })
    };

    let mut readers = Vec::new();
    for (mut w, n) in handles {
        let sent = sent.clone();
        readers.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut seen: HashMap<i64, u64> = HashMap::new();
            let mut events = 0u64;
            let mut last_event: Option<Instant> = None;
            loop {
                let r = match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        rec.error(format!("watch: {}", crate::workloads::error_kind(&e)));
                        break;
                    }
                    // Quiet for 5 s: the writer is done and everything arrived.
                    Err(_) => break,
                };
                let now = Instant::now();
                if !r.events.is_empty() {
                    last_event = Some(now);
                }
                for ev in &r.events {
                    let Some(kv) = &ev.kv else { continue };
                    let seq = std::str::from_utf8(&kv.key)
                        .ok()
                        .and_then(|k| k.strip_prefix(PREFIX))
                        .and_then(|s| s.parse::<u64>().ok());
                    if let Some(t) = seq.and_then(|s| {
                        sent.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&s)
                            .copied()
                    }) {
                        rec.ok("event", now.duration_since(t));
                    }
                    *seen.entry(r.watch_id).or_default() += 1;
                    events += 1;
                }
            }
            (events, seen, n, rec, last_event)
        }));
    }

    let (written, mut total) = writer.await?;
    let mut delivered = 0u64;
    let mut last_event = None;
    for r in readers {
        let (events, seen, n, rec, last) = r.await?;
        last_event = last_event.max(last);
        delivered += events;
        total.merge(&rec);
        // Every watch of the stream must have received every write, once.
        for count in seen.values() {
            if *count != written {
                total.error("watcher saw a different number of events than were written".into());
            }
        }
        for _ in seen.len()..n {
            if written > 0 {
                total.error("watcher received no event".into());
            }
        }
    }
    // The run ends with the last delivered event, not with the readers'
    // quiet timeout.
    let elapsed = last_event
        .unwrap_or_else(Instant::now)
        .duration_since(sched.start());
    let mut report = Report::new(
        if fanout { "watch-fanout" } else { "watch" },
        endpoints,
        common,
        elapsed,
        &total,
    );
    report.counters.insert("watchers".into(), watchers as u64);
    report.counters.insert("writes".into(), written);
    report.counters.insert("events_delivered".into(), delivered);
    // Fan-out's figure of merit: events delivered per second.
    report.throughput_rps = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(report)
}
