//! Snapshots in etcd's format, across implementations: `etcdctl snapshot
//! save` against Cairn writes an etcd 3.4 backend (bbolt) that `etcdctl
//! snapshot status` reads and `etcdctl snapshot restore` + etcd serve; `cairn
//! snapshot restore` takes the same file from etcd 3.4 or from Cairn. Each
//! test fills a source cluster (bulk keys written in transactions, so
//! revisions have sub-revisions; a history of overwrites and deletes; values
//! larger than a bbolt page; a compaction; leases; users and a role, with auth
//! on), saves, restores into a new cluster and compares everything a client
//! can see: every key with its revisions and version, the history after the
//! compaction event by event, the compaction point, leases and their keys,
//! users, roles and that a user's password still works.
//! `snapshot_save_then_restore_into_a_new_cluster` is the Cairn-to-Cairn path.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::maintenance::hash_at;
use cairn_client::mvccpb::Event;
use cairn_client::txn::{op_put, Txn};
use cairn_client::{
    Client, ClientOptions, Credentials, DeleteOptions, KeyRange, PutOptions, WatchOptions,
};
use common::{
    cairn_bin, etcdctl, etcdctl_ok, etcdctl_put as put, free_port, json, member_command, tail,
    test_client_options, wait_for, Cluster, Impl, SLOW,
};
use serde_json::Value;

/// The Cairn → Cairn path: a three-member cluster restored into a new one,
/// and the refusals (a damaged file, a file of neither format, a data dir
/// that is not empty).
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
    let (old_rev, old_kvs) = all_kvs(one, &[]);
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
    let members: Vec<NewMember> = (0..3).map(|i| NewMember::new(&format!("r{i}"))).collect();
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
        Impl::Cairn,
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
    let junk = old.dir.join("junk.db");
    let mut bytes = vec![7u8; 4096];
    bytes.extend_from_slice(&sha256(&bytes));
    std::fs::write(&junk, &bytes).unwrap();
    let o = restore(
        Impl::Cairn,
        &junk,
        &old.dir.join("junk.data"),
        &members[0],
        &initial,
        token,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("neither an etcd snapshot"),
        "{o:?}"
    );
    let full = old.dir.join("full.data");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    let o = restore(Impl::Cairn, &file, &full, &members[0], &initial, token);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{o:?}"
    );

    let mut procs = Vec::new();
    for m in &members {
        let dir = old.dir.join(format!("{}.data", m.name));
        let o = restore(Impl::Cairn, &file, &dir, m, &initial, token);
        assert!(o.status.success(), "restore {}: {o:?}", m.name);
        let log = old.dir.join(format!("{}.log", m.name));
        procs.push(start(Impl::Cairn, &dir, m, &initial, token, log));
    }
    let new_eps: Vec<String> = procs.iter().map(|p| p.client_url.clone()).collect();

    // Ready: every member answers Status naming the same leader.
    wait_elected(&new_eps).await;
    // The old cluster is gone from the picture: stop it so nothing can be
    // read from it by mistake.
    for n in &mut old.nodes {
        n.kill9();
    }

    for ep in &new_eps {
        let (rev, kvs) = all_kvs(std::slice::from_ref(ep), &[]);
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

/// sha256, as etcd appends it to a snapshot.
fn sha256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// Keys written in bulk by the cross-implementation tests: 100,000, the
/// size the README promises (`CAIRN_SNAPSHOT_KEYS` changes it).
fn bulk_keys() -> usize {
    std::env::var("CAIRN_SNAPSHOT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

const ROOT: &str = "--user=root:rootpw";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cairn_snapshot_restores_into_etcd() {
    if !common::available(Impl::Etcd) {
        return;
    }
    moves(Impl::Cairn, Impl::Etcd, bulk_keys()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_snapshot_restores_into_cairn() {
    if !common::available(Impl::Etcd) {
        return;
    }
    moves(Impl::Etcd, Impl::Cairn, bulk_keys()).await;
}

/// A one-member cluster whose member is not run by the harness (restored
/// from a snapshot): its URLs, and its process, killed by PID on drop.
pub struct NewMember {
    pub name: String,
    pub client: u16,
    pub peer: u16,
}

impl NewMember {
    pub fn new(name: &str) -> NewMember {
        NewMember {
            name: name.into(),
            client: free_port(),
            peer: free_port(),
        }
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }
}

/// A member process started on a restored data dir; killed by its own PID
/// when dropped (its log tail printed if the test failed).
pub struct Proc {
    pub name: String,
    pub client_url: String,
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

/// Restores `file` for member `m` of the new cluster `initial` with `imp`'s
/// own tool: `cairn snapshot restore` or `etcdctl snapshot restore`.
pub fn restore(
    imp: Impl,
    file: &Path,
    dir: &Path,
    m: &NewMember,
    initial: &str,
    token: &str,
) -> std::process::Output {
    let mut cmd = match imp {
        Impl::Cairn => {
            let mut c = Command::new(cairn_bin());
            c.arg("snapshot");
            c
        }
        Impl::Etcd => {
            let mut c = Command::new(common::etcdctl_bin());
            c.env("ETCDCTL_API", "3").arg("snapshot");
            c
        }
    };
    cmd.arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .args(["--name", &m.name, "--initial-cluster", initial])
        .args(["--initial-cluster-token", token])
        .args(["--initial-advertise-peer-urls", &m.peer_url()])
        .output()
        .expect("run snapshot restore")
}

/// Starts member `m` of `imp` on its restored data dir.
pub fn start(
    imp: Impl,
    dir: &Path,
    m: &NewMember,
    initial: &str,
    token: &str,
    log: PathBuf,
) -> Proc {
    let out = std::fs::File::create(&log).unwrap();
    let (program, args) = member_command(
        imp,
        &m.name,
        dir,
        &m.client_url(),
        &m.peer_url(),
        initial,
        "new",
    );
    let child = Command::new(program)
        .args(args)
        .args(["--initial-cluster-token", token])
        .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn a restored member");
    Proc {
        name: m.name.clone(),
        client_url: m.client_url(),
        log,
        child,
    }
}

/// Waits until every member of `eps` answers Status naming the same leader.
pub async fn wait_elected(eps: &[String]) {
    wait_for(SLOW, "restored cluster to elect a leader", || {
        let eps = eps.to_vec();
        async move {
            let mut leader = None;
            for ep in &eps {
                let c = Client::connect(vec![ep.clone()], test_client_options())
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
}

/// Keys with their revisions and versions, as `get --prefix '' -w json`
/// shows them, and the header's revision.
pub fn all_kvs(eps: &[String], auth: &[&str]) -> (i64, Vec<Value>) {
    let mut args = auth.to_vec();
    args.extend(["get", "--prefix", "", "-w", "json"]);
    let v = json(&etcdctl_ok(eps, &args, None));
    let rev = v["header"]["revision"].as_i64().unwrap();
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    (rev, kvs)
}

async fn client(eps: &[String], user: &str, password: &str) -> Client {
    let opts = ClientOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..test_client_options()
    };
    Client::connect(eps.to_vec(), opts).await.expect("connect")
}

/// What the source holds besides the bulk keys, for the comparisons.
struct Filled {
    compact: i64,
    last: i64,
    lease: i64,
}

/// Writes the data set (see the module header) into `eps`, then turns auth on.
async fn fill(eps: &[String], bulk: usize) -> Filled {
    let c = Client::connect(eps.to_vec(), test_client_options())
        .await
        .expect("connect");
    // Bulk keys, 100 puts per transaction (etcd's --max-txn-ops is 128), 8
    // transactions in flight.
    let batches: Vec<Vec<usize>> = (0..bulk)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(<[usize]>::to_vec)
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for part in batches.chunks(batches.len().div_ceil(8).max(1)) {
        let (c, part) = (c.clone(), part.to_vec());
        tasks.spawn(async move {
            for batch in part {
                let ops = batch.iter().map(|i| {
                    op_put(
                        format!("bulk/{i:06}"),
                        format!("value {i} {}", "v".repeat(i % 64)),
                        PutOptions::default(),
                    )
                });
                c.txn(Txn::new().and_then(ops)).await.expect("bulk txn");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("bulk writer");
    }
    let put = |k: String, v: String, lease: i64| {
        let c = c.clone();
        async move {
            c.put(
                k,
                v,
                PutOptions {
                    lease,
                    ..Default::default()
                },
            )
            .await
            .expect("put")
            .header
            .expect("header")
            .revision
        }
    };
    let mut compact = 0;
    for round in 0..5 {
        for i in 0..20 {
            let rev = put(format!("hist/{i:02}"), format!("round {round}"), 0).await;
            if round == 2 && i == 10 {
                compact = rev;
            }
        }
    }
    c.delete("hist/03", Default::default()).await.expect("del");
    c.delete(
        "hist/1",
        DeleteOptions {
            range: KeyRange::Prefix,
            ..Default::default()
        },
    )
    .await
    .expect("del prefix");
    // Larger than a bbolt page: overflow pages in the snapshot.
    for i in 0..2 {
        put(format!("big/{i}"), "x".repeat(700_000), 0).await;
    }
    let lease = c.lease_grant(3600, 0).await.expect("grant").id;
    c.lease_grant(600, 0).await.expect("grant");
    put("leased/a".into(), "a".into(), lease).await;
    put("leased/b".into(), "b".into(), lease).await;
    c.compact(compact, false).await.expect("compact");
    put("hist/00".into(), "after compaction".into(), 0).await;
    c.delete("hist/01", Default::default()).await.expect("del");
    let last = put("leased/b".into(), "moved off the lease".into(), 0).await;

    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "hist/",
            "--prefix",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(eps, args, None);
    }
    Filled {
        compact,
        last,
        lease,
    }
}

/// Every event after the compaction point, replayed by a watch.
async fn history(eps: &[String], from: i64, to: i64) -> Vec<Event> {
    let c = client(eps, "root", "rootpw").await;
    let mut w = c
        .watch(
            vec![0],
            WatchOptions {
                range: KeyRange::FromKey,
                start_revision: from,
                ..Default::default()
            },
        )
        .await
        .expect("watch");
    let mut events = Vec::new();
    while events
        .last()
        .and_then(|e: &Event| e.kv.as_ref())
        .is_none_or(|kv| kv.mod_revision < to)
    {
        let r = tokio::time::timeout(SLOW, w.next())
            .await
            .expect("history replay stalled")
            .expect("watch");
        events.extend(r.events);
    }
    events
}

fn lease_view(eps: &[String], id: i64) -> (i64, Vec<Value>) {
    let v = json(&etcdctl_ok(
        eps,
        &[
            ROOT,
            "lease",
            "timetolive",
            &format!("{id:x}"),
            "--keys",
            "-w",
            "json",
        ],
        None,
    ));
    (
        v["granted-ttl"].as_i64().unwrap_or(0),
        v["keys"].as_array().cloned().unwrap_or_default(),
    )
}

/// Fills a `from` cluster, saves it with etcdctl, checks the file with
/// `etcdctl snapshot status`, restores it into a new one-member cluster of
/// `to` and compares the two.
async fn moves(from: Impl, to: Impl, bulk: usize) {
    let src = Cluster::start(from, 1).await;
    let eps = src.endpoints();
    let filled = fill(&eps, bulk).await;
    let (rev, kvs) = all_kvs(&eps, &[ROOT]);
    assert_eq!(rev, filled.last);
    assert_eq!(
        kvs.len(),
        bulk + 2 + 2 + 20 - 1 - 10 - 1,
        "keys in the source"
    );

    let file = src.dir.join("snap.db");
    let file_s = file.display().to_string();
    let out = etcdctl_ok(&eps, &[ROOT, "snapshot", "save", &file_s], None);
    assert!(out.contains("Snapshot saved at"), "{out}");
    // etcd's own reader: bbolt's consistency check, then every bucket.
    let status = json(&etcdctl_ok(
        &eps,
        &["snapshot", "status", &file_s, "-w", "json"],
        None,
    ));
    assert_eq!(status["revision"].as_i64(), Some(rev), "{status}");
    assert!(
        status["totalKey"].as_u64().unwrap_or(0) > bulk as u64,
        "{status}"
    );

    let m = NewMember::new("r0");
    let initial = format!("{}={}", m.name, m.peer_url());
    let token = "moved";
    let dir = src.dir.join("restored.data");
    let o = restore(to, &file, &dir, &m, &initial, token);
    assert!(o.status.success(), "restore: {o:?}");
    let proc = start(to, &dir, &m, &initial, token, src.dir.join("restored.log"));
    let dst = vec![proc.client_url.clone()];
    wait_elected(&dst).await;

    assert_eq!(
        all_kvs(&dst, &[ROOT]),
        (rev, kvs),
        "every key, revision by revision"
    );
    assert_eq!(
        history(&dst, filled.compact + 1, filled.last).await,
        history(&eps, filled.compact + 1, filled.last).await,
        "the history after the compaction point"
    );
    let before = format!("--rev={}", filled.compact - 1);
    let err = etcdctl(&dst, &[ROOT, "get", "hist/00", &before], None);
    assert!(
        err.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{err:?}"
    );
    let at = format!("--rev={}", filled.compact);
    assert_eq!(
        etcdctl_ok(
            &dst,
            &[ROOT, "get", "hist/", "--prefix", &at, "-w", "json"],
            None
        )
        .split("\"kvs\"")
        .nth(1),
        etcdctl_ok(
            &eps,
            &[ROOT, "get", "hist/", "--prefix", &at, "-w", "json"],
            None
        )
        .split("\"kvs\"")
        .nth(1),
        "a read at the compaction point"
    );

    let leases = |eps: &[String]| {
        let mut l: Vec<String> = etcdctl_ok(eps, &[ROOT, "lease", "list"], None)
            .lines()
            .skip(1)
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    assert_eq!(leases(&dst), leases(&eps));
    let (granted, keys) = lease_view(&dst, filled.lease);
    assert_eq!((granted, keys.clone()), lease_view(&eps, filled.lease));
    assert_eq!(granted, 3600);
    assert_eq!(keys.len(), 1, "leased/a only: leased/b moved off it");

    for args in [
        &[ROOT, "user", "list"][..],
        &[ROOT, "role", "list"],
        &[ROOT, "role", "get", "reader"],
        &[ROOT, "user", "get", "alice"],
        &[ROOT, "auth", "status"],
    ] {
        assert_eq!(
            etcdctl_ok(&dst, args, None),
            etcdctl_ok(&eps, args, None),
            "{args:?}"
        );
    }
    // The password came along (bcrypt on both sides), and so did the
    // permissions.
    let alice = ["--user=alice:alicepw", "get", "hist/02"];
    assert!(etcdctl_ok(&dst, &alice, None).contains("round 4"));
    let wrong = etcdctl(&dst, &["--user=alice:nope", "get", "hist/02"], None);
    assert!(wrong.stderr.contains("authentication failed"), "{wrong:?}");
    let denied = etcdctl(&dst, &["--user=alice:alicepw", "get", "bulk/000001"], None);
    assert!(denied.stderr.contains("permission denied"), "{denied:?}");

    // And the new cluster takes writes, continuing the revision.
    let next = json(&etcdctl_ok(
        &dst,
        &[ROOT, "put", "after", "restore", "-w", "json"],
        None,
    ));
    assert_eq!(next["header"]["revision"].as_i64(), Some(rev + 1));
    drop(proc);
}
