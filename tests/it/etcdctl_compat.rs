//! etcdctl 3.4 (a Go client nobody here wrote) against a 3-member cluster.
//!
//! One fixed command sequence runs against the cluster; its transcript (stdout,
//! the `Error:` lines of stderr, exit status) is normalized and compared with
//! `tests/golden/etcdctl_transcript.txt`, which was recorded from etcd 3.4.23.
//! The etcd variant of the test re-checks that golden file against the live
//! reference every run (so the golden cannot rot); the Cairn variant must produce
//! the same transcript. `CAIRN_UPDATE_GOLDEN=1 cargo test --test it
//! etcdctl_compat::etcd::` rewrites it from etcd.
//!
//! Normalized (inherently different between two clusters, or between runs):
//! - client/peer URLs → `<c0>`/`<p0>`… (random free ports);
//! - cluster ID → `<cluster>`, member IDs (hex and decimal) → `<id-n0>`… (they
//!   hash the peer URLs and the random cluster token);
//! - in JSON headers `member_id` → `<member>` and `raft_term` → `<term>`;
//!   in Status: `leader` → `<leader>`, `raftIndex`/`raftAppliedIndex`/`raftTerm`
//!   → `<index>`/`<term>` (Raft log layouts differ: etcd logs conf changes and
//!   its own attribute publishes), `dbSize`/`dbSizeInUse` → `<size>` (bbolt vs sled);
//! - `endpoint status` simple output: size, is-leader, term, index columns
//!   (which member leads is an election outcome; exactly one must lead);
//! - `endpoint health`: the `took = …` duration; lines sorted (checked concurrently);
//! - `member list`: lines sorted (servers order members by ID).
//!
//! Revisions, keys, values, versions, counts, error strings and exit statuses are
//! NOT normalized: those are the contract.

use crate::common;

use std::collections::BTreeMap;

use common::{etcdctl, etcdctl_bin, have_tool, Cluster, Impl};
use serde_json::Value;

cluster_tests!(
    etcdctl_transcript_matches_golden,
    etcdctl_endpoint_health_and_status_all_members
);

const GOLDEN: &str = "tests/golden/etcdctl_transcript.txt";

/// One step: which endpoints (`One` = the leader, so serializable reads right
/// after writes are deterministic; `All` = every member), args, stdin.
enum Eps {
    One,
    All,
}

fn script() -> Vec<(Eps, Vec<&'static str>, Option<&'static str>)> {
    use Eps::*;
    vec![
        (One, vec!["get", "foo"], None),
        (One, vec!["put", "foo", "bar"], None),
        (One, vec!["put", "foo2", "bar2", "--prev-kv"], None),
        (One, vec!["put", "foo2", "bar3", "--prev-kv"], None),
        (One, vec!["put", "zeta", "last"], None),
        (One, vec!["get", "foo", "--prefix"], None),
        (One, vec!["get", "foo", "-w", "json"], None),
        (One, vec!["get", "foo2", "--rev=3", "-w", "json"], None),
        (One, vec!["get", "foo", "--prefix", "--consistency=s", "--keys-only"], None),
        (One, vec!["get", "foo", "--prefix", "--consistency=s", "-w", "json"], None),
        (One, vec!["get", "foo", "--prefix", "--limit=1", "-w", "json"], None),
        (One, vec!["get", "foo", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"], None),
        (One, vec!["get", "--from-key", "foo2"], None),
        (One, vec!["get", "--prefix", ""], None),
        (One, vec!["get", "foo", "--print-value-only"], None),
        (One, vec!["del", "foo2", "--prev-kv"], None),
        (One, vec!["del", "nothing"], None),
        (One, vec!["txn"], Some("value(\"foo\") = \"bar\"\n\nput foo baz\nget foo\n\nput foo nope\n\n")),
        (One, vec!["txn", "-w", "json"], Some("mod(\"foo\") = \"1\"\n\nput foo x\n\nget foo\n\n")),
        (
            One,
            vec!["txn"],
            Some("version(\"foo\") = \"2\"\ncreate(\"foo\") > \"0\"\nmod(\"foo\") < \"100\"\n\nput t1 v\ndel zeta\n\n\n"),
        ),
        (One, vec!["txn", "--interactive=false"], Some("value(\"foo\") != \"baz\"\n\n\nget t1\n\n")),
        (One, vec!["get", "foo", "--rev=2"], None),
        (One, vec!["compaction", "4"], None),
        (One, vec!["compaction", "4"], None),
        (One, vec!["get", "foo", "--rev=3"], None),
        (One, vec!["get", "foo", "--rev=4", "-w", "json"], None),
        (One, vec!["get", "foo", "--rev=99"], None),
        (One, vec!["put", "", "x"], None),
        (One, vec!["compaction", "--physical", "6"], None),
        (One, vec!["del", "--prefix", ""], None),
        (One, vec!["get", "--prefix", "", "-w", "json"], None),
        (All, vec!["endpoint", "health"], None),
        (All, vec!["endpoint", "status"], None),
        (All, vec!["endpoint", "status", "-w", "json"], None),
        (All, vec!["member", "list"], None),
        (All, vec!["member", "list", "-w", "json"], None),
    ]
}

struct Ids {
    /// (name, member id), cluster id, URL replacements.
    members: Vec<(String, u64)>,
    cluster: u64,
    urls: Vec<(String, String)>,
}

async fn ids(cl: &Cluster) -> Ids {
    let c = cl.client().await;
    let ml = c.member_list().await.expect("member list");
    let mut urls = Vec::new();
    for (i, n) in cl.nodes.iter().enumerate() {
        // Longest first is not needed: every URL has the same shape.
        urls.push((
            n.client_url.trim_start_matches("http://").to_string(),
            format!("<c{i}>"),
        ));
        urls.push((
            n.peer_url.trim_start_matches("http://").to_string(),
            format!("<p{i}>"),
        ));
    }
    Ids {
        members: ml.members.iter().map(|m| (m.name.clone(), m.id)).collect(),
        cluster: ml.header.expect("header").cluster_id,
        urls,
    }
}

fn normalize_json(v: &mut Value, key: Option<&str>, ids: &Ids) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                normalize_json(val, Some(k), ids);
            }
        }
        Value::Array(a) => {
            for val in a.iter_mut() {
                normalize_json(val, key, ids);
            }
            // Member arrays come in the server's (ID) order: sort them by name.
            if key == Some("members") {
                a.sort_by_key(|m| {
                    m.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                });
            }
        }
        Value::Number(n) => {
            let placeholder = match key {
                Some("member_id") => Some("<member>".to_string()),
                Some("raft_term" | "raftTerm") => Some("<term>".into()),
                Some("leader") => Some("<leader>".into()),
                Some("raftIndex" | "raftAppliedIndex") => Some("<index>".into()),
                Some("dbSize" | "dbSizeInUse") => Some("<size>".into()),
                Some("cluster_id") => Some("<cluster>".into()),
                Some("ID") => n.as_u64().map(|id| member_placeholder(id, ids)),
                _ => None,
            };
            if let Some(p) = placeholder {
                *v = Value::String(p);
            }
        }
        Value::String(s) => {
            for (from, to) in &ids.urls {
                *s = s.replace(from, to);
            }
        }
        _ => {}
    }
}

fn member_placeholder(id: u64, ids: &Ids) -> String {
    ids.members
        .iter()
        .find(|(_, m)| *m == id)
        .map(|(n, _)| format!("<id-{n}>"))
        .unwrap_or_else(|| format!("<unknown-member-{id:x}>"))
}

fn normalize_text(s: &str, ids: &Ids) -> String {
    let mut s = s.to_string();
    for (from, to) in &ids.urls {
        s = s.replace(from, to);
    }
    for (name, id) in &ids.members {
        s = s.replace(&format!("{id:x}"), &format!("<id-{name}>"));
        s = s.replace(&id.to_string(), &format!("<id-{name}>"));
    }
    s = s.replace(&ids.cluster.to_string(), "<cluster>");
    s
}

/// Normalizes one command's stdout.
fn normalize_stdout(args: &[&str], out: &str, ids: &Ids) -> String {
    let is_json = args.windows(2).any(|w| w == ["-w", "json"]);
    let mut lines: Vec<String> = out
        .lines()
        .map(|line| {
            if is_json && (line.starts_with('{') || line.starts_with('[')) {
                match serde_json::from_str::<Value>(line) {
                    Ok(mut v) => {
                        normalize_json(&mut v, None, ids);
                        return v.to_string();
                    }
                    Err(e) => return format!("<unparsable json: {e}> {line}"),
                }
            }
            let line = normalize_text(line, ids);
            match args {
                ["endpoint", "health"] => match line.split_once("took = ") {
                    Some((head, _)) => format!("{head}took = <t>"),
                    None => line,
                },
                // "<c0>, <id-n0>, 3.4.23, 20 kB, true, false, 2, 11, 11, "
                ["endpoint", "status"] => {
                    let mut f: Vec<String> = line.split(", ").map(str::to_string).collect();
                    for i in [3, 4, 6, 7, 8] {
                        if let Some(x) = f.get_mut(i) {
                            *x = "<n>".into();
                        }
                    }
                    f.join(", ")
                }
                _ => line,
            }
        })
        .collect();
    if matches!(args, ["endpoint", "health"] | ["member", "list"]) {
        lines.sort();
    }
    lines.join("\n")
}

async fn transcript(cl: &mut Cluster) -> String {
    let leader = cl.leader().await;
    let one = vec![cl.nodes[leader].client_url.clone()];
    let all = cl.endpoints();
    let ids = ids(cl).await;
    let mut t = String::new();
    for (eps, args, stdin) in script() {
        let eps = match eps {
            Eps::One => &one,
            Eps::All => &all,
        };
        let o = etcdctl(eps, &args, stdin);
        let quoted: Vec<String> = args
            .iter()
            .map(|a| {
                if a.is_empty() {
                    "''".into()
                } else {
                    a.to_string()
                }
            })
            .collect();
        t.push_str(&format!(
            "$ etcdctl {}{}\n",
            quoted.join(" "),
            if stdin.is_some() { " <<stdin" } else { "" }
        ));
        if let Some(i) = stdin {
            for l in i.lines() {
                t.push_str(&format!("< {l}\n"));
            }
        }
        let out = normalize_stdout(&args, &o.stdout, &ids);
        if !out.is_empty() {
            t.push_str(&out);
            t.push('\n');
        }
        // etcdctl also logs zap warnings (JSON lines with random targets) on
        // stderr: keep the rest ("Error: ...", and `endpoint health`, which
        // reports on stderr in 3.4).
        let err: String = o
            .stderr
            .lines()
            .filter(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n");
        let err = normalize_stdout(&args, &err, &ids);
        for l in err.lines() {
            t.push_str(&format!("stderr: {l}\n"));
        }
        t.push_str(&format!(
            "exit: {}\n\n",
            if o.success { "ok" } else { "failed" }
        ));
    }
    t
}

async fn etcdctl_transcript_matches_golden(imp: Impl) {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let mut cl = Cluster::start(imp, 3).await;
    let got = transcript(&mut cl).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if imp == Impl::Etcd && std::env::var("CAIRN_UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let want = std::fs::read_to_string(&path)
        .expect("golden transcript (CAIRN_UPDATE_GOLDEN=1 to record)");
    if got != want {
        let mut diff = String::new();
        let (g, w): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
        for i in 0..g.len().max(w.len()) {
            let (a, b) = (
                w.get(i).copied().unwrap_or("<eof>"),
                g.get(i).copied().unwrap_or("<eof>"),
            );
            if a != b {
                diff.push_str(&format!("line {}:\n  etcd : {a}\n  {imp:?}: {b}\n", i + 1));
            }
        }
        panic!("{imp:?} transcript differs from etcd's golden:\n{diff}\n---- full {imp:?} transcript:\n{got}");
    }
}

/// `endpoint health` / `endpoint status` name every member: all healthy,
/// exactly one leader, the same revision everywhere (after a write settles).
async fn etcdctl_endpoint_health_and_status_all_members(imp: Impl) {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    common::etcdctl_ok(&eps, &["put", "hk", "hv"], None);
    // 3.4 prints the health lines on stderr.
    let o = etcdctl(&eps, &["endpoint", "health"], None);
    assert!(o.success, "endpoint health failed: {o:?}");
    let health = format!("{}{}", o.stdout, o.stderr);
    for n in &cl.nodes {
        let ep = &n.client_url;
        assert!(
            health.lines().any(
                |l| l.starts_with(&format!("{ep} is healthy: successfully committed proposal"))
            ),
            "{ep} not healthy in:\n{health}"
        );
    }
    common::wait_until(common::SLOW, "all members at the same revision", || {
        let eps = eps.clone();
        async move {
            let o = etcdctl(&eps, &["endpoint", "status", "-w", "json"], None);
            let Ok(v) = serde_json::from_str::<Value>(o.stdout.trim()) else {
                return false;
            };
            let revs: Vec<_> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["Status"]["header"]["revision"].clone())
                .collect();
            revs.len() == 3 && revs.iter().all(|r| *r == revs[0])
        }
    })
    .await;
    let o = etcdctl(&eps, &["endpoint", "status", "-w", "json"], None);
    let v: Value = serde_json::from_str(o.stdout.trim()).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let mut by_ep = BTreeMap::new();
    for r in rows {
        let st = &r["Status"];
        assert_eq!(st["version"], "3.4.23");
        by_ep.insert(r["Endpoint"].as_str().unwrap().to_string(), st.clone());
    }
    let leaders: Vec<_> = rows.iter().map(|r| r["Status"]["leader"].clone()).collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "members disagree on the leader: {leaders:?}"
    );
    let is_leader = rows
        .iter()
        .filter(|r| r["Status"]["leader"] == r["Status"]["header"]["member_id"])
        .count();
    assert_eq!(is_leader, 1);
    assert_eq!(by_ep.len(), 3);
}
