//! `cairn control`'s Admin API against a real 3-node Cairn cluster, over real
//! HTTP, with etcdctl reading what it wrote.

use crate::common;

use std::time::Duration;

use common::control::{request, ControlPlane};
use common::{etcdctl_bin, etcdctl_ok, have_tool, wait_until, Cluster, Impl, SLOW};
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key-0123456789";
const VIEWER: &str = "test-viewer-key-0123456789";

async fn setup() -> (Cluster, ControlPlane) {
    let cluster = Cluster::start(Impl::Cairn, 3).await;
    let cfg = cluster.dir.join("control.yaml");
    std::fs::write(&cfg, format!("viewer_keys: [{VIEWER}]\n")).unwrap();
    let cp = ControlPlane::start(
        &cluster,
        &["--admin-key", ADMIN, "--config", cfg.to_str().unwrap()],
    )
    .await;
    settled(&cluster).await;
    (cluster, cp)
}

/// Waits until the control plane's start-up writes are done (the reference
/// index marks itself built), so a test can measure the store's revision.
async fn settled(cluster: &Cluster) {
    let c = cluster.client().await;
    wait_until(SLOW, "the reference index to be built", || {
        let c = c.clone();
        async move {
            c.get("/cairn/refs/.built", Default::default())
                .await
                .is_ok_and(|r| !r.kvs.is_empty())
        }
    })
    .await;
}

fn upstream() -> Value {
    json!({"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}})
}

/// The store's current revision (a write that is refused must not move it).
async fn revision(c: &Cluster) -> i64 {
    let r = c.client().await.get("/", Default::default()).await.unwrap();
    r.header.unwrap().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_reads_what_the_api_wrote() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let (cluster, cp) = setup().await;
    let eps = cluster.endpoints();
    let k = Some(ADMIN);

    let r = cp
        .call("PUT", "/apisix/admin/upstreams/1", k, Some(upstream()))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let route = json!({"uri": "/hello", "methods": ["GET"], "upstream_id": "1", "name": "hello"});
    let r = cp
        .call("PUT", "/apisix/admin/routes/1", k, Some(route.clone()))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    assert_eq!(created["key"], "/apisix/routes/1");
    let v = &created["value"];
    assert_eq!(v["id"], "1");
    assert!(
        v["create_time"].is_i64() && v["update_time"].is_i64(),
        "{v}"
    );
    assert_eq!(created["createdIndex"], created["modifiedIndex"]);

    // Byte for byte what the API answered, as APISIX will read it.
    let stored = etcdctl_ok(
        &eps,
        &["get", "/apisix/routes/1", "--print-value-only"],
        None,
    );
    assert_eq!(
        stored.trim_end_matches('\n'),
        serde_json::to_string(v).unwrap()
    );
    let parsed: Value = serde_json::from_str(stored.trim_end()).unwrap();
    for (f, want) in route.as_object().unwrap() {
        assert_eq!(&parsed[f], want, "field {f}");
    }

    // Replace: 200, create_time kept, modifiedIndex moves.
    let mut route2 = route.clone();
    route2["uri"] = json!("/hello2");
    let r = cp
        .call("PUT", "/apisix/admin/routes/1", k, Some(route2))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let replaced = r.json();
    assert_eq!(replaced["value"]["create_time"], v["create_time"]);
    assert_eq!(replaced["createdIndex"], created["createdIndex"]);
    assert!(replaced["modifiedIndex"].as_i64() > created["modifiedIndex"].as_i64());

    // Item envelope.
    let got = cp
        .call("GET", "/apisix/admin/routes/1", k, None)
        .await
        .json();
    assert_eq!(got, replaced);
    assert_eq!(
        cp.call("GET", "/apisix/admin/routes/nope", k, None)
            .await
            .status,
        404
    );

    // APISIX's init_dir placeholder is not a route.
    etcdctl_ok(&eps, &["put", "/apisix/routes/", "init_dir"], None);
    // POST: a 20-digit generated id.
    let r = cp
        .call(
            "POST",
            "/apisix/admin/routes",
            k,
            Some(json!({"uri": "/posted", "upstream": upstream(), "labels": {"env": "dev"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let posted = r.json();
    let pid = posted["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(pid.len(), 20, "{pid}");
    assert!(pid.chars().all(|c| c.is_ascii_digit()));
    let list = cp.call("GET", "/apisix/admin/routes", k, None).await.json();
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(
        list["list"][0]["key"], "/apisix/routes/1",
        "sorted by createdIndex"
    );
    let f = cp
        .call("GET", "/apisix/admin/routes?label=env:dev", k, None)
        .await
        .json();
    assert_eq!(f["total"], 1);
    assert_eq!(f["list"][0]["value"]["id"], json!(pid));
    let f = cp
        .call("GET", "/apisix/admin/routes?name=hel&uri=/hello2", k, None)
        .await
        .json();
    assert_eq!(f["total"], 1);
    let p = cp
        .call("GET", "/apisix/admin/routes?page=2&page_size=10", k, None)
        .await
        .json();
    assert_eq!(
        (p["total"].as_i64(), p["list"].as_array().map(Vec::len)),
        (Some(2), Some(0))
    );
    assert_eq!(
        cp.call("GET", "/apisix/admin/routes?page=1&page_size=5", k, None)
            .await
            .status,
        400
    );

    // Consumers are keyed by username.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/consumers",
            k,
            Some(json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = etcdctl_ok(
        &eps,
        &["get", "/apisix/consumers/jack", "--print-value-only"],
        None,
    );
    // Encrypted as APISIX does with its default keyring (none configured).
    assert!(
        c.contains("\"key-auth\":{\"key\":\"1jhUSuP5Dz3oF/IEiJ1SAg==\"}"),
        "{c}"
    );

    // ?ttl= puts the key under a lease.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/upstreams/tmp?ttl=60",
            k,
            Some(upstream()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let w = etcdctl_ok(&eps, &["get", "/apisix/upstreams/tmp", "-w", "json"], None);
    let lease = serde_json::from_str::<Value>(&w).unwrap()["kvs"][0]["lease"]
        .as_i64()
        .unwrap_or(0);
    assert_ne!(lease, 0, "{w}");

    // DELETE, APISIX's answer.
    let r = cp
        .call("DELETE", &format!("/apisix/admin/routes/{pid}"), k, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"deleted": "1", "key": format!("/apisix/routes/{pid}")})
    );
    let left = etcdctl_ok(&eps, &["get", &format!("/apisix/routes/{pid}")], None);
    assert!(left.is_empty(), "{left}");

    // Every write left an audit record, outside /apisix: one in the time
    // index, one under its resource.
    let audit = etcdctl_ok(
        &eps,
        &["get", "--prefix", "/cairn/audit/t/", "--keys-only"],
        None,
    );
    assert_eq!(
        audit.lines().filter(|l| !l.is_empty()).count(),
        7,
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_input_is_400_and_writes_nothing() {
    let (cluster, cp) = setup().await;
    let k = Some(ADMIN);
    assert_eq!(
        cp.call("PUT", "/apisix/admin/upstreams/u1", k, Some(upstream()))
            .await
            .status,
        201
    );
    assert_eq!(
        cp.call(
            "PUT",
            "/apisix/admin/routes/r1",
            k,
            Some(json!({"uri": "/r1", "upstream_id": "u1"}))
        )
        .await
        .status,
        201
    );
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": 1, "upstream_id": "u1"}),
            "\"uri\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"upstream_id": "u1"}),
            "\"uri\", \"uris\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "uris": ["/b"], "upstream_id": "u1"}),
            "\"uris\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a"}),
            "\"upstream_id\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "upstream_id": "u1", "bogus": true}),
            "bogus",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "upstream_id": "u1", "methods": ["FETCH"]}),
            "\"methods.0\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "upstream_id": "u1", "status": 2}),
            "\"status\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "plugins": {"no-such-plugin": {}}}),
            "unknown plugin [no-such-plugin]",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "plugins": {"limit-count": {"count": 0, "time_window": 60}}}),
            "limit-count",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "plugins": {"limit-req": {"rate": 1}}}),
            "burst",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "plugins": {"proxy-rewrite": {"uri": "no-slash"}}}),
            "proxy-rewrite",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "plugins": {"ip-restriction": {"whitelist": ["not-an-ip"]}}}),
            "ip-restriction",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "upstream": {"type": "roundrobin", "nodes": {"a:1": -1}}}),
            "\"upstream.nodes",
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/2",
            json!({"type": "magic", "nodes": {"a:1": 1}}),
            "\"type\"",
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/2",
            json!({"type": "roundrobin"}),
            "\"nodes\"",
        ),
        (
            "PUT",
            "/apisix/admin/consumers/jack",
            json!({"username": "jack", "plugins": {"key-auth": {}}}),
            "key-auth",
        ),
        (
            "PUT",
            "/apisix/admin/consumers",
            json!({"username": "bad name!"}),
            "\"username\"",
        ),
        (
            "PUT",
            "/apisix/admin/ssls/1",
            json!({"sni": "a.com", "cert": "short", "key": "short"}),
            "\"cert\"",
        ),
        ("PUT", "/apisix/admin/global_rules/1", json!({}), "plugins"),
        (
            "PUT",
            "/apisix/admin/protos/1",
            json!({"content": ""}),
            "\"content\"",
        ),
        (
            "PUT",
            "/apisix/admin/secrets/vault/1",
            json!({"uri": "http://v:8200", "prefix": "p"}),
            "token",
        ),
        (
            "PUT",
            "/apisix/admin/plugin_metadata/not-a-plugin",
            json!({}),
            "unknown plugin",
        ),
        (
            "PUT",
            "/apisix/admin/stream_routes/1",
            json!({"server_port": "x"}),
            "\"server_port\"",
        ),
        (
            "PUT",
            "/apisix/admin/routes/bad$id",
            json!({"uri": "/a", "upstream_id": "u1"}),
            "id",
        ),
        (
            "PUT",
            "/apisix/admin/routes/1",
            json!({"id": "2", "uri": "/a", "upstream_id": "u1"}),
            "id",
        ),
        (
            "PATCH",
            "/apisix/admin/routes/r1",
            json!({"uri": 5}),
            "\"uri\"",
        ),
        (
            "PATCH",
            "/apisix/admin/routes/r1/methods",
            json!(["NOPE"]),
            "\"methods.0\"",
        ),
    ];
    let before = revision(&cluster).await;
    for (method, path, body, names) in &cases {
        let r = cp.call(method, path, Some(ADMIN), Some(body.clone())).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.body);
        let msg = r.json()["error_msg"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            msg.starts_with("invalid configuration: ") || msg.starts_with("wrong "),
            "{path} {body}: {msg}"
        );
        assert!(
            msg.contains(names),
            "{path} {body}: {msg:?} should name {names}"
        );
    }
    // Broken JSON.
    let r = request(
        "PUT",
        &format!("{}/apisix/admin/routes/1", cp.url),
        &[("x-api-key", ADMIN)],
        Some("{not json".into()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // References: a route naming a missing upstream or service.
    for (field, what) in [("upstream_id", "upstream"), ("service_id", "service")] {
        let r = cp
            .call(
                "PUT",
                "/apisix/admin/routes/1",
                k,
                Some(json!({"uri": "/a", field: "missing"})),
            )
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json()["error_msg"],
            format!("failed to fetch {what} info by {what} id [missing], response code: 404")
        );
    }
    assert_eq!(
        revision(&cluster).await,
        before,
        "a refused write changed the store"
    );

    // Deleting an upstream a route uses is refused, unless forced.
    let r = cp
        .call("DELETE", "/apisix/admin/upstreams/u1", k, None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this upstream, route [r1] is still using it now"
    );
    assert_eq!(revision(&cluster).await, before);
    let r = cp
        .call("DELETE", "/apisix/admin/upstreams/u1?force=true", k, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_roles() {
    let (_cluster, cp) = setup().await;
    let r = cp.call("GET", "/apisix/admin/routes", None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"error_msg": "failed to check token", "description": "missing apikey"})
    );
    let r = cp
        .call("GET", "/apisix/admin/routes", Some("wrong"), None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["description"], "wrong apikey");
    let r = cp
        .call(
            "GET",
            &format!("/apisix/admin/routes?api_key={ADMIN}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"total": 0, "list": []}));
    // Viewer: reads, never writes.
    assert_eq!(
        cp.call("GET", "/apisix/admin/upstreams", Some(VIEWER), None)
            .await
            .status,
        200
    );
    for m in ["PUT", "PATCH", "DELETE"] {
        let r = cp
            .call(
                m,
                "/apisix/admin/upstreams/1",
                Some(VIEWER),
                Some(upstream()),
            )
            .await;
        assert_eq!(r.status, 403, "{m}: {}", r.body);
    }
    let r = cp
        .call(
            "POST",
            "/apisix/admin/upstreams",
            Some(VIEWER),
            Some(upstream()),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        cp.call("GET", "/apisix/admin/upstreams/1", Some(ADMIN), None)
            .await
            .status,
        404
    );
    // The console's data calls need a key or session too.
    assert_eq!(cp.call("GET", "/api/audit", None, None).await.status, 401);
    // Health, metrics and the API description are open.
    assert_eq!(cp.call("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(cp.call("GET", "/readyz", None, None).await.status, 200);
    let m = cp.call("GET", "/metrics", None, None).await;
    assert!(
        m.body.contains("cairn_control_http_requests_total"),
        "{}",
        m.body
    );
    let api = cp.call("GET", "/openapi.json", None, None).await.json();
    for res in [
        "routes",
        "upstreams",
        "services",
        "consumers",
        "ssls",
        "global_rules",
        "plugin_configs",
        "consumer_groups",
        "plugin_metadata",
        "stream_routes",
        "secrets",
        "protos",
    ] {
        assert!(
            api["paths"][format!("/apisix/admin/{res}/{{id}}")]["put"].is_object(),
            "{res}"
        );
    }
    assert!(api["paths"]["/apisix/admin/routes/{id}/history"]["get"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patch_merges_and_conflicts_are_reported() {
    let (_cluster, cp) = setup().await;
    let k = Some(ADMIN);
    let body = json!({"uri": "/p", "upstream": upstream(), "desc": "d", "labels": {"a": "1"}});
    let r = cp
        .call("PUT", "/apisix/admin/routes/p", k, Some(body))
        .await
        .json();
    let m1 = r["modifiedIndex"].as_i64().unwrap();

    // Merge: null deletes, objects merge, arrays replace.
    let r = cp
        .call(
            "PATCH",
            "/apisix/admin/routes/p",
            k,
            Some(json!({"desc": null, "labels": {"b": "2"}, "methods": ["GET"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json()["value"].clone();
    assert!(v.get("desc").is_none(), "{v}");
    assert_eq!(v["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(v["methods"], json!(["GET"]));
    // Sub-path.
    let r = cp
        .call(
            "PATCH",
            "/apisix/admin/routes/p/methods",
            k,
            Some(json!(["POST", "PUT"])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["methods"], json!(["POST", "PUT"]));
    let current = cp
        .call("GET", "/apisix/admin/routes/p", k, None)
        .await
        .json();

    // An edit based on the first version conflicts: 409, nothing overwritten.
    let r = request(
        "PATCH",
        &format!("{}/apisix/admin/routes/p", cp.url),
        &[("x-api-key", ADMIN), ("if-match", &m1.to_string())],
        Some(json!({"desc": "stale"}).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["modifiedIndex"], current["modifiedIndex"]);
    assert_eq!(
        cp.call("GET", "/apisix/admin/routes/p", k, None)
            .await
            .json(),
        current
    );
    // The same with the current revision goes through.
    let cur = current["modifiedIndex"].to_string();
    let r = request(
        "PUT",
        &format!("{}/apisix/admin/routes/p", cp.url),
        &[("x-api-key", ADMIN), ("if-match", &cur)],
        Some(json!({"uri": "/p", "upstream": upstream(), "desc": "fresh"}).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // A forced conflict: six merges at once, all based on the same version
    // (If-Match). Exactly one lands; the others are refused with 409 and
    // nothing of theirs is in the route.
    let base = r.json()["modifiedIndex"].to_string();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (url, base) = (format!("{}/apisix/admin/routes/p", cp.url), base.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"labels": {format!("c{i}"): "v"}}).to_string();
            let h = [("x-api-key", ADMIN), ("if-match", base.as_str())];
            (
                i,
                request("PATCH", &url, &h, Some(body)).await.unwrap().status,
            )
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let labels = cp
        .call("GET", "/apisix/admin/routes/p", k, None)
        .await
        .json()["value"]["labels"]
        .clone();
    let winners: Vec<_> = statuses.iter().filter(|(_, s)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    for (i, status) in &statuses {
        let present = labels.get(format!("c{i}")).is_some();
        match status {
            200 => assert!(present, "the accepted PATCH is missing: {labels}"),
            409 => assert!(!present, "a refused PATCH was applied: {labels}"),
            other => panic!("PATCH answered {other}"),
        }
    }

    // Concurrent merges of different fields: each one lands or is refused
    // with 409; none is silently lost.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = format!("{}/apisix/admin/routes/p", cp.url);
        tasks.push(tokio::spawn(async move {
            let body = json!({"labels": {format!("k{i}"): "v"}}).to_string();
            let r = request("PATCH", &url, &[("x-api-key", ADMIN)], Some(body))
                .await
                .unwrap();
            (i, r.status)
        }));
    }
    let mut landed = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        assert!(status == 200 || status == 409, "{status}");
        if status == 200 {
            landed.push(i);
        }
    }
    assert!(!landed.is_empty());
    let labels = cp
        .call("GET", "/apisix/admin/routes/p", k, None)
        .await
        .json()["value"]["labels"]
        .clone();
    for i in landed {
        assert_eq!(
            labels[format!("k{i}")],
            "v",
            "a 200 PATCH was lost: {labels}"
        );
    }
}

/// `If-Match: <modifiedIndex>` on PUT, DELETE and rollback: a stale one is
/// refused with 409 and changes nothing; the current one goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_guards_put_delete_and_rollback() {
    let (_cluster, cp) = setup().await;
    let k = Some(ADMIN);
    let url = |p: &str| format!("{}/apisix/admin/routes/m{p}", cp.url);
    let mut revs = Vec::new();
    for uri in ["/a", "/b"] {
        let r = cp
            .call(
                "PUT",
                "/apisix/admin/routes/m",
                k,
                Some(json!({"uri": uri, "upstream": upstream()})),
            )
            .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
        revs.push(r.json()["modifiedIndex"].to_string());
    }
    let get = || async {
        cp.call("GET", "/apisix/admin/routes/m", k, None)
            .await
            .json()
    };
    let current = get().await;
    let stale = revs[0].as_str();
    let body = json!({"uri": "/stale", "upstream": upstream()}).to_string();
    for (method, path, body) in [
        ("PUT", "", Some(body)),
        ("DELETE", "", None),
        ("POST", &format!("/rollback?revision={stale}") as &str, None),
    ] {
        let h = [("x-api-key", ADMIN), ("if-match", stale)];
        let r = request(method, &url(path), &h, body).await.unwrap();
        assert_eq!(r.status, 409, "{method} with a stale If-Match: {}", r.body);
        assert_eq!(get().await, current, "{method} changed the route");
    }
    // With the current version each goes through: rollback, then delete.
    let h = [("x-api-key", ADMIN), ("if-match", revs[1].as_str())];
    let r = request(
        "POST",
        &url(&format!("/rollback?revision={stale}")),
        &h,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["uri"], "/a");
    let now = r.json()["modifiedIndex"].to_string();
    let h = [("x-api-key", ADMIN), ("if-match", now.as_str())];
    let r = request("DELETE", &url(""), &h, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = cp.call("GET", "/apisix/admin/routes/m", k, None).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_and_rollback_survive_compaction() {
    let (cluster, cp) = setup().await;
    let k = Some(ADMIN);
    let mut revs = Vec::new();
    for uri in ["/v1", "/v2", "/v3"] {
        let r = cp
            .call(
                "PUT",
                "/apisix/admin/routes/h",
                k,
                Some(json!({"uri": uri, "upstream": upstream()})),
            )
            .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
        revs.push(r.json()["modifiedIndex"].as_i64().unwrap());
    }
    let h = cp
        .call("GET", "/apisix/admin/routes/h/history", k, None)
        .await
        .json();
    let list = h["list"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{h}");
    assert_eq!(list[0]["revision"], revs[2]);
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[2]["value"]["uri"], "/v1");
    assert_eq!(list[2]["source"], "mvcc");
    assert_eq!(list[2]["who"], "api-key:admin");
    assert_eq!(list[2]["action"], "update");

    // Roll back to v1: a new revision holding v1's value.
    let r = cp
        .call(
            "POST",
            &format!("/apisix/admin/routes/h/rollback?revision={}", revs[0]),
            k,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rb = r.json();
    assert_eq!(rb["value"]["uri"], "/v1");
    assert!(rb["modifiedIndex"].as_i64().unwrap() > revs[2]);
    let stored = common::etcdctl_ok(
        &cluster.endpoints(),
        &["get", "/apisix/routes/h", "--print-value-only"],
        None,
    );
    assert!(stored.contains("\"uri\":\"/v1\""), "{stored}");
    assert_eq!(
        cp.call(
            "POST",
            "/apisix/admin/routes/h/rollback?revision=1",
            k,
            None
        )
        .await
        .status,
        404
    );

    // Compact everything: earlier versions now come from the audit log.
    let c = cluster.client().await;
    let now = c
        .get("/", Default::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    c.compact(now, true).await.unwrap();
    let h = cp
        .call("GET", "/apisix/admin/routes/h/history", k, None)
        .await
        .json();
    let list = h["list"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{h}");
    assert_eq!(list[0]["action"], "rollback");
    assert_eq!(list[3]["value"]["uri"], "/v1");
    assert_eq!(list[3]["source"], "audit");
    // And rollback from the audit log works too.
    let r = cp
        .call(
            "POST",
            &format!("/apisix/admin/routes/h/rollback?revision={}", revs[1]),
            k,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"]["uri"], "/v2");

    // The audit log, newest first; a resource's records carry the patch
    // back to the version before (not both values).
    let a = cp.call("GET", "/api/audit", k, None).await.json();
    assert_eq!(a["list"][0]["action"], "rollback");
    assert!(a["list"][0].get("revert").is_none(), "{a}");
    assert!(a["list"][0]["new_revision"].as_i64() > a["list"][0]["old_revision"].as_i64());
    let a = cp
        .call("GET", "/api/audit?resource=routes&id=h", k, None)
        .await
        .json();
    assert_eq!(a["list"][0]["revert"]["uri"], "/v1", "{a}");
    assert!(a["list"][0]["revert"].get("upstream").is_none(), "{a}");

    // A deleted route keeps its history, and a rollback brings it back.
    assert_eq!(
        cp.call("DELETE", "/apisix/admin/routes/h", k, None)
            .await
            .status,
        200
    );
    let h = cp
        .call("GET", "/apisix/admin/routes/h/history", k, None)
        .await
        .json();
    let list = h["list"].as_array().unwrap();
    assert_eq!(list[0]["action"], "delete");
    assert!(list[0]["value"].is_null(), "{h}");
    let r = cp
        .call(
            "POST",
            &format!("/apisix/admin/routes/h/rollback?revision={}", revs[2]),
            k,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let back = cp
        .call("GET", "/apisix/admin/routes/h", k, None)
        .await
        .json();
    assert_eq!(back["value"]["uri"], "/v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keeps_answering_when_a_store_node_is_killed() {
    let (mut cluster, cp) = setup().await;
    let k = Some(ADMIN);
    assert_eq!(
        cp.call("PUT", "/apisix/admin/upstreams/1", k, Some(upstream()))
            .await
            .status,
        201
    );
    // Kill the leader: the hardest member to lose.
    let leader = cluster.leader().await;
    cluster.nodes[leader].kill9();
    for i in 0..10 {
        let r = cp
            .call(
                "PUT",
                &format!("/apisix/admin/routes/{i}"),
                k,
                Some(json!({"uri": format!("/k{i}"), "upstream_id": "1"})),
            )
            .await;
        assert_eq!(r.status, 201, "write {i} after kill -9: {}", r.body);
        let r = cp
            .call("GET", &format!("/apisix/admin/routes/{i}"), k, None)
            .await;
        assert_eq!(r.status, 200, "read {i} after kill -9: {}", r.body);
    }
    assert_eq!(cp.call("GET", "/readyz", None, None).await.status, 200);
    let cl = cp.call("GET", "/api/cluster", k, None).await.json();
    let members = cl["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(
        members.iter().filter(|m| m["healthy"] == true).count(),
        2,
        "{cl}"
    );
    assert_eq!(
        members.iter().filter(|m| m["role"] == "leader").count(),
        1,
        "{cl}"
    );

    // Without a quorum, not ready (but alive).
    let other = (0..3).find(|i| *i != leader).unwrap();
    cluster.nodes[other].kill9();
    let url = cp.url.clone();
    wait_until(SLOW, "/readyz to answer 503 without a quorum", || {
        let url = url.clone();
        async move {
            request("GET", &format!("{url}/readyz"), &[], None)
                .await
                .is_ok_and(|r| r.status == 503)
        }
    })
    .await;
    assert_eq!(cp.call("GET", "/healthz", None, None).await.status, 200);
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_admin_key_is_shared_by_every_instance() {
    let cluster = Cluster::start(Impl::Cairn, 3).await;
    let first = ControlPlane::start(&cluster, &[]).await;
    let key = common::wait_for(SLOW, "the first instance to print its admin key", || {
        let out = first.stdout();
        async move {
            out.lines()
                .find_map(|l| l.split("keep it): ").nth(1).map(|k| k.trim().to_string()))
        }
    })
    .await;
    let second = ControlPlane::start(&cluster, &[]).await;
    for cp in [&first, &second] {
        let url = cp.url.clone();
        let key = key.clone();
        // The second instance loads the stored hash in the background.
        wait_until(SLOW, "the generated key to be accepted", || {
            let (url, key) = (url.clone(), key.clone());
            async move {
                request(
                    "GET",
                    &format!("{url}/apisix/admin/routes"),
                    &[("x-api-key", &key)],
                    None,
                )
                .await
                .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
    }
    assert!(
        !second.stdout().contains("keep it"),
        "printed twice: {}",
        second.stdout()
    );
    let stored = common::etcdctl(
        &cluster.endpoints(),
        &[
            "get",
            "/cairn/control/admin_key_sha256",
            "--print-value-only",
        ],
        None,
    );
    if stored.success {
        assert!(
            !stored.stdout.contains(&key),
            "the key itself must not be stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_sessions_are_shared_signed_and_rate_limited() {
    let cluster = Cluster::start(Impl::Cairn, 3).await;
    let cfg = cluster.dir.join("control.yaml");
    let hash = cairn_control::console::hash_password("pw-bob").unwrap();
    std::fs::write(
        &cfg,
        format!("users:\n  - username: bob\n    password_hash: '{hash}'\n    role: viewer\n"),
    )
    .unwrap();
    let args = ["--admin-key", ADMIN, "--config", cfg.to_str().unwrap()];
    let a = ControlPlane::start(&cluster, &args).await;
    let b = ControlPlane::start(&cluster, &args).await;
    let login = |url: String, body: Value| async move {
        request("POST", &format!("{url}/login"), &[], Some(body.to_string()))
            .await
            .unwrap()
    };
    // Both instances load the same session secret from the store.
    let r = wait_for_login(&a.url, json!({"username": "bob", "password": "pw-bob"})).await;
    let set_cookie = r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    for cp in [&a, &b] {
        let r = request(
            "GET",
            &format!("{}/api/session", cp.url),
            &[("cookie", &cookie)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), json!({"user": "console:bob", "role": "viewer"}));
    }
    // A viewer's session reads but never writes.
    let r = request(
        "GET",
        &format!("{}/apisix/admin/routes", b.url),
        &[("cookie", &cookie)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = request(
        "PUT",
        &format!("{}/apisix/admin/upstreams/1", b.url),
        &[("cookie", &cookie), ("x-cairn-console", "1")],
        Some(upstream().to_string()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    // A tampered cookie is no session.
    let forged = cookie.replace("7669657765", "61646d696e");
    let r = request(
        "GET",
        &format!("{}/api/session", a.url),
        &[("cookie", &forged)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // An admin session from an API key; a cookie alone (no console header) cannot write.
    let r = login(a.url.clone(), json!({"api_key": ADMIN})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let admin_cookie = r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let put = |headers: Vec<(&'static str, String)>| {
        let url = format!("{}/apisix/admin/upstreams/1", b.url);
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request("PUT", &url, &h, Some(upstream().to_string()))
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(put(vec![("cookie", admin_cookie.clone())]).await, 403);
    assert_eq!(
        put(vec![
            ("cookie", admin_cookie.clone()),
            ("x-cairn-console", "1".into())
        ])
        .await,
        201
    );
    let audit = cp_audit(&a).await;
    assert_eq!(audit["list"][0]["who"], "api-key:admin");
    // Logins are rate-limited per instance and address.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            login(
                b.url.clone(),
                json!({"username": "bob", "password": "wrong"}),
            )
            .await
            .status,
        );
    }
    assert!(statuses.contains(&401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The other instance counts on its own.
    let r = login(
        a.url.clone(),
        json!({"username": "bob", "password": "pw-bob"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let cookie2 = r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let session_status = |url: String, cookie: String| async move {
        request(
            "GET",
            &format!("{url}/api/session"),
            &[("cookie", &cookie)],
            None,
        )
        .await
        .unwrap()
        .status
    };
    assert_eq!(session_status(a.url.clone(), cookie2.clone()).await, 200);
    // Logout on one instance ends the session on every instance.
    let r = request(
        "POST",
        &format!("{}/logout", b.url),
        &[("cookie", &cookie2), ("x-cairn-console", "1")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(session_status(a.url.clone(), cookie2.clone()).await, 401);
    assert_eq!(session_status(b.url.clone(), cookie2).await, 401);
    // An instance whose config no longer has bob as a viewer, or no longer
    // takes the admin key, ends sessions opened with them.
    let cfg2 = cluster.dir.join("control2.yaml");
    std::fs::write(
        &cfg2,
        format!("users:\n  - username: bob\n    password_hash: '{hash}'\n    role: admin\n"),
    )
    .unwrap();
    let c = ControlPlane::start(
        &cluster,
        &[
            "--admin-key",
            "another-admin-key-0123456789",
            "--config",
            cfg2.to_str().unwrap(),
        ],
    )
    .await;
    wait_for_login(&c.url, json!({"api_key": "another-admin-key-0123456789"})).await;
    assert_eq!(session_status(a.url.clone(), cookie.clone()).await, 200);
    assert_eq!(session_status(c.url.clone(), cookie).await, 401);
    assert_eq!(
        session_status(a.url.clone(), admin_cookie.clone()).await,
        200
    );
    assert_eq!(session_status(c.url.clone(), admin_cookie).await, 401);
    // Wrong API keys are limited per address.
    let mut statuses = Vec::new();
    for i in 0..22 {
        let r = c
            .call(
                "GET",
                "/apisix/admin/routes",
                Some(&format!("wrong-key-{i}")),
                None,
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses[0], 401);
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // A right key from the same address still works.
    let r = c
        .call(
            "GET",
            "/apisix/admin/routes",
            Some("another-admin-key-0123456789"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Logs in, waiting for the instance to have loaded the session secret.
async fn wait_for_login(url: &str, body: Value) -> common::control::Resp {
    common::wait_for(SLOW, "a successful login", || {
        let (url, body) = (url.to_string(), body.clone());
        async move {
            let r = request("POST", &format!("{url}/login"), &[], Some(body.to_string()))
                .await
                .ok()?;
            (r.status == 200).then_some(r)
        }
    })
    .await
}

async fn cp_audit(cp: &ControlPlane) -> Value {
    cp.call("GET", "/api/audit", Some(ADMIN), None).await.json()
}

/// The control plane in front of a store with TLS on both ports and auth
/// enabled: `--cacert/--cert/--key` and `--user/--password` reach it, and
/// what the API wrote is readable by etcdctl as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_with_tls_and_auth() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let tls = common::tls::write_pki(pki_dir.path());
    let opts = common::ClusterOptions {
        tls: Some(tls.clone()),
        ..Default::default()
    };
    let cluster = Cluster::start_with(Impl::Cairn, 3, opts).await;
    let eps = cluster.endpoints();
    let tls_args = [
        format!("--cacert={}", tls.ca.display()),
        format!("--cert={}", tls.cert.display()),
        format!("--key={}", tls.key.display()),
    ];
    let ctl = |extra: &[&str]| {
        let mut a: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        a.extend(extra);
        etcdctl_ok(&eps, &a, None)
    };
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        ctl(args);
    }
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let cp = ControlPlane::start(
        &cluster,
        &[
            "--admin-key",
            ADMIN,
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--user",
            "root",
            "--password",
            "rootpw",
        ],
    )
    .await;
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/upstreams/7",
            Some(ADMIN),
            Some(upstream()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let stored = ctl(&[
        "--user=root:rootpw",
        "get",
        "/apisix/upstreams/7",
        "--print-value-only",
    ]);
    let v: Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(v["nodes"], upstream()["nodes"]);
    let r = cp.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

const SESSION_SECRET: &str = "test-session-secret-0123456789abcdef";

/// A 1-node store and a control plane with this extra config (YAML lines).
async fn setup_one(extra: &str) -> (Cluster, ControlPlane) {
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let cfg = cluster.dir.join("control.yaml");
    std::fs::write(
        &cfg,
        format!("viewer_keys: [{VIEWER}]\nsession_secret: {SESSION_SECRET}\n{extra}"),
    )
    .unwrap();
    let cp = ControlPlane::start(
        &cluster,
        &["--admin-key", ADMIN, "--config", cfg.to_str().unwrap()],
    )
    .await;
    settled(&cluster).await;
    (cluster, cp)
}

fn stored_json(c: &Cluster, key: &str) -> Value {
    let out = etcdctl_ok(&c.endpoints(), &["get", key, "--print-value-only"], None);
    serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{key}: {e}: {out}"))
}

/// What every read answer must never contain.
fn assert_no_secret(what: &str, body: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!body.contains(s.as_str()), "{what} leaks {s:?}:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_stored_as_apisix_encrypts_them_and_never_shown() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let (cluster, cp) = setup_one("data_encryption:\n  keyring: [edd1c9f0985e76a2]\n").await;
    let k = Some(ADMIN);
    let eps = cluster.endpoints();
    let site = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let (cert, key) = (site.cert.pem(), site.key_pair.serialize_pem());
    let client = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
    let client_key = client.key_pair.serialize_pem();
    let mut answers: Vec<(String, String)> = Vec::new();
    let writes = [
        (
            "/apisix/admin/consumers",
            json!({"username": "foo", "plugins": {
                "basic-auth": {"username": "foo", "password": "bar"},
                "key-auth": {"key": "key-auth-secret-1"},
                "jwt-auth": {"key": "jk", "secret": "jwt-secret-2"}}}),
        ),
        (
            "/apisix/admin/ssls/s1",
            json!({"cert": cert, "key": key, "snis": ["a.test"]}),
        ),
        (
            "/apisix/admin/upstreams/u1",
            json!({"nodes": {"127.0.0.1:1980": 1}, "scheme": "https",
                   "tls": {"client_cert": client.cert.pem(), "client_key": client_key}}),
        ),
        (
            "/apisix/admin/secrets/vault/v1",
            json!({"uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "vault-token-3"}),
        ),
        (
            "/apisix/admin/routes/r1",
            json!({"uri": "/r", "upstream_id": "u1", "plugins": {"limit-count": {
                "count": 1, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1",
                "redis_password": "redis-pass-4"}}}),
        ),
    ];
    for (path, body) in writes {
        let r = cp.call("PUT", path, k, Some(body)).await;
        assert_eq!(r.status, 201, "{path}: {}", r.body);
        answers.push((format!("PUT {path}"), r.body));
    }
    // Stored as APISIX's Admin API stores them with the same keyring.
    let foo = stored_json(&cluster, "/apisix/consumers/foo");
    assert_eq!(
        foo["plugins"]["basic-auth"]["password"],
        "77+NmbYqNfN+oLm0aX5akg=="
    );
    assert_eq!(foo["plugins"]["basic-auth"]["username"], "foo");
    let ssl = stored_json(&cluster, "/apisix/ssls/s1");
    let stored_key = ssl["key"].as_str().unwrap().to_string();
    assert!(!stored_key.starts_with("---") && stored_key.len() > 100);
    let up = stored_json(&cluster, "/apisix/upstreams/u1");
    let stored_client_key = up["tls"]["client_key"].as_str().unwrap().to_string();
    assert!(!stored_client_key.starts_with("---"));
    let route = stored_json(&cluster, "/apisix/routes/r1");
    let stored_redis = route["plugins"]["limit-count"]["redis_password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(stored_redis, "redis-pass-4");
    // APISIX keeps secret managers' tokens in clear text; so does Cairn.
    assert_eq!(
        stored_json(&cluster, "/apisix/secrets/vault/v1")["token"],
        "vault-token-3"
    );
    // What APISIX's Admin API wrote (same keyring) is read back.
    etcdctl_ok(
        &eps,
        &[
            "put",
            "/apisix/consumers/bar",
            r#"{"username":"bar","plugins":{"key-auth":{"key":"vU/ZHVJw7b0XscDJ1Fhtig=="}}}"#,
        ],
        None,
    );
    let fp_key = cairn_control::secrets::fingerprint_key_from(SESSION_SECRET.as_bytes());
    let bar = cp
        .call("GET", "/apisix/admin/consumers/bar", k, None)
        .await
        .json();
    assert_eq!(
        bar["value"]["plugins"]["key-auth"]["key"],
        format!(
            "<secret fp:{}>",
            cairn_control::secrets::fingerprint(&fp_key, "auth-two")
        )
    );

    // A change to make history and audit non-trivial.
    let r = cp
        .call(
            "PATCH",
            "/apisix/admin/routes/r1",
            k,
            Some(json!({"plugins": {"limit-count": {"redis_password": "redis-pass-5"}}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    answers.push(("PATCH route".into(), r.body));

    // Every read path, for both roles.
    let secrets: Vec<String> = [
        "bar",
        "key-auth-secret-1",
        "jwt-secret-2",
        "vault-token-3",
        "redis-pass-4",
        "redis-pass-5",
        "77+NmbYqNfN+oLm0aX5akg==",
        "BEGIN PRIVATE KEY",
        stored_key.as_str(),
        stored_client_key.as_str(),
        stored_redis.as_str(),
    ]
    .iter()
    .map(|s| s.replace('\n', "\\n"))
    .collect();
    let mut reads = vec![
        "/api/audit".to_string(),
        "/apisix/admin/consumers".into(),
        "/apisix/admin/ssls".into(),
        "/apisix/admin/upstreams".into(),
        "/apisix/admin/secrets".into(),
        "/apisix/admin/routes".into(),
    ];
    for (res, id) in [
        ("consumers", "foo"),
        ("ssls", "s1"),
        ("upstreams", "u1"),
        ("secrets", "vault/v1"),
        ("routes", "r1"),
    ] {
        reads.push(format!("/apisix/admin/{res}/{id}"));
        reads.push(format!("/apisix/admin/{res}/{id}/history"));
        reads.push(format!("/api/audit?resource={res}&id={id}"));
    }
    for key in [ADMIN, VIEWER] {
        for path in &reads {
            let r = cp.call("GET", path, Some(key), None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            // "bar" is also a user name: check the password field itself.
            let body = r.body.replace("\"bar\"", "").replace("consumers/bar", "");
            assert_no_secret(path, &body, &secrets);
        }
    }
    for (what, body) in &answers {
        assert_no_secret(what, &body.replace("\"bar\"", ""), &secrets);
    }

    // A GET edited and PUT back keeps the stored secrets.
    let mut v = cp
        .call("GET", "/apisix/admin/consumers/foo", k, None)
        .await
        .json()["value"]
        .clone();
    let placeholder = v["plugins"]["basic-auth"]["password"].clone();
    assert!(
        placeholder.as_str().unwrap().starts_with("<secret fp:"),
        "{v}"
    );
    for f in ["create_time", "update_time"] {
        v.as_object_mut().unwrap().remove(f);
    }
    v["desc"] = json!("edited");
    let r = cp
        .call("PUT", "/apisix/admin/consumers/foo", k, Some(v.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let foo = stored_json(&cluster, "/apisix/consumers/foo");
    assert_eq!(
        foo["plugins"]["basic-auth"]["password"],
        "77+NmbYqNfN+oLm0aX5akg=="
    );
    assert_eq!(foo["desc"], "edited");
    // A placeholder that matches nothing stored is refused.
    v["plugins"]["key-auth"]["key"] = json!("<secret fp:000000000000>");
    let r = cp
        .call("PUT", "/apisix/admin/consumers/foo", k, Some(v))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("plugins.key-auth.key"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_is_pruned_by_one_instance() {
    let (cluster, cp) = setup_one("audit:\n  max_records: 10\n  prune_interval_secs: 1\n").await;
    let cfg = cluster.dir.join("control.yaml");
    let cp2 = ControlPlane::start(
        &cluster,
        &["--admin-key", ADMIN, "--config", cfg.to_str().unwrap()],
    )
    .await;
    let c = cluster.client().await;
    // A record of the first layout (clear-text values) goes at the first run.
    c.put(
        "/cairn/audit/1700000000000-deadbeef",
        "{}",
        Default::default(),
    )
    .await
    .unwrap();
    for i in 0..25 {
        let target = if i % 2 == 0 { &cp } else { &cp2 };
        let r = target
            .call(
                "PUT",
                "/apisix/admin/routes/p",
                Some(ADMIN),
                Some(json!({"uri": format!("/v{i}"), "upstream": upstream()})),
            )
            .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
    }
    let count = |prefix: &'static str| {
        let c = c.clone();
        async move {
            let opts = cairn_client::GetOptions {
                count_only: true,
                ..cairn_client::GetOptions::prefix()
            };
            c.get(prefix, opts).await.unwrap().count
        }
    };
    wait_until(SLOW, "the audit log to be pruned to 10 records", || async {
        count("/cairn/audit/t/").await <= 10
            && count("/cairn/audit/r/").await <= 10
            && count("/cairn/audit/1").await == 0
    })
    .await;
    // The newest records are the ones kept; the history still reads them.
    let a = cp.call("GET", "/api/audit", Some(ADMIN), None).await.json();
    assert_eq!(a["total"], 10, "{a}");
    let h = cp
        .call("GET", "/apisix/admin/routes/p/history", Some(ADMIN), None)
        .await
        .json();
    assert_eq!(h["list"][0]["value"]["uri"], "/v24", "{h}");
    // One pruner, holding its key under a lease.
    let r = c
        .get("/cairn/audit/pruner", Default::default())
        .await
        .unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_ne!(r.kvs[0].lease, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apisix_parity_details() {
    let (cluster, cp) = setup_one("extra_plugins: [my-custom]\n").await;
    let k = Some(ADMIN);
    let before = revision(&cluster).await;
    // A body near the request limit: the store refuses it as too large: 413.
    let big = "x".repeat(1536 * 1024 - 200);
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/routes/big",
            k,
            Some(json!({"uri": "/big", "plugins": {"echo": {"body": big}}})),
        )
        .await;
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(300)]);
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("too large"));
    // Times are the admin layer's.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/routes/t",
            k,
            Some(json!({"uri": "/t", "upstream": upstream(), "create_time": 1})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "the property is forbidden:  create_time"
    );
    assert_eq!(
        revision(&cluster).await,
        before,
        "refused writes wrote nothing"
    );
    // PATCH where APISIX refuses it; the version header.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/consumers/jack",
            k,
            Some(json!({"username": "jack"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.headers["x-api-version"], "v3");
    let r = cp
        .call(
            "PATCH",
            "/apisix/admin/consumers/jack",
            k,
            Some(json!({"desc": "x"})),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(
        r.json()["error_msg"],
        "not supported `PATCH` method for consumer"
    );
    // If-None-Match: * creates only.
    let r = request(
        "PUT",
        &format!("{}/apisix/admin/consumers/jack", cp.url),
        &[("x-api-key", ADMIN), ("if-none-match", "*")],
        Some(json!({"username": "jack", "desc": "overwritten?"}).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    // Credentials: under the consumer, auth secrets kept secret, gone with it.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/consumers/jack/credentials/c1",
            k,
            Some(json!({"plugins": {"key-auth": {"key": "cred-secret-1"}}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["key"], "/apisix/consumers/jack/credentials/c1");
    assert!(!r.body.contains("cred-secret-1"), "{}", r.body);
    let l = cp
        .call("GET", "/apisix/admin/consumers/jack/credentials", k, None)
        .await
        .json();
    assert_eq!(l["total"], 1, "{l}");
    let l = cp
        .call("GET", "/apisix/admin/consumers", k, None)
        .await
        .json();
    assert_eq!(l["total"], 1, "credentials are not consumers: {l}");
    assert_eq!(
        cp.call(
            "PUT",
            "/apisix/admin/consumers/nobody/credentials/c1",
            k,
            Some(json!({"plugins": {}}))
        )
        .await
        .status,
        400
    );
    assert_eq!(
        cp.call("DELETE", "/apisix/admin/consumers/jack", k, None)
            .await
            .status,
        200
    );
    let c = cluster.client().await;
    let left = c
        .get("/apisix/consumers/jack", cairn_client::GetOptions::prefix())
        .await
        .unwrap();
    assert_eq!(left.kvs.len(), 0, "credentials deleted with the consumer");
    // Ids: collection PUTs follow the item rules; secrets are <manager>/<id>.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/upstreams",
            k,
            Some(json!({"id": "a/b", "nodes": {"127.0.0.1:1": 1}})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/secrets/nope/1",
            k,
            Some(json!({"uri": "http://127.0.0.1:1"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Metric labels come from a fixed set: a made-up method or path is `other`.
    let r = request("FROB", &format!("{}/nowhere-abc123", cp.url), &[], None)
        .await
        .unwrap();
    assert!(r.status >= 400);
    let m = cp.call("GET", "/metrics", None, None).await.body;
    assert!(!m.contains("FROB") && !m.contains("nowhere-abc123"), "{m}");
    assert!(m.contains("method=\"other\""), "{m}");
    // Paging: a page below 1 is the first.
    let p = cp
        .call(
            "GET",
            "/apisix/admin/consumers?page=0&page_size=10",
            k,
            None,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    // Schemas by APISIX's singular names (the plural stays an alias).
    for name in ["route", "routes", "stream_route", "credential"] {
        let r = cp
            .call("GET", &format!("/apisix/admin/schema/{name}"), k, None)
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }
    // SSL: a client certificate (upstream mTLS) needs no SNI; the key must
    // match the certificate; the validity period is answered, not stored.
    let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/ssls/client1",
            k,
            Some(
                json!({"type": "client", "cert": a.cert.pem(), "key": a.key_pair.serialize_pem()}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json()["value"].clone();
    assert!(
        v["validity_end"].as_i64() > v["validity_start"].as_i64(),
        "{v}"
    );
    let stored = cluster
        .client()
        .await
        .get("/apisix/ssls/client1", Default::default())
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored.kvs[0].value).contains("validity"));
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/ssls/bad",
            k,
            Some(json!({"snis": ["a.test"], "cert": a.cert.pem(), "key": b.key_pair.serialize_pem()})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("does not match"), "{}", r.body);
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/ssls/nosni",
            k,
            Some(json!({"cert": a.cert.pem(), "key": a.key_pair.serialize_pem()})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/upstreams/mtls",
            k,
            Some(json!({"nodes": {"127.0.0.1:1": 1}, "scheme": "https", "tls": {"client_cert_id": "client1"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The plugin catalog endpoints APISIX tools call.
    let l = cp
        .call("GET", "/apisix/admin/plugins/list", k, None)
        .await
        .json();
    let names: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "ai-proxy-multi",
        "mcp-bridge",
        "attach-consumer-label",
        "my-custom",
    ] {
        assert!(names.contains(&want), "{want}: {l}");
    }
    let l = cp
        .call(
            "GET",
            "/apisix/admin/plugins/list?subsystem=stream",
            k,
            None,
        )
        .await
        .json();
    assert!(l.as_array().unwrap().contains(&json!("mqtt-proxy")), "{l}");
    let s = cp
        .call(
            "GET",
            "/apisix/admin/schema/plugins/key-auth?schema_type=consumer",
            k,
            None,
        )
        .await
        .json();
    assert_eq!(s["required"], json!(["key"]), "{s}");
    let s = cp
        .call("GET", "/apisix/admin/plugins/limit-count", k, None)
        .await
        .json();
    assert!(s["properties"]["count"].is_object(), "{s}");
    assert_eq!(
        cp.call("GET", "/apisix/admin/plugins/nope", k, None)
            .await
            .status,
        404
    );
    // Plugins of APISIX 3.13+, custom ones from the config, stream plugins.
    for (path, body, want) in [
        (
            "/apisix/admin/routes/ai",
            json!({"uri": "/ai", "plugins": {"ai-prompt-guard": {}, "my-custom": {}}}),
            201,
        ),
        (
            "/apisix/admin/stream_routes/s1",
            json!({"upstream": upstream(), "plugins": {"mqtt-proxy": {}}}),
            201,
        ),
        (
            "/apisix/admin/stream_routes/s2",
            json!({"upstream": upstream(), "plugins": {"key-auth": {}}}),
            400,
        ),
    ] {
        let r = cp.call("PUT", path, k, Some(body)).await;
        assert_eq!(r.status, want, "{path}: {}", r.body);
    }
}

#[test]
fn short_secrets_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    for (args, yaml, want) in [
        (vec!["--admin-key", "short"], "", "admin_key"),
        (vec![], "session_secret: tiny\n", "session_secret"),
        (vec![], "viewer_keys: [abc]\n", "viewer key"),
        (
            vec![],
            "data_encryption:\n  keyring: [not-16-bytes]\n",
            "keyring",
        ),
    ] {
        std::fs::write(&cfg, yaml).unwrap();
        let out = std::process::Command::new(common::cairn_bin())
            .arg("control")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--endpoints",
                "http://127.0.0.1:1",
            ])
            .args(["--config", cfg.to_str().unwrap()])
            .args(&args)
            .env_remove("CAIRN_ADMIN_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {yaml}: started");
        assert!(err.contains(want), "{args:?} {yaml}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_use_checks_use_the_reference_index() {
    // A route written before the control plane ran (as APISIX's Admin API
    // would): indexed when the index is first built.
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let c = cluster.client().await;
    c.put(
        "/apisix/upstreams/old",
        json!({"id": "old", "nodes": {"127.0.0.1:1": 1}}).to_string(),
        Default::default(),
    )
    .await
    .unwrap();
    c.put(
        "/apisix/routes/old-route",
        json!({"id": "old-route", "uri": "/o", "upstream_id": "old"}).to_string(),
        Default::default(),
    )
    .await
    .unwrap();
    let cp = ControlPlane::start(&cluster, &["--admin-key", ADMIN]).await;
    let k = Some(ADMIN);
    let delete = |path: &'static str| {
        let cp = &cp;
        async move { cp.call("DELETE", path, k, None).await.status }
    };
    wait_until(SLOW, "the reference index to be built", || async {
        delete("/apisix/admin/upstreams/old").await == 400
    })
    .await;
    let r = cp
        .call("DELETE", "/apisix/admin/upstreams/old", k, None)
        .await;
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this upstream, route [old-route] is still using it now"
    );
    // Written through the API: indexed in the write's txn, dropped with it.
    for (path, body) in [
        ("/apisix/admin/upstreams/u1", upstream()),
        ("/apisix/admin/upstreams/u2", upstream()),
        (
            "/apisix/admin/routes/r1",
            json!({"uri": "/r1", "upstream_id": "u1"}),
        ),
    ] {
        assert_eq!(cp.call("PUT", path, k, Some(body)).await.status, 201);
    }
    assert_eq!(delete("/apisix/admin/upstreams/u1").await, 400);
    // The route moves to u2: u1 is free, u2 is not.
    let r = cp
        .call(
            "PATCH",
            "/apisix/admin/routes/r1",
            k,
            Some(json!({"upstream_id": "u2"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(delete("/apisix/admin/upstreams/u1").await, 200);
    assert_eq!(delete("/apisix/admin/upstreams/u2").await, 400);
    // A route deleted around the control plane leaves a stale entry, which
    // the next check drops.
    c.delete("/apisix/routes/r1", Default::default())
        .await
        .unwrap();
    assert_eq!(delete("/apisix/admin/upstreams/u2").await, 200);
    // ?force=true deletes a referenced one.
    assert_eq!(delete("/apisix/admin/upstreams/old?force=true").await, 200);
    // Lists page in the store, in creation order; APISIX's init_dir
    // placeholder is no item.
    c.put("/apisix/upstreams/", "init_dir", Default::default())
        .await
        .unwrap();
    for i in (0..12).rev() {
        let r = cp
            .call(
                "PUT",
                &format!("/apisix/admin/upstreams/p{i:02}"),
                k,
                Some(upstream()),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let p = cp
        .call(
            "GET",
            "/apisix/admin/upstreams?page=2&page_size=10",
            k,
            None,
        )
        .await
        .json();
    assert_eq!(p["total"], 12, "{p}");
    let ids: Vec<&str> = p["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p01", "p00"], "{p}");
}
