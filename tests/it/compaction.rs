//! `--auto-compaction-retention` (etcd's periodic mode): the leader compacts
//! history older than the retention by itself. Run on etcd and Cairn.

use crate::common;

use std::time::Duration;

use cairn_client::{GetOptions, PutOptions};
use common::{wait_until, Cluster, ClusterOptions, Impl};

cluster_tests!(periodic_auto_compaction_compacts_old_revisions);

async fn periodic_auto_compaction_compacts_old_revisions(imp: Impl) {
    let opts = ClusterOptions {
        extra_args: vec![
            "--auto-compaction-mode".into(),
            "periodic".into(),
            "--auto-compaction-retention".into(),
            "2s".into(),
        ],
        ..Default::default()
    };
    let c = Cluster::start_with(imp, 3, opts).await;
    let client = c.client().await;
    for i in 0..5 {
        client
            .put("k", format!("v{i}"), PutOptions::default())
            .await
            .unwrap();
    }
    // Keep writing so there is always a newer revision to keep, and wait for
    // revision 2 to be compacted away.
    let mut i = 5;
    wait_until(
        Duration::from_secs(60),
        "revision 2 to be auto-compacted",
        || {
            i += 1;
            let client = client.clone();
            async move {
                client
                    .put("k", format!("v{i}"), PutOptions::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                match client
                    .get(
                        "k",
                        GetOptions {
                            revision: 2,
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Err(e) => {
                        e.message() == "etcdserver: mvcc: required revision has been compacted"
                    }
                    Ok(_) => false,
                }
            }
        },
    )
    .await;
    // The latest value is still there.
    let r = client.get("k", GetOptions::default()).await.unwrap();
    assert_eq!(r.kvs.len(), 1);
}

/// Revision mode keeps the last `retention` revisions. etcd checks every 5
/// minutes (Cairn too, by default), too long for a test, so this runs on
/// Cairn with its hidden check interval shortened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revision_auto_compaction_keeps_the_last_revisions() {
    let opts = ClusterOptions {
        extra_args: vec![
            "--auto-compaction-mode".into(),
            "revision".into(),
            "--auto-compaction-retention".into(),
            "10".into(),
            "--revision-compaction-interval-ms".into(),
            "300".into(),
        ],
        ..Default::default()
    };
    let c = Cluster::start_with(Impl::Cairn, 3, opts).await;
    let client = c.client().await;
    let mut last = 0;
    for i in 0..30 {
        last = client
            .put("k", format!("v{i}"), PutOptions::default())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    let at = |revision: i64| {
        let client = client.clone();
        async move {
            let o = GetOptions {
                revision,
                ..Default::default()
            };
            client.get("k", o).await
        }
    };
    // Compacted to `last - 10` once the leader's check has run.
    wait_until(
        Duration::from_secs(30),
        "compaction to last - 10",
        || async {
            at(last - 11).await.is_err_and(|e| {
                e.message() == "etcdserver: mvcc: required revision has been compacted"
            })
        },
    )
    .await;
    // The last ten revisions are all still readable.
    for r in last - 10..=last {
        let got = at(r).await.unwrap();
        assert_eq!(got.kvs[0].mod_revision, r);
    }
}
