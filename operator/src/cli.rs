//! The `cairn` command line (also `kubectl cairn`): argument definitions and dispatch. The
//! Kubernetes commands live in `kubectl`, the local database ones (`cairn dev`) here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cairn_engine::{EngineError, launcher as engine, read, schema};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::controller::api;
use crate::kubectl::{
    self,
    render::{self, RunRow, Ui},
};
use crate::lifecycle::Phase;
use crate::localdb::LocalPostgres;
use crate::supervisor::{self, Launcher};
use cairn_engine::read::RunRecord;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Durable flows: steer runs on Kubernetes (also as `kubectl cairn`), or run them locally with `cairn dev`",
    after_help = "Exit codes: 0 done; 1 the operation failed (cluster or operator unreachable, a run in a \
                  state that does not allow it, a wait that timed out or ended elsewhere); 2 a usage or \
                  input error (unknown run, bad JSON, a payload failing the wait's schema)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List FlowRuns with phase, attempt, steps, cost and what they wait for.
    ///
    /// Child runs are listed under their parent.
    Runs {
        /// Only runs in these phases (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = parse_phase)]
        phase: Vec<Phase>,
        /// Only runs of this flow (spec.flow, or the Flow of spec.flowRef).
        #[arg(long)]
        flow: Option<String>,
        /// Runs of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show a run: steps, durations, tokens, costs, attempts, and the question it waits on.
    ///
    /// The FlowRun's status, with the detail the operator's read API serves from the database:
    /// steps with durations, tokens and cost, attempts and their pods, children, and the
    /// pending question with its JSON schema.
    Inspect {
        /// The FlowRun's name.
        run: String,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Answer the event a run waits for (a FlowEvent).
    ///
    /// The payload is checked against the wait's JSON schema before anything is created; then a
    /// FlowEvent delivers it, so RBAC on FlowEvents decides who may approve.
    Approve {
        /// The FlowRun's name.
        run: String,
        /// The payload (JSON).
        #[arg(long, default_value = "true")]
        data: String,
        #[command(flatten)]
        wait: WaitFlags,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Emit an event (a FlowEvent); runs waiting for it wake up.
    ///
    /// Events are write-once. The payload is checked against the schema of every run of the
    /// namespace waiting for the event before anything is created.
    Emit {
        /// The event name.
        event: String,
        /// The payload (JSON); checked against the schema of every run waiting for the event.
        #[arg(long, default_value = "null")]
        data: String,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Cancel a run.
    ///
    /// Sets spec.cancel: a parked run ends at once, a running one at its next step boundary.
    Cancel {
        /// The FlowRun's name.
        run: String,
        #[command(flatten)]
        wait: WaitFlags,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Retry a failed run from its last checkpoint.
    ///
    /// Completed steps are not run (nor paid for) again. Sets the cairn.dev/retry annotation,
    /// which the operator acts on once per value.
    Retry {
        /// The FlowRun's name.
        run: String,
        #[command(flatten)]
        wait: WaitFlags,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Logs of a run's pods, attempt by attempt.
    Logs {
        /// The FlowRun's name.
        run: String,
        /// Follow the current attempt's pod.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this attempt.
        #[arg(long)]
        attempt: Option<i32>,
        #[command(flatten)]
        target: KubeTarget,
        /// `json`: one object per line (attempt, pod, line).
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Wait until a run reaches a phase (or any final phase), like `kubectl wait`.
    Wait {
        /// The FlowRun's name.
        run: String,
        /// A phase (pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled) or `finished`.
        #[arg(long = "for", default_value = "finished", value_parser = parse_until)]
        until: kubectl::Until,
        /// With `--for waiting`: wait until the run waits for this event.
        #[arg(long)]
        event: Option<String>,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: KubeTarget,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The local loop on a Postgres, no cluster: run, list, inspect, answer, cancel, wait.
    ///
    /// Runs flows as local processes against CAIRN_DATABASE_URL (or a private Postgres).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Run the Kubernetes operator (current kube context or in-cluster config).
    ///
    /// The database is CAIRN_DATABASE_URL.
    Operator(crate::controller::Config),
    /// Apply the engine's pending database migrations to CAIRN_DATABASE_URL, then exit.
    ///
    /// Runs them once, under a lock, as the schema owner: what the Helm chart's pre-upgrade Job
    /// does with `migrations.mode=job` (the operator then runs with `--migrations verify`).
    /// Prints the schema version and what it serves.
    Migrate,
}

/// Where the cluster and the operator are.
#[derive(Args)]
struct KubeTarget {
    /// The kubeconfig context to use (default: the current one).
    #[arg(long)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Namespace of the operator's Service (for the read API).
    #[arg(long, env = "CAIRN_OPERATOR_NAMESPACE", default_value = "cairn-system")]
    operator_namespace: String,
    /// The operator's Service (port name `http`), reached through the API server's proxy.
    #[arg(long, env = "CAIRN_OPERATOR_SERVICE", default_value = "cairn-operator")]
    operator_service: String,
    /// Reach the read API at this URL instead (a port-forward, an operator on this host).
    #[arg(long, env = "CAIRN_API_URL")]
    api_url: Option<String>,
}

impl From<KubeTarget> for kubectl::Target {
    fn from(t: KubeTarget) -> kubectl::Target {
        kubectl::Target {
            context: t.context,
            namespace: t.namespace,
            operator_namespace: t.operator_namespace,
            operator_service: t.operator_service,
            api_url: t.api_url.filter(|u| !u.is_empty()),
        }
    }
}

#[derive(Args)]
struct WaitFlags {
    /// Wait until the operator has acted (the event delivered and the run resumed, the run
    /// cancelled, the retry started).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, requires = "wait")]
    timeout: Duration,
}

impl WaitFlags {
    fn timeout(&self) -> Option<Duration> {
        self.wait.then_some(self.timeout)
    }
}

fn parse_phase(text: &str) -> Result<Phase, String> {
    text.trim().parse()
}

fn parse_until(text: &str) -> Result<kubectl::Until, String> {
    text.parse()
}

#[derive(Subcommand)]
enum DevCommand {
    /// Start a run (or resume the one with this --name) and supervise it until it finishes.
    /// Prints the result JSON as the last line; exits 0 only when the run succeeded.
    Run(DevRun),
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
    /// Cancel a run (and its unfinished children). A running run stops at its next step boundary.
    Cancel {
        run: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
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
    /// Delete runs that finished, and events emitted, longer ago than --older-than.
    ///
    /// A run goes with everything it owns (children, steps, attempts). An event some run
    /// still waits for is kept.
    Gc {
        /// Age beyond which finished runs and events are deleted (e.g. 7d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Only in this namespace (default: every namespace).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
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

/// The same binary is the kubectl plugin `kubectl-cairn`: it behaves identically, and its help
/// and hints say `kubectl cairn`.
pub async fn main() -> ExitCode {
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut command = Cli::command();
    if invoked_as.as_deref() == Some("kubectl-cairn") {
        kubectl::set_program("kubectl cairn");
        command = command.name("kubectl-cairn").bin_name("kubectl cairn");
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing(matches!(cli.command, Command::Operator(_)));
    let local = matches!(
        cli.command,
        Command::Dev(_) | Command::Operator(_) | Command::Migrate
    );
    match run(cli.command).await {
        Ok(code) => code,
        // `cairn dev` and the operator keep their codes: every error is 2.
        Err(e) if local => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(kubectl::exit_code(&e))
        }
    }
}

/// A secret setting: the variable `name`, else the contents of the file that `name_FILE` names
/// (a mounted Secret: the Helm chart mounts the database URLs as files rather than passing them
/// in the environment), without trailing line breaks. `None` when neither is set.
fn secret_setting(name: &str) -> anyhow::Result<Option<String>> {
    if let Ok(value) = std::env::var(name)
        && !value.is_empty()
    {
        return Ok(Some(value));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = std::env::var_os(&file_var) else {
        return Ok(None);
    };
    let value = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{file_var}={}: cannot read it; mount the Secret holding {name} there, or unset {file_var}",
            Path::new(&path).display()
        )
    })?;
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        bail!(
            "{file_var}={}: the file is empty; it should hold {name}",
            Path::new(&path).display()
        );
    }
    Ok(Some(value.to_string()))
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(dev) => run_dev(dev).await,
        Command::Operator(mut config) => {
            let url = secret_setting("CAIRN_DATABASE_URL")?.ok_or_else(|| {
                anyhow!(
                    "the operator needs CAIRN_DATABASE_URL, or CAIRN_DATABASE_URL_FILE naming a \
                     file that holds it (a Postgres flow pods can reach)"
                )
            })?;
            if config.runner_database_url.is_none() {
                config.runner_database_url = secret_setting("CAIRN_RUNNER_DATABASE_URL")?;
            }
            crate::controller::run(&url, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let url = secret_setting("CAIRN_DATABASE_URL")?.ok_or_else(|| {
                anyhow!(
                    "cairn migrate needs CAIRN_DATABASE_URL, or CAIRN_DATABASE_URL_FILE naming a \
                     file that holds it (the schema owner's login)"
                )
            })?;
            let info = schema::migrate(&schema::open(&url, 1).await?).await?;
            println!(
                "schema version {}; launcher contract {}; runner protocols {} to {}",
                info.schema_version, info.launcher_contract, info.runner_oldest, info.runner_newest
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs {
            phase,
            flow,
            all_namespaces,
            target,
            output,
        } => {
            let kube = connect(target, output).await?;
            kube.list(all_namespaces, &phase, flow.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            run,
            target,
            output,
        } => {
            connect(target, output).await?.inspect(&run).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            run,
            data,
            wait,
            target,
            output,
        } => {
            let payload = kube_json(&data, "--data")?;
            let kube = connect(target, output).await?;
            kube.approve(&run, payload, wait.timeout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            event,
            data,
            target,
            output,
        } => {
            let payload = kube_json(&data, "--data")?;
            connect(target, output).await?.emit(&event, payload).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel {
            run,
            wait,
            target,
            output,
        } => {
            let kube = connect(target, output).await?;
            kube.cancel(&run, wait.timeout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            run,
            wait,
            target,
            output,
        } => {
            let kube = connect(target, output).await?;
            kube.retry(&run, wait.timeout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            run,
            follow,
            attempt,
            target,
            output,
        } => {
            let kube = connect(target, output).await?;
            kube.logs(&run, attempt, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait {
            run,
            until,
            event,
            timeout,
            target,
            output,
        } => {
            let kube = connect(target, output).await?;
            kube.wait(&run, until, event.as_deref(), timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(target: KubeTarget, output: Output) -> anyhow::Result<kubectl::Kube> {
    kubectl::Kube::connect(target.into(), output == Output::Json).await
}

/// JSON given to a `kubectl cairn` command (a mistake there is an input error).
fn kube_json(text: &str, flag: &str) -> anyhow::Result<Value> {
    parse_json(text, flag).map_err(|e| kubectl::InputError(e.to_string()).into())
}

async fn run_dev(command: DevCommand) -> anyhow::Result<ExitCode> {
    match command {
        DevCommand::Run(args) => dev_run(args).await,
        DevCommand::DbUrl => {
            let url = LocalPostgres::new(LocalPostgres::default_root(), 5432)?.ensure_running()?;
            schema::connect(&url).await?; // applies migrations
            println!("{url}");
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Gc {
            older_than,
            namespace,
        } => {
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(older_than).map_err(|_| {
                    anyhow!(
                        "--older-than {} is too long",
                        humantime::format_duration(older_than)
                    )
                })?;
            let pool = open().await?;
            let collected = engine::gc(
                &mut *pool.acquire().await?,
                Some(before),
                Some(before),
                namespace.as_deref(),
            )
            .await?;
            println!(
                "deleted {} finished run(s) and {} event(s) older than {}",
                collected.runs,
                collected.events,
                humantime::format_duration(older_than)
            );
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::DbStop => {
            LocalPostgres::new(LocalPostgres::default_root(), 5432)?.stop()?;
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Emit {
            event,
            data,
            namespace,
        } => {
            let payload = parse_json(&data, "--data")?;
            let pool = open().await?;
            let mut conn = pool.acquire().await?;
            let emitted = engine::emit(&mut conn, &namespace, &event, &payload)
                .await
                .map_err(explain)?;
            if emitted.duplicate {
                println!("event {event} was already emitted with this payload (nothing changed)");
            } else {
                println!("event {event} emitted; {} run(s) woken", emitted.woken);
            }
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Runs { namespace, output } => {
            let pool = open().await?;
            let records = read::list(&pool, namespace.as_deref()).await?;
            let runs = api::summaries(&records);
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&api::RunList { runs })?);
            } else {
                let rows: Vec<RunRow> = runs.iter().map(RunRow::from).collect();
                let table = render::runs_table(
                    &rows,
                    namespace.is_none(),
                    &Ui::detect(),
                    chrono::Utc::now(),
                );
                println!("{table}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Inspect {
            run,
            namespace,
            output,
        } => {
            let pool = open().await?;
            let detail =
                api::detail(&pool, &namespace, &run)
                    .await
                    .map_err(|e| match e.status {
                        axum::http::StatusCode::NOT_FOUND => anyhow!("{e} (see `cairn dev runs`)"),
                        _ => anyhow!(e),
                    })?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                let answer =
                    |event: &str| format!("cairn dev emit {event} --data <JSON> -n {namespace}");
                let text = render::detail_text(
                    &detail,
                    None,
                    Some(&answer),
                    &Ui::detect(),
                    chrono::Utc::now(),
                );
                print!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Cancel { run, namespace } => {
            let pool = open().await?;
            let record = read::find(&pool, &namespace, &run).await?;
            let state = engine::cancel_run(&mut *pool.acquire().await?, record.id)
                .await
                .map_err(explain)?;
            match state {
                Phase::Running => println!(
                    "{}: cancellation requested; it stops at its next step boundary",
                    record.name
                ),
                other => println!("{}: {}", record.name, other.as_db()),
            }
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Wait {
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
    let url = tokio::task::spawn_blocking(crate::localdb::database_url).await??;
    let pool = schema::connect(&url).await?;
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

    // Flow processes get the runner login, never the owner's.
    let launcher = Launcher {
        binary,
        database_url: engine::runner_url(&pool, &url).await?,
        env: vec![],
        max_parallel: args.parallel.max(1),
    };
    let record = supervisor::supervise(&pool, &launcher, root).await?;
    let tree = read::tree(&pool, root).await?;
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
        let record = match read::find(pool, namespace, run).await {
            Ok(record) => record,
            Err(e) if e.is::<read::NotFound>() => {
                listener.try_recv().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let waits_for_event =
            |name: &str| record.wait().as_ref().and_then(|w| w.event()) == Some(name);
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
