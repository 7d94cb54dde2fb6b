//! The etcdctl 3.4 command matrix against a three-node Cairn cluster: every
//! command an operator uses (KV, watch, leases, members, endpoints,
//! maintenance, alarms, auth), each with the result Cairn must give.
//!
//! The results are also the README's compatibility table (between the
//! `etcdctl-matrix` markers): the test fails if the table there differs from
//! what it measured. `CAIRN_UPDATE_README=1 cargo nextest run -E
//! 'test(/^etcdctl_matrix::/)'` rewrites it. `check perf` is left out: it passes or fails
//! on timing.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{etcdctl, etcdctl_bin, etcdctl_ok, free_port, Cluster, Impl};

const BEGIN: &str = "<!-- etcdctl-matrix:begin -->";
const END: &str = "<!-- etcdctl-matrix:end -->";

/// One command: how the README shows it, the RPC it exercises, its
/// arguments, stdin, and the start of the error it must fail with (`None`:
/// it must succeed).
struct Row {
    shown: String,
    rpc: &'static str,
    args: Vec<String>,
    stdin: Option<&'static str>,
    fails_with: Option<&'static str>,
}

fn row(shown: &str, rpc: &'static str, args: &[&str]) -> Row {
    Row {
        shown: shown.to_string(),
        rpc,
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        fails_with: None,
    }
}

/// `etcdctl watch` runs until killed: start it, make the change it should
/// see, and wait (bounded) for the event line.
fn watch_sees_put(eps: &[String]) -> Result<(), String> {
    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", eps.join(",")))
        .args(["watch", "/w", "--prefix"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is open once etcdctl has connected; retry the put until its
    // event shows up (a put before the watch exists is simply not seen).
    let mut seen = Err("no event within 20s".to_string());
    for i in 0..20 {
        etcdctl_ok(eps, &["put", &format!("/w/{i}"), "x"], None);
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            seen = if line == "PUT" {
                Ok(())
            } else {
                Err(format!("unexpected line {line:?}"))
            };
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

fn first_word_after<'a>(out: &'a str, marker: &str) -> Option<&'a str> {
    out.split(marker).nth(1)?.split_whitespace().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_command_matrix() {
    if !common::have_tool(&etcdctl_bin()) {
        return;
    }
    let mut c = Cluster::start(Impl::Cairn, 3).await;
    let eps = c.endpoints();
    let one = vec![eps[0].clone()];
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db").display().to_string();

    // IDs the later rows need.
    let lease_out = etcdctl_ok(&eps, &["lease", "grant", "600"], None);
    let lease = first_word_after(&lease_out, "lease").unwrap().to_string();
    let status = c.status(0).await.unwrap();
    let member0 = format!("{:x}", status.header.unwrap().member_id);
    let leader = c.leader().await;
    let leader_id = format!(
        "{:x}",
        c.status(leader).await.unwrap().header.unwrap().member_id
    );
    let learner_peer = format!("http://127.0.0.1:{}", free_port());
    let peer0 = c.nodes[0].peer_url.clone();

    let mut rows = vec![
        row("put k v", "KV.Put", &["put", "k", "v"]),
        row(
            "put k v2 --prev-kv",
            "KV.Put",
            &["put", "k", "v2", "--prev-kv"],
        ),
        row("get k", "KV.Range", &["get", "k"]),
        row(
            "get k --consistency=s",
            "KV.Range",
            &["get", "k", "--consistency=s"],
        ),
        row(
            "get --prefix k -w json",
            "KV.Range",
            &["get", "--prefix", "k", "-w", "json"],
        ),
        row("get k --rev=2", "KV.Range", &["get", "k", "--rev=2"]),
        row("del k", "KV.DeleteRange", &["del", "k"]),
        Row {
            stdin: Some("value(\"k\") = \"\"\n\nput k fresh\n\nput k other\n\n"),
            ..row("txn (compare, success, failure)", "KV.Txn", &["txn"])
        },
        row("compaction 3", "KV.Compact", &["compaction", "3"]),
        row("watch --prefix /w", "Watch.Watch", &["watch"]),
        row(
            "lease grant 60",
            "Lease.LeaseGrant",
            &["lease", "grant", "60"],
        ),
        row(
            "put --lease=<lease> lk v",
            "KV.Put",
            &["put", &format!("--lease={lease}"), "lk", "v"],
        ),
        row(
            "lease timetolive <lease> --keys",
            "Lease.LeaseTimeToLive",
            &["lease", "timetolive", &lease, "--keys"],
        ),
        row("lease list", "Lease.LeaseLeases", &["lease", "list"]),
        row(
            "lease keep-alive --once <lease>",
            "Lease.LeaseKeepAlive",
            &["lease", "keep-alive", "--once", &lease],
        ),
        row(
            "lease revoke <lease>",
            "Lease.LeaseRevoke",
            &["lease", "revoke", &lease],
        ),
        row(
            "lock L echo locked",
            "Lease + Txn + Watch",
            &["lock", "L", "echo", "locked"],
        ),
        row("member list", "Cluster.MemberList", &["member", "list"]),
        row(
            "member add m4 --learner --peer-urls=<url>",
            "Cluster.MemberAdd",
            &[
                "member",
                "add",
                "m4",
                "--learner",
                &format!("--peer-urls={learner_peer}"),
            ],
        ),
        Row {
            fails_with: Some(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            ..row(
                "member promote <learner> (never started)",
                "Cluster.MemberPromote",
                &["member", "promote", "LEARNER"],
            )
        },
        row(
            "member remove <learner>",
            "Cluster.MemberRemove",
            &["member", "remove", "LEARNER"],
        ),
        row(
            "member update <id> --peer-urls=<same>",
            "Cluster.MemberUpdate",
            &[
                "member",
                "update",
                &member0,
                &format!("--peer-urls={peer0}"),
            ],
        ),
        row(
            "endpoint health",
            "KV.Range (health key)",
            &["endpoint", "health"],
        ),
        row(
            "endpoint status",
            "Maintenance.Status",
            &["endpoint", "status"],
        ),
        row(
            "endpoint hashkv",
            "Maintenance.HashKV",
            &["endpoint", "hashkv"],
        ),
        row("alarm list", "Maintenance.Alarm", &["alarm", "list"]),
        row("alarm disarm", "Maintenance.Alarm", &["alarm", "disarm"]),
        row("defrag", "Maintenance.Defragment", &["defrag"]),
        row(
            "snapshot save FILE",
            "Maintenance.Snapshot",
            &["snapshot", "save", &snap],
        ),
        // Reads the saved file with bbolt, as etcd's own snapshots: the
        // file is etcd's format.
        row(
            "snapshot status FILE",
            "none (bbolt reads the file)",
            &["snapshot", "status", &snap],
        ),
        row(
            "move-leader <id>",
            "Maintenance.MoveLeader",
            &["move-leader", &leader_id],
        ),
        row(
            "user add root:…",
            "Auth.UserAdd",
            &["user", "add", "root:rootpw"],
        ),
        row("role add root", "Auth.RoleAdd", &["role", "add", "root"]),
        row(
            "user grant-role root root",
            "Auth.UserGrantRole",
            &["user", "grant-role", "root", "root"],
        ),
        row("user add u1:…", "Auth.UserAdd", &["user", "add", "u1:pw1"]),
        row("role add r1", "Auth.RoleAdd", &["role", "add", "r1"]),
        row(
            "role grant-permission r1 readwrite /a --prefix",
            "Auth.RoleGrantPermission",
            &[
                "role",
                "grant-permission",
                "r1",
                "readwrite",
                "/a",
                "--prefix",
            ],
        ),
        row(
            "user grant-role u1 r1",
            "Auth.UserGrantRole",
            &["user", "grant-role", "u1", "r1"],
        ),
        row("user get u1", "Auth.UserGet", &["user", "get", "u1"]),
        row("user list", "Auth.UserList", &["user", "list"]),
        row("role get r1", "Auth.RoleGet", &["role", "get", "r1"]),
        row("role list", "Auth.RoleList", &["role", "list"]),
        row("auth enable", "Auth.AuthEnable", &["auth", "enable"]),
        Row {
            fails_with: Some("etcdserver: user name is empty"),
            ..row("put /a/1 x (no --user)", "KV.Put", &["put", "/a/1", "x"])
        },
        row(
            "--user u1:… put /a/1 x",
            "Auth.Authenticate + KV.Put",
            &["--user=u1:pw1", "put", "/a/1", "x"],
        ),
        Row {
            fails_with: Some("etcdserver: permission denied"),
            ..row(
                "--user u1:… put /b x",
                "KV.Put",
                &["--user=u1:pw1", "put", "/b", "x"],
            )
        },
        Row {
            stdin: Some("pw2\n"),
            ..row(
                "--user root:… user passwd u1",
                "Auth.UserChangePassword",
                &[
                    "--user=root:rootpw",
                    "user",
                    "passwd",
                    "u1",
                    "--interactive=false",
                ],
            )
        },
        row(
            "--user root:… role revoke-permission r1 /a --prefix",
            "Auth.RoleRevokePermission",
            &[
                "--user=root:rootpw",
                "role",
                "revoke-permission",
                "r1",
                "/a",
                "--prefix",
            ],
        ),
        row(
            "--user root:… user revoke-role u1 r1",
            "Auth.UserRevokeRole",
            &["--user=root:rootpw", "user", "revoke-role", "u1", "r1"],
        ),
        row(
            "--user root:… user delete u1",
            "Auth.UserDelete",
            &["--user=root:rootpw", "user", "delete", "u1"],
        ),
        row(
            "--user root:… role delete r1",
            "Auth.RoleDelete",
            &["--user=root:rootpw", "role", "delete", "r1"],
        ),
        row(
            "--user root:… auth disable",
            "Auth.AuthDisable",
            &["--user=root:rootpw", "auth", "disable"],
        ),
    ];

    // What each successful command must print (a part of etcdctl 3.4's
    // output that depends on the answer), so a command that "succeeds" with
    // the wrong answer fails here.
    let prints: std::collections::HashMap<&str, String> = [
        ("put k v", "OK".to_string()),
        ("put k v2 --prev-kv", "OK\nk\nv\n".into()),
        ("get k", "k\nv2\n".into()),
        ("get k --consistency=s", "k\nv2\n".into()),
        ("get k --rev=2", "k\nv\n".into()),
        ("get --prefix k -w json", "\"key\":\"aw==\"".into()),
        ("del k", "1".into()),
        ("txn (compare, success, failure)", "FAILURE\n\nOK".into()),
        ("compaction 3", "compacted revision 3".into()),
        ("lease grant 60", "granted with TTL(60s)".into()),
        ("put --lease=<lease> lk v", "OK".into()),
        (
            "lease timetolive <lease> --keys",
            "attached keys([lk])".into(),
        ),
        ("lease list", lease.clone()),
        (
            "lease keep-alive --once <lease>",
            format!("lease {lease} keepalived with TTL("),
        ),
        ("lease revoke <lease>", format!("lease {lease} revoked")),
        ("lock L echo locked", "locked".into()),
        ("member list", "started".into()),
        (
            "member add m4 --learner --peer-urls=<url>",
            "added to cluster".into(),
        ),
        ("member remove <learner>", "removed from cluster".into()),
        (
            "member update <id> --peer-urls=<same>",
            format!("{member0} updated in cluster"),
        ),
        ("endpoint health", "is healthy".into()),
        ("endpoint status", leader_id.clone()),
        ("endpoint hashkv", format!("{}, ", eps[0])),
        ("defrag", "Finished defragmenting etcd member".into()),
        ("snapshot save FILE", "Snapshot saved at".into()),
        ("snapshot status FILE", " kB".into()),
        ("user add root:…", "User root created".into()),
        ("role add root", "Role root created".into()),
        (
            "user grant-role root root",
            "Role root is granted to user root".into(),
        ),
        // To the leader itself: nothing to move, as etcd answers it.
        (
            "move-leader <id>",
            format!("Leadership transferred from {leader_id} to {leader_id}"),
        ),
        ("user add u1:…", "User u1 created".into()),
        ("role add r1", "Role r1 created".into()),
        (
            "role grant-permission r1 readwrite /a --prefix",
            "Role r1 updated".into(),
        ),
        (
            "user grant-role u1 r1",
            "Role r1 is granted to user u1".into(),
        ),
        ("user get u1", "User: u1\nRoles: r1".into()),
        ("user list", "root\nu1".into()),
        ("role get r1", "[/a, /b) (prefix /a)".into()),
        ("role list", "r1\nroot".into()),
        ("auth enable", "Authentication Enabled".into()),
        ("--user u1:… put /a/1 x", "OK".into()),
        ("--user root:… user passwd u1", "Password updated".into()),
        (
            "--user root:… role revoke-permission r1 /a --prefix",
            "revoked from role r1".into(),
        ),
        (
            "--user root:… user revoke-role u1 r1",
            "Role r1 is revoked from user u1".into(),
        ),
        ("--user root:… user delete u1", "User u1 deleted".into()),
        ("--user root:… role delete r1", "Role r1 deleted".into()),
        (
            "--user root:… auth disable",
            "Authentication Disabled".into(),
        ),
    ]
    .into_iter()
    .collect();
    for r in &rows {
        let quiet = ["watch --prefix /w", "alarm list", "alarm disarm"];
        assert!(
            r.fails_with.is_some()
                || prints.contains_key(r.shown.as_str())
                || quiet.contains(&r.shown.as_str()),
            "no expected output for {}",
            r.shown
        );
    }

    let mut table =
        String::from("| etcdctl 3.4 command | RPC | result on Cairn |\n|---|---|---|\n");
    let mut failures = Vec::new();
    let mut learner = String::new();
    for r in &mut rows {
        for a in &mut r.args {
            if a == "LEARNER" {
                *a = learner.clone();
            }
        }
        let targets = if r.args.first().map(String::as_str) == Some("snapshot") {
            &one
        } else {
            &eps
        };
        let result: Result<String, String> = if r.args == ["watch"] {
            watch_sees_put(&eps).map(|()| String::new())
        } else {
            let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
            let o = etcdctl(targets, &args, r.stdin);
            if o.success {
                // Some commands (endpoint health) print their answer on stderr.
                Ok(format!("{}{}", o.stdout, o.stderr))
            } else {
                Err(o.stderr.lines().last().unwrap_or_default().to_string())
            }
        };
        if r.rpc == "Cluster.MemberAdd" {
            if let Ok(out) = &result {
                learner = first_word_after(out, "Member")
                    .unwrap_or_default()
                    .to_string();
            }
        }
        let shown = match (&result, r.fails_with) {
            (Ok(out), None) => match prints.get(r.shown.as_str()) {
                Some(want) if !out.contains(want.as_str()) => {
                    failures.push(format!(
                        "{}: printed {out:?}, expected it to contain {want:?}",
                        r.shown
                    ));
                    "WRONG OUTPUT".into()
                }
                _ => "ok".to_string(),
            },
            (Err(e), Some(want)) if e.contains(want) => format!("error, as expected: `{want}`"),
            (Ok(out), Some(want)) => {
                failures.push(format!(
                    "{}: succeeded ({out:?}), expected {want:?}",
                    r.shown
                ));
                "UNEXPECTED SUCCESS".into()
            }
            (Err(e), _) => {
                failures.push(format!("{}: {e}", r.shown));
                format!("FAILED: {e}")
            }
        };
        table.push_str(&format!("| `{}` | {} | {} |\n", r.shown, r.rpc, shown));
    }
    assert!(
        failures.is_empty(),
        "etcdctl matrix failures:\n{}",
        failures.join("\n")
    );

    let readme_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (head, rest) = readme
        .split_once(BEGIN)
        .expect("README has the matrix markers");
    let (old, tail) = rest.split_once(END).expect("README has the end marker");
    let new = format!("\n{table}");
    if old != new {
        if std::env::var("CAIRN_UPDATE_README").is_ok_and(|v| v == "1") {
            std::fs::write(&readme_path, format!("{head}{BEGIN}{new}{END}{tail}")).unwrap();
        } else {
            panic!(
                "the README's etcdctl table differs from what was measured; rerun with \
                 CAIRN_UPDATE_README=1 to rewrite it. Measured:\n{table}"
            );
        }
    }
}
