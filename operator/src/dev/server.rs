//! The local server: `cairn dev up` starts it in the background, `down` stops it, `status`
//! says whether one runs. It carries every local run tree of its database on (woken by the
//! engine's NOTIFY, by timers and by crashes), each on the binary the run started with, so
//! runs go on without a `cairn dev run` in a terminal; `run`, `resume` and `retry` then
//! submit and follow instead of supervising themselves.
//!
//! Whether a server is up is in the database, not in a pid file: the server holds a session
//! advisory lock, which Postgres releases with its connection, so a killed server leaves
//! nothing stale. Its connection's application name carries its pid and host.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use crate::localdb::LocalPostgres;
use crate::supervisor::{self, Launcher, Scope};
use anyhow::{Context, bail};
use cairn_engine::launcher as engine;
use sqlx::{ConnectOptions, PgPool};

/// The server's advisory lock: a two-key lock, apart from the engine's one-key locks.
const LOCK: (i32, i32) = (0x6361_6972, 1); // "cair"
/// How a server's connection names itself: this, then `<pid>@<host>`.
const APPLICATION: &str = "cairn-dev-server:";

/// This machine's name, as a server records it (a pid means something on its host only).
fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // application_name holds 63 bytes.
    name.trim().chars().take(36).collect()
}

/// A server that is up.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub pid: u32,
    pub host: String,
    /// When it connected (unknown to a role that may not see its session's details).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Running {
    fn here(&self) -> bool {
        self.host == host()
    }

    /// Whether its process is gone (known on its own host only).
    fn gone(&self) -> bool {
        self.here()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None).is_err()
    }
}

impl std::fmt::Display for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if !self.here() {
            write!(f, " on {}", self.host)?;
        }
        if let Some(since) = self.since {
            write!(f, ", since {}", since.format("%Y-%m-%d %H:%M:%SZ"))?;
        }
        Ok(())
    }
}

/// The server of this database, if one is up.
pub async fn find(pool: &PgPool) -> anyhow::Result<Option<Running>> {
    let row: Option<(Option<String>, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT a.application_name, a.backend_start FROM pg_locks l
         JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                   SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2",
    )
    .bind(LOCK.0)
    .bind(LOCK.1)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(name, since)| {
        let name = name?;
        let (pid, host) = name.strip_prefix(APPLICATION)?.split_once('@')?;
        Some(Running {
            pid: pid.parse().ok()?,
            host: host.to_owned(),
            since,
        })
    }))
}

fn server_dir() -> PathBuf {
    LocalPostgres::default_root().join("server")
}

/// `up`: starts the server in the background (`cairn dev serve`), unless one is up.
pub async fn up(parallel: usize) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    if let Some(running) = up_or_gone(&pool).await? {
        println!("a cairn dev server is already up ({running})");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = server_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["dev", "serve", "--parallel", &parallel.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C in this terminal is not for it.
        .process_group(0)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Ours, or one started at the same moment (ours then exits, finding it).
        if let Some(running) = find(&pool).await? {
            println!(
                "cairn dev server up ({running}); its log: {}; stop it with `cairn dev down`",
                log_path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "the server exited ({status}) before it was up; the end of {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the server (pid {pid}) was not up within 30 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server that is up, waiting a moment for the lock of one just killed to clear.
async fn up_or_gone(pool: &PgPool) -> anyhow::Result<Option<Running>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match find(pool).await? {
            Some(running) if running.gone() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            found => return Ok(found),
        }
    }
}

/// `down`: stops the server gently (its flow processes finish their steps in flight and give
/// their runs back), killing it if it is still up after `timeout`.
pub async fn down(timeout: Duration) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let Some(running) = up_or_gone(&pool).await? else {
        println!("no cairn dev server is up");
        return Ok(ExitCode::SUCCESS);
    };
    if !running.here() {
        bail!(
            "the cairn dev server of this database runs on {} (pid {}): stop it there",
            running.host,
            running.pid
        );
    }
    let pid = nix::unistd::Pid::from_raw(running.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("cannot signal the server (pid {})", running.pid))?;
    let deadline = tokio::time::Instant::now() + timeout;
    // Down once its lock is released (its process may linger a moment after).
    while find(&pool).await?.is_some_and(|r| r.pid == running.pid) && !running.gone() {
        if tokio::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            println!(
                "the server (pid {}) was still up after {}: killed; its runs go on at the next `cairn dev up`",
                running.pid,
                humantime::format_duration(timeout)
            );
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("cairn dev server (pid {}) stopped", running.pid);
    Ok(ExitCode::SUCCESS)
}

/// `status`: whether a server is up (exit 0) or not (exit 1), and what it carries on.
pub async fn status() -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let trees = engine::unfinished_local_trees(&pool).await?.len();
    match find(&pool).await? {
        Some(running) => {
            println!(
                "cairn dev server up: {running}; {trees} run tree(s) not finished; log {}",
                server_dir().join("server.log").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!(
                "no cairn dev server is up; {trees} run tree(s) not finished (`cairn dev up` carries them on)"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `serve` (what `up` starts): carries every unfinished local run tree on until SIGTERM or
/// SIGINT, then stops each gently.
pub async fn serve(parallel: usize) -> anyhow::Result<ExitCode> {
    let (url, pool) = super::open_with_url().await?;
    // The lock lives on a connection of its own, named so that `find` gives our pid.
    let mut lock = (*pool.connect_options())
        .clone()
        .application_name(&format!("{APPLICATION}{}@{}", std::process::id(), host()))
        .connect()
        .await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK.0)
        .bind(LOCK.1)
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        bail!("another cairn dev server serves this database (`cairn dev status`)");
    }
    eprintln!("cairn: dev server (pid {}) up", std::process::id());
    let launcher = Launcher {
        // Unused: each tree runs the binary it started with.
        binary: PathBuf::new(),
        database_url: engine::runner_url(&pool, &url).await?,
        env: vec![],
        max_parallel: parallel.max(1),
        logs: super::logs::logs_dir(),
        step_keys: super::keys::master()?,
        artifacts: Some(super::artifacts::settings()),
        traces: super::traces(),
    };
    supervisor::supervise_scope(&pool, &launcher, Scope::Local).await?;
    eprintln!("cairn: dev server stopped");
    Ok(ExitCode::SUCCESS)
}
