//! The drill's processes: a store or a control plane, a child of this
//! binary, stopped the way docker stops or kills a container.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

/// A store or a control plane: a child process of this binary.
pub(super) struct Member {
    pub(super) name: &'static str,
    /// `http://host:port`: the client URL of a store, the admin API of a
    /// control plane.
    pub(super) client_url: String,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(&'static str, String)>,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Member {
    pub(super) fn spawn(&mut self, exe: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(exe)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM (a clean stop, as `docker stop`), then SIGKILL after 10 s.
    pub(super) async fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Some(pid) = c.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }

    /// SIGKILL, as `docker kill`.
    pub(super) async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}
