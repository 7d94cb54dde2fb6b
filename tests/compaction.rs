//! `--auto-compaction-retention` (etcd's periodic mode): the leader compacts
//! history older than the retention by itself. Run on etcd and Cairn.

mod common;

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
