//! The web console in headless Chromium, driven over WebDriver
//! (chromedriver): log in, create a route with the form, find it in the list,
//! edit it, see a validation error next to the form, roll it back, open the
//! cluster and audit pages, every resource's page, the plugin editor, the SSL
//! page (the key shown as "set", never its value), an id from the URL that is
//! refused, the gateways page with a healthy, a lagging and a lost gateway,
//! and the "applied by every gateway" note after a save. A screenshot of each
//! page goes to `target/console-screenshots/`.

use crate::common;

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

/// The id of the first list row whose text contains `text`.
async fn row_id(c: &Client, text: &str) -> String {
    for row in c
        .find_all(Locator::Css("#list tbody tr[data-id]"))
        .await
        .unwrap()
    {
        if row.text().await.unwrap_or_default().contains(text) {
            return row.attr("data-id").await.unwrap().expect("a row id");
        }
    }
    panic!("no list row contains {text:?}")
}

/// Opens the create form of a resource page.
async fn open_create(c: &Client, url: &str, res: &str) {
    c.goto(&format!("{url}/#/{res}/new")).await.unwrap();
    wait_text(c, "#view h1", "Create").await;
}

/// Types into the list's search box and presses Enter.
async fn search(c: &Client, text: &str) {
    set_input(c, "#search", text).await;
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
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
    let id = row_id(&c, "/from-browser").await;
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
    search(&c, "nothing-matches").await;
    wait_text(&c, "#list tbody", "Nothing here").await;
    // Search by URI (server-side filter), then clear the search.
    search(&c, "/from").await;
    wait_text(&c, "#list tbody", "/from-browser").await;
    search(&c, "").await;
    wait_text(&c, "#page-info", "1 in all").await;

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
    let outcome = wait_for(SLOW, "the edit to be saved or refused", || async {
        if let Ok(e) = c.find(Locator::Css("#form-error")).await {
            let t = e.text().await.unwrap_or_default();
            if !t.is_empty() && !t.contains("\"uri\"") {
                return Some(t);
            }
        }
        let e = c.find(Locator::Css("#list tbody")).await.ok()?;
        let t = e.text().await.ok()?;
        t.contains("/edited").then_some(t)
    })
    .await;
    assert!(outcome.contains("/edited"), "{outcome}");

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

    // Values that are not what the schema says (written around the API)
    // do not break a list page.
    let store = cluster.client().await;
    for (key, v) in [
        (
            "/apisix/routes/weird",
            json!({"id": "weird", "uris": "not-a-list", "name": "weird"}),
        ),
        ("/apisix/ssls/weird", json!({"id": "weird", "snis": 5})),
    ] {
        store
            .put(key, v.to_string(), Default::default())
            .await
            .unwrap();
    }
    // Every resource has its page.
    for (i, (res, title)) in [
        ("routes", "Routes"),
        ("services", "Services"),
        ("upstreams", "Upstreams"),
        ("stream_routes", "Stream routes"),
        ("global_rules", "Global rules"),
        ("plugin_configs", "Plugin configs"),
        ("plugin_metadata", "Plugin metadata"),
        ("consumers", "Consumers"),
        ("consumer_groups", "Consumer groups"),
        ("ssls", "SSL certificates"),
        ("secrets", "Secrets"),
        ("protos", "Protos"),
    ]
    .iter()
    .enumerate()
    {
        click(&c, &format!("#nav a[href=\"#/{res}\"]")).await;
        wait_text(&c, "#view h1", title).await;
        wait_text(&c, "#page-info", "Page 1").await;
        if *res == "routes" || *res == "ssls" {
            wait_text(&c, "#list tbody", "weird").await;
        }
        shot(&c, &format!("10-{:02}-{res}", i + 1)).await;
    }

    // A consumer with key-auth, through the schema-driven plugin editor.
    open_create(&c, &cp.url, "consumers").await;
    set_input(&c, "input[name=username]", "carol").await;
    wait_for(SLOW, "the plugin list", || async {
        c.find(Locator::Css(
            "#plugin-pick option[value=key-auth], #plugin-pick option",
        ))
        .await
        .ok()
    })
    .await;
    c.find(Locator::Css("#plugin-pick"))
        .await
        .unwrap()
        .select_by_label("key-auth")
        .await
        .unwrap();
    click(&c, "#plugin-add").await;
    wait_visible(
        &c,
        ".plugin[data-plugin=key-auth] input[data-k=key]",
        "key-auth's form",
    )
    .await;
    set_input(
        &c,
        ".plugin[data-plugin=key-auth] input[data-k=key]",
        "carol-secret-key",
    )
    .await;
    shot(&c, "11-consumer-plugin-editor").await;
    click(&c, "#save").await;
    wait_text(&c, "#list tbody", "carol").await;
    let stored = cp
        .call("GET", "/apisix/admin/consumers/carol", Some(ADMIN), None)
        .await;
    assert!(!stored.body.contains("carol-secret-key"), "{}", stored.body);
    assert!(stored.body.contains("<secret fp:"), "{}", stored.body);
    // Its edit page says the key is set and never holds it.
    c.goto(&format!("{}/#/consumers/edit/carol", cp.url))
        .await
        .unwrap();
    let pill = wait_text(&c, ".plugin[data-plugin=key-auth] .pill.secret", "set").await;
    assert_eq!(pill, "set");
    assert!(!c.source().await.unwrap().contains("carol-secret-key"));
    // Creating one that exists never overwrites it.
    open_create(&c, &cp.url, "consumers").await;
    set_input(&c, "input[name=username]", "carol").await;
    click(&c, "#save").await;
    wait_text(&c, "#form-error", "exists already").await;
    shot(&c, "12-consumer-exists").await;

    // SSL: PEM in, key shown as "set", never shown back.
    let site = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    c.goto(&format!("{}/#/ssls/new", cp.url)).await.unwrap();
    wait_text(&c, "#view h1", "Create").await;
    set_input(&c, "input[name=snis]", "shop.test").await;
    for (field, pem) in [
        ("cert", site.cert.pem()),
        ("key", site.key_pair.serialize_pem()),
    ] {
        c.execute(
            "const el = document.querySelector(`textarea[name=${arguments[0]}]`); el.value = arguments[1]; el.dispatchEvent(new Event('change'));",
            vec![json!(field), json!(pem)],
        )
        .await
        .unwrap();
    }
    click(&c, "#save").await;
    wait_text(&c, "#list tbody", "shop.test").await;
    let id = row_id(&c, "shop.test").await;
    c.goto(&format!("{}/#/ssls/edit/{id}", cp.url))
        .await
        .unwrap();
    let pill = wait_text(&c, "[data-secret=key]", "set").await;
    assert_eq!(pill, "set");
    wait_text(&c, "#ssl-validity", "valid from").await;
    let src = c.source().await.unwrap();
    assert!(!src.contains("PRIVATE KEY"), "the SSL page shows the key");
    shot(&c, "13-ssl-edit").await;

    // An id from the URL never reaches the API unchecked.
    c.goto(&format!("{}/#/routes/edit/a%3Fttl%3D1", cp.url))
        .await
        .unwrap();
    wait_text(&c, "#id-error", "Not a valid id").await;

    // Gateways: registrations under leases, healthy / lagging / lost.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let head = store
        .get("/", Default::default())
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let lease = store.lease_grant(60, 0).await.unwrap().id;
    let register = |id: &'static str, rev: i64, updated: u64| {
        let store = store.clone();
        async move {
            let v = json!({"id": id, "hostname": "host-1", "address": "127.0.0.1:9080",
                "version": "0.1.0", "start_time": now - 100, "config_revision": rev,
                "last_error": null, "updated_at": updated});
            store
                .put(
                    format!("/cairn/gateways/{id}"),
                    v.to_string(),
                    cairn_client::PutOptions {
                        lease,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
    };
    register("gw-healthy", head, now).await;
    register("gw-lagging", 1, now).await;
    register("gw-lost", head, now - 120).await;
    click(&c, "a[href=\"#/cluster\"]").await;
    wait_visible(
        &c,
        "#to-gateways",
        "the cluster page's link to the gateways",
    )
    .await;
    click(&c, "#to-gateways").await;
    for (id, status) in [
        ("gw-healthy", "healthy"),
        ("gw-lagging", "lagging"),
        ("gw-lost", "lost"),
    ] {
        let css = format!("#gateways-table tr[data-id={id}][data-status={status}]");
        wait_for(SLOW, &format!("{id} shown {status}"), || {
            let css = css.clone();
            let c = &c;
            async move { c.find(Locator::Css(&css)).await.ok() }
        })
        .await;
    }
    shot(&c, "14-gateways").await;
    // A change made in the console shows when every live gateway applied it.
    open_create(&c, &cp.url, "upstreams").await;
    set_input(&c, "input[name=__id]", "applied-u").await;
    click(&c, "#save").await;
    wait_text(&c, "#applied", "Applied by 0 of 2").await;
    let saved = cp
        .call(
            "GET",
            "/apisix/admin/upstreams/applied-u",
            Some(ADMIN),
            None,
        )
        .await
        .json()["modifiedIndex"]
        .as_i64()
        .unwrap();
    register("gw-healthy", saved, now).await;
    register("gw-lagging", saved, now).await;
    wait_text(&c, "#applied", "Applied by 2 of 2 gateways.").await;
    shot(&c, "15-applied").await;

    // The plugin catalog.
    click(&c, "a[href=\"#/plugins\"]").await;
    // The catalog is filled by a fetch after the page renders.
    wait_text(&c, "#catalog", "limit-count").await;
    click(&c, "#catalog a[data-plugin=limit-count]").await;
    wait_text(&c, "#schema", "time_window").await;
    shot(&c, "16-plugin-catalog").await;

    // Log out: the data calls are refused again.
    click(&c, "#logout").await;
    wait_visible(&c, "#login-view", "the login form after logout").await;
    c.close().await.unwrap();
}
