//! `--quota-backend-bytes` and alarms: past the quota a member raises
//! NOSPACE, writes are refused with etcd's error while deletes still pass,
//! and `etcdctl alarm list/disarm` see and clear it. Run on etcd and Cairn.

use crate::common;

use std::time::Duration;

use cairn_client::{DeleteOptions, KeyRange, PutOptions};
use common::{etcdctl, etcdctl_ok, wait_until, Cluster, ClusterOptions, Impl};

cluster_tests!(nospace_alarm_refuses_writes_until_disarmed);

async fn nospace_alarm_refuses_writes_until_disarmed(imp: Impl) {
    let opts = ClusterOptions {
        extra_args: vec!["--quota-backend-bytes".into(), "3000000".into()],
        ..Default::default()
    };
    let c = Cluster::start_with(imp, 3, opts).await;
    let client = c.client().await;
    let eps = c.endpoints();
    let value = vec![b'x'; 900 * 1024];
    let mut refused = None;
    for i in 0..40 {
        match client
            .put(format!("big{i}"), value.clone(), PutOptions::default())
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    // The alarm may be raised between writes; then the next small write fails.
    let err = match refused {
        Some(e) => e,
        None => {
            let eps2 = eps.clone();
            wait_until(Duration::from_secs(20), "NOSPACE alarm raised", || {
                let eps = eps2.clone();
                async move { etcdctl_ok(&eps, &["alarm", "list"], None).contains("NOSPACE") }
            })
            .await;
            client
                .put("small", "x", PutOptions::default())
                .await
                .unwrap_err()
        }
    };
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: database space exceeded",
        "{err:?}"
    );
    assert_eq!(err.code(), cairn_client::Code::ResourceExhausted);
    let list = etcdctl_ok(&eps, &["alarm", "list"], None);
    assert!(list.contains("alarm:NOSPACE"), "{list}");

    // Freeing space is allowed while the alarm is raised: delete, compact
    // the history away, defragment (what an operator does, etcd's runbook).
    let del = client
        .delete(
            "big",
            DeleteOptions {
                range: KeyRange::Prefix,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let rev = del.header.unwrap().revision.to_string();
    etcdctl_ok(&eps, &["compaction", "--physical", &rev], None);
    etcdctl_ok(&eps, &["defrag"], None);
    let out = etcdctl(&eps, &["alarm", "disarm"], None);
    assert!(out.success, "{}", out.stderr);
    // Disarmed: no alarm left, and writes pass again.
    assert_eq!(etcdctl_ok(&eps, &["alarm", "list"], None).trim(), "");
    client
        .put("after", "x", PutOptions::default())
        .await
        .unwrap();
    let r = etcdctl_ok(&eps, &["get", "after", "--print-value-only"], None);
    assert_eq!(r.trim(), "x");
}
