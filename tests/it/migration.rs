//! Moving between etcd 3.4 and Cairn while the source keeps taking writes,
//! with `etcdctl make-mirror` (README "Migrating from etcd" and "Back to
//! etcd"): a writer puts, overwrites and deletes keys on the source, the
//! mirror copies them to the destination, and once the writer stops every
//! key and value on the destination matches the source.

use crate::common;

use std::process::{Child, Command, Stdio};

use cairn_client::{Client, DeleteOptions, PutOptions};
use common::{etcdctl_bin, etcdctl_ok, wait_until, Cluster, Impl, SLOW};

/// etcd 3.4 under load, mirrored into Cairn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn make_mirror_from_etcd_into_cairn() {
    if !common::available(Impl::Etcd) {
        return;
    }
    mirror(Impl::Etcd, Impl::Cairn).await;
}

/// And back: Cairn under load, mirrored into etcd 3.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn make_mirror_from_cairn_back_into_etcd() {
    if !common::available(Impl::Etcd) {
        return;
    }
    mirror(Impl::Cairn, Impl::Etcd).await;
}

/// `etcdctl make-mirror` from `source` into `dest`, killed (and reaped) on drop.
struct Mirror(Child);

impl Mirror {
    fn start(source: &[String], dest: &str) -> Mirror {
        let child = Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", source.join(",")))
            .args(["make-mirror", dest])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl make-mirror");
        Mirror(child)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts, overwrites and deletes keys under `m/` in a fixed pattern.
async fn write_load(client: &Client, ops: u64) {
    for i in 0..ops {
        let key = format!("m/{:03}", i % 300);
        if i % 7 == 6 {
            client.delete(key, DeleteOptions::default()).await.unwrap();
        } else {
            client
                .put(key, format!("v{i}"), PutOptions::default())
                .await
                .unwrap();
        }
    }
}

/// Every key and value, in key order, as etcdctl prints them.
fn everything(eps: &[String]) -> String {
    etcdctl_ok(eps, &["get", "", "--prefix"], None)
}

async fn mirror(from: Impl, to: Impl) {
    let source = Cluster::start(from, 3).await;
    let dest = Cluster::start(to, 3).await;
    let (src_eps, dst_eps) = (source.endpoints(), dest.endpoints());
    let client = source.client().await;
    // Keys written before the mirror starts are copied by its first sync,
    // the rest by its watch.
    write_load(&client, 200).await;
    let _mirror = Mirror::start(&src_eps, &dst_eps[0]);
    write_load(&client, 800).await;
    let want = everything(&src_eps);
    assert!(
        want.lines().count() > 300,
        "too few keys on the source:\n{want}"
    );
    wait_until(
        SLOW,
        "the destination to hold what the source holds",
        || {
            let dst_eps = dst_eps.clone();
            let want = want.clone();
            async move { everything(&dst_eps) == want }
        },
    )
    .await;
}
