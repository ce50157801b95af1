//! `cairn dev run`: starts a run of a flow binary (or resumes the run of that name) and
//! supervises it, relaunching the binary as the engine says, until the run ends. Every process
//! of the run's tree runs the binary the run started with: a copy in the binary store, recorded
//! with the run (see `store`), so a rebuild applies to new runs only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cairn_engine::{launcher as engine, read};
use serde_json::Value;

use crate::cli::DevRun;
use crate::kubectl::fork::ForkArgs;
use crate::kubectl::input as input_error;
use crate::lifecycle::Phase;
use crate::supervisor::{self, Launcher};

use super::store::Store;
use tokio::signal::unix::{SignalKind, signal};

/// `run`: starts the run (or resumes the one of that name) and supervises it until it ends;
/// prints the result JSON (or the error) last. Exits 0 only when the run succeeded.
pub async fn run(args: DevRun, input: Value) -> anyhow::Result<ExitCode> {
    let (url, pool) = super::open_with_url().await?;
    let submitted = submit(&pool, &args, &input).await?;
    supervise_tree(&pool, &url, submitted.root, submitted.binary, args.parallel).await
}

/// A `cairn dev run` of `flow` on `binary` with the defaults of its flags, for a run started
/// elsewhere (`cairn mcp`).
pub fn local_run(binary: PathBuf, flow: &str, name: Option<String>, namespace: &str) -> DevRun {
    use clap::Parser;
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        run: DevRun,
    }
    // Fixed arguments, so parsing cannot fail; the caller's values are set after, never
    // parsed (a flow named `--help` is a name, not a flag).
    let mut run = Defaults::try_parse_from(["cairn", "--flow", "placeholder", "placeholder"])
        .expect("the defaults of `cairn dev run` parse")
        .run;
    run.flow = flow.to_owned();
    run.binary = binary;
    run.name = name;
    run.namespace.name = namespace.to_owned();
    run
}

/// A run submitted: created (or found, by name) and pinned to its binary, not yet carried on.
pub struct Submitted {
    pub name: String,
    pub root: uuid::Uuid,
    /// Whether it is new (not a run of that name resumed).
    pub created: bool,
    /// The copy of its binary it runs on.
    pub binary: PathBuf,
}

/// Creates the run `args` asks for (or finds the one of that name) and pins it to its binary.
pub async fn submit(
    pool: &sqlx::PgPool,
    args: &DevRun,
    input: &Value,
) -> anyhow::Result<Submitted> {
    let binary = resolve_binary(&args.binary)?;
    let budget = args
        .budget
        .as_deref()
        .map(crate::kubectl::budget::parse_budget)
        .transpose()?;
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.flow,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let request = engine::NewRun {
        namespace: &args.namespace.name,
        name: &name,
        flow: &args.flow,
        input,
        max_attempts: args.max_attempts.max(1),
        retry_backoff_ms: args.retry_backoff.as_millis() as i64,
        created_at: None,
        flowrun_uid: None,
        concurrency: None,
    };
    let store = Store::open();
    // The run and its binary together: a run is never seen without the binary it runs.
    let mut tx = pool.begin().await?;
    let (root, created) = engine::create_run(&mut tx, &request)
        .await
        .map_err(super::explain)?;
    let started_with = match created {
        true => None,
        false => engine::pinned_binary(&mut tx, root).await?,
    };
    let pinned = match started_with {
        Some(pinned) => {
            eprintln!(
                "cairn: resuming run {name} ({}) {}",
                args.flow,
                on_its_binary(&pinned)
            );
            pinned
        }
        None => {
            check_registers(&binary, &args.flow).await?;
            let built = store.put(&binary)?;
            let pinned =
                engine::pin_binary(&mut tx, root, &built, &binary.to_string_lossy()).await?;
            eprintln!(
                "cairn: {} run {name} ({})",
                if created { "started" } else { "resuming" },
                args.flow
            );
            pinned
        }
    };
    if let Some((usd, _)) = budget {
        engine::set_budget(&mut tx, root, Some(usd))
            .await
            .map_err(super::explain)?;
    }
    tx.commit().await?;
    let binary = Store::open()
        .copy_of(&pinned)
        .with_context(|| format!("run {name}"))?;
    Ok(Submitted {
        name,
        root,
        created,
        binary,
    })
}

/// `resume`: carries on run `run` without its input, on the binary it started with, and
/// supervises it until it ends, as `run` does.
pub async fn resume(run: &str, namespace: &str, parallel: usize) -> anyhow::Result<ExitCode> {
    let (url, pool) = super::open_with_url().await?;
    let record = read::find(&pool, namespace, run).await?;
    let (pinned, copy) = started_with(&pool, &record).await?;
    eprintln!(
        "cairn: resuming run {} ({}) {}",
        record.name,
        record.flow,
        on_its_binary(&pinned)
    );
    supervise_tree(&pool, &url, record.id, copy, parallel).await
}

/// `retry`: makes failed run `run` runnable again from its last checkpoint, and supervises it
/// until it ends on the binary it started with, as `run` does.
pub async fn retry(run: &str, namespace: &str, parallel: usize) -> anyhow::Result<ExitCode> {
    let (url, pool) = super::open_with_url().await?;
    let (record, pinned, copy) = make_runnable(&pool, run, namespace).await?;
    if let Some(server) = super::server::find(&pool).await? {
        eprintln!(
            "cairn: the dev server ({server}) carries it on with its own environment, that of \
             `cairn dev up`: if the run lacked a setting, set it there (`cairn dev down`, export \
             it, `cairn dev up`)"
        );
    }
    eprintln!(
        "cairn: retrying run {} ({}) from its last checkpoint {}",
        record.name,
        record.flow,
        on_its_binary(&pinned)
    );
    supervise_tree(&pool, &url, record.id, copy, parallel).await
}

/// Makes failed run `run` runnable again from its last checkpoint (whoever supervises its tree
/// carries it on); returns it with the binary it started with and that binary's copy.
pub async fn make_runnable(
    pool: &sqlx::PgPool,
    run: &str,
    namespace: &str,
) -> anyhow::Result<(read::RunRecord, engine::PinnedBinary, PathBuf)> {
    let record = read::find(pool, namespace, run).await?;
    let (pinned, copy) = started_with(pool, &record).await?;
    engine::retry_run(&mut *pool.acquire().await?, record.id)
        .await
        .map_err(super::explain)?;
    Ok((record, pinned, copy))
}

/// `fork`: a new run from run `args.run`'s checkpoints (see `kubectl::fork`), on its source's
/// binary or on `binary`, supervised until it ends as `run` does.
pub async fn fork(
    args: &ForkArgs,
    binary: Option<&Path>,
    namespace: &str,
    parallel: usize,
) -> anyhow::Result<ExitCode> {
    let (url, pool) = super::open_with_url().await?;
    let fork = submit_fork(&pool, args, binary, namespace).await?;
    eprintln!("cairn: {}", fork.message);
    supervise_tree(&pool, &url, fork.root, fork.binary, parallel).await
}

/// A fork submitted (see [`fork`]), not yet carried on; `message` says what it reused.
pub struct SubmittedFork {
    pub root: uuid::Uuid,
    pub binary: PathBuf,
    pub message: String,
}

/// Creates the fork `args` asks for, pinned to its source's binary or to `binary`.
pub async fn submit_fork(
    pool: &sqlx::PgPool,
    args: &ForkArgs,
    binary: Option<&Path>,
    namespace: &str,
) -> anyhow::Result<SubmittedFork> {
    let plan = args.plan()?;
    let source = read::find(pool, namespace, &args.run).await?;
    let store = Store::open();
    let (sha256, built_from) = match binary {
        Some(binary) => {
            let binary = resolve_binary(binary)?;
            check_registers(&binary, &source.flow).await?;
            (store.put(&binary)?, binary.to_string_lossy().into_owned())
        }
        None => {
            // A child's flow is in its root's binary.
            let root = match read::ancestors(pool, source.id).await?.pop() {
                Some((_, root)) => read::find(pool, namespace, &root).await?,
                None => source.clone(),
            };
            let (pinned, _) = started_with(pool, &root).await?;
            (pinned.sha256, pinned.built_from)
        }
    };
    let request = engine::Fork {
        name: &plan.name,
        input: plan.input.as_ref(),
        max_attempts: source.max_attempts,
        retry_backoff_ms: source.retry_backoff_ms,
        created_at: None,
        flowrun_uid: None,
        source: source.id,
        from_step: &args.from_step,
        outputs: &plan.outputs,
        answers: &plan.answers,
    };
    // The fork and its binary together, as for `run`.
    let mut tx = pool.begin().await?;
    let (id, created, reused) = engine::fork_run(&mut tx, &request)
        .await
        .map_err(super::explain)?;
    if !created {
        return Err(input_error(format!(
            "a run named {} exists already: give the fork another --name",
            plan.name
        )));
    }
    let pinned = engine::pin_binary(&mut tx, id, &sha256, &built_from).await?;
    tx.commit().await?;
    let binary = store
        .copy_of(&pinned)
        .with_context(|| format!("run {}", plan.name))?;
    Ok(SubmittedFork {
        root: id,
        binary,
        message: format!(
            "forked run {} from {} at step {}: {reused} step(s) reused, not paid again",
            plan.name, source.name, args.from_step
        ),
    })
}

/// The binary run `record`'s tree started with, and its copy in the store.
async fn started_with(
    pool: &sqlx::PgPool,
    record: &read::RunRecord,
) -> anyhow::Result<(engine::PinnedBinary, PathBuf)> {
    if record.parent_id.is_some() {
        return Err(input_error(format!(
            "{} is a child run: its root run is the one to carry on (`cairn dev inspect {}` names it)",
            record.name, record.name
        )));
    }
    let pinned = engine::pinned_binary(&mut *pool.acquire().await?, record.id)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "run {} has no binary recorded (an earlier cairn started it): carry it on with \
                 `cairn dev run BINARY --flow {} --name {} --input <its input>`",
                record.name,
                record.flow,
                record.name
            )
        })?;
    let copy = Store::open()
        .copy_of(&pinned)
        .with_context(|| format!("run {}", record.name))?;
    Ok((pinned, copy))
}

/// "with the binary it started with (sha256:…, built from …)".
fn on_its_binary(pinned: &engine::PinnedBinary) -> String {
    format!(
        "with the binary it started with (sha256:{}, built from {}); a rebuild applies to new runs",
        &pinned.sha256[..12],
        pinned.built_from
    )
}

/// Supervises the tree rooted at `root` on `binary` until the root ends; prints the result
/// JSON (or the error) last. Exits 0 only when the run succeeded.
async fn supervise_tree(
    pool: &sqlx::PgPool,
    url: &str,
    root: uuid::Uuid,
    binary: PathBuf,
    parallel: usize,
) -> anyhow::Result<ExitCode> {
    let record = match super::server::find(pool).await? {
        Some(server) => follow(pool, root, &format!("the dev server (pid {})", server.pid)).await?,
        None => {
            // Flow processes get the runner login, never the owner's.
            let launcher = Launcher {
                binary,
                database_url: engine::runner_url(pool, url).await?,
                env: vec![],
                max_parallel: parallel.max(1),
                logs: super::logs::logs_dir(),
                step_keys: super::keys::master()?,
                artifacts: Some(super::artifacts::settings()),
                traces: super::traces(),
            };
            match supervisor::supervise(pool, &launcher, root).await {
                Err(e) if e.is::<supervisor::SupervisedElsewhere>() => {
                    follow(pool, root, "another cairn dev run").await?
                }
                supervised => supervised?,
            }
        }
    };
    let tree = read::tree(pool, root).await?;
    eprintln!(
        "cairn: {} {} after {} execution(s), {} crashed; {} run(s), {} steps, ${:.4} in all",
        record.name,
        record.phase,
        record.attempt,
        record.crashes,
        tree.len(),
        tree.iter().map(|r| r.steps).sum::<i64>(),
        tree.iter().map(|r| r.usd).sum::<f64>()
    );
    match record.phase {
        Phase::Succeeded => {
            println!("{}", record.result.unwrap_or(Value::Null));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            println!("{}", record.error.unwrap_or(Value::Null));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Waits for the run rooted at `root`, which `who` carries on, to end.
async fn follow(
    pool: &sqlx::PgPool,
    root: uuid::Uuid,
    who: &str,
) -> anyhow::Result<read::RunRecord> {
    let id = root.to_string();
    let mut record = read::find(pool, "", &id).await?;
    eprintln!(
        "cairn: {who} runs {}; following it (Ctrl-C stops following, not the run; `cairn dev logs {}` shows its output)",
        record.name, record.name
    );
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Nobody may carry it on any more (the server stopped, or cannot run it): not for ever.
    let mut unsupervised_since = None;
    while !record.phase.is_terminal() {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = interrupt.recv() => anyhow::bail!(
                "stopped following {}; {who} carries it on", record.name
            ),
        }
        record = read::find(pool, "", &id).await?;
        if supervisor::supervised(pool, root).await? {
            unsupervised_since = None;
        } else if unsupervised_since
            .get_or_insert_with(std::time::Instant::now)
            .elapsed()
            > std::time::Duration::from_secs(15)
        {
            anyhow::bail!(
                "nobody carries {} on any more (a server stopped, or it cannot run it: see \
                 `cairn dev status` and the server's log); `cairn dev resume {}` does",
                record.name,
                record.name
            );
        }
    }
    Ok(record)
}

fn resolve_binary(path: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        input_error(format!(
            "flow binary {} not found (build it first, e.g. `cargo build`): {e}",
            path.display()
        ))
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(input_error(format!(
            "{} is not an executable file",
            path.display()
        )));
    }
    Ok(std::fs::canonicalize(path)?)
}

/// Refuses a binary that does not register `flow`.
async fn check_registers(binary: &Path, flow: &str) -> anyhow::Result<()> {
    let flows = describe(binary).await?;
    if !flows.iter().any(|f| f == flow) {
        return Err(input_error(format!(
            "flow \"{flow}\" is not registered in {} (it registers: {})",
            binary.display(),
            flows.join(", ")
        )));
    }
    Ok(())
}

/// Asks the binary which flows it registers (the runner answers `CAIRN_DESCRIBE`).
async fn describe(binary: &Path) -> anyhow::Result<Vec<String>> {
    let output = tokio::process::Command::new(binary)
        .env(cairn::env::DESCRIBE, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let described: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    let flows = described
        .as_ref()
        .and_then(|d| d.get("flows"))
        .and_then(Value::as_array)
        .filter(|_| output.status.success());
    let Some(flows) = flows else {
        return Err(input_error(format!(
            "{} did not describe its flows; is it a flow binary built with the cairn SDK (`cairn::Runner`)?",
            binary.display()
        )));
    };
    Ok(flows
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}
