//! `cairn control` as a child process on a free loopback port, and a small
//! HTTP client (hyper, already in the dependency tree) to talk to it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::{cairn_bin, free_port, tail, wait_until, Cluster, SLOW};

/// A finished HTTP exchange.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP request; `Err` only when no answer came (connection failed).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Result<Resp, String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| format!("{method} {url}: no answer in 30 s"))?
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// A running `cairn control`.
pub struct ControlPlane {
    pub url: String,
    pub log_path: PathBuf,
    pub stdout_path: PathBuf,
    child: Option<Child>,
}

impl ControlPlane {
    /// Starts `cairn control` against `cluster` with `args` added, and waits
    /// until `/healthz` answers.
    pub async fn start(cluster: &Cluster, args: &[&str]) -> ControlPlane {
        let port = free_port();
        let log_path = cluster.dir.join(format!("control-{port}.log"));
        let stdout_path = cluster.dir.join(format!("control-{port}.out"));
        let child = Command::new(cairn_bin())
            .arg("control")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--endpoints", &cluster.endpoints().join(",")])
            .args(args)
            .env_remove("CAIRN_ADMIN_KEY")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("spawn cairn control");
        let cp = ControlPlane {
            url: format!("http://127.0.0.1:{port}"),
            log_path,
            stdout_path,
            child: Some(child),
        };
        let url = cp.url.clone();
        wait_until(SLOW, "cairn control to answer /healthz", || {
            let url = url.clone();
            async move {
                request("GET", &format!("{url}/healthz"), &[], None)
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        cp
    }

    /// A request with an optional API key; panics if no answer comes.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Resp {
        let mut headers = Vec::new();
        if let Some(k) = key {
            headers.push(("x-api-key", k));
        }
        request(
            method,
            &format!("{}{path}", self.url),
            &headers,
            body.map(|b| b.to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\ncontrol log:\n{}", tail(&self.log_path, 40)))
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("==== cairn control log tail:\n{}", tail(&self.log_path, 40));
        }
    }
}
