//! The drill's scenarios (see the module map in [`super`]) and the checks
//! they end with.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use cairn_client::{Client, GetOptions, KeyRange, PutOptions};

use super::gateways::{Backend, Traffic, TRAFFIC_ROUTE};
use super::{http, route_body, Drill, SLOW};

impl Drill {
    /// 1: stop control1; control2 reads and writes, including what control1
    /// wrote; control1 comes back.
    async fn control_failover(&mut self) -> Result<()> {
        let mut ok = self.route_rw(0, "s1-before").await;
        self.controls[0].stop().await;
        println!("stopped control1");
        let t = Instant::now();
        ok &= self.route_rw(1, "s1-via-control2").await;
        ok &= self.route_readable(1, "s1-before").await;
        let took = t.elapsed();
        self.start_control(0).await?;
        ok &= self.route_rw(0, "s1-after").await;
        self.result(
            ok,
            format!(
                "1 stop control1: admin API via control2 reads and writes (answered in {} ms)",
                took.as_millis()
            ),
        );
        Ok(())
    }

    /// 2b, the admin API part: a write through each control plane is refused
    /// with a 5xx and an `error_msg` within [`ADMIN_TIMEOUT`]. Returns
    /// (all refused, "ms per control plane").
    async fn admin_writes_refused(&self) -> (bool, String) {
        let mut ok = true;
        let mut took = Vec::new();
        for c in &self.controls {
            let t = Instant::now();
            let r = http(
                &c.client_url,
                "PUT",
                "/apisix/admin/routes/s2-no-quorum",
                &self.admin_key,
                Some(&route_body("s2-no-quorum")),
            )
            .await;
            let ms = t.elapsed().as_millis();
            match r {
                Ok((code @ 500..=599, body)) if body.contains("\"error_msg\"") => {
                    println!(
                        "  admin PUT via {} refused after {ms} ms: {code} {body}",
                        c.name
                    );
                }
                other => {
                    println!("  admin PUT via {} without quorum, after {ms} ms: {other:?} (want a 5xx with an error_msg)", c.name);
                    ok = false;
                }
            }
            took.push(format!("{} in {ms} ms", c.name));
        }
        (ok, took.join(", "))
    }

    pub(super) async fn scenarios(&mut self) -> Result<()> {
        let started = Instant::now();
        for i in 0..3 {
            self.start(i)?;
        }
        let all = [0, 1, 2];
        self.leader(&all).await?;
        println!("cluster up in {:?}", started.elapsed());
        let c = self
            .client(&all, Duration::from_secs(2), Duration::from_secs(10))
            .await?;
        self.put_acked(&c, "/drill/setup/1", "v1").await?;
        let t = Instant::now();
        for i in 0..self.controls.len() {
            self.start_control(i).await?;
        }
        println!("control planes ready in {:?}", t.elapsed());

        // 0: the gateway tier, and steady traffic through it from now on.
        let t = Instant::now();
        self.start_gateway_tier().await?;
        println!("gateways ready in {:?}", t.elapsed());
        let took = self
            .route_reaches_gateways(0, TRAFFIC_ROUTE, "/get")
            .await?;
        self.result(
            true,
            format!(
                "0a a route written through control1 is served by both gateways {} ms after the PUT",
                took.as_millis()
            ),
        );
        let gateways = self.gateways.iter().zip(&self.gateway_status);
        let backends =
            gateways.map(|(g, status)| Backend::new(g.client_url.clone(), status.clone()));
        self.traffic = Some(Traffic::start(backends.collect()));
        self.gateway_failover().await?;

        // 1: stop control1.
        let m = self.traffic_mark();
        self.control_failover().await?;
        self.traffic_result("1", m);

        // 2: stop s1, then the leader.
        let m = self.traffic_mark();
        self.members[0].stop().await;
        println!("stopped s1");
        let mut ok = true;
        for n in 0..3 {
            if let Err(e) = self
                .put_acked(&c, &format!("/drill/s2/put-{n}"), &format!("v{n}"))
                .await
            {
                println!("  write with s1 down failed: {e:#}");
                ok = false;
            }
        }
        match c.get("/drill/s2/put-2", GetOptions::default()).await {
            Ok(r) if r.kvs.first().map(|kv| kv.value.as_slice()) == Some(b"v2") => {}
            other => {
                println!("  read with s1 down: {other:?}");
                ok = false;
            }
        }
        ok &= self.route_rw(0, "s2-control1").await;
        ok &= self.route_rw(1, "s2-control2").await;
        self.result(
            ok,
            "2a stop s1: writes and reads succeed through the client and both control planes"
                .into(),
        );

        let leader = self.leader(&[1, 2]).await?;
        let survivor = if leader == 1 { 2 } else { 1 };
        self.members[leader].stop().await;
        println!(
            "stopped the leader {}; {} is alone",
            self.members[leader].name, self.members[survivor].name
        );
        let mut ok = true;
        // A request timeout above the store's own, so the error is the
        // store's answer ("etcdserver: no leader"), not the client giving up.
        let alone = self
            .client(&[survivor], Duration::from_secs(15), Duration::from_secs(5))
            .await?;
        let t = Instant::now();
        let refused = match tokio::time::timeout(
            Duration::from_secs(30),
            alone.put("/drill/s2/no-quorum", "x", PutOptions::default()),
        )
        .await
        {
            Err(_) => {
                println!("  a write without quorum hung for 30 s");
                ok = false;
                String::new()
            }
            Ok(Ok(_)) => {
                println!("  a write without quorum succeeded");
                ok = false;
                String::new()
            }
            Ok(Err(e)) => {
                println!("  write refused after {:?}: {e}", t.elapsed());
                format!("refused in {} ms", t.elapsed().as_millis())
            }
        };
        let serializable = GetOptions {
            serializable: true,
            ..Default::default()
        };
        match alone.get("/drill/s2/put-2", serializable).await {
            Ok(r) if r.kvs.first().map(|kv| kv.value.as_slice()) == Some(b"v2") => {}
            other => {
                println!("  serializable read on the survivor: {other:?}");
                ok = false;
            }
        }
        let (admin_ok, admin_took) = self.admin_writes_refused().await;
        ok &= admin_ok;
        self.result(
            ok,
            format!(
                "2b stop the leader too: writes refused (client {refused}; admin API via {admin_took}), serializable reads answer"
            ),
        );
        self.traffic_result("2", m);

        // 3: restart both; same HashKV at the same revision, nothing lost.
        let m = self.traffic_mark();
        self.start(0)?;
        self.start(leader)?;
        self.leader(&all).await?;
        for i in 0..self.controls.len() {
            self.control_ready(i).await?;
        }
        let mut ok = true;
        if let Err(e) = self.put_acked(&c, "/drill/s3/after-rejoin", "v1").await {
            println!("  write after rejoin: {e:#}");
            ok = false;
        }
        ok &= self.check(&c).await;
        self.result(
            ok,
            "3 restart: same HashKV at the same revision, no acknowledged write lost".into(),
        );
        let took = self
            .route_reaches_gateways(1, "drill-after-restart", "/after-restart")
            .await?;
        self.result(
            true,
            format!(
                "3 a route written through control2 after the restart is served by both gateways {} ms after the PUT",
                took.as_millis()
            ),
        );
        self.traffic_result("3", m);

        // 4: SIGKILL the leader under a write load.
        let m = self.traffic_mark();
        let leader = self.leader(&all).await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log: Arc<Mutex<Vec<(Instant, Instant, bool)>>> = Arc::default();
        let load = {
            let c = self
                .client(&all, Duration::from_secs(2), Duration::from_secs(5))
                .await?;
            let (stop, log, acked) = (stop.clone(), log.clone(), self.acked.clone());
            tokio::spawn(async move {
                let end = Instant::now() + SLOW;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                    n += 1;
                    let key = format!("/drill/s4/{n:06}");
                    let s = Instant::now();
                    let r = c
                        .put(key.as_str(), n.to_string(), PutOptions::default())
                        .await;
                    if r.is_ok() {
                        acked.lock().unwrap().push((key, n.to_string()));
                    }
                    log.lock().unwrap().push((s, Instant::now(), r.is_ok()));
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while log.lock().unwrap().iter().filter(|e| e.2).count() < 20 {
            if Instant::now() > deadline {
                bail!("the write load made no progress");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let killed = Instant::now();
        self.members[leader].kill9().await;
        println!("SIGKILL {} (the leader)", self.members[leader].name);
        let recovered = loop {
            let first = log
                .lock()
                .unwrap()
                .iter()
                .find(|(s, _, ok)| *ok && *s >= killed)
                .map(|(_, e, _)| e.duration_since(killed));
            if let Some(d) = first {
                break Some(d);
            }
            if killed.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Keep writing a little longer on the two survivors.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.await?;
        self.start(leader)?;
        self.leader(&all).await?;
        let writes = log.lock().unwrap().len();
        let mut ok = recovered.is_some();
        match recovered {
            Some(d) => println!(
                "writes succeeded again {} ms after the SIGKILL",
                d.as_millis()
            ),
            None => println!("  no write succeeded within 30 s of the SIGKILL"),
        }
        ok &= self.check(&c).await;
        self.result(
            ok,
            format!(
                "4 kill -9 the leader under load: acknowledged writes survive (writes again after {} ms; {writes} writes)",
                recovered.map_or("?".into(), |d| d.as_millis().to_string())
            ),
        );
        self.traffic_result("4", m);
        Ok(())
    }

    /// All members at one revision with the same HashKV there, and every
    /// acknowledged write readable (linearizably) with its value.
    async fn check(&self, c: &Client) -> bool {
        let mut ok = true;
        match self.same_hash().await {
            Ok(line) => println!("  {line}"),
            Err(e) => {
                println!("  {e:#}");
                ok = false;
            }
        }
        let acked = self.acked.lock().unwrap().clone();
        let got = match c
            .get(
                "/drill/",
                GetOptions {
                    range: KeyRange::Prefix,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                println!("  reading /drill/: {e}");
                return false;
            }
        };
        let have: std::collections::HashMap<&[u8], &[u8]> = got
            .kvs
            .iter()
            .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
            .collect();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(k, v)| have.get(k.as_bytes()) != Some(&v.as_bytes()))
            .map(|(k, _)| k)
            .collect();
        println!(
            "  {} acknowledged writes checked, {} missing or wrong{}",
            acked.len(),
            missing.len(),
            missing
                .first()
                .map_or(String::new(), |k| format!(" (first: {k})"))
        );
        // Routes written through the admin API: their keys are there.
        let routes = match c
            .get(
                "/apisix/routes/",
                GetOptions {
                    keys_only: true,
                    ..GetOptions::prefix()
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                println!("  reading /apisix/routes/: {e}");
                return false;
            }
        };
        let keys: std::collections::HashSet<&[u8]> =
            routes.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        let lost: Vec<&String> = self
            .acked_routes
            .iter()
            .filter(|id| !keys.contains(format!("/apisix/routes/{id}").as_bytes()))
            .collect();
        println!(
            "  {} routes written through the admin API checked, {} missing{}",
            self.acked_routes.len(),
            lost.len(),
            lost.first()
                .map_or(String::new(), |k| format!(" (first: {k})"))
        );
        ok && missing.is_empty() && lost.is_empty()
    }

    async fn same_hash(&self) -> Result<String> {
        let all = [0, 1, 2];
        let c = self
            .client(&all, Duration::from_secs(2), Duration::ZERO)
            .await?;
        let deadline = Instant::now() + SLOW;
        let rev = loop {
            let mut revs = Vec::new();
            for m in &self.members {
                if let Ok(st) = c.status(&m.client_url).await {
                    revs.push(st.header.map_or(0, |h| h.revision));
                }
            }
            if revs.len() == 3 && revs.iter().all(|r| *r == revs[0]) {
                break revs[0];
            }
            if Instant::now() > deadline {
                bail!("members did not reach one revision: {revs:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut hashes = Vec::new();
        for m in &self.members {
            let h = c
                .hash_kv(&m.client_url, rev)
                .await
                .map_err(|e| anyhow!("hashkv of {}: {e}", m.name))?;
            hashes.push(h.hash);
        }
        if hashes.iter().any(|h| *h != hashes[0]) {
            bail!("HashKV differs at revision {rev}: {hashes:?}");
        }
        Ok(format!(
            "revision {rev}: HashKV {} on all three members",
            hashes[0]
        ))
    }
}
