//! `etcd-load`: a second, independent load generator for `bench/compare.sh`.
//!
//! `cairn bench` is Cairn's own client, so a lead over etcd measured with it
//! alone could be an artefact of that client (how it batches, which member it
//! sends to, how it drives HTTP/2). This program measures the same kind of
//! workload through the `etcd-client` crate, as a Rust application would talk
//! to either store: `--conns` clients, each made with `Client::connect(all
//! endpoints)`, i.e. a tonic balanced channel with a connection to every
//! member, spreading requests over them (no leader targeting); `--clients`
//! concurrent requesters spread over those connections.
//!
//! Workloads: `put` (random keys, `--val-size`-byte values) and `get`
//! (random keys of the key space, `--consistency l|s`; the key space is
//! filled first, untimed, unless a count shows it is full already).
//! Keys and values have the same shape as `cairn bench`'s (zero-padded
//! decimals of `--key-size` bytes; a repeating a–z value), and the flags the
//! same names and meanings where both have them.
//!
//! Output: one JSON line on stdout shaped like `cairn bench --json`
//! (`throughput_rps`, `ok`, `failed`, `latency.{min,p50,p90,p99,p999,max}_ms`,
//! `errors`, ...), so `bench/summarize.py` reads both alike. Every run is
//! bounded: requesters stop at `--duration`, and every request (and the
//! wait for a ready connection) at `--request-timeout`.

use std::collections::BTreeMap;
use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, Error, GetOptions, KvClient};

const USAGE: &str = "\
usage: etcd-load [FLAGS] put|get [--consistency l|s]
  --endpoints URL,...      client URLs of the members (default http://127.0.0.1:2379)
  --conns N                etcd-client Clients (each connects to every endpoint; default 1)
  --clients N              concurrent requesters spread over the connections (default 1)
  --duration D             length of the timed run, e.g. 10s, 500ms (default 10s)
  --key-size N             key size in bytes (default 8)
  --val-size N             value size in bytes (default 256)
  --key-space N            number of distinct keys (default 100000)
  --consistency l|s        get: linearizable or serializable (default l)
  --request-timeout D      deadline of one request (default 5s)
  --json                   accepted for cairn bench compatibility (output is always JSON)";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Workload {
    Put,
    Get { serializable: bool },
}

#[derive(Debug, Clone)]
struct Args {
    endpoints: Vec<String>,
    conns: usize,
    clients: usize,
    duration: Duration,
    key_size: usize,
    val_size: usize,
    key_space: u64,
    request_timeout: Duration,
    workload: Workload,
}

impl Args {
    /// Flags in any order around the workload word, as `cairn bench` accepts.
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            conns: 1,
            clients: 1,
            duration: Duration::from_secs(10),
            key_size: 8,
            val_size: 256,
            key_space: 100_000,
            request_timeout: Duration::from_secs(5),
            workload: Workload::Put,
        };
        let mut workload = None;
        let mut serializable = false;
        while let Some(arg) = it.next() {
            // Both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let num = |v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {v}"))
            };
            match flag.as_str() {
                "--endpoints" => a.endpoints = value()?.split(',').map(String::from).collect(),
                "--conns" => a.conns = num(value()?)? as usize,
                "--clients" => a.clients = num(value()?)? as usize,
                "--duration" => a.duration = parse_duration(&value()?)?,
                "--key-size" => a.key_size = num(value()?)? as usize,
                "--val-size" => a.val_size = num(value()?)? as usize,
                "--key-space" => a.key_space = num(value()?)?,
                "--request-timeout" => a.request_timeout = parse_duration(&value()?)?,
                "--consistency" => {
                    serializable = match value()?.as_str() {
                        "l" => false,
                        "s" => true,
                        v => return Err(format!("--consistency: l or s, not {v}")),
                    }
                }
                "--json" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    exit(0);
                }
                "put" | "get" if workload.is_none() => workload = Some(arg),
                _ => return Err(format!("unknown argument {arg}")),
            }
        }
        a.workload = match workload.as_deref() {
            Some("put") => Workload::Put,
            Some("get") => Workload::Get { serializable },
            _ => return Err("no workload (put or get)".into()),
        };
        if a.conns == 0 || a.clients == 0 || a.key_size == 0 || a.key_space == 0 {
            return Err("--conns, --clients, --key-size and --key-space must be at least 1".into());
        }
        if a.key_size < 20 && a.key_space > 10u64.pow(a.key_size as u32) {
            return Err("--key-space does not fit in --key-size decimal digits".into());
        }
        Ok(a)
    }
}

/// `250ms`, `10s`, `2m`, or bare seconds, as `cairn bench` takes them.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let i = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let n: f64 = s[..i].parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match &s[i..] {
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Key `i`: zero-padded decimal of exactly `size` bytes, as `cairn bench`
/// writes them, so both generators put and read the same keys.
fn key(i: u64, size: usize) -> Vec<u8> {
    let d = i.to_string();
    let mut k = vec![b'0'; size.saturating_sub(d.len())];
    k.extend_from_slice(&d.as_bytes()[d.len().saturating_sub(size)..]);
    k
}

/// splitmix64: enough randomness to pick keys, and no dependency for it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z as u128 * n as u128) >> 64) as u64
    }
}

/// One requester's results; merged at the end (no shared lock while timing).
#[derive(Default)]
struct Rec {
    /// Latency of each successful request, microseconds.
    lat_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// Gets that found their key (a check that the reads read something).
    hits: u64,
}

/// Error kinds as `cairn bench` names them: gRPC code and message.
fn error_kind(e: &Error) -> String {
    let s = match e {
        Error::GRpcStatus(st) => format!("{:?}: {}", st.code(), st.message()),
        e => e.to_string(),
    };
    s.chars().take(200).collect()
}

/// One request, bounded by `timeout` (which also covers waiting for the
/// balanced channel to have a ready connection: with every member down it
/// would otherwise wait forever). Ok(number of keys read).
async fn one(
    kv: &mut KvClient,
    w: Workload,
    k: Vec<u8>,
    value: &[u8],
    timeout: Duration,
) -> Result<usize, String> {
    let call = async {
        match w {
            Workload::Put => kv.put(k, value, None).await.map(|_| 0),
            Workload::Get { serializable } => {
                let opts = if serializable {
                    GetOptions::new().with_serializable()
                } else {
                    GetOptions::new()
                };
                kv.get(k, Some(opts)).await.map(|r| r.kvs().len())
            }
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(|e| error_kind(&e)),
        Err(_) => Err("timeout".into()),
    }
}

/// Before a get run: puts every key of the key space once (untimed, all
/// requesters), unless a serializable count shows it is full already.
async fn prefill(a: &Args, kvs: &[KvClient], value: &Arc<Vec<u8>>) -> Result<(), String> {
    let mut kv = kvs[0].clone();
    let mut opts = GetOptions::new().with_count_only().with_serializable();
    // Keys are fixed-width decimals, so the space is [key(0), key(key_space)).
    opts = if a.key_size < 20 && a.key_space == 10u64.pow(a.key_size as u32) {
        opts.with_from_key()
    } else {
        opts.with_range(key(a.key_space, a.key_size))
    };
    let count = tokio::time::timeout(a.request_timeout, kv.get(key(0, a.key_size), Some(opts)))
        .await
        .map_err(|_| "prefill: count timed out".to_string())?
        .map_err(|e| format!("prefill: count: {}", error_kind(&e)))?
        .count();
    if count as u64 >= a.key_space {
        return Ok(());
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..a.clients {
        let (mut kv, next, value, a) = (
            kvs[id % kvs.len()].clone(),
            next.clone(),
            value.clone(),
            a.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.key_space {
                    return Ok::<(), String>(());
                }
                one(
                    &mut kv,
                    Workload::Put,
                    key(i, a.key_size),
                    &value,
                    a.request_timeout,
                )
                .await
                .map_err(|e| format!("prefill: put: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

async fn run(a: Args) -> Result<serde_json::Value, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(a.request_timeout);
    // One Client per connection: each has its own balanced channel over all
    // endpoints, so --conns 8 means 8 HTTP/2 connections to every member.
    let mut kvs = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        let c = Client::connect(&a.endpoints, Some(opts.clone()))
            .await
            .map_err(|e| format!("connecting to {:?}: {e}", a.endpoints))?;
        kvs.push(c.kv_client());
    }
    // Same value shape as cairn bench: not one repeated byte, not random.
    let value: Arc<Vec<u8>> = Arc::new((0..a.val_size).map(|i| b'a' + (i % 26) as u8).collect());
    if let Workload::Get { .. } = a.workload {
        prefill(&a, &kvs, &value).await?;
    } else {
        // The channels connect lazily; one untimed request per Client opens
        // its connections (the balancer readies every endpoint it holds), as
        // a get run's prefill does.
        for kv in &kvs {
            let mut kv = kv.clone();
            let w = Workload::Get { serializable: true };
            one(&mut kv, w, key(0, a.key_size), &value, a.request_timeout)
                .await
                .map_err(|e| format!("warm-up: {e}"))?;
        }
    }

    let start = Instant::now();
    let deadline = start + a.duration;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ std::process::id() as u64;
    let mut tasks = Vec::with_capacity(a.clients);
    for id in 0..a.clients {
        let (mut kv, value, a) = (kvs[id % kvs.len()].clone(), value.clone(), a.clone());
        let mut rng = Rng(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tasks.push(tokio::spawn(async move {
            let mut rec = Rec::default();
            while Instant::now() < deadline {
                let k = key(rng.below(a.key_space), a.key_size);
                let t0 = Instant::now();
                match one(&mut kv, a.workload, k, &value, a.request_timeout).await {
                    Ok(n) => {
                        rec.lat_us.push(t0.elapsed().as_micros() as u64);
                        rec.hits += n as u64;
                    }
                    Err(e) => *rec.errors.entry(e).or_default() += 1,
                }
            }
            rec
        }));
    }
    let mut all = Rec::default();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        all.lat_us.extend(r.lat_us);
        all.hits += r.hits;
        for (k, n) in r.errors {
            *all.errors.entry(k).or_default() += n;
        }
    }
    // As cairn bench: from the start of the timed run until the last
    // requester is done (its last request finishes after the deadline).
    let elapsed = start.elapsed().as_secs_f64();
    Ok(report(&a, elapsed, all))
}

/// The JSON object, with `cairn bench --json`'s field names.
fn report(a: &Args, elapsed: f64, mut r: Rec) -> serde_json::Value {
    r.lat_us.sort_unstable();
    let n = r.lat_us.len();
    let ms = |us: u64| us as f64 / 1000.0;
    // Nearest rank: the smallest latency with at least q of them at or below it.
    let q = |q: f64| {
        if n == 0 {
            0.0
        } else {
            ms(r.lat_us[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
        }
    };
    let mean = if n == 0 {
        0.0
    } else {
        ms(r.lat_us.iter().sum::<u64>()) / n as f64
    };
    let latency = serde_json::json!({
        "count": n,
        "min_ms": q(0.0),
        "mean_ms": mean,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": q(1.0),
    });
    let (name, counters) = match a.workload {
        Workload::Put => ("put", serde_json::json!({})),
        Workload::Get { .. } => ("range", serde_json::json!({ "hits": r.hits })),
    };
    serde_json::json!({
        "workload": name,
        "load_generator": "etcd-client 0.21",
        "consistency": match a.workload {
            Workload::Get { serializable: true } => Some("s"),
            Workload::Get { serializable: false } => Some("l"),
            Workload::Put => None,
        },
        "endpoints": a.endpoints,
        "conns": a.conns,
        "clients": a.clients,
        "rate": null,
        "key_size": a.key_size,
        "val_size": a.val_size,
        "elapsed_s": elapsed,
        "ok": n,
        "failed": r.errors.values().sum::<u64>(),
        "throughput_rps": if elapsed > 0.0 { n as f64 / elapsed } else { 0.0 },
        "latency": latency,
        "per_op": { name: latency },
        "errors": r.errors,
        "counters": counters,
    })
}

#[tokio::main]
async fn main() {
    let a = Args::parse(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("etcd-load: {e}\n{USAGE}");
        exit(2)
    });
    match run(a).await {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("etcd-load: {e}");
            exit(1)
        }
    }
}
