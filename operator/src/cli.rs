//! The `cairn` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cairn::engine::{self, EngineError};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::lifecycle::Phase;
use crate::localdb::LocalPostgres;
use crate::store::{self, RunRecord};
use crate::supervisor::{self, Launcher};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Durable flows: run them locally with `cairn dev`, inspect and steer them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The local loop: run flows as local processes against Postgres (no cluster).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Emit an event; runs waiting for it wake up.
    Emit {
        /// Event name (events are write-once per namespace).
        event: String,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        data: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// List runs.
    Runs {
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show a run: its steps with durations and cost, attempts, current wait and result.
    Inspect {
        run: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Cancel a run (and its unfinished children). A running run stops at its next step boundary.
    Cancel {
        run: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Run the Kubernetes operator against the current kube context (or in-cluster config).
    /// The database is CAIRN_DATABASE_URL.
    Operator(crate::controller::Config),
    /// Wait until a run reaches a phase (or any final phase), like `kubectl wait`.
    Wait {
        run: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// A phase (pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled) or `finished`.
        #[arg(long = "for", default_value = "finished")]
        until: String,
        /// With `--for waiting`: wait until the run waits for this event (not for children).
        #[arg(long)]
        event: Option<String>,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Start a run (or resume the one with this --name) and supervise it until it finishes.
    /// Prints the result JSON as the last line; exits 0 only when the run succeeded.
    Run(DevRun),
    /// Print the private Postgres URL (starting and migrating it if needed).
    DbUrl,
    /// Stop the private Postgres.
    DbStop,
}

#[derive(Args)]
struct DevRun {
    /// The flow binary (built with the `cairn` SDK).
    binary: PathBuf,
    /// Flow name, as registered in the binary.
    #[arg(long)]
    flow: String,
    /// Input JSON.
    #[arg(long, default_value = "null")]
    input: String,
    /// Run name (idempotency key): the same name resumes the same run. Default: <flow>-<random>.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Crashed attempts before the run fails.
    #[arg(long, default_value_t = 3)]
    max_attempts: i32,
    /// Delay before relaunching after the first crash; doubles per crash.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
    /// Processes running at once (children included).
    #[arg(long, default_value_t = 16)]
    parallel: usize,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

/// Exit codes: 0 success, 1 the run failed or was cancelled, 2 a usage or input error.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Operator(_)));
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(DevCommand::Run(args)) => dev_run(args).await,
        Command::Dev(DevCommand::DbUrl) => {
            let url = LocalPostgres::new(LocalPostgres::default_root(), 5432)?.ensure_running()?;
            store::connect(&url).await?; // applies migrations
            println!("{url}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(DevCommand::DbStop) => {
            LocalPostgres::new(LocalPostgres::default_root(), 5432)?.stop()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator(config) => {
            let url = std::env::var("CAIRN_DATABASE_URL").map_err(|_| {
                anyhow!("the operator needs CAIRN_DATABASE_URL (a Postgres flow pods can reach)")
            })?;
            crate::controller::run(&url, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            event,
            data,
            namespace,
        } => {
            let payload = parse_json(&data, "--data")?;
            let pool = open().await?;
            let mut conn = pool.acquire().await?;
            let emitted = engine::emit(
                &mut conn,
                engine::Emitter::External {
                    namespace: &namespace,
                },
                &event,
                &payload,
            )
            .await
            .map_err(explain)?;
            if emitted.duplicate {
                println!("event {event} was already emitted with this payload (nothing changed)");
            } else {
                println!("event {event} emitted; {} run(s) woken", emitted.woken);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { namespace, output } => {
            let pool = open().await?;
            let runs = store::list(&pool, namespace.as_deref()).await?;
            print_runs(&runs, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            run,
            namespace,
            output,
        } => {
            let pool = open().await?;
            inspect(&pool, &namespace, &run, output).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { run, namespace } => {
            let pool = open().await?;
            let record = store::find(&pool, &namespace, &run).await?;
            let state = engine::cancel_run(&mut *pool.acquire().await?, record.id)
                .await
                .map_err(explain)?;
            match state.as_str() {
                "running" => println!(
                    "{}: cancellation requested; it stops at its next step boundary",
                    record.name
                ),
                other => println!("{}: {other}", record.name),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait {
            run,
            namespace,
            until,
            event,
            timeout,
        } => {
            let target = match until.as_str() {
                "finished" => None,
                phase => Some(phase.parse::<Phase>().map_err(|e| anyhow!(e))?),
            };
            let pool = open().await?;
            let record = tokio::time::timeout(
                timeout,
                wait_for(&pool, &namespace, &run, target, event.as_deref()),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "timed out after {} waiting for {run} to be {until}",
                    humantime::format_duration(timeout)
                )
            })??;
            println!("{} is {}", record.name, record.phase);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open() -> anyhow::Result<PgPool> {
    Ok(open_with_url().await?.1)
}

/// The database (`CAIRN_DATABASE_URL` or the private Postgres), migrated, and its URL.
async fn open_with_url() -> anyhow::Result<(String, PgPool)> {
    let url = tokio::task::spawn_blocking(store::database_url).await??;
    let pool = store::connect(&url).await?;
    Ok((url, pool))
}

async fn dev_run(args: DevRun) -> anyhow::Result<ExitCode> {
    let input = parse_json(&args.input, "--input")?;
    let binary = resolve_binary(&args.binary)?;
    let flows = describe(&binary).await?;
    if !flows.iter().any(|f| f == &args.flow) {
        bail!(
            "flow \"{}\" is not registered in {} (it registers: {})",
            args.flow,
            binary.display(),
            flows.join(", ")
        );
    }
    let (url, pool) = open_with_url().await?;
    let name = args.name.unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.flow,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let request = engine::NewRun {
        namespace: &args.namespace,
        name: &name,
        flow: &args.flow,
        input: &input,
        max_attempts: args.max_attempts.max(1),
        retry_backoff_ms: args.retry_backoff.as_millis() as i64,
    };
    let (root, created) = engine::create_run(&mut *pool.acquire().await?, &request)
        .await
        .map_err(explain)?;
    eprintln!(
        "cairn: {} run {name} ({})",
        if created { "started" } else { "resuming" },
        args.flow
    );

    let launcher = Launcher {
        binary,
        database_url: url,
        env: vec![],
        max_parallel: args.parallel.max(1),
    };
    let record = supervisor::supervise(&pool, &launcher, root).await?;
    let tree = store::tree(&pool, root).await?;
    eprintln!(
        "cairn: {} {} after {} attempt(s); {} run(s), {} steps, ${:.4} in all",
        record.name,
        record.phase,
        record.attempt,
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

fn resolve_binary(path: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "flow binary {} not found (build it first, e.g. `cargo build`)",
            path.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", path.display());
    }
    Ok(std::fs::canonicalize(path)?)
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
        bail!(
            "{} did not describe its flows; is it a flow binary built with the cairn SDK (`cairn::Runner`)?",
            binary.display()
        );
    };
    Ok(flows
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

fn parse_json(text: &str, flag: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| anyhow!("{flag} is not valid JSON: {e} (got {text:?})"))
}

/// Turns engine errors into user-facing ones (they already say what to fix).
fn explain(err: EngineError) -> anyhow::Error {
    anyhow!(err)
}

async fn wait_for(
    pool: &PgPool,
    namespace: &str,
    run: &str,
    target: Option<Phase>,
    event: Option<&str>,
) -> anyhow::Result<RunRecord> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("cairn_runs").await?;
    loop {
        // A run that does not exist yet may be about to: keep waiting (until the timeout).
        let record = match store::find(pool, namespace, run).await {
            Ok(record) => record,
            Err(e) if e.is::<store::NotFound>() => {
                listener.try_recv().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let waits_for_event = |name: &str| {
            let waiting = record.waiting_for.as_ref().and_then(|w| w.get("event"));
            waiting.and_then(Value::as_str) == Some(name)
        };
        let reached = match target {
            Some(phase) => record.phase == phase && event.is_none_or(waits_for_event),
            None => record.phase.is_terminal(),
        };
        if reached {
            return Ok(record);
        }
        if let Some(phase) = target
            && record.phase.is_terminal()
        {
            bail!(
                "{} finished as {} and will never be {phase}",
                record.name,
                record.phase
            );
        }
        listener.try_recv().await?;
    }
}

fn print_runs(runs: &[RunRecord], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(runs)?);
        return Ok(());
    }
    let mut table = table([
        "NAME",
        "FLOW",
        "PHASE",
        "ATTEMPT",
        "STEPS",
        "COST",
        "WAITING FOR",
        "AGE",
    ]);
    for run in runs {
        table.add_row([
            run.name.clone(),
            run.flow.clone(),
            run.phase.to_string(),
            run.attempt.to_string(),
            run.steps.to_string(),
            format!("${:.4}", run.usd),
            waiting_summary(run),
            age(run.created_at),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_BORDERS_ONLY).set_header(header);
    table
}

fn waiting_summary(run: &RunRecord) -> String {
    let Some(waiting) = &run.waiting_for else {
        return String::new();
    };
    if let Some(event) = waiting.get("event").and_then(Value::as_str) {
        return format!("event {event}");
    }
    if let Some(n) = waiting.get("unfinished") {
        return format!("{n} child run(s)");
    }
    if let Some(until) = waiting.get("until").and_then(Value::as_str) {
        return format!("timer {until}");
    }
    if waiting.get("retry_after").is_some() {
        return "retry backoff".into();
    }
    String::new()
}

fn age(since: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - since).num_seconds().max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

async fn inspect(pool: &PgPool, namespace: &str, name: &str, output: Output) -> anyhow::Result<()> {
    let run = store::find(pool, namespace, name).await?;
    let steps = store::steps(pool, run.id).await?;
    let attempts = store::attempts(pool, run.id).await?;
    let totals = store::totals(pool, run.id).await?;
    if output == Output::Json {
        let doc = json!({ "run": run, "steps": steps, "attempts": attempts, "totals": totals });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "Run:      {} ({}), namespace {}",
        run.name, run.id, run.namespace
    );
    println!("Flow:     {}", run.flow);
    println!(
        "Phase:    {} (attempt {}, {} crash(es) of {} allowed)",
        run.phase, run.attempt, run.crashes, run.max_attempts
    );
    if let Some(waiting) = &run.waiting_for {
        println!("Waiting:  {}", waiting_summary(&run));
        if let Some(q) = waiting.get("question").and_then(Value::as_str) {
            println!("Question: {q}");
        }
        if let Some(schema) = waiting.get("schema") {
            println!("Schema:   {schema}");
        }
        if let Some(deadline) = waiting.get("deadline").and_then(Value::as_str) {
            println!("Deadline: {deadline}");
        }
    }
    let mut table = table([
        "STEP",
        "KIND",
        "STATUS",
        "ATTEMPT",
        "TRIES",
        "DURATION",
        "TOKENS IN/OUT",
        "COST",
        "MODEL",
    ]);
    for step in &steps {
        table.add_row([
            step.key.clone(),
            step.kind.clone(),
            step.status.clone(),
            step.attempt.map(|a| a.to_string()).unwrap_or_default(),
            step.tries.map(|t| t.to_string()).unwrap_or_default(),
            format!("{:.0} ms", step.duration_ms),
            match (step.tokens_in, step.tokens_out) {
                (None, None) => String::new(),
                (i, o) => format!("{}/{}", i.unwrap_or(0), o.unwrap_or(0)),
            },
            step.usd.map(|u| format!("${u:.4}")).unwrap_or_default(),
            step.model.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
    println!(
        "Totals:   {} steps, {} tokens in, {} tokens out, ${:.4}",
        totals.steps, totals.tokens_in, totals.tokens_out, totals.usd
    );
    let attempts_line: Vec<String> = attempts
        .iter()
        .map(|a| {
            format!(
                "#{} {}",
                a.attempt,
                a.outcome.as_deref().unwrap_or("running")
            )
        })
        .collect();
    println!("Attempts: {}", attempts_line.join(", "));
    if let Some(result) = &run.result {
        println!("Result:   {result}");
    }
    if let Some(message) = run.error_message() {
        println!("Error:    {message}");
    }
    Ok(())
}

/// Commands log warnings to stderr; the operator logs JSON lines at info.
fn init_tracing(operator: bool) {
    let default = if operator { "info" } else { "warn" };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if operator {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
