//! Maintenance through etcdctl 3.4: `endpoint hashkv`, `defrag`, and
//! `snapshot save` followed by `cairn snapshot restore` into a new cluster.
//!
//! hashkv and defrag run against etcd too (the same assertions must hold on
//! the reference). Snapshot restore is Cairn only: etcd's snapshot is a bbolt
//! file that Cairn cannot read, and Cairn's is not one etcdctl can restore.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{
    cairn_bin, etcdctl, etcdctl_ok, free_port, tail, test_client_options, wait_for, Cluster, Impl,
    SLOW,
};
use serde_json::Value;

cluster_tests!(
    hashkv_agrees_on_every_member,
    defrag_succeeds,
    hash_of_the_whole_state
);

/// `Maintenance.Hash` through the generated gRPC client (what etcd client
/// libraries call): every member answers one; on Cairn members at the same
/// revision answer the same hash, and a write changes it.
async fn hash_of_the_whole_state(imp: Impl) {
    use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use cairn_proto::etcdserverpb::HashRequest;
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    let last = put(&eps[..1], "a", "1");
    let hash_on = |ep: String| async move {
        let mut c = MaintenanceClient::connect(ep).await.expect("connect");
        let r = c.hash(HashRequest {}).await.expect("Hash").into_inner();
        (r.hash, r.header.expect("header").revision)
    };
    let mut hashes = Vec::new();
    for ep in &eps {
        let h = wait_for(SLOW, "the member to reach the last write", || {
            let ep = ep.clone();
            async move { Some(hash_on(ep).await).filter(|(_, rev)| *rev >= last) }
        })
        .await;
        hashes.push(h.0);
    }
    if imp == Impl::Cairn {
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    }
    put(&eps[..1], "a", "2");
    let after = hash_on(eps[0].clone()).await.0;
    assert_ne!(after, hashes[0], "a write changes the hash");
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// Revision of a write, from `etcdctl put -w json`.
fn put(eps: &[String], k: &str, v: &str) -> i64 {
    let out = etcdctl_ok(eps, &["put", k, v, "-w", "json"], None);
    json(&out)["header"]["revision"].as_i64().unwrap()
}

/// `endpoint hashkv --rev=rev` on one member: Ok((hash, compact_revision)),
/// or Err(etcdctl's stderr).
fn hashkv(ep: &str, rev: i64) -> Result<(u64, i64), String> {
    let rev = format!("--rev={rev}");
    let o = etcdctl(
        &[ep.to_string()],
        &["endpoint", "hashkv", &rev, "-w", "json"],
        None,
    );
    if !o.success {
        return Err(o.stderr);
    }
    let v = json(&o.stdout);
    let h = &v[0]["HashKV"];
    Ok((
        h["hash"].as_u64().unwrap_or(0),
        h["compact_revision"].as_i64().unwrap_or(0),
    ))
}

/// The hash at `rev` on `ep`, waiting while the member has not applied
/// `rev` yet (it answers "future revision" until then).
async fn hash_at(ep: &str, rev: i64) -> (u64, i64) {
    wait_for(SLOW, &format!("hashkv at {rev} on {ep}"), || {
        let r = hashkv(ep, rev);
        async move {
            match r {
                Ok(h) => Some(h),
                Err(e) if e.contains("future revision") => None,
                Err(e) => panic!("hashkv --rev={rev} on {ep}: {e}"),
            }
        }
    })
    .await
}

async fn hashkv_agrees_on_every_member(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    let leader = &eps[..1];
    put(leader, "a", "1");
    put(leader, "b", "2");
    let mid = put(leader, "a", "3");
    etcdctl_ok(leader, &["del", "b"], None);
    let last = put(leader, "c", "4");

    let first = hash_at(&eps[0], last).await;
    for ep in &eps[1..] {
        assert_eq!(hash_at(ep, last).await, first, "hash at {last} on {ep}");
    }
    let at_mid = hash_at(&eps[0], mid).await;
    assert_ne!(
        at_mid.0, first.0,
        "history after {mid} must change the hash"
    );
    for ep in &eps[1..] {
        assert_eq!(hash_at(ep, mid).await, at_mid, "hash at {mid} on {ep}");
    }

    // Past the current revision: etcd's future-revision error.
    let err = hashkv(&eps[0], last + 100).unwrap_err();
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );

    // Compaction: the same on every member, and the compacted revisions are
    // refused with etcd's error (HashKV refuses the compaction revision itself).
    etcdctl_ok(leader, &["compaction", &mid.to_string()], None);
    let after = hash_at(&eps[0], last).await;
    assert_eq!(after.1, mid, "compact_revision after compaction");
    for ep in &eps[1..] {
        let h = wait_for(SLOW, "compaction applied everywhere", || {
            let r = hash_at(ep, last);
            async move {
                let h = r.await;
                (h.1 == mid).then_some(h)
            }
        })
        .await;
        assert_eq!(h, after, "hash after compaction on {ep}");
    }
    let err = hashkv(&eps[0], mid).unwrap_err();
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
}

async fn defrag_succeeds(imp: Impl) {
    let cl = Cluster::start(imp, 3).await;
    let eps = cl.endpoints();
    put(&eps, "k", "v");
    let out = etcdctl_ok(&eps, &["defrag"], None);
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("Finished defragmenting etcd member"))
            .count(),
        3,
        "{out}"
    );
    assert_eq!(
        etcdctl_ok(&eps, &["get", "k", "--print-value-only"], None).trim(),
        "v"
    );
}

/// A `cairn store` process started outside the harness (on a restored data
/// dir); killed by its own PID when dropped.
struct Proc {
    name: String,
    client_url: String,
    log: PathBuf,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("==== {} log tail:\n{}", self.name, tail(&self.log, 40));
        }
    }
}

struct NewMember {
    name: String,
    client: u16,
    peer: u16,
}

impl NewMember {
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }
}

fn restore(
    file: &Path,
    dir: &Path,
    m: &NewMember,
    initial: &str,
    token: &str,
) -> std::process::Output {
    Command::new(cairn_bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .args(["--name", &m.name, "--initial-cluster", initial])
        .args(["--initial-cluster-token", token])
        .args(["--initial-advertise-peer-urls", &m.peer_url()])
        .output()
        .expect("run cairn snapshot restore")
}

fn start_store(dir: &Path, m: &NewMember, initial: &str, token: &str, log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(cairn_bin())
        .arg("store")
        .args(["--name", &m.name, "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &m.client_url()])
        .args(["--advertise-client-urls", &m.client_url()])
        .args(["--listen-peer-urls", &m.peer_url()])
        .args(["--initial-advertise-peer-urls", &m.peer_url()])
        .args(["--initial-cluster", initial])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", token])
        .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn cairn store");
    Proc {
        name: m.name.clone(),
        client_url: m.client_url(),
        log,
        child,
    }
}

/// Keys with their revisions and versions, as `get --prefix '' -w json` shows them.
fn all_kvs(eps: &[String]) -> (i64, Vec<Value>) {
    let v = json(&etcdctl_ok(
        eps,
        &["get", "--prefix", "", "-w", "json"],
        None,
    ));
    let rev = v["header"]["revision"].as_i64().unwrap();
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    (rev, kvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_save_then_restore_into_a_new_cluster() {
    let mut old = Cluster::start(Impl::Cairn, 3).await;
    let eps = old.endpoints();
    let one = &eps[..1];
    for i in 0..20 {
        put(one, &format!("key/{i:02}"), &format!("value-{i}"));
    }
    put(one, "key/05", "changed");
    // Enough data for the snapshot stream to take several 1 MiB chunks
    // (values through stdin: one argv string is limited to 128 KiB).
    let big = "x".repeat(700_000);
    for i in 0..3 {
        etcdctl_ok(one, &["put", &format!("big/{i}")], Some(&big));
    }
    etcdctl_ok(one, &["del", "key/06"], None);
    let lease = json(&etcdctl_ok(
        one,
        &["lease", "grant", "3600", "-w", "json"],
        None,
    ))["ID"]
        .as_i64()
        .unwrap();
    let lease_hex = format!("{lease:x}");
    etcdctl_ok(one, &["put", "leased", "x", "--lease", &lease_hex], None);
    let compact = put(one, "key/00", "again");
    etcdctl_ok(one, &["compaction", &compact.to_string()], None);
    // HashKV refuses the compaction revision itself: hash one past it.
    put(one, "key/01", "after-compaction");
    let (old_rev, old_kvs) = all_kvs(one);
    let old_hash = hash_at(&eps[0], old_rev).await;

    let file = old.dir.join("snap.db");
    let file_s = file.display().to_string();
    let out = etcdctl_ok(&eps[1..2], &["snapshot", "save", &file_s], None);
    assert!(out.contains("Snapshot saved at"), "{out}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(size % 512, 32, "etcdctl's size rule");
    assert!(
        size > 2 << 20,
        "snapshot of {size} bytes lacks the big values"
    );

    // The new cluster: other ports, another token.
    let members: Vec<NewMember> = (0..3)
        .map(|i| NewMember {
            name: format!("r{i}"),
            client: free_port(),
            peer: free_port(),
        })
        .collect();
    assert!(
        {
            let mut ports: Vec<u16> = members.iter().flat_map(|m| [m.client, m.peer]).collect();
            ports.extend(
                eps.iter()
                    .map(|e| e.rsplit(':').next().unwrap().parse::<u16>().unwrap()),
            );
            ports.sort_unstable();
            ports.windows(2).all(|w| w[0] != w[1])
        },
        "free_port handed out a port twice; rerun"
    );
    let initial = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let token = "restored-cluster";

    // Refusals first: a damaged file, a non-empty data dir.
    let bad = old.dir.join("bad.db");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let o = restore(
        &bad,
        &old.dir.join("bad.data"),
        &members[0],
        &initial,
        token,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("sha256"),
        "{o:?}"
    );
    assert!(!old.dir.join("bad.data").exists());
    let full = old.dir.join("full.data");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    let o = restore(&file, &full, &members[0], &initial, token);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{o:?}"
    );

    let mut procs = Vec::new();
    for m in &members {
        let dir = old.dir.join(format!("{}.data", m.name));
        let o = restore(&file, &dir, m, &initial, token);
        assert!(o.status.success(), "restore {}: {o:?}", m.name);
        let log = old.dir.join(format!("{}.log", m.name));
        procs.push(start_store(&dir, m, &initial, token, log));
    }
    let new_eps: Vec<String> = procs.iter().map(|p| p.client_url.clone()).collect();

    // Ready: every member answers Status naming the same leader.
    wait_for(SLOW, "restored cluster to elect a leader", || {
        let eps = new_eps.clone();
        async move {
            let mut leader = None;
            for ep in &eps {
                let c = cairn_client::Client::connect(vec![ep.clone()], test_client_options())
                    .await
                    .ok()?;
                let st = c.status(ep).await.ok()?;
                if st.leader == 0 || leader.is_some_and(|l| l != st.leader) {
                    return None;
                }
                leader = Some(st.leader);
            }
            Some(())
        }
    })
    .await;
    // The old cluster is gone from the picture: stop it so nothing can be
    // read from it by mistake.
    for n in &mut old.nodes {
        n.kill9();
    }

    for ep in &new_eps {
        let (rev, kvs) = all_kvs(std::slice::from_ref(ep));
        assert_eq!(rev, old_rev, "revision on {ep}");
        assert_eq!(kvs, old_kvs, "keys on {ep}");
        assert_eq!(hash_at(ep, old_rev).await, old_hash, "history hash on {ep}");
    }
    // The compaction point came along; the lease too.
    let err = etcdctl(&new_eps, &["get", "key/00", "--rev=2"], None);
    assert!(
        err.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{err:?}"
    );
    let leases = etcdctl_ok(&new_eps, &["lease", "list"], None);
    assert!(leases.contains(&lease_hex), "{leases}");
    // A new cluster: its members are the restored ones, with new IDs.
    let list = etcdctl_ok(&new_eps, &["member", "list"], None);
    for m in &members {
        assert!(list.contains(&m.peer_url()), "{list}");
    }
    assert_eq!(list.lines().count(), 3, "{list}");
    // And it takes writes, continuing the old revision.
    assert_eq!(put(&new_eps, "after", "restore"), old_rev + 1);
    drop(procs);
}
