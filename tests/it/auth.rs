//! etcd v3 auth through real clients: etcdctl 3.4's `user`, `role` and `auth`
//! commands with `--user`, raw HTTP as lua-resty-etcd sends it, and Cairn's
//! own client with credentials. The same assertions run against etcd 3.4.

use crate::common;

use std::time::Duration;

use cairn_client::{
    Client, ClientOptions, Code, Credentials, GetOptions, PutOptions, WatchOptions,
};
use common::{etcdctl, etcdctl_ok, http, Cluster, ClusterOptions, Impl, SLOW};
use serde_json::json;

cluster_tests!(
    etcdctl_users_roles_and_permissions,
    gateway_token_on_every_member,
    client_credentials_and_watch_permissions,
    a_put_on_a_lease_needs_write_access_to_its_keys
);

/// etcd's `checkLeasePuts`: whoever holds a lease can revoke it, deleting
/// every key on it, so attaching a key to a lease needs write access to the
/// keys already there.
async fn a_put_on_a_lease_needs_write_access_to_its_keys(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let eps = c.endpoints();
    let eps = &eps[..];
    setup_users(eps);
    let out = etcdctl_ok(eps, &[ROOT, "lease", "grant", "600"], None);
    let lease = out.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(
        eps,
        &[ROOT, "put", "/other/k", "v", &format!("--lease={lease}")],
        None,
    );
    // alice may write /app/x, but not /other/k, which is on the lease.
    let err = fails(
        eps,
        &[ALICE, "put", "/app/x", "v", &format!("--lease={lease}")],
    );
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    assert!(fails(eps, &[ALICE, "lease", "revoke", &lease]).contains("permission denied"));
    // A lease with only her keys is fine.
    let out = etcdctl_ok(eps, &[ALICE, "lease", "grant", "600"], None);
    let own = out.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(
        eps,
        &[ALICE, "put", "/app/y", "v", &format!("--lease={own}")],
        None,
    );
    etcdctl_ok(eps, &[ALICE, "lease", "revoke", &own], None);
}

/// CVE-2023-32082, as later etcd releases fixed it (Debian's etcd 3.4.23
/// predates the fix, so this runs on Cairn only): a lease's time-to-live
/// names its keys, so it needs a user with read access to each; listing
/// leases needs a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_calls_that_reveal_keys_need_read_access() {
    let c = Cluster::start(Impl::Cairn, 3).await;
    let eps = c.endpoints();
    let eps = &eps[..];
    setup_users(eps);
    let out = etcdctl_ok(eps, &[ROOT, "lease", "grant", "600"], None);
    let lease = out.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(
        eps,
        &[ROOT, "put", "/secret/k", "v", &format!("--lease={lease}")],
        None,
    );
    let err = fails(eps, &[ALICE, "lease", "timetolive", &lease, "--keys"]);
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    let err = fails(eps, &["lease", "timetolive", &lease, "--keys"]);
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    let err = fails(eps, &["lease", "list"]);
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    let got = etcdctl_ok(eps, &[ROOT, "lease", "timetolive", &lease, "--keys"], None);
    assert!(got.contains("/secret/k"), "{got}");
    assert!(etcdctl_ok(eps, &[ALICE, "lease", "list"], None).contains(&lease));
}

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// Creates root (with the root role) and alice (readwrite on `/app/`, read
/// on `/shared`), then enables auth.
fn setup_users(eps: &[String]) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/app/",
            "--prefix",
        ],
        &["role", "grant-permission", "app", "read", "/shared"],
        &["user", "grant-role", "alice", "app"],
    ] {
        etcdctl_ok(eps, args, None);
    }
    let out = etcdctl_ok(eps, &["auth", "enable"], None);
    assert_eq!(out.trim(), "Authentication Enabled");
}

/// Runs etcdctl expecting failure; returns stderr.
fn fails(eps: &[String], args: &[&str]) -> String {
    let o = etcdctl(eps, args, None);
    assert!(!o.success, "etcdctl {args:?} should fail: {}", o.stdout);
    o.stderr
}

async fn etcdctl_users_roles_and_permissions(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let eps = c.endpoints();
    let eps = &eps[..];
    // Before auth is on, etcdctl's login attempt is refused ("not enabled"),
    // which it reports and then goes on without a token.
    let o = etcdctl(eps, &[ROOT, "get", "x"], None);
    assert!(
        o.success
            && o.stderr
                .contains("etcdserver: authentication is not enabled"),
        "{o:?}"
    );
    setup_users(eps);

    // No user, a wrong password, a forbidden key.
    assert!(fails(eps, &["put", "/app/x", "1"]).contains("etcdserver: user name is empty"));
    let wrong = fails(eps, &["--user=alice:nope", "get", "/app/x"]);
    assert!(wrong.contains("etcdserver: authentication failed, invalid user ID or password"));
    assert!(fails(eps, &[ALICE, "put", "/other", "1"]).contains("etcdserver: permission denied"));
    assert!(fails(eps, &[ALICE, "put", "/shared", "1"]).contains("permission denied"));
    assert!(fails(eps, &[ALICE, "get", "/", "--prefix"]).contains("permission denied"));
    assert!(fails(eps, &[ALICE, "user", "list"]).contains("permission denied"));
    assert!(
        fails(&eps[..1], &[ALICE, "snapshot", "save", "/dev/null"]).contains("permission denied")
    );

    // What alice may do.
    etcdctl_ok(eps, &[ALICE, "put", "/app/x", "1"], None);
    etcdctl_ok(eps, &[ROOT, "put", "/shared", "s"], None);
    let got = etcdctl_ok(eps, &[ALICE, "get", "/app/", "--prefix"], None);
    assert_eq!(got, "/app/x\n1\n");
    assert_eq!(
        etcdctl_ok(eps, &[ALICE, "get", "/shared"], None),
        "/shared\ns\n"
    );
    let txn = "value(\"/app/x\") = \"1\"\n\nput /app/y 2\n\nput /app/z 3\n\n";
    let out = etcdctl_ok(eps, &[ALICE, "txn"], Some(txn));
    assert!(out.starts_with("SUCCESS"), "{out}");
    // A txn touching one forbidden key is refused whole.
    let bad = "\nput /app/w 1\nput /other 1\n\n\n";
    let o = etcdctl(eps, &[ALICE, "txn"], Some(bad));
    assert!(
        !o.success && o.stderr.contains("permission denied"),
        "{o:?}"
    );
    assert_eq!(etcdctl_ok(eps, &[ROOT, "get", "/app/w"], None), "");
    etcdctl_ok(eps, &[ALICE, "member", "list"], None);
    etcdctl_ok(eps, &[ALICE, "endpoint", "status"], None);

    // Reading users and roles.
    assert_eq!(
        etcdctl_ok(eps, &[ROOT, "user", "list"], None),
        "alice\nroot\n"
    );
    assert_eq!(
        etcdctl_ok(eps, &[ROOT, "role", "list"], None),
        "app\nroot\n"
    );
    let u = etcdctl_ok(eps, &[ROOT, "user", "get", "alice"], None);
    assert_eq!(u, "User: alice\nRoles: app\n");
    let r = etcdctl_ok(eps, &[ROOT, "role", "get", "app"], None);
    assert!(
        r.contains("KV Read:\n\t[/app/, /app0) (prefix /app/)\n\t/shared\n")
            && r.contains("KV Write:\n\t[/app/, /app0) (prefix /app/)\n"),
        "{r}"
    );
    // Errors with etcd's words.
    assert!(fails(eps, &[ROOT, "user", "add", "alice:x"]).contains("user name already exists"));
    assert!(fails(eps, &[ROOT, "user", "get", "bob"]).contains("user name not found"));
    assert!(fails(eps, &[ROOT, "role", "add", "app"]).contains("role name already exists"));
    assert!(fails(eps, &[ROOT, "role", "get", "nope"]).contains("role name not found"));
    let e = fails(eps, &[ROOT, "user", "grant-role", "alice", "nope"]);
    assert!(e.contains("role name not found"), "{e}");
    let e = fails(eps, &[ROOT, "user", "revoke-role", "alice", "root"]);
    assert!(e.contains("role is not granted to the user"), "{e}");
    let e = fails(eps, &[ROOT, "role", "revoke-permission", "app", "/nope"]);
    assert!(e.contains("permission is not granted to the role"), "{e}");
    let e = fails(eps, &[ROOT, "user", "delete", "root"]);
    assert!(e.contains("invalid auth management"), "{e}");

    // A new password replaces the old one at once.
    etcdctl_ok(
        eps,
        &[ROOT, "user", "passwd", "alice", "--interactive=false"],
        Some("newpw\n"),
    );
    assert!(fails(eps, &[ALICE, "get", "/app/x"]).contains("authentication failed"));
    etcdctl_ok(eps, &["--user=alice:newpw", "get", "/app/x"], None);

    // Revoking takes effect for the next request.
    etcdctl_ok(
        eps,
        &[
            ROOT,
            "role",
            "revoke-permission",
            "app",
            "/app/",
            "--prefix",
        ],
        None,
    );
    let e = fails(eps, &["--user=alice:newpw", "put", "/app/x", "2"]);
    assert!(e.contains("permission denied"), "{e}");
    etcdctl_ok(eps, &[ROOT, "user", "revoke-role", "alice", "app"], None);
    let e = fails(eps, &["--user=alice:newpw", "get", "/shared"]);
    assert!(e.contains("permission denied"), "{e}");
    etcdctl_ok(eps, &[ROOT, "role", "delete", "app"], None);
    etcdctl_ok(eps, &[ROOT, "user", "delete", "alice"], None);
    assert_eq!(etcdctl_ok(eps, &[ROOT, "user", "list"], None), "root\n");

    // Off again: anonymous access works.
    let out = etcdctl_ok(eps, &[ROOT, "auth", "disable"], None);
    assert_eq!(out.trim(), "Authentication Disabled");
    etcdctl_ok(eps, &["put", "/other", "free"], None);
}

/// lua-resty-etcd's startup with auth: authenticate on one member, then use
/// the raw token in `Authorization` on every member.
async fn gateway_token_on_every_member(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let eps = c.endpoints();
    for (path, body, want) in [
        (
            "user/add",
            json!({"name": "", "password": "x"}),
            (400, "etcdserver: user name is empty"),
        ),
        (
            "role/add",
            json!({"name": ""}),
            (400, "etcdserver: role name is empty"),
        ),
        (
            "user/get",
            json!({"name": "zz"}),
            (412, "etcdserver: user name not found"),
        ),
        (
            "role/grant",
            json!({"name": "zz"}),
            (412, "etcdserver: role name not found"),
        ),
        (
            "authenticate",
            json!({"name": "a", "password": "x"}),
            (412, "etcdserver: authentication is not enabled"),
        ),
        (
            "enable",
            json!({}),
            (412, "etcdserver: root user does not exist"),
        ),
    ] {
        let (status, v) = http(
            &eps[0],
            "POST",
            &format!("/v3/auth/{path}"),
            &[],
            Some(&body),
        )
        .await;
        assert_eq!(
            (status, v["error"].as_str().unwrap_or_default()),
            want,
            "{path}: {v}"
        );
    }
    setup_users(&eps);
    let login = json!({"name": "alice", "password": "alicepw"});
    let (status, v) = http(&eps[0], "POST", "/v3/auth/authenticate", &[], Some(&login)).await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    let put = json!({"key": "L2FwcC9h", "value": "MQ=="}); // /app/a = 1
    for ep in &eps {
        let (status, v) = post_as(ep, "/v3/kv/put", &token, &put).await;
        assert_eq!(status, 200, "{ep}: {v}");
    }
    // Errors in etcd's gateway shape.
    let (status, v) = http(&eps[1], "POST", "/v3/kv/put", &[], Some(&put)).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("etcdserver: user name is empty"))
    );
    let other = json!({"key": "L290aGVy", "value": "MQ=="}); // /other
    let (status, v) = post_as(&eps[2], "/v3/kv/put", &token, &other).await;
    assert_eq!((status, v["code"].as_i64()), (403, Some(7)), "{v}");
    let (status, v) = post_as(&eps[0], "/v3/kv/put", "garbage", &put).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("etcdserver: invalid auth token"))
    );
    let bad = json!({"name": "alice", "password": "x"});
    let (status, v) = http(&eps[0], "POST", "/v3/auth/authenticate", &[], Some(&bad)).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        v["error"],
        "etcdserver: authentication failed, invalid user ID or password"
    );

    // APISIX's startup with auth: version check, authenticate, init dirs.
    let (status, v) = http(&eps[1], "GET", "/version", &[], None).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["etcdserver"]
            .as_str()
            .is_some_and(|s| s.starts_with("3.4")),
        "{v}"
    );
    let root = json!({"name": "root", "password": "rootpw"});
    let (_, v) = http(&eps[1], "POST", "/v3/auth/authenticate", &[], Some(&root)).await;
    let root_token = v["token"].as_str().expect("root token").to_string();
    for dir in ["/apisix/routes/", "/apisix/upstreams/", "/apisix/services/"] {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let init = json!({"key": b64(dir), "value": b64("init_dir")});
        let (status, v) = post_as(&eps[1], "/v3/kv/put", &root_token, &init).await;
        assert_eq!(status, 200, "{dir}: {v}");
    }

    // A password change invalidates the token everywhere.
    let pw = json!({"name": "alice", "password": "changed"});
    let (status, v) = post_as(&eps[0], "/v3/auth/user/changepw", &root_token, &pw).await;
    assert_eq!(status, 200, "{v}");
    for ep in &eps {
        common::wait_until(SLOW, "old token refused", || async {
            let (status, _) = post_as(ep, "/v3/kv/put", &token, &put).await;
            status == 401
        })
        .await;
    }
}

/// A gateway POST carrying `token` in `Authorization`, as lua-resty-etcd sends it.
async fn post_as(
    ep: &str,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    http(ep, "POST", path, &[("Authorization", token)], Some(body)).await
}

/// The response that cancels a watch the server refuses (the created one,
/// or the one right after it).
async fn refused_watch(
    c: &Client,
    key: &str,
    opts: WatchOptions,
) -> cairn_client::pb::WatchResponse {
    let mut w = c.watch(key, opts).await.unwrap();
    let created = w.created().clone();
    let r = if created.canceled {
        created
    } else {
        w.next().await.unwrap()
    };
    assert!(r.canceled, "{r:?}");
    r
}

fn creds(user: &str, password: &str) -> ClientOptions {
    ClientOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..common::test_client_options()
    }
}

/// Cairn's client logs in by itself, re-authenticates when its token expires,
/// and a watch on a forbidden range is cancelled with etcd's reason.
async fn client_credentials_and_watch_permissions(imp: Impl) {
    let opts = ClusterOptions {
        extra_args: vec!["--auth-token-ttl=2".into()],
        ..Default::default()
    };
    // etcd 3.4's simple tokens live while used; its TTL flag only changes idle expiry.
    let c = Cluster::start_with(imp, 3, opts).await;
    let eps = c.endpoints();
    setup_users(&eps);
    let alice = Client::connect(eps.clone(), creds("alice", "alicepw"))
        .await
        .unwrap();
    alice
        .put("/app/k", "v", PutOptions::default())
        .await
        .unwrap();
    let e = alice
        .put("/nope", "v", PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );

    // Past the token's lifetime the client logs in again on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        let r = alice.get("/app/k", GetOptions::default()).await.unwrap();
        assert_eq!(r.kvs[0].value, b"v");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Tokens do expire: one left idle past the TTL (the wait is the
    // behaviour under test, etcd's simple tokens expiring only when idle) is
    // refused, and the client, idle as long, logs in again by itself.
    let login = json!({"name": "alice", "password": "alicepw"});
    let (status, v) = http(&eps[0], "POST", "/v3/auth/authenticate", &[], Some(&login)).await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let range = json!({"key": "L2FwcC9r"}); // /app/k
    let (status, v) = post_as(&eps[0], "/v3/kv/range", &token, &range).await;
    assert_eq!(
        (status, v["error"].as_str().unwrap_or_default()),
        (401, "etcdserver: invalid auth token"),
        "{v}"
    );
    let r = alice.get("/app/k", GetOptions::default()).await.unwrap();
    assert_eq!(r.kvs[0].value, b"v");

    let wrong = Client::connect(eps.clone(), creds("alice", "bad"))
        .await
        .unwrap();
    let e = wrong
        .get("/app/k", GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );

    let cancelled = refused_watch(&alice, "/other", WatchOptions::default()).await;
    assert!(
        cancelled
            .cancel_reason
            .contains("etcdserver: permission denied"),
        "{cancelled:?}"
    );
    // No token at all: refused, with etcd 3.4's words for it.
    let anonymous = Client::connect(eps.clone(), common::test_client_options())
        .await
        .unwrap();
    let refused = refused_watch(&anonymous, "/app/", WatchOptions::prefix()).await;
    assert_eq!(
        refused.cancel_reason,
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
    );
    // etcd counts a txn's operations before it looks at the token: 20,000
    // of them (1.4 MB) from no one get the count's error, and change nothing.
    let txn = common::many_puts("/app/h", 20_000, &[b'v'; 56]);
    let e = anonymous.txn(txn).await.unwrap_err();
    common::assert_too_many_ops(&e);
    let r = alice.get("/app/h", GetOptions::prefix()).await.unwrap();
    assert_eq!(r.count, 0);
    let mut ok = alice.watch("/app/", WatchOptions::prefix()).await.unwrap();
    assert!(!ok.created().canceled);
    alice
        .put("/app/k", "v2", PutOptions::default())
        .await
        .unwrap();
    let ev = ok.next().await.unwrap();
    assert_eq!(ev.events[0].kv.as_ref().unwrap().value, b"v2");
}
