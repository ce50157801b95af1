//! `cairn operator` as a host process with the admin kubeconfig, watching one namespace and
//! electing its leader through a Lease there, against a database of the test's own: as the
//! end-to-end tests and the benchmark run it (the Helm chart is tested by chart-e2e.sh).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

/// How to start one operator.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The `cairn` binary.
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub database_url: String,
    pub namespace: String,
    pub lease_name: String,
    pub listen: SocketAddr,
    /// More flags (`--max-running 2`, ...).
    pub flags: Vec<String>,
    /// More environment (the artifact store's credentials).
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go (appended).
    pub log: PathBuf,
}

/// A running operator; killed (SIGTERM, then waited for) on drop.
pub struct Operator {
    child: Option<Child>,
    pub listen: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    /// Starts it, in a process group of its own: a Ctrl-C meant for the test must not stop it
    /// before it has removed its finalizers from the namespace's FlowRuns.
    pub fn spawn(config: &OperatorConfig) -> anyhow::Result<Operator> {
        if let Some(dir) = config.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.log)
        };
        let child = Command::new(&config.binary)
            .arg("operator")
            .args(["--listen", &config.listen.to_string()])
            .args(["--watch-namespaces", &config.namespace])
            .args(["--lease-namespace", &config.namespace])
            .args(["--lease-name", &config.lease_name])
            .args(&config.flags)
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .env("CAIRN_DATABASE_URL", &config.database_url)
            .env("KUBECONFIG", &config.kubeconfig)
            .env_remove("CAIRN_OPERATOR_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log()?)
            .stderr(log()?)
            .process_group(0)
            .spawn()?;
        Ok(Operator {
            child: Some(child),
            listen: config.listen,
            log: config.log.clone(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }

    /// Waits until its log says `text`; fails early if it exits.
    pub async fn wait_log(&mut self, text: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while !self.log_text().contains(text) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the operator exited ({status}) before its log said {text:?}; last lines:\n{}",
                    self.log_tail(20)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the operator's log did not say {text:?} within {patience:?}; last lines:\n{}",
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Waits until it answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(a) = cairn_tests::http_get(self.listen, "/readyz").await
                && a.status == 200
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the operator exited ({status}); last lines:\n{}",
                    self.log_tail(20)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the operator at {} was not ready within {patience:?}; last lines:\n{}",
                self.listen,
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET path` on its endpoints: the body of a 200, else `None`.
    pub async fn get(&self, path: &str) -> Option<String> {
        let answer = cairn_tests::http_get(self.listen, path).await?;
        (answer.status == 200).then_some(answer.body)
    }

    /// SIGKILL, as a crashed node or an OOM kill would: it releases nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for it to exit (it releases its Lease on the way out), as long as a
    /// kubelet would (a pod's default grace period), then SIGKILL as the kubelet does: an
    /// operator that hangs in its shutdown is reported, and does not hang the test run.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "warning: the operator (pid {}) did not exit within {SHUTDOWN_GRACE:?} of SIGTERM; killed",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod's default termination grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on `ip` (bound, then released for the operator to take).
pub fn free_addr(ip: &str) -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?)
}
