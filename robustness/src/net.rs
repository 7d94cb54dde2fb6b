//! A private network for one run: each member in its own network namespace,
//! joined by veth pairs to a bridge in the host namespace, where the
//! workload's clients live. A partition drops a member's packets to and from
//! its peers inside the member's namespace, so clients still reach it.
//!
//! ```text
//!  host ns: clients ── bridge crb<tag> 10.a.b.1 ─┬─ veth ── ns crn<tag>0: eth0 10.a.b.10
//!                                               ├─ veth ── ns crn<tag>1: eth0 10.a.b.11
//!                                               └─ veth ── ns crn<tag>2: eth0 10.a.b.12
//! ```
//!
//! With a Docker engine on the host, iptables' FORWARD policy is DROP and
//! br_netfilter passes bridged frames through it, so the bridge's own
//! traffic is accepted explicitly (and the rule removed again on drop).
//! Needs root, `ip` (iproute2) and `iptables`. Namespaces left behind by a
//! run that was killed are removed by the next one (their owner's PID is in
//! a file under the temp dir).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Net {
    tag: String,
    bridge: String,
    /// First three octets, e.g. "10.77.3".
    subnet: String,
    namespaces: Vec<String>,
    forward_rule: bool,
    owner_file: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

const FORWARD: [&str; 2] = ["-i", "-o"];

fn forward_rule(op: &str, bridge: &str) -> Result<()> {
    run(
        "iptables",
        &[
            op, "FORWARD", FORWARD[0], bridge, FORWARD[1], bridge, "-j", "ACCEPT",
        ],
    )
}

fn owner_dir() -> PathBuf {
    std::env::temp_dir().join("cairn-robustness-net")
}

/// Whether this machine can build the network (root, `ip`, `iptables`).
pub fn available() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("network namespaces need root");
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("{tool} is not installed");
        }
    }
    Ok(())
}

impl Net {
    /// Creates the bridge and one namespace per member.
    pub fn create(members: usize) -> Result<Net> {
        available()?;
        cleanup_stale();
        let pid = std::process::id();
        // A tag unique among live runs: our PID and a per-process counter.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:06x}", ((pid as u64) << 4 | (n as u64 & 0xf)) & 0xff_ffff);
        let subnet = free_subnet(pid, n)?;
        let bridge = format!("crb{tag}");
        std::fs::create_dir_all(owner_dir())?;
        let owner_file = owner_dir().join(&tag);
        std::fs::write(&owner_file, format!("{pid}\n{bridge}\n"))?;
        let mut net = Net {
            tag: tag.clone(),
            bridge: bridge.clone(),
            subnet: subnet.clone(),
            namespaces: Vec::new(),
            forward_rule: false,
            owner_file,
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        forward_rule("-I", &bridge)?;
        net.forward_rule = true;
        for i in 0..members {
            let ns = format!("crn{tag}{i}");
            let veth = format!("crv{tag}{i}");
            run("ip", &["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", net.ip(i)),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Member `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// Member `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Cuts member `i` off from the other members (both directions); the
    /// host (clients) still reaches it.
    pub fn isolate(&self, i: usize) -> Result<()> {
        let ns = self.namespace(i);
        for j in (0..self.namespaces.len()).filter(|j| *j != i) {
            let peer = self.ip(j);
            run(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP",
                ],
            )?;
            run(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<()> {
        for ns in &self.namespaces {
            run("ip", &["netns", "exec", ns, "iptables", "-F"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
        if self.forward_rule {
            let _ = forward_rule("-D", &self.bridge);
        }
        let _ = std::fs::remove_file(&self.owner_file);
    }
}

/// A /24 under 10.0.0.0/8 that no interface of this host uses.
fn free_subnet(pid: u32, n: u32) -> Result<String> {
    let used = output("ip", &["-o", "-4", "addr", "show"]);
    let mut x = (pid as u64).wrapping_mul(2654435761) ^ n as u64;
    for _ in 0..256 {
        let (a, b) = (64 + (x % 128), (x >> 8) % 256);
        let subnet = format!("10.{a}.{b}");
        if !used.contains(&format!(" {subnet}.")) {
            return Ok(subnet);
        }
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    bail!("no free 10.x.y.0/24 subnet for the test network")
}

/// Removes what runs killed before their cleanup left: their owner PID is gone.
fn cleanup_stale() {
    let Ok(dir) = std::fs::read_dir(owner_dir()) else {
        return;
    };
    let namespaces = output("ip", &["netns", "list"]);
    for entry in dir.flatten() {
        let tag = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = text.lines();
        let pid: i32 = lines.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        // SAFETY: signal 0 only checks that the process exists.
        if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
            continue;
        }
        for ns in namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|ns| ns.starts_with(&format!("crn{tag}")))
        {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if let Some(bridge) = lines.next() {
            let _ = run("ip", &["link", "del", bridge]);
            let _ = forward_rule("-D", bridge);
        }
        let _ = std::fs::remove_file(entry.path());
    }
}
