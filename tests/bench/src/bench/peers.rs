//! Runs the peer programs (`bench/peers/*.py`) in the benchmark's private virtual environment
//! and reads the JSON object each prints on its last stdout line.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use serde_json::Value;

pub struct Peers {
    pub python: PathBuf,
    pub dir: PathBuf,
    pub logs: PathBuf,
}

impl Peers {
    /// Runs `<dir>/<script> --db <db> <args...>`; its stderr goes to `<logs>/<log>.log`.
    pub async fn run(
        &self,
        script: &str,
        db: &str,
        args: &[&str],
        log: &str,
    ) -> anyhow::Result<Value> {
        let log_path = self.logs.join(format!("{log}.log"));
        let log_file = std::fs::File::create(&log_path)?;
        let out = tokio::process::Command::new(&self.python)
            .arg(self.dir.join(script))
            .args(["--db", db])
            .args(args)
            .current_dir(&self.logs)
            .stdin(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{script} {} failed ({}); stdout: {}; stderr in {}: {}",
                args.join(" "),
                out.status,
                stdout.trim(),
                log_path.display(),
                tail(&log_path)
            );
        }
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .with_context(|| format!("{script} printed no JSON result: {last:?}"))
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.python.with_file_name(name)
    }
}

pub fn samples(result: &Value, key: &str) -> anyhow::Result<Vec<f64>> {
    result[key]
        .as_array()
        .with_context(|| format!("no {key} in the peer's result"))?
        .iter()
        .map(|v| v.as_f64().context("a sample is not a number"))
        .collect()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
