//! `cairn dev`'s local launcher: runs every run of one tree (a root run and the children it
//! spawns) as local processes of the flow binary. It reacts to the engine's NOTIFY messages,
//! to its own processes' exits and to the next timer, and asks `lifecycle::decide` what to do.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use cairn_engine::artifacts::ArtifactSettings;
use cairn_engine::checkpoint::StepKeys;
use cairn_engine::traces::{self, Exporter};
use cairn_engine::{launcher as engine, read};
use sqlx::postgres::PgListener;
use sqlx::{ConnectOptions, PgPool};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::lifecycle::{Next, Phase, Process, ProcessExit, RunView, decide};
use cairn_engine::error::is_unavailable;
use cairn_engine::read::RunRecord;

/// How to launch the flow binary.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub binary: PathBuf,
    /// The runner's database URL (see `read::runner_url`), never the owner's.
    pub database_url: String,
    /// Extra environment for every process (the rest is inherited).
    pub env: Vec<(String, String)>,
    /// At most this many processes at once; the rest stay pending.
    pub max_parallel: usize,
    /// Where each process writes its output (`dev::logs::attempt_log`).
    pub logs: PathBuf,
    /// The master step keys: each process gets its run's namespace's (`dev::keys`).
    pub step_keys: StepKeys,
    /// Where processes keep artifacts (`dev::artifacts`); none: large results stay in rows.
    pub artifacts: Option<ArtifactSettings>,
    /// Where spans go (`OTEL_EXPORTER_OTLP_*`); none: runs are not traced.
    pub traces: Option<std::sync::Arc<Exporter>>,
}

struct Exited {
    run_id: Uuid,
    attempt: i32,
    exit: ProcessExit,
}

/// Which runs a supervisor carries on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// One tree (a root run and its children) on the launcher's binary, until the root ends:
    /// `cairn dev run`.
    Tree(Uuid),
    /// Every unfinished local tree, each on the binary it started with (`dev::store`), until
    /// told to stop: the local server.
    Local,
}

struct Supervisor<'a> {
    pool: &'a PgPool,
    launcher: &'a Launcher,
    scope: Scope,
    alive: HashMap<Uuid, (i32, u32)>, // run → (attempt, pid)
    exits: HashMap<Uuid, (i32, ProcessExit)>,
    exit_tx: mpsc::UnboundedSender<Exited>,
    /// Each tree's binary (its root → the file), once looked up.
    binaries: HashMap<Uuid, Option<PathBuf>>,
    /// Trees with a process alive at the last look: looked at until their processes are gone.
    active: Vec<Uuid>,
    /// The connection holding this supervisor's tree locks, and the trees it holds.
    locks: sqlx::PgConnection,
    owned: std::collections::HashSet<Uuid>,
    /// The export of finished runs' spans under way, if any (see `export_traces`).
    exporting: Option<tokio::task::JoinHandle<()>>,
    /// An export failed and said so: the next failures are quiet until one succeeds.
    export_failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The key space of the tree locks: one supervisor per run tree, whether a `cairn dev run`
/// or the local server, or each would count the other's processes as crashes.
const TREE_LOCK: i32 = 0x6361_6974; // "cait"

/// Whether a supervisor holds the tree rooted at `root` now.
pub async fn supervised(pool: &PgPool, root: Uuid) -> anyhow::Result<bool> {
    // Taken and given back in one statement on one session: true when it was free.
    let free: bool = sqlx::query_scalar(
        "SELECT CASE WHEN pg_try_advisory_lock($1, hashtext($2::text))
                THEN pg_advisory_unlock($1, hashtext($2::text)) ELSE false END",
    )
    .bind(TREE_LOCK)
    .bind(root)
    .fetch_one(pool)
    .await?;
    Ok(!free)
}

/// Another supervisor (a `cairn dev run`, the local server) carries this tree on.
#[derive(Debug, thiserror::Error)]
#[error("another cairn dev supervises this run")]
pub struct SupervisedElsewhere;

/// Supervises the tree rooted at `root` until the root run is finished; returns its record.
pub async fn supervise(
    pool: &PgPool,
    launcher: &Launcher,
    root: Uuid,
) -> anyhow::Result<RunRecord> {
    supervise_scope(pool, launcher, Scope::Tree(root))
        .await?
        .context("the root run disappeared")
}

/// Supervises `scope`: returns the root's record once a tree's root is finished, or `None`
/// when the local server's scope was told to stop.
pub async fn supervise_scope(
    pool: &PgPool,
    launcher: &Launcher,
    scope: Scope,
) -> anyhow::Result<Option<RunRecord>> {
    // A connection of its own: a listener holds its connection for good, and the pool is small.
    let listening = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let mut listener = PgListener::connect_with(&listening).await?;
    listener.listen("cairn_runs").await?;
    let locks = (*pool.connect_options()).clone().connect().await?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let mut supervisor = Supervisor {
        pool,
        launcher,
        scope,
        alive: HashMap::new(),
        exits: HashMap::new(),
        exit_tx,
        binaries: HashMap::new(),
        active: Vec::new(),
        locks,
        owned: Default::default(),
        exporting: None,
        export_failing: Default::default(),
    };
    if let Scope::Tree(root) = scope
        && !supervisor.own(root).await?
    {
        return Err(SupervisedElsewhere.into());
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // The terminal closing: its flow processes, in groups of their own, do not get the hang-up.
    let mut hangup = signal(SignalKind::hangup())?;

    let mut outage = Outage::default();
    loop {
        let (root_record, next_wake) = match supervisor.look().await {
            Ok(looked) => {
                outage.over();
                looked
            }
            // Postgres restarting or unreachable: the runs are safe in it; look again soon.
            // Processes that lose their connection meanwhile crash and are relaunched after.
            Err(e) if is_unavailable(e.as_ref()) => {
                tokio::select! {
                    _ = outage.wait(&e) => continue,
                    _ = interrupt.recv() => return Err(e.context("interrupted while the database was unavailable")),
                    _ = terminate.recv() => return Err(e.context("terminated while the database was unavailable")),
                    _ = hangup.recv() => return Err(e.context("hung up while the database was unavailable")),
                }
            }
            Err(e) => return Err(e),
        };
        supervisor.export_traces();
        if let Some(root_record) = &root_record
            && root_record.phase.is_terminal()
            && supervisor.alive.is_empty()
        {
            supervisor.flush_traces().await;
            return Ok(Some(root_record.clone()));
        }
        if let (Scope::Tree(_), None) = (scope, &root_record) {
            anyhow::bail!("the run was deleted");
        }

        // The local server also looks again now and then for work it was not told of.
        let idle = match scope {
            Scope::Tree(_) => Duration::from_secs(3600),
            Scope::Local => Duration::from_secs(5),
        };
        let timer = tokio::time::sleep(
            next_wake.map_or(idle, |ms| Duration::from_millis(ms as u64).min(idle)),
        );
        let told_to_stop = tokio::select! {
            notification = listener.try_recv() => {
                // `None`: the connection dropped and will be re-established; rescan anyway,
                // since notifications sent meanwhile are lost.
                if let Err(e) = notification {
                    tracing::warn!(error = %e, "lost the notification channel; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                false
            }
            Some(exited) = exit_rx.recv() => {
                supervisor.exited(exited);
                while let Ok(more) = exit_rx.try_recv() {
                    supervisor.exited(more);
                }
                false
            }
            _ = timer => false,
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
            _ = hangup.recv() => true,
        };
        if told_to_stop {
            let again = async {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                    _ = hangup.recv() => {}
                }
            };
            let stopped = supervisor.stop(&mut exit_rx, again).await;
            supervisor.flush_traces().await;
            return match (scope, root_record) {
                (Scope::Local, _) => Ok(None),
                (Scope::Tree(_), root) => Err(anyhow::anyhow!(
                    "interrupted; the run \"{}\" is durable: `cairn dev resume {}` carries it on{stopped}",
                    root.as_ref().map_or("", |r| r.name.as_str()),
                    root.as_ref().map_or("", |r| r.name.as_str()),
                )),
            };
        }
    }
}

/// Backoff while the database is unavailable, with one warning per outage.
#[derive(Default)]
struct Outage {
    retries: u32,
}

impl Outage {
    async fn wait(&mut self, error: &anyhow::Error) {
        if self.retries == 0 {
            eprintln!("cairn: the database is unavailable ({error:#}); retrying until it is back");
        }
        self.retries += 1;
        let delay = Duration::from_millis(200u64 << self.retries.min(4)); // ≤ 3.2 s
        tokio::time::sleep(delay).await;
    }

    fn over(&mut self) {
        if self.retries > 0 {
            eprintln!("cairn: the database is back");
        }
        self.retries = 0;
    }
}

impl Supervisor<'_> {
    /// One look at the scope: wake due timers, act on every run as the lifecycle says.
    /// Returns the root's record (for a tree) and the next timer.
    async fn look(&mut self) -> anyhow::Result<(Option<RunRecord>, Option<i64>)> {
        let mut conn = self.pool.acquire().await?;
        engine::wake_due(&mut conn).await?;
        let next_wake = engine::next_wake_ms(&mut conn).await?;
        drop(conn);
        let roots = match self.scope {
            Scope::Tree(root) => vec![root],
            Scope::Local => {
                let mut roots = engine::unfinished_local_trees(self.pool).await?;
                roots.extend(
                    self.active
                        .iter()
                        .filter(|r| !roots.contains(r))
                        .collect::<Vec<_>>(),
                );
                roots
            }
        };
        self.keep_locks().await?;
        let mut root_record = None;
        let mut active = Vec::new();
        // Trees no longer looked at (finished, no process left) are let go.
        let done: Vec<Uuid> = self
            .owned
            .iter()
            .filter(|r| !roots.contains(r))
            .copied()
            .collect();
        for root in done {
            self.let_go(root).await?;
        }
        for root in roots {
            if !self.own(root).await? {
                continue; // a `cairn dev run` carries it on
            }
            let runs = read::tree(self.pool, root).await?;
            if let Some(binary) = self.binary_of(root).await? {
                let stepped = self.step(&runs, &binary).await;
                match stepped {
                    // The server goes on with the other trees (this one deleted meanwhile...).
                    Err(e) if self.scope == Scope::Local && !is_unavailable(e.as_ref()) => {
                        eprintln!("cairn: run tree {root}: {e:#}");
                    }
                    stepped => stepped?,
                }
            }
            if runs.iter().any(|r| self.alive.contains_key(&r.id)) {
                active.push(root);
            }
            if self.scope == Scope::Tree(root) {
                root_record = runs.into_iter().find(|r| r.id == root);
            }
        }
        self.active = active;
        Ok((root_record, next_wake))
    }

    /// Takes the lock of the tree rooted at `root`, unless already held; false when another
    /// supervisor holds it.
    async fn own(&mut self, root: Uuid) -> anyhow::Result<bool> {
        if self.owned.contains(&root) {
            return Ok(true);
        }
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2::text))")
            .bind(TREE_LOCK)
            .bind(root)
            .fetch_one(&mut self.locks)
            .await?;
        if taken {
            self.owned.insert(root);
        }
        Ok(taken)
    }

    /// The tree locks live as long as their connection: after a Postgres restart, takes them
    /// again on a new one. A tree another supervisor took meanwhile is left to it.
    async fn keep_locks(&mut self) -> anyhow::Result<()> {
        if sqlx::query("SELECT 1")
            .execute(&mut self.locks)
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.locks = (*self.pool.connect_options()).clone().connect().await?;
        for root in std::mem::take(&mut self.owned) {
            if self.own(root).await? {
                continue;
            }
            if self.scope == Scope::Tree(root) {
                return Err(SupervisedElsewhere.into());
            }
            eprintln!("cairn: run tree {root} is carried on elsewhere now; leaving it");
        }
        Ok(())
    }

    async fn let_go(&mut self, root: Uuid) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2::text))")
            .bind(TREE_LOCK)
            .bind(root)
            .execute(&mut self.locks)
            .await?;
        self.owned.remove(&root);
        Ok(())
    }

    /// The binary of the tree rooted at `root`: the launcher's for one tree; for the local
    /// server, the copy it started with (`None`, said once, when there is none to run).
    async fn binary_of(&mut self, root: Uuid) -> anyhow::Result<Option<PathBuf>> {
        if let Scope::Tree(_) = self.scope {
            return Ok(Some(self.launcher.binary.clone()));
        }
        if let Some(known) = self.binaries.get(&root) {
            return Ok(known.clone());
        }
        let pinned = engine::pinned_binary(&mut *self.pool.acquire().await?, root).await?;
        let binary = pinned.and_then(|p| {
            crate::dev::store::Store::open()
                .copy_of(&p)
                .inspect_err(|e| eprintln!("cairn: run tree {root} left alone: {e:#}"))
                .ok()
        });
        self.binaries.insert(root, binary.clone());
        Ok(binary)
    }

    fn exited(&mut self, exited: Exited) {
        if self
            .alive
            .get(&exited.run_id)
            .is_some_and(|(attempt, _)| *attempt == exited.attempt)
        {
            self.alive.remove(&exited.run_id);
        }
        self.exits
            .insert(exited.run_id, (exited.attempt, exited.exit));
    }

    fn process(&self, run_id: Uuid) -> Process {
        if let Some((attempt, _)) = self.alive.get(&run_id) {
            return Process::Alive { attempt: *attempt };
        }
        match self.exits.get(&run_id) {
            Some((attempt, exit)) => Process::Exited {
                attempt: *attempt,
                exit: exit.clone(),
            },
            None => Process::Absent,
        }
    }

    async fn step(&mut self, runs: &[RunRecord], binary: &std::path::Path) -> anyhow::Result<()> {
        for run in runs {
            match decide(&RunView::of(run), &self.process(run.id)) {
                Next::Idle => {}
                Next::Launch => {
                    if self.alive.len() < self.launcher.max_parallel {
                        self.launch(run, binary).await?;
                    }
                }
                Next::RecordCrash {
                    attempt,
                    reason,
                    retry_in,
                } => {
                    let mut conn = self.pool.acquire().await?;
                    // No process ever ran for it (a `cairn dev` before this one stopped
                    // between the claim and the launch): launched again, not a crash.
                    if self.process(run.id) == Process::Absent
                        && let Some(again) = engine::reissue(&mut conn, run.id, attempt).await?
                    {
                        drop(conn);
                        self.spawn(run, again, binary).await;
                        continue;
                    }
                    let retry_ms = retry_in.map(|d| d.as_millis() as i64);
                    let state =
                        engine::record_crash(&mut conn, run.id, attempt, &reason, retry_ms).await?;
                    match retry_in {
                        Some(delay) => eprintln!(
                            "cairn: {} attempt {attempt} crashed ({reason}); retrying in {}",
                            run.name,
                            humantime::format_duration(delay)
                        ),
                        None => eprintln!(
                            "cairn: {} attempt {attempt} crashed ({reason}); run is now {}",
                            run.name,
                            state.map_or("deleted", Phase::as_db)
                        ),
                    }
                    self.exits.remove(&run.id);
                }
                Next::Finished(phase) => {
                    // Children do not outlive their parent: cancel_run cascades to the
                    // unfinished ones (and leaves the finished parent as it is).
                    let orphans = runs
                        .iter()
                        .any(|c| c.parent_id == Some(run.id) && !c.phase.is_terminal());
                    if orphans {
                        engine::cancel_run(&mut *self.pool.acquire().await?, run.id).await?;
                    }
                    if let Some((_, pid)) = self.alive.get(&run.id) {
                        // A process outliving its run (cancelled mid-step) is fenced anyway; stop it.
                        kill(*pid);
                    }
                    if self.exits.remove(&run.id).is_some() && phase != Phase::Succeeded {
                        eprintln!(
                            "cairn: {} is {phase}{}",
                            run.name,
                            run.error_message()
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn launch(&mut self, run: &RunRecord, binary: &std::path::Path) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let Some(claim) = engine::start_attempt(&mut conn, run.id).await? else {
            return Ok(()); // no longer pending
        };
        drop(conn);
        self.spawn(run, claim, binary).await;
        Ok(())
    }

    /// The attempt's span in its run's trace, when runs are traced. A failure costs the spans
    /// only.
    async fn traceparent(&self, run_id: Uuid, attempt: i32) -> Option<String> {
        self.launcher.traces.as_ref()?;
        let traced = async {
            let mut conn = self.pool.acquire().await?;
            anyhow::Ok(traces::run_trace(&mut conn, run_id).await?)
        };
        match traced.await {
            Ok(run) => run.map(|run| run.attempt(attempt).encode()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot give the run a trace; its attempt is not traced");
                None
            }
        }
    }

    /// Exports the spans of finished runs in the background, when runs are traced, so that a
    /// collector slow or down never holds up the loop. A pass under way is left to finish; a
    /// failed one is tried again at the next look.
    fn export_traces(&mut self) {
        let Some(exporter) = self.launcher.traces.clone() else {
            return;
        };
        if self.exporting.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let pool = self.pool.clone();
        let failing = self.export_failing.clone();
        self.exporting = Some(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            match traces::export_finished(&pool, &exporter, None, 100).await {
                // Nothing to send proves nothing about the endpoint.
                Ok(0) => {}
                Ok(_) => failing.store(false, Relaxed),
                Err(e) if !failing.swap(true, Relaxed) => {
                    eprintln!(
                        "cairn: cannot send the spans of finished runs ({e:#}); trying again later"
                    );
                }
                Err(_) => {}
            }
        }));
    }

    /// Before exiting: the spans of the runs just finished go out, within a bound.
    async fn flush_traces(&mut self) {
        const BOUND: Duration = Duration::from_secs(10);
        if self.launcher.traces.is_none() {
            return;
        }
        if let Some(pass) = self.exporting.take() {
            let _ = tokio::time::timeout(BOUND, pass).await;
        }
        self.export_traces();
        if let Some(pass) = self.exporting.take() {
            let _ = tokio::time::timeout(BOUND, pass).await;
        }
    }

    /// Starts the flow process of a claimed attempt.
    async fn spawn(
        &mut self,
        run: &RunRecord,
        claim: cairn_engine::runner::Attempt,
        binary: &std::path::Path,
    ) {
        let attempt = claim.number;
        self.exits.remove(&run.id);
        let label = format!("{}#{attempt}", run.name);
        let log = crate::dev::logs::attempt_log(&self.launcher.logs, run.id, attempt);
        let output = match open_log(&log) {
            Ok(output) => output,
            Err(e) => {
                let exit = ProcessExit::LaunchFailed(format!("{}: {e}", log.display()));
                self.exits.insert(run.id, (attempt, exit));
                return;
            }
        };
        let mut command = Command::new(binary);
        if let Some(traceparent) = self.traceparent(run.id, attempt).await {
            command.env(cairn::env::TRACEPARENT, traceparent);
        }
        if let Some(artifacts) = &self.launcher.artifacts {
            command.env(cairn::env::ARTIFACTS, artifacts.encode());
        }
        let spawned = command
            .envs(self.launcher.env.iter().map(|(k, v)| (k, v)))
            .env(cairn::env::DATABASE_URL, &self.launcher.database_url)
            .env(cairn::env::RUN_ID, run.id.to_string())
            .env(cairn::env::ATTEMPT, attempt.to_string())
            .env(cairn::env::TOKEN, &claim.token)
            .env(cairn::env::FLOW, &run.flow)
            .env(
                cairn::env::STEP_KEYS,
                self.launcher
                    .step_keys
                    .for_namespace(&run.namespace)
                    .encode(),
            )
            .stdin(Stdio::null())
            .stdout(output.0)
            .stderr(output.1)
            // A group of its own: a terminal's Ctrl-C reaches cairn only, which stops it gently.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let exit = ProcessExit::LaunchFailed(format!("{}: {e}", binary.display()));
                self.exits.insert(run.id, (attempt, exit));
                return;
            }
        };
        eprintln!("cairn: launched {label} ({})", run.flow);
        let pid = child.id().unwrap_or_default();
        self.alive.insert(run.id, (attempt, pid));
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        let echoed = tokio::spawn(crate::dev::logs::echo(log, label, ended_rx));
        let exit_tx = self.exit_tx.clone();
        let run_id = run.id;
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => ProcessExit::Code(code),
                    (None, Some(signal)) => ProcessExit::Signal(signal),
                    (None, None) => ProcessExit::Vanished,
                },
                Err(_) => ProcessExit::Vanished,
            };
            // Its last lines (often why it failed) are shown before its exit is acted on.
            let _ = ended.send(());
            let _ = echoed.await;
            let _ = exit_tx.send(Exited {
                run_id,
                attempt,
                exit,
            });
        });
    }

    /// Stops on a signal. Each flow process is told to stop (SIGTERM): it finishes the step in
    /// flight within its `CAIRN_STOP_GRACE_MS` and gives its run back, so stopping costs no
    /// crash. Those still running a few seconds past that bound, or at a second signal, are
    /// killed: whoever carries their runs on records their crashes. Returns what was killed, in
    /// words to follow a sentence ("" when nothing was).
    async fn stop(
        &mut self,
        exits: &mut mpsc::UnboundedReceiver<Exited>,
        again: impl std::future::Future<Output = ()>,
    ) -> String {
        if !self.alive.is_empty() {
            let grace = stop_grace(&self.launcher.env);
            eprintln!(
                "cairn: stopping: {} flow process(es) finish their step in flight (within {}) and give their runs back; interrupt again to kill them now",
                self.alive.len(),
                humantime::format_duration(grace)
            );
            for (_, pid) in self.alive.values() {
                send(*pid, nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = tokio::time::sleep(grace + Duration::from_secs(5));
            tokio::pin!(deadline, again);
            while !self.alive.is_empty() {
                tokio::select! {
                    Some(exited) = exits.recv() => self.exited(exited),
                    _ = &mut deadline => break,
                    _ = &mut again => break,
                }
            }
        }
        for (_, pid) in self.alive.values() {
            kill(*pid);
        }
        match self.alive.len() {
            0 => String::new(),
            n => format!(" ({n} flow process(es) did not stop in time and were killed)"),
        }
    }
}

fn kill(pid: u32) {
    send(pid, nix::sys::signal::Signal::SIGKILL);
}

fn send(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// How long a flow process told to stop may finish its step: `CAIRN_STOP_GRACE_MS` as the
/// process sees it (the launcher's environment, else the one it inherits from ours).
fn stop_grace(env: &[(String, String)]) -> Duration {
    let name = cairn::env::STOP_GRACE_MS;
    let set = env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let ms = set
        .or_else(|| std::env::var(name).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(cairn_engine::protocol::DEFAULT_STOP_GRACE_MS);
    Duration::from_millis(ms)
}

/// The log file of an execution, opened for appending (an execution launched again under its
/// number adds to it), as the process's stdout and stderr.
fn open_log(path: &std::path::Path) -> std::io::Result<(Stdio, Stdio)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}
