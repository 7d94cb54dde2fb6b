//! TLS on both ports, with a PKI the test generates (rcgen): etcdctl 3.4
//! with `--cacert/--cert/--key` and Cairn's client work; clients without a
//! certificate, or with one from another CA, are refused. Runs against etcd
//! 3.4 with the same flags.

use crate::common;

use cairn_client::{Client, GetOptions, PutOptions, TlsOptions};
use common::tls::{pki, write};
use common::{etcdctl, etcdctl_ok, Cluster, ClusterOptions, Impl, TestTls};

cluster_tests!(mutual_tls_on_client_and_peer_ports);

fn tls_args(t: &TestTls) -> Vec<String> {
    vec![
        format!("--cacert={}", t.ca.display()),
        format!("--cert={}", t.cert.display()),
        format!("--key={}", t.key.display()),
    ]
}

async fn mutual_tls_on_client_and_peer_ports(imp: Impl) {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "member", &pki("cairn test"));
    let rogue = write(dir.path(), "rogue", &pki("rogue"));
    let opts = ClusterOptions {
        tls: Some(good.clone()),
        ..Default::default()
    };
    let c = Cluster::start_with(imp, 3, opts).await;
    let eps = c.endpoints();
    assert!(eps.iter().all(|e| e.starts_with("https://")), "{eps:?}");

    // etcdctl with the right certificates: writes, reads, cluster calls.
    let args = tls_args(&good);
    let with = |extra: &[&str]| -> Vec<String> {
        args.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        etcdctl_ok(&eps, &a, None)
    };
    run(with(&["put", "k", "over tls"]));
    assert_eq!(run(with(&["get", "k", "--print-value-only"])), "over tls\n");
    let members = run(with(&["member", "list"]));
    assert_eq!(
        members.matches("https://127.0.0.1:").count(),
        6,
        "{members}"
    );
    // etcdctl prints health to stderr.
    let a = with(&["endpoint", "health"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = etcdctl(&eps, &a, None);
    assert!(o.success, "{o:?}");
    assert_eq!(
        o.stderr.matches("is healthy").count() + o.stdout.matches("is healthy").count(),
        3,
        "{o:?}"
    );

    // Refused: no client certificate, a certificate from another CA, and
    // plain HTTP on the TLS port.
    let no_cert = [format!("--cacert={}", good.ca.display())];
    let rogue_cert = [
        format!("--cacert={}", good.ca.display()),
        format!("--cert={}", rogue.cert.display()),
        format!("--key={}", rogue.key.display()),
    ];
    for bad in [&no_cert[..], &rogue_cert[..]] {
        let mut a: Vec<&str> = bad.iter().map(String::as_str).collect();
        a.extend(["--dial-timeout=2s", "--command-timeout=3s", "get", "k"]);
        let o = etcdctl(&eps[..1], &a, None);
        assert!(!o.success, "{bad:?} was accepted: {}", o.stdout);
    }
    let plain: Vec<String> = eps
        .iter()
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let o = etcdctl(
        &plain[..1],
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "k"],
        None,
    );
    assert!(!o.success, "plain HTTP accepted: {}", o.stdout);

    // Cairn's client: with the certificate it works against every member
    // (writes forwarded over the TLS peer port); without one it is refused.
    for ep in &eps {
        let cl = Client::connect(vec![ep.clone()], c.nodes[0].client_opts.clone())
            .await
            .unwrap();
        cl.put("from-client", ep.as_str(), PutOptions::default())
            .await
            .unwrap();
        let r = cl.get("from-client", GetOptions::default()).await.unwrap();
        assert_eq!(r.kvs[0].value, ep.as_bytes());
    }
    let no_identity = cairn_client::ClientOptions {
        tls: Some(TlsOptions::from_files(&good.ca, None, None).unwrap()),
        retry_budget: std::time::Duration::from_secs(2),
        ..common::test_client_options()
    };
    let cl = Client::connect(eps.clone(), no_identity).await.unwrap();
    assert!(cl.get("k", GetOptions::default()).await.is_err());
}
