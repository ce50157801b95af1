//! The `cairn` command line (also `kubectl cairn`): the arguments, parsed, and handed to the
//! command that runs them. Nothing else happens here: the Kubernetes commands are in
//! `kubectl`, the local ones (`cairn dev`) in `dev`, the operator in `controller`. Flags
//! several commands share are `#[command(flatten)]` groups, so they read the same everywhere.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use cairn_engine::schema;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::Value;

mod dev;

pub use dev::DevRun;
use dev::{DevCommand, run_dev};

use crate::kubectl;
use crate::lifecycle::Phase;
use crate::surface::{Backend, mcp};
use kubectl::parse_json;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Durable flows: steer runs on Kubernetes (also as `kubectl cairn`), or run them locally with `cairn dev`",
    after_help = "Exit codes: 0 done; 1 the operation failed (database, cluster or operator unreachable, a \
                  run in a state that does not allow it, a wait that timed out or ended elsewhere); 2 a \
                  usage or input error (unknown run or flow, bad JSON, a payload failing the wait's schema)."
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
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Show a run: steps, durations, tokens, costs, attempts, and the question it waits on.
    ///
    /// The FlowRun's status, with the detail the operator's read API serves from the database:
    /// steps with durations, tokens and cost, attempts and their pods, children, and the
    /// pending question with its JSON schema. Each step shows the start of what it returned;
    /// `--step KEY` shows the whole value (a sensitive step's value is never shown).
    Inspect {
        /// The FlowRun's name.
        run: String,
        #[command(flatten)]
        step: StepFlag,
        #[command(flatten)]
        target: KubeTarget,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Answer the event a run waits for (a FlowEvent), or raise the budget it is parked at.
    ///
    /// The payload is checked against the wait's JSON schema before anything is created; then a
    /// FlowEvent delivers it, so RBAC on FlowEvents decides who may approve. With --budget, the
    /// budget of the run whose budget was passed (this one, or a parent) is set in its FlowRun
    /// (spec.budget.usd), so RBAC's patch on FlowRuns decides.
    Approve {
        /// The FlowRun's name.
        run: String,
        /// The payload (JSON).
        #[arg(long, default_value = "true", conflicts_with = "budget")]
        data: String,
        /// Raise the spend budget instead: US dollars, above what was spent.
        #[arg(long, value_name = "USD")]
        budget: Option<String>,
        #[command(flatten)]
        wait: WaitFlags,
        #[command(flatten)]
        target: KubeTarget,
        #[command(flatten)]
        output: OutputFlag,
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
        #[command(flatten)]
        output: OutputFlag,
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
        #[command(flatten)]
        output: OutputFlag,
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
        #[command(flatten)]
        output: OutputFlag,
    },
    /// FlowSchedules: `schedule trigger NAME` starts one of its runs now.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// A new run from another's checkpoints: those completed before --from-step are reused
    /// (not paid again), some may be given other values, and its waits may be answered ahead.
    ///
    /// Creates a FlowRun with the source's spec and spec.forkOf; the source is not changed.
    /// `inspect` of the fork shows which steps were reused and which were paid for.
    Fork {
        #[command(flatten)]
        fork: kubectl::fork::ForkArgs,
        #[command(flatten)]
        wait: WaitFlags,
        #[command(flatten)]
        target: KubeTarget,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// A run's artifacts (objects in the artifact store), or, with `get NAME`, one of them.
    ///
    /// Lists what the run stored (`ctx.artifact`) and its step results too large for a
    /// checkpoint row; `get NAME [-f FILE]` downloads one through the operator's read API. A
    /// sensitive step's result is listed, never served.
    Artifacts {
        #[command(flatten)]
        artifacts: kubectl::artifacts::ArtifactsArgs,
        #[command(flatten)]
        target: KubeTarget,
        #[command(flatten)]
        output: OutputFlag,
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
        // Its own flag, not OutputFlag: the help says what JSON means for a stream of lines.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Wait until a run reaches a phase (or any final phase), like `kubectl wait`.
    Wait {
        /// The FlowRun's name.
        run: String,
        /// A phase (pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled),
        /// `finished`, or `input` (finished, or waiting for an event or a budget).
        #[arg(long = "for", default_value = "finished", value_parser = parse_until)]
        until: kubectl::Until,
        /// With `--for waiting`: wait until the run waits for this event.
        #[arg(long)]
        event: Option<String>,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: KubeTarget,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Serve the Model Context Protocol to agents: list, inspect, start, wait for, answer,
    /// cancel, retry and fork runs, and read their logs.
    ///
    /// On stdio (what MCP clients launch), or with --http on streamable HTTP at a loopback
    /// address, every request then carrying `Authorization: Bearer <token>`. It acts through
    /// the kube context, as `kubectl cairn` does (RBAC decides what it sees and may do), or
    /// with --dev on the local database, carried on by `cairn dev up`'s server (started if
    /// none is up).
    Mcp(McpArgs),
    /// Serve the web console on a loopback address: runs listed and inspected in a browser,
    /// their questions answered through a form, steered (cancel, retry, fork, budget), their
    /// logs read, live.
    ///
    /// It acts through the kube context, as `kubectl cairn` does, so RBAC decides what each
    /// person sees and may do. Prints the console's URL, with this session's token, on the
    /// first line. `cairn dev dashboard` serves the same console over the local database.
    Dashboard {
        /// The loopback address to serve on (port 0: any free one).
        #[arg(long, default_value = CONSOLE_ADDR)]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        target: KubeTarget,
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

/// Where the console listens by default.
const CONSOLE_ADDR: &str = "127.0.0.1:8788";

#[derive(Args)]
struct McpArgs {
    /// Operate local runs (`cairn dev`'s database) instead of a cluster's.
    #[arg(long)]
    dev: bool,
    /// With --dev: the flow binary runs start on when start_run names none.
    #[arg(long, requires = "dev")]
    binary: Option<PathBuf>,
    /// Serve streamable HTTP at this loopback address (e.g. 127.0.0.1:8931) instead of stdio.
    /// The bearer token is CAIRN_MCP_TOKEN, or one written to a file this command names.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    target: KubeTarget,
}

/// Where the cluster is, and as whom to talk to it.
#[derive(Args)]
struct KubeTarget {
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// Act as this user, as `kubectl --as` (needs `impersonate` rights).
    #[arg(long = "as")]
    as_user: Option<String>,
    /// Act as this group too, as `kubectl --as-group` (repeatable).
    #[arg(long = "as-group", requires = "as_user")]
    as_groups: Vec<String>,
}

impl From<KubeTarget> for kubectl::Target {
    fn from(t: KubeTarget) -> kubectl::Target {
        kubectl::Target {
            context: t.context,
            namespace: t.namespace,
            as_user: t.as_user,
            as_groups: t.as_groups,
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

/// `-o`: a table for people, or JSON for programs.
#[derive(Args)]
struct OutputFlag {
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl OutputFlag {
    fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// `--step`: one step of a run, with its whole value.
#[derive(Args)]
struct StepFlag {
    /// Show this step's whole value (its key as the steps table names it: `plan`, `plan#2`).
    #[arg(long, value_name = "KEY")]
    step: Option<String>,
}

/// `-n`: the namespace of a `cairn dev` run or event.
#[derive(Args)]
pub struct Namespace {
    #[arg(
        id = "namespace",
        long = "namespace",
        short = 'n',
        value_name = "NAMESPACE",
        default_value = "default",
        global = true
    )]
    pub name: String,
}

/// `-n` where leaving it out means every namespace.
#[derive(Args)]
struct NamespaceFilter {
    /// Only in this namespace (default: every namespace).
    #[arg(
        id = "namespace",
        long = "namespace",
        short = 'n',
        value_name = "NAMESPACE"
    )]
    name: Option<String>,
}

fn parse_phase(text: &str) -> Result<Phase, String> {
    text.trim().parse()
}

fn parse_until(text: &str) -> Result<kubectl::Until, String> {
    text.parse()
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
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(kubectl::exit_code(&e))
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(dev) => run_dev(dev).await,
        Command::Mcp(args) => {
            // Before anything starts (a dev server, a token file).
            if let Some(addr) = args.http {
                mcp::check_loopback(addr)?;
            }
            let backend = match args.dev {
                true => {
                    let namespace = args.target.namespace.clone();
                    crate::dev::surface_backend(args.binary, namespace).await?
                }
                false => Backend::Kube(connect(args.target, false).await?),
            };
            let server = mcp::CairnMcp::new(backend);
            match args.http {
                None => mcp::serve_stdio(server).await?,
                Some(addr) => mcp::serve_http(server, addr, mcp::token()?).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard { listen, target } => {
            mcp::check_loopback(listen)?;
            let backend = Backend::Kube(connect(target, false).await?);
            crate::surface::console::serve(backend, listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator(mut config) => {
            let url = crate::settings::secret("CAIRN_DATABASE_URL")?.ok_or_else(|| {
                anyhow!(
                    "the operator needs CAIRN_DATABASE_URL, or CAIRN_DATABASE_URL_FILE naming a \
                     file that holds it (a Postgres flow pods can reach)"
                )
            })?;
            if config.runner_database_url.is_none() {
                config.runner_database_url = crate::settings::secret("CAIRN_RUNNER_DATABASE_URL")?;
            }
            crate::controller::run(&url, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let url = crate::settings::secret("CAIRN_DATABASE_URL")?.ok_or_else(|| {
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
            let kube = connect(target, output.json()).await?;
            kube.list(all_namespaces, &phase, flow.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            run,
            step,
            target,
            output,
        } => {
            let kube = connect(target, output.json()).await?;
            match step.step {
                Some(key) => kube.inspect_step(&run, &key).await?,
                None => kube.inspect(&run).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            run,
            data,
            budget,
            wait,
            target,
            output,
        } => {
            let kube = connect(target, output.json()).await?;
            match budget {
                Some(budget) => kube.raise_budget(&run, &budget, wait.timeout()).await?,
                None => {
                    let payload = kube_json(&data, "--data")?;
                    kube.approve(&run, payload, wait.timeout()).await?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            event,
            data,
            target,
            output,
        } => {
            let payload = kube_json(&data, "--data")?;
            let kube = connect(target, output.json()).await?;
            kube.emit(&event, payload).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel {
            run,
            wait,
            target,
            output,
        } => {
            let kube = connect(target, output.json()).await?;
            kube.cancel(&run, wait.timeout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            run,
            wait,
            target,
            output,
        } => {
            let kube = connect(target, output.json()).await?;
            kube.retry(&run, wait.timeout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule {
            action:
                ScheduleAction::Trigger {
                    schedule,
                    target,
                    output,
                },
        } => {
            let kube = connect(target, output.json()).await?;
            kube.trigger_schedule(&schedule).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fork {
            fork,
            wait,
            target,
            output,
        } => {
            let kube = connect(target, output.json()).await?;
            kube.fork(&fork, wait.timeout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Artifacts {
            artifacts,
            target,
            output,
        } => {
            let kube = connect(target, output.json()).await?;
            match &artifacts.action {
                None => kube.artifacts(&artifacts.run).await?,
                Some(kubectl::artifacts::ArtifactAction::Get { name, file }) => {
                    kube.artifact_get(&artifacts.run, name, file).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            run,
            follow,
            attempt,
            target,
            output,
        } => {
            let kube = connect(target, output == Output::Json).await?;
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
            let kube = connect(target, output.json()).await?;
            kube.wait(&run, until, event.as_deref(), timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(target: KubeTarget, json: bool) -> anyhow::Result<kubectl::Kube> {
    kubectl::Kube::connect(target.into(), json).await
}

/// JSON given to a `kubectl cairn` command (a mistake there is an input error).
fn kube_json(text: &str, flag: &str) -> anyhow::Result<Value> {
    parse_json(text, flag).map_err(|e| kubectl::InputError(e.to_string()).into())
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

#[derive(Subcommand)]
enum ScheduleAction {
    /// Start a run of the schedule now, whatever its time and concurrency policy.
    ///
    /// Sets the cairn.dev/trigger annotation, which the operator acts on once per value; the
    /// run is named <schedule>-manual-<hash>.
    Trigger {
        /// The FlowSchedule's name.
        schedule: String,
        #[command(flatten)]
        target: KubeTarget,
        #[command(flatten)]
        output: OutputFlag,
    },
}
