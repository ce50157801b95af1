//! What flow processes print, kept: each execution of a run writes its stdout and stderr to
//! `<CAIRN_HOME>/logs/<run id>/<execution>.log` (the process writes the file itself, so its
//! output outlives whoever launched it). `cairn dev run` echoes those lines as they come;
//! `cairn dev logs` prints them later, execution by execution, as `kubectl cairn logs` does
//! with pods.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cairn_engine::read;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::localdb::LocalPostgres;

/// Where the logs of every run are: one directory per run.
pub fn logs_dir() -> PathBuf {
    LocalPostgres::default_root().join("logs")
}

/// The log of execution `attempt` of run `run`, under `dir` (see [`logs_dir`]).
pub fn attempt_log(dir: &Path, run: Uuid, attempt: i32) -> PathBuf {
    dir.join(run.to_string()).join(format!("{attempt}.log"))
}

/// Copies the lines of a process's log onto our stderr, each prefixed `[run#execution]`, as
/// they are written, until `ended` says the process has exited and all it wrote is shown.
pub async fn echo(path: PathBuf, label: String, mut ended: oneshot::Receiver<()>) {
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return;
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut exited = false;
    loop {
        match reader.read_until(b'\n', &mut line).await {
            Ok(n) if n > 0 => {
                // A line still being written stays until its newline comes.
                if let Some(whole) = line.strip_suffix(b"\n") {
                    eprintln!("[{label}] {}", String::from_utf8_lossy(whole));
                    line.clear();
                }
            }
            // At the end of what is written so far.
            _ if exited => break,
            _ => {
                tokio::select! {
                    _ = &mut ended => exited = true,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    if !line.is_empty() {
        eprintln!("[{label}] {}", String::from_utf8_lossy(&line));
    }
}

/// `cairn dev logs`: the logs of run `run`, execution by execution (or only `attempt`), each
/// under a header.
pub async fn print(run: &str, namespace: &str, attempt: Option<i32>) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    print!("{}", read_logs(&pool, run, namespace, attempt).await?);
    Ok(ExitCode::SUCCESS)
}

/// The logs of run `run`, execution by execution (or only `attempt`), each under a header.
pub async fn read_logs(
    pool: &sqlx::PgPool,
    run: &str,
    namespace: &str,
    attempt: Option<i32>,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let record = read::find(pool, namespace, run).await?;
    let root = logs_dir();
    let dir = root.join(record.id.to_string());
    let mut kept: Vec<i32> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .filter(|n| attempt.is_none_or(|only| *n == only))
        .collect();
    kept.sort_unstable();
    if kept.is_empty() {
        let which = attempt.map_or(String::new(), |n| format!(" of execution {n}"));
        return Ok(format!(
            "{run}: no logs{which} in {} (none ran yet, or they ran under another CAIRN_HOME)\n",
            dir.display()
        ));
    }
    let mut out = String::new();
    for n in kept {
        writeln!(out, "── execution {n}")?;
        let bytes = std::fs::read(attempt_log(&root, record.id, n))?;
        let text = String::from_utf8_lossy(&bytes);
        out.push_str(&text);
        if !text.is_empty() && !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
