//! The HTTP/JSON gateway, driven with the exact request shapes APISIX's
//! lua-resty-etcd sends (raw HTTP/1.1, no client library), against etcd 3.4
//! (the reference) and Cairn.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{Cluster, Impl};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

cluster_tests!(
    apisix_startup_and_admin_writes,
    apisix_sync_watch_resume_and_compaction,
    errors_and_methods,
    metrics_use_etcd_names
);

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> String {
    String::from_utf8(B64.decode(v.as_str().unwrap_or_default()).unwrap()).unwrap()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// One HTTP/1.1 request; returns status and body (chunked bodies joined).
async fn http(base: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    common::http(base, method, path, &[], body).await
}

async fn post(base: &str, path: &str, body: Value) -> Value {
    let (status, v) = http(base, "POST", path, Some(&body)).await;
    assert_eq!(status, 200, "{path} {body} -> {v}");
    v
}

fn rev_of(v: &Value) -> i64 {
    v["header"]["revision"].as_str().unwrap().parse().unwrap()
}

/// A streamed watch: one `{"result":…}` object per line of a chunked body.
struct Watch {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

impl Watch {
    async fn open(base: &str, create: Value) -> Watch {
        let addr = host_port(base);
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let payload = create.to_string();
        let req = format!(
            "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(s).lines();
        // Skip the response head.
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.is_empty() {
                break;
            }
        }
        Watch { lines }
    }

    /// The next `result` object (chunk-size lines are skipped).
    async fn next(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(common::SLOW, self.lines.next_line())
                .await
                .expect("watch response in time")
                .unwrap()
                .expect("watch stream open");
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                if v.get("result").is_some() || v.get("error").is_some() {
                    return v;
                }
            }
        }
    }

    /// Events until `n` have arrived, with the header revision of each response.
    async fn events(&mut self, n: usize) -> Vec<(Value, i64)> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.next().await;
            let res = &r["result"];
            let hrev = rev_of(res);
            for e in res["events"].as_array().cloned().unwrap_or_default() {
                let erev: i64 = e["kv"]["mod_revision"].as_str().unwrap().parse().unwrap();
                assert!(erev <= hrev, "header revision {hrev} behind event {erev}");
                out.push((e, hrev));
            }
        }
        out
    }
}

/// APISIX start-up (version check, init dirs) and the admin API's writes.
async fn apisix_startup_and_admin_writes(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let base = &c.nodes[1].client_url;
    let (status, v) = http(base, "GET", "/version", None).await;
    assert_eq!(status, 200);
    assert!(v["etcdcluster"].as_str().unwrap().starts_with("3.4"), "{v}");

    // init_dir placeholders, as the APISIX CLI writes them.
    for dir in ["routes", "upstreams", "services"] {
        let v = post(
            base,
            "/v3/kv/put",
            json!({"key": b64(&format!("/apisix/{dir}/")), "value": b64("init_dir")}),
        )
        .await;
        assert!(rev_of(&v) > 1);
    }

    // Admin create-if-absent: txn on CREATE == 0, camelCase op, enums by name,
    // a zero sent explicitly.
    let route = r#"{"uri":"/hello","upstream":{"nodes":{"127.0.0.1:80":1}}}"#;
    let create = json!({
        "compare": [{"key": b64("/apisix/routes/1"), "target": "CREATE", "result": "EQUAL", "createRevision": 0}],
        "success": [{"requestPut": {"key": b64("/apisix/routes/1"), "value": b64(route)}}],
    });
    let v = post(base, "/v3/kv/txn", create.clone()).await;
    assert_eq!(v["succeeded"], json!(true), "{v}");
    let v = post(base, "/v3/kv/txn", create).await;
    assert!(
        v.get("succeeded").is_none(),
        "a second create fails (false is omitted): {v}"
    );

    // Update on MOD == modifiedIndex, with numeric enums and a numeric int64.
    let got = post(
        base,
        "/v3/kv/range",
        json!({"key": b64("/apisix/routes/1")}),
    )
    .await;
    let modified: i64 = got["kvs"][0]["mod_revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let update = |m: i64| {
        json!({
            "compare": [{"key": b64("/apisix/routes/1"), "target": 2, "result": 0, "mod_revision": m}],
            "success": [{"request_put": {"key": b64("/apisix/routes/1"), "value": b64(route), "prev_kv": true}}],
        })
    };
    let v = post(base, "/v3/kv/txn", update(modified)).await;
    assert_eq!(v["succeeded"], json!(true), "{v}");
    assert_eq!(
        unb64(&v["responses"][0]["response_put"]["prev_kv"]["value"]),
        route
    );
    let v = post(base, "/v3/kv/txn", update(modified)).await;
    assert!(
        v.get("succeeded").is_none(),
        "stale modifiedIndex must fail: {v}"
    );

    // Put with prev_kv.
    let v = post(
        base,
        "/v3/kv/put",
        json!({"key": b64("/apisix/upstreams/1"), "value": b64("{}"), "prev_kv": true}),
    )
    .await;
    assert!(v.get("prev_kv").is_none());
    let v = post(
        base,
        "/v3/kv/put",
        json!({"key": b64("/apisix/upstreams/1"), "value": b64("{\"a\":1}"), "prev_kv": true}),
    )
    .await;
    assert_eq!(unb64(&v["prev_kv"]["value"]), "{}");

    // ?ttl=: lease grant, then a put with the lease (ID as a string).
    let lease = post(base, "/v3/lease/grant", json!({"TTL": 60})).await;
    let id = lease["ID"].as_str().unwrap().to_string();
    assert_eq!(lease["TTL"], json!("60"));
    post(
        base,
        "/v3/kv/put",
        json!({"key": b64("/apisix/routes/ttl"), "value": b64("{}"), "lease": id}),
    )
    .await;
    let ttl = post(
        base,
        "/v3/lease/timetolive",
        json!({"ID": id, "keys": true}),
    )
    .await;
    assert_eq!(unb64(&ttl["keys"][0]), "/apisix/routes/ttl");

    // POST ids: a put to gen_id, the header revision zero-padded to 20 digits.
    let v = post(
        base,
        "/v3/kv/put",
        json!({"key": b64("/apisix/gen_id"), "value": b64("0")}),
    )
    .await;
    assert_eq!(format!("{:020}", rev_of(&v)).len(), 20);

    // Readdir of the prefix, on another member, sorted by key.
    let v = post(
        &c.nodes[2].client_url,
        "/v3/kv/range",
        json!({"key": b64("/apisix"), "range_end": b64("/apisiy"), "sort_order": "ASCEND", "sort_target": "KEY"}),
    )
    .await;
    let keys: Vec<String> = v["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| unb64(&kv["key"]))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(
        keys.contains(&"/apisix/routes/1".to_string())
            && keys.contains(&"/apisix/routes/".to_string())
    );
}

/// APISIX's sync loop: range the prefix, watch from header.revision + 1, cut
/// the watch and reopen it from the last revision seen, and reload after a
/// compaction cancel.
async fn apisix_sync_watch_resume_and_compaction(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let writer = c.nodes[0].client_url.clone();
    let reader = c.nodes[2].client_url.clone();
    for i in 0..3 {
        post(
            &writer,
            "/v3/kv/put",
            json!({"key": b64(&format!("/apisix/routes/{i}")), "value": b64("{}")}),
        )
        .await;
    }
    let all = post(
        &reader,
        "/v3/kv/range",
        json!({"key": b64("/apisix"), "range_end": b64("/apisiy")}),
    )
    .await;
    let start = rev_of(&all) + 1;
    let mut w = Watch::open(
        &reader,
        json!({"create_request": {"key": b64("/apisix"), "range_end": b64("/apisiy"), "start_revision": start, "progress_notify": true}}),
    )
    .await;
    let created = w.next().await;
    assert_eq!(created["result"]["created"], json!(true), "{created}");
    assert!(
        rev_of(&created["result"]) < start,
        "created header must not claim unsent revisions"
    );

    // Admin writes: a put, a txn of two puts, a delete.
    post(
        &writer,
        "/v3/kv/put",
        json!({"key": b64("/apisix/routes/9"), "value": b64("v")}),
    )
    .await;
    post(
        &writer,
        "/v3/kv/txn",
        json!({"success": [
            {"requestPut": {"key": b64("/apisix/upstreams/a"), "value": b64("1")}},
            {"requestPut": {"key": b64("/apisix/upstreams/b"), "value": b64("2")}}]}),
    )
    .await;
    post(
        &writer,
        "/v3/kv/deleterange",
        json!({"key": b64("/apisix/routes/0")}),
    )
    .await;
    let evs = w.events(4).await;
    let seen: Vec<(String, String)> = evs
        .iter()
        .map(|(e, _)| {
            (
                e["type"].as_str().unwrap_or("PUT").to_string(),
                unb64(&e["kv"]["key"]),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("PUT".into(), "/apisix/routes/9".into()),
            ("PUT".into(), "/apisix/upstreams/a".into()),
            ("PUT".into(), "/apisix/upstreams/b".into()),
            ("DELETE".into(), "/apisix/routes/0".into()),
        ]
    );
    let last = evs.iter().map(|(_, h)| *h).max().unwrap();
    drop(w); // APISIX's 50 s timeout: the connection closes.

    // Reopen from last + 1 on another member: only newer events arrive.
    post(
        &writer,
        "/v3/kv/put",
        json!({"key": b64("/apisix/routes/10"), "value": b64("v")}),
    )
    .await;
    let mut w = Watch::open(
        &c.nodes[1].client_url,
        json!({"create_request": {"key": b64("/apisix"), "range_end": b64("/apisiy"), "start_revision": (last + 1).to_string()}}),
    )
    .await;
    let _created = w.next().await;
    let evs = w.events(1).await;
    assert_eq!(unb64(&evs[0].0["kv"]["key"]), "/apisix/routes/10");
    drop(w);

    // Compaction past the watcher's start: created, then canceled with the
    // compact revision, so APISIX re-reads everything.
    let now = rev_of(
        &post(
            &writer,
            "/v3/kv/range",
            json!({"key": b64("/apisix/routes/9")}),
        )
        .await,
    );
    post(
        &writer,
        "/v3/kv/compaction",
        json!({"revision": now, "physical": true}),
    )
    .await;
    // Each member applies the compaction itself: wait until the reader has.
    common::wait_until(common::SLOW, "the reader to apply the compaction", || {
        let reader = reader.clone();
        async move {
            let body = json!({"key": b64("/apisix"), "revision": start, "serializable": true});
            let (status, _) = http(&reader, "POST", "/v3/kv/range", Some(&body)).await;
            status == 400
        }
    })
    .await;
    let mut w = Watch::open(
        &reader,
        json!({"create_request": {"key": b64("/apisix"), "range_end": b64("/apisiy"), "start_revision": start}}),
    )
    .await;
    let created = w.next().await;
    assert_eq!(created["result"]["created"], json!(true), "{created}");
    let cancel = w.next().await;
    assert_eq!(cancel["result"]["canceled"], json!(true), "{cancel}");
    assert_eq!(
        cancel["result"]["compact_revision"],
        json!(now.to_string()),
        "{cancel}"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Error bodies and statuses as etcd's gateway.
async fn errors_and_methods(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let base = &c.nodes[0].client_url;
    let (status, v) = http(base, "POST", "/v3/kv/range", Some(&json!({"key": ""}))).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], json!("etcdserver: key is not provided"), "{v}");
    assert_eq!(v["code"], json!(3));
    let (status, v) = http(
        base,
        "POST",
        "/v3/kv/range",
        Some(&json!({"key": b64("a"), "revision": 99})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        v["message"],
        json!("etcdserver: mvcc: required revision is a future revision")
    );
    let (status, v) = http(
        base,
        "POST",
        "/v3/lease/revoke",
        Some(&json!({"ID": 12345})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], json!("etcdserver: requested lease not found"));
    let (status, _) = http(base, "GET", "/v3/kv/range", None).await;
    assert_eq!(status, 405);
    let (status, v) = http(base, "GET", "/health", None).await;
    assert_eq!((status, v["health"].clone()), (200, json!("true")));
    // /v3beta is an alias.
    let (status, _) = http(
        base,
        "POST",
        "/v3beta/kv/range",
        Some(&json!({"key": b64("a")})),
    )
    .await;
    assert_eq!(status, 200);
}

/// `/metrics` on the client port carries the etcd metric names dashboards use.
async fn metrics_use_etcd_names(imp: Impl) {
    let mut c = Cluster::start(imp, 3).await;
    // The leader: it has peer round-trip samples (it sends the Raft RPCs).
    let leader = c.leader().await;
    let base = &c.nodes[leader].client_url.clone();
    post(
        base,
        "/v3/kv/put",
        json!({"key": b64("m"), "value": b64("1")}),
    )
    .await;
    // A gRPC call to this member, so grpc_server_handled_total has a sample.
    let client = c.nodes[leader].client().await;
    client.get("m", Default::default()).await.unwrap();
    let (status, body) = http(base, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_backend_commit_duration_seconds_bucket",
        "grpc_server_handled_total{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("etcd_server_has_leader 1")),
        "has_leader must be 1"
    );
    // etcd fills its peer RTT histogram from a 30 s prober; Cairn's leader
    // times every Raft RPC, so it has samples at once.
    if matches!(imp, Impl::Cairn) {
        assert!(text.contains("etcd_network_peer_round_trip_time_seconds_bucket"));
    }
}
