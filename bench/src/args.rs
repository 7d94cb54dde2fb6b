//! Command-line flags of `cairn bench`, shaped like etcd's `benchmark` tool:
//! connection and load flags first (they may also follow the workload name),
//! then the workload subcommand.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// `cairn bench [FLAGS] <WORKLOAD> [WORKLOAD FLAGS]`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub workload: Workload,
}

/// Flags every workload shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Client URLs of the members (comma separated; http://host:port or host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections (each is its own client with its own HTTP/2 connections).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent requesters, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Number of requests to send (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// Stop after this long (e.g. 30s, 500ms, 2m); with --total, whichever comes first.
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second over all clients (open loop on a fixed grid; unlimited if unset).
    #[arg(long, global = true)]
    pub rate: Option<f64>,
    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub key_space: u64,
    /// Use keys 0, 1, 2, ... (wrapping at --key-space) instead of random ones.
    #[arg(long, global = true)]
    pub sequential_keys: bool,
    /// Send every request to the current leader only (found with Maintenance.Status).
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Print the result as one JSON object on stdout (and no progress bar).
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of one attempt on one member (a timed-out write counts as outcome unknown).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    pub request_timeout: Duration,
}

/// The load to generate.
#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    /// Put random (or sequential) keys.
    Put,
    /// Range over KEY (or [KEY, END)) repeatedly.
    Range {
        key: String,
        end: Option<String>,
        /// l = linearizable (through the leader), s = serializable (local).
        #[arg(long, default_value = "l")]
        consistency: Consistency,
        /// At most this many keys per answer (0: all), as `etcdctl get --limit`.
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// Compare-and-swap: a txn that puts a key if its mod_revision is the one
    /// this client last saw, and reads it otherwise.
    TxnPut,
    /// Reads and writes on random keys of the key space (90% reads by default).
    Mixed {
        #[arg(long, default_value = "l")]
        consistency: Consistency,
        /// Percentage of requests that are puts.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
        write_percent: u8,
    },
    /// Write at a steady rate, kill -9 the leader, report the unavailability window.
    Failover(FailoverArgs),
    /// N watchers on one prefix and a writer at --rate (default 100/s):
    /// put-to-event latency.
    Watch(WatchArgs),
    /// The same, the writer unthrottled: events delivered per second.
    WatchFanout(WatchArgs),
    /// Each client grants one lease (untimed), then renews it over one
    /// keep-alive stream: each request is one renewal and its answer.
    LeaseKeepalive {
        /// TTL (seconds) of each client's lease.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// Leases granted first (TTL one hour, untimed) and left idle, so the
        /// renewals run against a store holding this many leases.
        #[arg(long, default_value_t = 0)]
        idle_leases: u64,
    },
}

/// Flags of `cairn bench watch` and `watch-fanout`.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Number of watchers, all on the same prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Number of watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
}

/// Read consistency, as etcd's `--consistency`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable.
    #[value(name = "l")]
    Linearizable,
    /// Serializable.
    #[value(name = "s")]
    Serializable,
}

/// Flags of `cairn bench failover`. The load flags (--rate, --clients, ...)
/// are the common ones; --rate defaults to 200/s and --duration to 10s here.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Kill the leader this long after the load starts.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub kill_after: Duration,
    /// Which process serves which endpoint: ENDPOINT=PID pairs, comma separated
    /// (ENDPOINT spelled as in --endpoints).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "leader_pid_cmd"
    )]
    pub pids: Vec<String>,
    /// A shell command that prints the leader's PID. It runs with
    /// CAIRN_BENCH_LEADER_ENDPOINT (the leader's client URL) and
    /// CAIRN_BENCH_LEADER_ID (its member ID in hex) in its environment.
    #[arg(long, conflicts_with = "pids")]
    pub leader_pid_cmd: Option<String>,
}

/// Parses `250ms`, `10s`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 500ms, 10s or 2m"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn etcd_style_command_lines_parse() {
        let c = Cli::try_parse_from([
            "bench",
            "--endpoints=127.0.0.1:2379,127.0.0.1:22379",
            "--conns=8",
            "--clients=64",
            "put",
            "--key-size=8",
            "--val-size=256",
            "--total=1000",
        ])
        .unwrap();
        let a = c.bench.common;
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!((a.conns, a.clients, a.total), (8, 64, Some(1000)));
        assert!(matches!(c.bench.workload, Workload::Put));

        let c = Cli::try_parse_from(["bench", "range", "foo", "--consistency=s"]).unwrap();
        match c.bench.workload {
            Workload::Range {
                key, consistency, ..
            } => {
                assert_eq!(key, "foo");
                assert_eq!(consistency, Consistency::Serializable);
            }
            w => panic!("{w:?}"),
        }

        let c = Cli::try_parse_from(["bench", "failover", "--pids", "a:1=10,b:2=11"]).unwrap();
        match c.bench.workload {
            Workload::Failover(f) => assert_eq!(f.pids, ["a:1=10", "b:2=11"]),
            w => panic!("{w:?}"),
        }
        assert!(Cli::try_parse_from(["bench", "failover"]).is_err());
        assert!(Cli::try_parse_from(["bench", "mixed", "--write-percent=101"]).is_err());
    }
}
