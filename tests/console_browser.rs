//! The web console in headless Chromium, driven over WebDriver
//! (chromedriver): log in, create a route with the form, find it in the list,
//! edit it, see a validation error next to the form, roll it back, and open
//! the cluster and audit pages. A screenshot of each page goes to
//! `target/console-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::control::ControlPlane;
use common::{free_port, have_tool, wait_for, wait_until, Cluster, Impl, SLOW};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ADMIN: &str = "browser-test-admin-key";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shots_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: keep the screenshots beside it.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the element at `css` exists and its text contains `want`.
async fn wait_text(c: &Client, css: &str, want: &str) -> String {
    wait_for(SLOW, &format!("{css} to contain {want:?}"), || async move {
        let e = c.find(Locator::Css(css)).await.ok()?;
        let t = e.text().await.ok()?;
        t.contains(want).then_some(t)
    })
    .await
}

/// Waits until the element at `css` exists and is displayed.
async fn wait_visible(c: &Client, css: &str, what: &str) {
    wait_until(SLOW, what, || async {
        match c.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
}

async fn set_input(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_in_headless_chromium() {
    if !have_tool(Path::new(CHROMIUM)) || !have_tool(Path::new(CHROMEDRIVER)) {
        return;
    }
    let cluster = Cluster::start(Impl::Cairn, 3).await;
    let cfg = cluster.dir.join("control.yaml");
    let hash = cairn_control::console::hash_password("s3cret-pass").unwrap();
    std::fs::write(
        &cfg,
        format!("users:\n  - username: alice\n    password_hash: '{hash}'\n    role: admin\n"),
    )
    .unwrap();
    let cp = ControlPlane::start(
        &cluster,
        &["--admin-key", ADMIN, "--config", cfg.to_str().unwrap()],
    )
    .await;

    let port = free_port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    wait_until(SLOW, "chromedriver to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("WebDriver session");

    // Log in.
    c.goto(&cp.url).await.unwrap();
    c.wait()
        .at_most(SLOW)
        .for_element(Locator::Css("#login-user"))
        .await
        .unwrap();
    wait_visible(&c, "#login-view", "the login form to show").await;
    set_input(&c, "#login-user", "alice").await;
    set_input(&c, "#login-pass", "wrong").await;
    click(&c, "#login-submit").await;
    wait_text(&c, "#login-error", "wrong").await;
    shot(&c, "01-login").await;
    set_input(&c, "#login-pass", "s3cret-pass").await;
    click(&c, "#login-submit").await;
    wait_text(&c, "#who", "console:alice").await;

    // Create a route through the form.
    wait_text(&c, "#view h1", "Routes").await;
    click(&c, "#new").await;
    wait_text(&c, "#view h1", "Create").await;
    set_input(&c, "input[name=name]", "browser-route").await;
    set_input(&c, "input[name=uri]", "/from-browser").await;
    shot(&c, "02-route-create").await;
    click(&c, "#save").await;
    wait_text(&c, "#list tbody", "/from-browser").await;
    shot(&c, "03-routes-list").await;
    let id = c
        .find(Locator::Css("#list tbody tr[data-id]"))
        .await
        .unwrap()
        .attr("data-id")
        .await
        .unwrap()
        .expect("row id");
    let stored = cp
        .call(
            "GET",
            &format!("/apisix/admin/routes/{id}"),
            Some(ADMIN),
            None,
        )
        .await
        .json();
    assert_eq!(stored["value"]["name"], "browser-route");
    assert_eq!(stored["value"]["uri"], "/from-browser");

    // Search.
    set_input(&c, "#search", "nothing-matches").await;
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    wait_text(&c, "#list tbody", "Nothing here").await;

    // Edit it; a bad value shows the API's error next to the form.
    c.goto(&format!("{}/#/routes/edit/{id}", cp.url))
        .await
        .unwrap();
    wait_text(&c, "#view h1", "Edit").await;
    wait_until(SLOW, "the form to be filled", || async {
        c.find(Locator::Css("input[name=uri]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("/from-browser")
    })
    .await;
    set_input(&c, "input[name=uri]", "").await;
    click(&c, "#save").await;
    let err = wait_text(&c, "#form-error", "invalid configuration").await;
    assert!(err.contains("\"uri\""), "{err}");
    shot(&c, "04-route-edit-error").await;
    set_input(&c, "input[name=uri]", "/edited").await;
    click(&c, "#save").await;
    wait_text(&c, "#list tbody", "/edited").await;

    // Offline and publish again from the list.
    click(&c, "#list tbody tr[data-id] .toggle").await;
    wait_text(&c, "#list tbody", "offline").await;
    let v = cp
        .call(
            "GET",
            &format!("/apisix/admin/routes/{id}"),
            Some(ADMIN),
            None,
        )
        .await
        .json();
    assert_eq!(v["value"]["status"], 0);
    click(&c, "#list tbody tr[data-id] .toggle").await;
    wait_text(&c, "#list tbody", "published").await;

    // History: roll back to the version the form created.
    c.goto(&format!("{}/#/routes/history/{id}", cp.url))
        .await
        .unwrap();
    let first = stored["modifiedIndex"].as_i64().unwrap();
    let row = format!("#history tr[data-rev=\"{first}\"]");
    wait_for(SLOW, "the first version in the history", || {
        let row = row.clone();
        let c = &c;
        async move { c.find(Locator::Css(&row)).await.ok() }
    })
    .await;
    click(&c, &format!("{row} .show")).await;
    wait_text(&c, "#diff", "/edited").await;
    shot(&c, "05-route-history").await;
    click(&c, &format!("{row} .rollback")).await;
    wait_text(&c, "#history-msg", "Rolled back").await;
    shot(&c, "06-route-rolled-back").await;
    let v = cp
        .call(
            "GET",
            &format!("/apisix/admin/routes/{id}"),
            Some(ADMIN),
            None,
        )
        .await
        .json();
    assert_eq!(v["value"]["uri"], "/from-browser");

    // Cluster page: three members, one leader, refreshed live.
    click(&c, "a[href=\"#/cluster\"]").await;
    wait_for(SLOW, "three healthy members with one leader", || async {
        let rows = c
            .find_all(Locator::Css("#cluster-table tr.member"))
            .await
            .ok()?;
        let text = c
            .find(Locator::Css("#cluster-table"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (rows.len() == 3
            && text.matches("leader").count() == 1
            && text.matches("healthy").count() == 3)
            .then_some(())
    })
    .await;
    shot(&c, "07-cluster").await;

    // Audit log lists the console's writes under the user's name.
    click(&c, "a[href=\"#/audit\"]").await;
    wait_text(&c, "#audit tbody", "console:alice").await;
    wait_text(&c, "#audit tbody", "rollback").await;
    shot(&c, "08-audit").await;

    // Log out: the data calls are refused again.
    click(&c, "#logout").await;
    wait_visible(&c, "#login-view", "the login form after logout").await;
    c.close().await.unwrap();
}
