//! `cairn gateway` and `cairn echo` as real processes against a real store:
//! routes written with etcdctl (as any APISIX tool would) are served; the
//! router's precedence; APISIX's 404/502 answers; 503 until the first load;
//! changes propagate; the last config keeps being served without a store;
//! SIGTERM drains, then exits.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::control::{request, Resp};
use common::{
    cairn_bin, etcdctl_bin, etcdctl_ok, free_port, have_tool, tail, wait_until, Cluster, Impl, SLOW,
};
use serde_json::{json, Value};

/// A child process killed on drop, its log tail printed if the test failed.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(cairn_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).expect("log file"))
            .spawn()
            .expect("spawn cairn");
        Proc {
            child: Some(child),
            log,
            name: name.to_string(),
        }
    }

    fn err_log(&self) -> String {
        tail(&self.log.with_extension("err"), 40)
    }

    fn sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on our own child, not reaped yet (its PID cannot
        // have been reused).
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    }

    /// Waits (up to SLOW) for the process to end on its own; its status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        common::wait_for(SLOW, "the process to exit", || {
            let st = c.try_wait().expect("try_wait");
            async move { st }
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "==== {} log tail:\n{}\n{}",
                self.name,
                tail(&self.log, 20),
                self.err_log()
            );
        }
    }
}

/// `cairn echo` on a free port.
async fn echo(dir: &Path, name: &str) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        dir,
        name,
        &[
            "echo".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ],
    );
    wait_until(SLOW, "cairn echo to answer", || async move {
        request("GET", &format!("http://127.0.0.1:{port}/get"), &[], None)
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    (p, port)
}

struct Gateway {
    proc_: Proc,
    url: String,
    metrics: String,
    tls_port: u16,
}

impl Gateway {
    /// Starts `cairn gateway`; does not wait for it to be ready.
    fn spawn(dir: &Path, name: &str, endpoints: &[String], extra: &[&str]) -> Gateway {
        let (http, tls, metrics) = (free_port(), free_port(), free_port());
        let mut args: Vec<String> = vec![
            "gateway".into(),
            "--endpoints".into(),
            endpoints.join(","),
            "--listen".into(),
            format!("127.0.0.1:{http}"),
            "--listen-tls".into(),
            format!("127.0.0.1:{tls}"),
            "--metrics".into(),
            format!("127.0.0.1:{metrics}"),
            "--id".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Gateway {
            proc_: Proc::spawn(dir, name, &args),
            url: format!("http://127.0.0.1:{http}"),
            metrics: format!("http://127.0.0.1:{metrics}"),
            tls_port: tls,
        }
    }

    async fn start(dir: &Path, name: &str, endpoints: &[String]) -> Gateway {
        let g = Gateway::spawn(dir, name, endpoints, &[]);
        g.wait_ready().await;
        g
    }

    async fn wait_ready(&self) {
        let m = self.metrics.clone();
        wait_until(SLOW, "gateway /readyz", || {
            let m = m.clone();
            async move {
                request("GET", &format!("{m}/readyz"), &[], None)
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.call("GET", path, headers).await
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(method, &format!("{}{path}", self.url), headers, None)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.proc_.err_log()))
    }

    /// Waits until `GET path` with `headers` satisfies `ok`; returns that answer.
    async fn wait_for(
        &self,
        what: &str,
        path: &str,
        headers: &[(&str, &str)],
        ok: impl Fn(&Resp) -> bool,
    ) -> Resp {
        common::wait_for(SLOW, what, || async {
            let r = self.get(path, headers).await;
            ok(&r).then_some(r)
        })
        .await
    }

    async fn metrics_text(&self) -> String {
        request(
            "GET",
            &format!("{}/apisix/prometheus/metrics", self.metrics),
            &[],
            None,
        )
        .await
        .expect("metrics")
        .body
    }
}

fn put(endpoints: &[String], key: &str, v: &Value) {
    etcdctl_ok(endpoints, &["put", key, &v.to_string()], None);
}

/// The Host the echo upstream saw: routes here rewrite it to name themselves.
fn served_by(r: &Resp) -> String {
    if r.status != 200 {
        return format!("status {}", r.status);
    }
    r.json()["headers"]["Host"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// An upstream that names the route in the Host the echo sees.
fn up(port: u16, name: &str) -> Value {
    json!({"nodes": {format!("127.0.0.1:{port}"): 1}, "pass_host": "rewrite", "upstream_host": name})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_routes_from_the_store_with_apisix_precedence() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    let gw = Gateway::start(&cluster.dir, "gw1", &ep).await;

    // No route yet: APISIX's 404.
    let r = gw.get("/get", &[("host", "test.com")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error_msg": "404 Route Not Found"}));

    // The guide's smoke test, the route written as any APISIX tool writes it.
    put(
        &ep,
        "/apisix/routes/1",
        &json!({"uri": "/get", "hosts": ["test.com"], "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{eport}"): 1}}}),
    );
    let r = gw
        .wait_for("route 1 served", "/get?a=1", &[("host", "test.com")], |r| {
            r.status == 200
        })
        .await;
    let b = r.json();
    assert_eq!(b["headers"]["Host"], "test.com");
    assert_eq!(b["args"]["a"], "1");
    assert_eq!(b["headers"]["X-Forwarded-For"], "127.0.0.1");
    assert_eq!(b["headers"]["X-Real-Ip"], "127.0.0.1");
    assert_eq!(b["headers"]["X-Forwarded-Proto"], "http");
    assert_eq!(b["method"], "GET");
    // Another host does not match it.
    assert_eq!(gw.get("/get", &[("host", "other.com")]).await.status, 404);

    // Precedence: exact before prefix, longer prefix first, then priority,
    // host tables before routes without hosts, wildcard hosts.
    put(
        &ep,
        "/apisix/routes/p-short",
        &json!({"uri": "/p/*", "upstream": up(eport, "p-short")}),
    );
    put(
        &ep,
        "/apisix/routes/p-long",
        &json!({"uri": "/p/a/*", "upstream": up(eport, "p-long")}),
    );
    put(
        &ep,
        "/apisix/routes/p-exact",
        &json!({"uri": "/p/a/b", "upstream": up(eport, "p-exact")}),
    );
    put(
        &ep,
        "/apisix/routes/p-prio",
        &json!({"uri": "/p/*", "priority": 5, "methods": ["POST"], "upstream": up(eport, "p-prio")}),
    );
    put(
        &ep,
        "/apisix/routes/h-wild",
        &json!({"uri": "/p/*", "hosts": ["*.w.com"], "upstream": up(eport, "h-wild")}),
    );
    put(
        &ep,
        "/apisix/routes/h-exact",
        &json!({"uri": "/p/x", "host": "a.w.com", "upstream": up(eport, "h-exact")}),
    );
    put(
        &ep,
        "/apisix/routes/vars",
        &json!({"uri": "/v", "vars": [["arg_k", "==", "1"], ["http_x_t", "~~", "^ab"]], "upstream": up(eport, "vars")}),
    );
    put(
        &ep,
        "/apisix/routes/remote",
        &json!({"uri": "/r", "remote_addrs": ["10.0.0.0/8"], "upstream": up(eport, "remote")}),
    );
    gw.wait_for("last precedence route", "/r", &[], |r| r.status == 404)
        .await;
    gw.wait_for("vars route", "/v?k=1", &[("x-t", "abc")], |r| {
        served_by(r) == "vars"
    })
    .await;
    let cases: &[(&str, &str, &str, &str)] = &[
        ("GET", "/p/a/b", "x.com", "p-exact"),
        ("GET", "/p/a/c", "x.com", "p-long"),
        ("GET", "/p/z", "x.com", "p-short"),
        ("POST", "/p/z", "x.com", "p-prio"),
        ("GET", "/p/a/b", "q.w.com", "h-wild"),
        ("GET", "/p/x", "a.w.com", "h-exact"),
        ("GET", "/p/y", "a.w.com", "h-wild"),
        ("GET", "/p/y", "w.com", "p-short"),
    ];
    for (m, path, host, want) in cases {
        let r = gw.call(m, path, &[("host", host)]).await;
        assert_eq!(served_by(&r), *want, "{m} {path} host {host}");
    }
    assert_eq!(gw.get("/v?k=2", &[("x-t", "abc")]).await.status, 404);
    assert_eq!(gw.get("/v?k=1", &[("x-t", "zab")]).await.status, 404);
    // 127.0.0.1 is not in 10/8.
    assert_eq!(gw.get("/r", &[]).await.status, 404);

    // A change propagates; status 0 disables; an invalid value keeps the last good one.
    put(
        &ep,
        "/apisix/routes/p-exact",
        &json!({"uri": "/p/a/b", "upstream": up(eport, "p-exact-2")}),
    );
    gw.wait_for("updated route", "/p/a/b", &[], |r| {
        served_by(r) == "p-exact-2"
    })
    .await;
    etcdctl_ok(&ep, &["put", "/apisix/routes/p-exact", "{not json"], None);
    put(
        &ep,
        "/apisix/routes/marker",
        &json!({"uri": "/marker", "upstream": up(eport, "marker")}),
    );
    gw.wait_for("marker route", "/marker", &[], |r| r.status == 200)
        .await;
    assert_eq!(served_by(&gw.get("/p/a/b", &[]).await), "p-exact-2");
    assert!(gw
        .metrics_text()
        .await
        .contains("cairn_gateway_invalid_resources_total 1"));
    put(
        &ep,
        "/apisix/routes/p-exact",
        &json!({"uri": "/p/a/b", "status": 0, "upstream": up(eport, "p-exact")}),
    );
    gw.wait_for("disabled route falls through", "/p/a/b", &[], |r| {
        served_by(r) == "p-long"
    })
    .await;
    etcdctl_ok(&ep, &["del", "/apisix/routes/p-long"], None);
    gw.wait_for("deleted route falls through", "/p/a/b", &[], |r| {
        served_by(r) == "p-short"
    })
    .await;

    // Services and upstream objects: the service's hosts and upstream, the
    // route's upstream_id over the service's.
    put(&ep, "/apisix/upstreams/u1", &up(eport, "upstream-u1"));
    put(
        &ep,
        "/apisix/services/s1",
        &json!({"hosts": ["svc.com"], "upstream": up(eport, "service-s1")}),
    );
    put(
        &ep,
        "/apisix/routes/svc",
        &json!({"uri": "/svc", "service_id": "s1"}),
    );
    put(
        &ep,
        "/apisix/routes/svc-up",
        &json!({"uri": "/svc-up", "service_id": "s1", "upstream_id": "u1"}),
    );
    gw.wait_for("service route", "/svc", &[("host", "svc.com")], |r| {
        served_by(r) == "service-s1"
    })
    .await;
    gw.wait_for(
        "upstream_id route",
        "/svc-up",
        &[("host", "svc.com")],
        |r| served_by(r) == "upstream-u1",
    )
    .await;
    assert_eq!(gw.get("/svc", &[("host", "x.com")]).await.status, 404);
    put(&ep, "/apisix/upstreams/u1", &up(eport, "upstream-u1-v2"));
    gw.wait_for("upstream change", "/svc-up", &[("host", "svc.com")], |r| {
        served_by(r) == "upstream-u1-v2"
    })
    .await;
    put(
        &ep,
        "/apisix/services/s1",
        &json!({"hosts": ["svc2.com"], "upstream": up(eport, "service-s1")}),
    );
    gw.wait_for(
        "service hosts change",
        "/svc",
        &[("host", "svc2.com")],
        |r| served_by(r) == "service-s1",
    )
    .await;

    // Upstream down: APISIX's (nginx's) 502 page.
    let dead = free_port();
    put(
        &ep,
        "/apisix/routes/dead",
        &json!({"uri": "/dead", "upstream": {"nodes": {format!("127.0.0.1:{dead}"): 1}, "timeout": {"connect": 1, "send": 1, "read": 1}}}),
    );
    let r = gw
        .wait_for("502 from a dead upstream", "/dead", &[], |r| {
            r.status != 404
        })
        .await;
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("<title>502 Bad Gateway</title>"),
        "{}",
        r.body
    );
    // A failed node is retried on the next one: one dead, one alive.
    put(
        &ep,
        "/apisix/routes/dead",
        &json!({"uri": "/dead", "upstream": {"nodes": {format!("127.0.0.1:{dead}"): 1, format!("127.0.0.1:{eport}"): 1}}}),
    );
    gw.wait_for("retry on the live node", "/dead", &[], |r| r.status == 200)
        .await;
    for _ in 0..4 {
        assert_eq!(gw.get("/dead", &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_503_until_loaded_and_keeps_serving_without_the_store() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let mut cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    put(
        &ep,
        "/apisix/routes/1",
        &json!({"uri": "/get", "upstream": {"nodes": {format!("127.0.0.1:{eport}"): 1}}}),
    );
    // APISIX's CLI puts directory placeholders; they are not resources.
    etcdctl_ok(&ep, &["put", "/apisix/routes/", "init_dir"], None);

    // The store is frozen: the gateway cannot load and must not answer 404.
    cluster.nodes[0].sigstop();
    let gw = Gateway::spawn(&cluster.dir, "gw", &ep, &[]);
    let m = gw.metrics.clone();
    wait_until(SLOW, "gateway metrics listener", || {
        let m = m.clone();
        async move {
            request("GET", &format!("{m}/readyz"), &[], None)
                .await
                .is_ok()
        }
    })
    .await;
    assert_eq!(
        request("GET", &format!("{m}/readyz"), &[], None)
            .await
            .unwrap()
            .status,
        503
    );
    let r = gw.get("/get", &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("503"), "{}", r.body);
    cluster.nodes[0].sigcont();
    gw.wait_ready().await;
    assert_eq!(gw.get("/get", &[]).await.status, 200);

    // The store dies: the last config keeps being served.
    cluster.nodes[0].kill9();
    for _ in 0..20 {
        assert_eq!(gw.get("/get", &[]).await.status, 200);
    }
    wait_until(SLOW, "apisix_etcd_reachable 0", || async {
        gw.metrics_text().await.contains("apisix_etcd_reachable 0")
    })
    .await;
    assert_eq!(gw.get("/get", &[]).await.status, 200);

    // It comes back: changes flow again (the watch resumes).
    cluster.nodes[0].restart();
    cluster.wait_ready().await;
    put(
        &ep,
        "/apisix/routes/2",
        &json!({"uri": "/two", "upstream": {"nodes": {format!("127.0.0.1:{eport}"): 1}}}),
    );
    gw.wait_for(
        "route written after the store came back",
        "/two",
        &[],
        |r| r.status == 200,
    )
    .await;
}

/// An HTTP/2 (h2c, prior knowledge) connection to the gateway: the request
/// sender, and the connection's task, which ends when the gateway closes it.
async fn h2_connection(
    url: &str,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let addr = url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn h2_get(url: &str) -> hyper::Request<http_body_util::Empty<hyper::body::Bytes>> {
    hyper::Request::get(url)
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// SIGTERM (`docker stop`): not ready at once, still serving (HTTP/1
/// answers close their connection) for the drain period; then every
/// connection is shut down gracefully (an HTTP/2 request in flight across
/// the end of the drain is answered), then the registration is withdrawn
/// and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drains_on_sigterm_then_exits() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    put(
        &ep,
        "/apisix/routes/1",
        &json!({"uri": "/get", "upstream": {"nodes": {format!("127.0.0.1:{eport}"): 1}}}),
    );
    put(
        &ep,
        "/apisix/routes/2",
        &json!({"uri": "/delay/*", "upstream": {"nodes": {format!("127.0.0.1:{eport}"): 1}}}),
    );
    // A drain long enough for the checks below; the exit is awaited anyway.
    let mut gw = Gateway::spawn(&cluster.dir, "gw", &ep, &["--drain", "2"]);
    gw.wait_ready().await;
    let r = gw.get("/get", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("connection").is_none(), "{:?}", r.headers);
    let (mut h2, h2_conn) = h2_connection(&gw.url).await;
    let r = h2
        .send_request(h2_get(&format!("{}/get", gw.url)))
        .await
        .expect("an HTTP/2 request");
    assert_eq!(r.status(), 200);
    // Registered (the control plane's list of gateways) before the stop...
    let registration = |ep: &[String]| {
        let out = common::etcdctl(
            ep,
            &["get", "/cairn/gateways/gw", "--print-value-only"],
            None,
        );
        assert!(out.success, "{out:?}");
        out.stdout.contains("\"id\":\"gw\"")
    };
    common::wait_for(SLOW, "the gateway's registration", || {
        let ep = ep.clone();
        async move { registration(&ep).then_some(()) }
    })
    .await;

    gw.proc_.sigterm();
    let m = gw.metrics.clone();
    let not_ready = common::wait_for(SLOW, "/readyz to say not ready", || {
        let m = m.clone();
        async move {
            let r = request("GET", &format!("{m}/readyz"), &[], None)
                .await
                .ok()?;
            (r.status == 503).then_some(r)
        }
    })
    .await;
    assert!(
        not_ready.body.contains("shutting down"),
        "{}",
        not_ready.body
    );
    let r = gw.get("/get", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "{:?}",
        r.headers
    );
    // Sent during the 2 s drain, answered 3 s later: after the drain period
    // ended, which must wait for it rather than cut it.
    let r = h2
        .send_request(h2_get(&format!("{}/delay/3", gw.url)))
        .await
        .unwrap_or_else(|e| panic!("the request in flight was cut: {e}\n{}", gw.proc_.err_log()));
    assert_eq!(r.status(), 200);
    h2_conn.await.unwrap();
    let st = gw.proc_.exited().await;
    assert!(st.success(), "{st:?}\n{}", gw.proc_.err_log());
    assert!(
        gw.proc_.err_log().contains("drain period over"),
        "{}",
        gw.proc_.err_log()
    );
    // ...and gone once it has exited, not a lease TTL later.
    assert!(!registration(&ep), "{}", gw.proc_.err_log());
}

const ADMIN: &str = "test-admin-key-0123456789";

/// An HS256 JWT for `claims`.
fn jwt_hs256(claims: &Value, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::Mac;
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("{h}.{p}").as_bytes());
    let s = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{h}.{p}.{s}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_consumers_and_registration_with_the_control_plane() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let cp = common::control::ControlPlane::start(&cluster, &["--admin-key", ADMIN]).await;
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    let node = json!({"nodes": {format!("127.0.0.1:{eport}"): 1}});
    let gw = Gateway::start(&cluster.dir, "gw-reg", &ep).await;

    // Written through the admin API: the consumer's key-auth key is stored
    // encrypted (APISIX's data_encryption); the gateway decrypts it.
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/consumers",
            Some(ADMIN),
            Some(json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}})),
        )
        .await;
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.body
    );
    let stored = etcdctl_ok(
        &ep,
        &["get", "/apisix/consumers/jack", "--print-value-only"],
        None,
    );
    assert!(
        !stored.contains("jack-key"),
        "the key is stored encrypted: {stored}"
    );
    let r = cp
        .call(
            "PUT",
            "/apisix/admin/routes/1",
            Some(ADMIN),
            Some(json!({"uri": "/auth", "plugins": {"key-auth": {}, "limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}, "prometheus": {}}, "upstream": node})),
        )
        .await;
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.body
    );
    let r = gw
        .wait_for("key-auth route", "/auth", &[], |r| r.status == 401)
        .await;
    assert_eq!(r.json(), json!({"message": "Missing API key in request"}));
    let r = gw.get("/auth", &[("apikey", "wrong")]).await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"message": "Invalid API key in request"}))
    );
    let r = gw.get("/auth", &[("apikey", "jack-key")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-ratelimit-limit"], "2");
    assert_eq!(r.headers["x-ratelimit-remaining"], "1");
    let r = gw.get("/auth?apikey=jack-key", &[]).await;
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    assert_eq!(gw.get("/auth", &[("apikey", "jack-key")]).await.status, 429);
    let m = gw.metrics_text().await;
    assert!(
        m.contains(r#"apisix_http_status{code="200",route="1""#),
        "{m}"
    );
    assert!(m.contains(r#"consumer="jack""#), "{m}");
    assert!(
        m.contains("apisix_http_latency_bucket{type=\"request\""),
        "{m}"
    );

    // The gateway registered itself; the control plane lists it as healthy.
    let body = common::wait_for(SLOW, "gateway listed healthy", || async {
        let r = cp.call("GET", "/api/gateways", Some(ADMIN), None).await;
        let b = r.json();
        (b["list"][0]["id"] == "gw-reg" && b["list"][0]["status"] == "healthy").then_some(b)
    })
    .await;
    assert!(
        body["list"][0]["config_revision"].as_i64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(
        body["list"][0]["address"],
        gw.url.trim_start_matches("http://")
    );

    // More plugins, written with etcdctl.
    put(
        &ep,
        "/apisix/routes/pr",
        &json!({"uri": "/pr", "plugins": {"proxy-rewrite": {"uri": "/rewritten", "host": "rw.com", "headers": {"set": {"X-Added": "1"}, "remove": ["X-Drop"]}}, "request-id": {}}, "upstream": node}),
    );
    let r = gw
        .wait_for("proxy-rewrite route", "/pr?x=7", &[("x-drop", "1")], |r| {
            r.status == 200
        })
        .await;
    let b = r.json();
    assert_eq!(b["url"], "http://rw.com/rewritten?x=7");
    assert_eq!(b["headers"]["X-Added"], "1");
    assert!(b["headers"].get("X-Drop").is_none(), "{b}");
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(b["headers"]["X-Request-Id"], id.as_str());

    put(
        &ep,
        "/apisix/routes/rr",
        &json!({"uri": "/rr", "plugins": {"response-rewrite": {"status_code": 201, "body": "hello\n", "headers": {"set": {"X-Resp": "yes"}}}, "cors": {}}, "upstream": node}),
    );
    let r = gw
        .wait_for("response-rewrite route", "/rr", &[], |r| r.status == 201)
        .await;
    assert_eq!(r.body, "hello\n");
    assert_eq!(r.headers["x-resp"], "yes");
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    let r = gw
        .call(
            "OPTIONS",
            "/rr",
            &[
                ("origin", "http://a.com"),
                ("access-control-request-method", "GET"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["access-control-max-age"], "5");

    put(
        &ep,
        "/apisix/routes/ip",
        &json!({"uri": "/ip", "plugins": {"ip-restriction": {"blacklist": ["127.0.0.0/8"]}}, "upstream": node}),
    );
    let r = gw
        .wait_for("ip-restriction route", "/ip", &[], |r| r.status == 403)
        .await;
    assert_eq!(
        r.json(),
        json!({"message": "Your IP address is not allowed"})
    );

    put(
        &ep,
        "/apisix/consumers/bob",
        &json!({"username": "bob", "plugins": {"basic-auth": {"username": "bob", "password": "pw"}}}),
    );
    put(
        &ep,
        "/apisix/consumers/carol",
        &json!({"username": "carol", "plugins": {"jwt-auth": {"key": "carol-key", "secret": "carol-secret"}}}),
    );
    put(
        &ep,
        "/apisix/routes/basic",
        &json!({"uri": "/basic", "plugins": {"basic-auth": {}}, "upstream": node}),
    );
    put(
        &ep,
        "/apisix/routes/jwt",
        &json!({"uri": "/jwt", "plugins": {"jwt-auth": {}}, "upstream": node}),
    );
    let r = gw
        .wait_for("basic-auth route", "/basic", &[], |r| r.status == 401)
        .await;
    assert!(r.headers.contains_key("www-authenticate"));
    // bob:pw and bob:no
    assert_eq!(
        gw.get("/basic", &[("authorization", "Basic Ym9iOnB3")])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.get("/basic", &[("authorization", "Basic Ym9iOm5v")])
            .await
            .status,
        401
    );
    let r = gw
        .wait_for("jwt-auth route", "/jwt", &[], |r| r.status == 401)
        .await;
    assert_eq!(r.json(), json!({"message": "Missing JWT token in request"}));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let good = jwt_hs256(&json!({"key": "carol-key", "exp": exp}), "carol-secret");
    let bad = jwt_hs256(&json!({"key": "carol-key", "exp": exp}), "other");
    assert_eq!(
        gw.get("/jwt", &[("authorization", &format!("Bearer {good}"))])
            .await
            .status,
        200
    );
    assert_eq!(gw.get(&format!("/jwt?jwt={good}"), &[]).await.status, 200);
    let r = gw.get("/jwt", &[("authorization", &bad)]).await;
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"message": "failed to verify jwt"}))
    );

    // Global rules run on every route.
    put(
        &ep,
        "/apisix/global_rules/1",
        &json!({"plugins": {"response-rewrite": {"headers": {"set": {"X-Global": "1"}}}}}),
    );
    let r = gw
        .wait_for(
            "global rule",
            "/basic",
            &[("authorization", "Basic Ym9iOnB3")],
            |r| r.headers.contains_key("x-global"),
        )
        .await;
    assert_eq!(r.status, 200);

    // Unknown plugins are reported and skipped; unimplemented access
    // plugins refuse the route (fail closed).
    put(
        &ep,
        "/apisix/routes/unknown",
        &json!({"uri": "/unknown", "plugins": {"no-such-plugin": {}}, "upstream": node}),
    );
    put(
        &ep,
        "/apisix/routes/oidc",
        &json!({"uri": "/oidc", "plugins": {"openid-connect": {"client_id": "a"}}, "upstream": node}),
    );
    gw.wait_for("unknown plugin skipped", "/unknown", &[], |r| {
        r.status == 200
    })
    .await;
    gw.wait_for("unimplemented auth refused", "/oidc", &[], |r| {
        r.status == 503
    })
    .await;
    let m = gw.metrics_text().await;
    assert!(
        m.contains(r#"cairn_gateway_unsupported_plugins{plugin="no-such-plugin"}"#),
        "{m}"
    );
    // The same for a global rule: every route refuses rather than run without it.
    put(
        &ep,
        "/apisix/global_rules/2",
        &json!({"plugins": {"openid-connect": {"client_id": "a"}}}),
    );
    gw.wait_for(
        "global rule with an unimplemented auth plugin",
        "/unknown",
        &[],
        |r| r.status == 503,
    )
    .await;
}

/// A self-signed certificate and key (PEM) for `names`.
fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `curl` over TLS to the gateway with `sni` resolved to it; the status
/// code, or 0 when the handshake failed.
fn curl_tls(port: u16, sni: &str, ca: &Path) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{sni}:{port}:127.0.0.1")])
        .arg(format!("https://{sni}:{port}/get"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_certificates_by_sni_from_ssls() {
    if !have_tool(&etcdctl_bin()) || !have_tool(Path::new("/usr/bin/curl")) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    let gw = Gateway::start(&cluster.dir, "gw", &ep).await;
    let tls_port = gw.tls_port;
    put(
        &ep,
        "/apisix/routes/1",
        &json!({"uri": "/get", "upstream": {"nodes": {format!("127.0.0.1:{eport}"): 1}}}),
    );
    let (cert, key) = self_signed(&["test.com"]);
    let (wcert, wkey) = self_signed(&["*.wild.com"]);
    let ca = cluster.dir.join("test-com.pem");
    let wca = cluster.dir.join("wild-com.pem");
    std::fs::write(&ca, &cert).unwrap();
    std::fs::write(&wca, &wcert).unwrap();
    put(
        &ep,
        "/apisix/ssls/1",
        &json!({"cert": cert, "key": key, "snis": ["test.com"]}),
    );
    put(
        &ep,
        "/apisix/ssls/2",
        &json!({"cert": wcert, "key": wkey, "snis": ["*.wild.com"]}),
    );
    let d = cluster.dir.clone();
    common::wait_until(SLOW, "HTTPS with the exact SNI", || {
        let ca = ca.clone();
        async move {
            tokio::task::spawn_blocking(move || curl_tls(tls_port, "test.com", &ca))
                .await
                .unwrap()
                == 200
        }
    })
    .await;
    let w = wca.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || curl_tls(tls_port, "a.wild.com", &w))
            .await
            .unwrap(),
        200
    );
    // No certificate for this name: the handshake fails.
    let c = ca.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || curl_tls(tls_port, "other.com", &c))
            .await
            .unwrap(),
        0
    );
    // A new certificate is swapped in without a restart.
    let (cert2, key2) = self_signed(&["test.com"]);
    let ca2 = d.join("test-com-2.pem");
    std::fs::write(&ca2, &cert2).unwrap();
    put(
        &ep,
        "/apisix/ssls/1",
        &json!({"cert": cert2, "key": key2, "snis": ["test.com"]}),
    );
    common::wait_until(SLOW, "the new certificate served", || {
        let ca2 = ca2.clone();
        async move {
            tokio::task::spawn_blocking(move || curl_tls(tls_port, "test.com", &ca2))
                .await
                .unwrap()
                == 200
        }
    })
    .await;
    // HTTP/2: by ALPN over TLS, and h2c (prior knowledge) on the plain port.
    let (c2, gurl) = (ca2.clone(), gw.url.clone());
    let versions = tokio::task::spawn_blocking(move || {
        let v = |args: Vec<String>| {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version} %{http_code}",
                    "--max-time",
                    "10",
                ])
                .args(args)
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        (
            v(vec![
                "--http2".into(),
                "--cacert".into(),
                c2.display().to_string(),
                "--resolve".into(),
                format!("test.com:{tls_port}:127.0.0.1"),
                format!("https://test.com:{tls_port}/get"),
            ]),
            v(vec![
                "--http2-prior-knowledge".into(),
                format!("{gurl}/get"),
            ]),
        )
    })
    .await
    .unwrap();
    assert_eq!(versions, ("2 200".to_string(), "2 200".to_string()));
    let c = ca.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || curl_tls(tls_port, "test.com", &c))
            .await
            .unwrap(),
        0
    );
}

/// A node that accepts a connection, reads the request, and closes without
/// answering (the request was sent: a non-idempotent one must not be
/// re-sent); or, with `hold`, never answers (a read timeout).
async fn bad_node(hold: bool) -> u16 {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            if hold {
                held.push(s);
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_timeouts_and_retries_as_nginx() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    let gw = Gateway::start(&cluster.dir, "gw", &ep).await;
    let closer = bad_node(false).await;
    let holder = bad_node(true).await;

    // A node that never answers: 504 after the read timeout.
    put(
        &ep,
        "/apisix/routes/slow",
        &json!({"uri": "/slow", "upstream": {"nodes": {format!("127.0.0.1:{holder}"): 1}, "timeout": {"connect": 1, "send": 1, "read": 1}}}),
    );
    let r = gw
        .wait_for("504 from a silent node", "/slow", &[], |r| r.status != 404)
        .await;
    assert_eq!(r.status, 504);
    assert!(r.body.contains("504 Gateway Time-out"), "{}", r.body);

    // The first node takes the request and drops it; priority makes it first.
    put(
        &ep,
        "/apisix/routes/retry",
        &json!({"uri": "/retry", "upstream": {"nodes": [
            {"host": "127.0.0.1", "port": closer, "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": eport, "weight": 1, "priority": 0}]}}),
    );
    gw.wait_for("retry route", "/retry", &[], |r| r.status != 404)
        .await;
    // GET is idempotent: retried on the next node.
    assert_eq!(gw.get("/retry", &[]).await.status, 200);
    // POST reached the first node: never re-sent.
    let r = request("POST", &format!("{}/retry", gw.url), &[], Some("{}".into()))
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    // retries: 0 turns retrying off for GET too.
    put(
        &ep,
        "/apisix/routes/retry",
        &json!({"uri": "/retry", "upstream": {"retries": 0, "nodes": [
            {"host": "127.0.0.1", "port": closer, "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": eport, "weight": 1, "priority": 0}]}}),
    );
    gw.wait_for("no retries", "/retry", &[], |r| r.status == 502)
        .await;
}

/// Waits until `n` requests in a row answer 200.
async fn wait_all_ok(gw: &Gateway, path: &str, n: usize, what: &str) {
    common::wait_until(SLOW, what, || async {
        for _ in 0..n {
            if gw.get(path, &[]).await.status != 200 {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_take_bad_nodes_out() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let (_echo, eport) = echo(&cluster.dir, "echo").await;
    let gw = Gateway::start(&cluster.dir, "gw", &ep).await;
    let dead = free_port();
    let closer = bad_node(false).await;

    // Active: the dead node fails its probes and is skipped (no retries, so
    // before that about half the requests failed).
    put(
        &ep,
        "/apisix/routes/active",
        &json!({"uri": "/active", "upstream": {"retries": 0, "nodes": {format!("127.0.0.1:{dead}"): 1, format!("127.0.0.1:{eport}"): 1},
            "checks": {"active": {"http_path": "/get", "healthy": {"interval": 1, "successes": 1}, "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    );
    gw.wait_for("active route", "/active", &[], |r| r.status != 404)
        .await;
    wait_all_ok(
        &gw,
        "/active",
        10,
        "the dead node taken out by active checks",
    )
    .await;
    let m = gw.metrics_text().await;
    let line = format!(
        r#"apisix_upstream_status{{name="/apisix/routes/active",ip="127.0.0.1",port="{dead}"}} 0"#
    );
    assert!(m.contains(&line), "{line} in\n{m}");
    let line = format!(
        r#"apisix_upstream_status{{name="/apisix/routes/active",ip="127.0.0.1",port="{eport}"}} 1"#
    );
    assert!(m.contains(&line), "{line} in\n{m}");

    // Passive: the node that drops requests is taken out after two failures;
    // its TCP probes alone would keep it in, so this is the passive check.
    put(
        &ep,
        "/apisix/routes/passive",
        &json!({"uri": "/passive", "upstream": {"retries": 0, "nodes": {format!("127.0.0.1:{closer}"): 1, format!("127.0.0.1:{eport}"): 1},
            "checks": {"active": {"type": "tcp", "healthy": {"interval": 300}, "unhealthy": {"interval": 300}},
                       "passive": {"unhealthy": {"tcp_failures": 2}}}}}),
    );
    gw.wait_for("passive route", "/passive", &[], |r| r.status != 404)
        .await;
    let mut failed = 0;
    for _ in 0..20 {
        if gw.get("/passive", &[]).await.status != 200 {
            failed += 1;
        }
    }
    assert!(
        failed >= 1,
        "the dropping node was tried before it was taken out"
    );
    wait_all_ok(
        &gw,
        "/passive",
        10,
        "the dropping node taken out by passive checks",
    )
    .await;

    // Every node unhealthy: all are used again (APISIX's rule), so the
    // answer is the dead node's 502, not an error about no nodes.
    put(
        &ep,
        "/apisix/routes/all-bad",
        &json!({"uri": "/all-bad", "upstream": {"retries": 0, "nodes": {format!("127.0.0.1:{dead}"): 1},
            "checks": {"active": {"healthy": {"interval": 1}, "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    );
    gw.wait_for("all-bad route", "/all-bad", &[], |r| r.status == 502)
        .await;
}

/// A node that keeps every request's head (the bytes as they came) and
/// answers by path: `/chunked` with a chunked body of 3 × 70,000 bytes,
/// `/head` with a Content-Length and no body (for a HEAD request), anything
/// else with "got N" (N: the body's length, read by its Content-Length).
/// Connections are kept alive; the heads seen are returned.
async fn raw_node() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..len);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(head);
                    let answer = if path.starts_with("/chunked") {
                        let piece = vec![b'c'; 70_000];
                        let mut a =
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                        for _ in 0..3 {
                            a.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                            a.extend_from_slice(&piece);
                            a.extend_from_slice(b"\r\n");
                        }
                        a.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
                        a
                    } else if path.starts_with("/head") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-node: raw\r\n\r\n".to_vec()
                    } else {
                        let text = format!("got {len}");
                        format!("HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\ncontent-length: {}\r\n\r\n{text}", text.len()).into_bytes()
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, heads)
}

/// Runs curl with `args`; its stdout, or a panic with its stderr.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_and_response_bodies_cross_the_gateway_as_http_1_1() {
    if !have_tool(&etcdctl_bin()) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 1).await;
    let ep = cluster.endpoints();
    let gw = Gateway::start(&cluster.dir, "gw", &ep).await;
    let (port, heads) = raw_node().await;
    put(
        &ep,
        "/apisix/routes/raw",
        &json!({"uri": "/*", "upstream": {"nodes": {format!("127.0.0.1:{port}"): 1}}}),
    );
    gw.wait_for("the raw route", "/x", &[], |r| r.status == 200)
        .await;

    // A chunked upload of 100,000 bytes goes up with its length, once the
    // gateway has it all; hop-by-hop headers stay behind, X-Forwarded-For
    // gets the client appended; the answer's hop-by-hop headers are dropped.
    let file = cluster.dir.join("upload");
    std::fs::write(&file, vec![b'u'; 100_000]).unwrap();
    let upload = format!("@{}", file.display());
    let url = format!("{}/post?x=1", gw.url);
    let out = curl(&[
        "-i",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Connection: keep-alive, x-secret",
        "-H",
        "X-Secret: 1",
        "-H",
        "X-Forwarded-For: 10.0.0.1",
        "-H",
        "X-Forwarded-For: 10.0.0.2",
        "--data-binary",
        &upload,
        &url,
    ]);
    assert!(out.ends_with("got 100000"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("x-hop"), "{out}");
    let head = heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.starts_with("POST /post?x=1 HTTP/1.1\r\n"), "{head}");
    for want in [
        "content-length: 100000\r\n",
        "x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1\r\n",
        "x-real-ip: 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
    ] {
        assert!(head.contains(want), "{want:?} not in {head}");
    }
    for gone in ["transfer-encoding", "x-secret", "connection:"] {
        assert!(!head.contains(gone), "{gone:?} in {head}");
    }
    // An empty POST still says its length, as nginx does.
    let out = curl(&["-X", "POST", &format!("{}/empty", gw.url)]);
    assert_eq!(out, "got 0");
    let head = heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.contains("content-length: 0\r\n"), "{head}");
    let out = curl(&[&format!("{}/get", gw.url)]);
    assert_eq!(out, "got 0");
    let head = heads.lock().unwrap().last().cloned().unwrap();
    assert!(!head.contains("content-length"), "{head}");

    // A chunked answer of 210,000 bytes reaches the client whole, twice on
    // one client connection (the upstream connection goes back each time).
    let chunked = format!("{}/chunked", gw.url);
    let out = curl(&[&chunked, &chunked]);
    assert_eq!(out.len(), 420_000);
    assert!(out.bytes().all(|b| b == b'c'));

    // HEAD: the answer has a length and no body; the connection goes on.
    let out = curl(&["-I", &format!("{}/head", gw.url)]);
    assert!(out.contains("x-node: raw"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("content-length: 5"),
        "{out}"
    );
    let out = curl(&[&format!("{}/after-head", gw.url)]);
    assert_eq!(out, "got 0");
}
