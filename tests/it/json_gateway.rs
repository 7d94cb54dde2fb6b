//! The HTTP/JSON gateway, driven with the exact request shapes APISIX's
//! lua-resty-etcd sends (raw HTTP/1.1, no client library), against etcd 3.4
//! (the reference) and Cairn.

use crate::common;

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
    metrics_use_etcd_names,
    watch_fragments_arrive_as_separate_responses,
    lease_keepalive_members_and_status,
    a_watcher_that_stops_reading_is_caught_up_from_history
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
        Self::open_at(base, "/v3/watch", create).await
    }

    /// Any streaming route, with one message in the body.
    async fn open_at(base: &str, path: &str, msg: Value) -> Watch {
        let addr = host_port(base);
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let payload = msg.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{payload}",
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
    // etcd decides its cluster version a moment after the first election
    // and answers "not_decided" until then: ask until it has.
    let v = common::wait_for(common::SLOW, "the cluster version", || async {
        let (status, v) = http(base, "GET", "/version", None).await;
        assert_eq!(status, 200);
        (v["etcdcluster"] != "not_decided").then_some(v)
    })
    .await;
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
    // A body over the limit: etcd's JSON error with gRPC's ResourceExhausted
    // (429), not a plain-text 413, and nothing written.
    let big = "a".repeat(5 << 20);
    let (status, v) = http(
        base,
        "POST",
        "/v3/kv/put",
        Some(&json!({"key": b64("big"), "value": big})),
    )
    .await;
    assert_eq!((status, v["code"].clone()), (429, json!(8)), "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("grpc: received message larger than max ("),
        "{v}"
    );
    let v = post(base, "/v3/kv/range", json!({"key": b64("big")})).await;
    assert!(v.get("kvs").is_none(), "{v}");
    // Large bodies are parsed and screened off the request workers (Cairn):
    // a txn of 20,000 operations (1.3 MiB of JSON) gets etcd's refusal and
    // writes nothing, and a large txn within the limits is applied.
    let put = |k: String, v: &str| json!({"request_put": {"key": b64(&k), "value": b64(v)}});
    let many: Vec<Value> = (0..20_000).map(|i| put(format!("many{i}"), "")).collect();
    let (status, v) = http(base, "POST", "/v3/kv/txn", Some(&json!({"success": many}))).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        v["message"],
        json!("etcdserver: too many operations in txn request")
    );
    // Too large (1.6 MiB) and too many operations: etcd counts first.
    let eight = "z".repeat(8 * 1024);
    let both: Vec<Value> = (0..200).map(|i| put(format!("both{i}"), &eight)).collect();
    let (status, v) = http(base, "POST", "/v3/kv/txn", Some(&json!({"success": both}))).await;
    assert_eq!(
        (status, &v["message"]),
        (
            400,
            &json!("etcdserver: too many operations in txn request")
        )
    );
    let kilo = "v".repeat(1024);
    let large: Vec<Value> = (0..100).map(|i| put(format!("large{i}"), &kilo)).collect();
    let v = post(base, "/v3/kv/txn", json!({"success": large})).await;
    assert_eq!(v["succeeded"], json!(true), "{v}");
    let v = post(
        base,
        "/v3/kv/range",
        json!({"key": b64("large"), "range_end": b64("largf"), "count_only": true}),
    )
    .await;
    assert_eq!(v["count"], json!("100"), "{v}");
    let v = post(base, "/v3/kv/range", json!({"key": b64("many0")})).await;
    assert!(v.get("kvs").is_none(), "{v}");
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

/// A watch that allows fragments gets a revision too large for one response
/// in pieces: counted on the raw stream, where no client reassembles them.
async fn watch_fragments_arrive_as_separate_responses(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let base = &c.nodes[0].client_url;
    let big = |b: u8| B64.encode(vec![b; 600 * 1024]);
    for (k, v) in [("big/a", b'a'), ("big/b", b'b')] {
        post(base, "/v3/kv/put", json!({"key": b64(k), "value": big(v)})).await;
    }
    // One txn overwriting both: with prev_kv its events are ~2.4 MB, over the
    // 1.5 MiB response limit.
    let t = post(
        base,
        "/v3/kv/txn",
        json!({"success": [
            {"requestPut": {"key": b64("big/a"), "value": big(b'c')}},
            {"requestPut": {"key": b64("big/b"), "value": big(b'd')}}]}),
    )
    .await;
    let rev = rev_of(&t);
    let mut w = Watch::open(
        base,
        json!({"create_request": {"key": b64("big/"), "range_end": b64("big0"),
            "start_revision": rev, "prev_kv": true, "fragment": true}}),
    )
    .await;
    let created = w.next().await;
    assert_eq!(created["result"]["created"], json!(true), "{created}");
    let (mut pieces, mut keys) = (0, Vec::new());
    loop {
        let r = w.next().await;
        let res = &r["result"];
        pieces += 1;
        for e in res["events"].as_array().cloned().unwrap_or_default() {
            assert!(e["prev_kv"].is_object(), "prev_kv in every piece");
            keys.push(unb64(&e["kv"]["key"]));
        }
        if res["fragment"] != json!(true) {
            break;
        }
    }
    assert!(
        pieces >= 2,
        "one revision of ~2.4 MB came in {pieces} response"
    );
    assert_eq!(keys, vec!["big/a", "big/b"]);
}

/// The lease, cluster and maintenance paths lua-resty-etcd and operators'
/// scripts call, and (Cairn) an explicit 501 for what is not implemented.
async fn lease_keepalive_members_and_status(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let base = &c.nodes[0].client_url;
    let g = post(base, "/v3/lease/grant", json!({"TTL": 60})).await;
    let id = g["ID"].as_str().expect("lease ID").to_string();
    post(
        base,
        "/v3/kv/put",
        json!({"key": b64("leased"), "value": b64("v"), "lease": id}),
    )
    .await;
    // Keep-alive is a stream: one request in the body, one answer line.
    let mut ka = Watch::open_at(base, "/v3/lease/keepalive", json!({"ID": id})).await;
    let r = ka.next().await;
    assert_eq!(
        (&r["result"]["ID"], &r["result"]["TTL"]),
        (&json!(id), &json!("60")),
        "{r}"
    );
    let t = post(
        base,
        "/v3/lease/timetolive",
        json!({"ID": id, "keys": true}),
    )
    .await;
    assert_eq!(t["grantedTTL"], json!("60"), "{t}");
    assert_eq!(t["keys"], json!([b64("leased")]), "{t}");
    let l = post(base, "/v3/lease/leases", json!({})).await;
    assert_eq!(l["leases"], json!([{"ID": id}]), "{l}");

    let m = post(base, "/v3/cluster/member/list", json!({})).await;
    let members = m["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{m}");
    for n in &c.nodes {
        assert!(
            members
                .iter()
                .any(|x| x["clientURLs"] == json!([n.client_url.clone()])),
            "{} missing from {m}",
            n.client_url
        );
    }
    let st = post(base, "/v3/maintenance/status", json!({})).await;
    assert!(
        st["version"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.4."),
        "{st}"
    );
    assert!(st["leader"].as_str().is_some_and(|l| l != "0"), "{st}");

    // MoveLeader to a member that does not exist: refused by the leader as
    // a bad transferee, by a follower as not the leader; 412 either way.
    let (status, v) = http(
        base,
        "POST",
        "/v3/maintenance/transfer-leadership",
        Some(&json!({"targetID": "1"})),
    )
    .await;
    assert_eq!((status, v["code"].clone()), (412, json!(9)), "{v}");
    assert!(
        [
            "etcdserver: bad leader transferee",
            "etcdserver: not leader"
        ]
        .contains(&v["message"].as_str().unwrap_or_default()),
        "{v}"
    );
}

/// A watcher whose client stops reading while 12 MB of changes land (far
/// more than socket buffers and the server's queue hold) gets every event,
/// in order, once, when it reads again.
async fn a_watcher_that_stops_reading_is_caught_up_from_history(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let base = c.nodes[0].client_url.clone();
    let mut w = Watch::open(
        &base,
        json!({"create_request": {"key": b64("slow/"), "range_end": b64("slow0")}}),
    )
    .await;
    let created = w.next().await;
    assert_eq!(created["result"]["created"], json!(true), "{created}");
    // Writes through another member and client while this one reads nothing.
    let writer = c.nodes[1].client().await;
    let value = vec![b'x'; 20 * 1024];
    let mut revs = Vec::new();
    for i in 0..600 {
        let r = writer
            .put(
                format!("slow/{}", i % 50),
                value.clone(),
                Default::default(),
            )
            .await
            .unwrap();
        revs.push(r.header.unwrap().revision);
    }
    let got: Vec<i64> = w
        .events(revs.len())
        .await
        .iter()
        .map(|(e, _)| e["kv"]["mod_revision"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, revs);
}
