//! `cairn dev`: its subcommands and what each runs (the local twin of `kubectl cairn`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Namespace, NamespaceFilter, OutputFlag, StepFlag, parse_json};
use crate::dev;
use crate::kubectl;

#[derive(Subcommand)]
pub(super) enum DevCommand {
    /// Start a run (or resume the one with this --name) and supervise it until it finishes.
    /// Prints the result JSON as the last line; exits 0 only when the run succeeded. A run
    /// keeps the binary it started with (a copy under the dev root): a rebuild applies to new
    /// runs only.
    Run(DevRun),
    /// List runs.
    Runs {
        #[command(flatten)]
        namespace: NamespaceFilter,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Show a run: its steps with durations, cost and output, attempts, current wait and result.
    Inspect {
        run: String,
        #[command(flatten)]
        step: StepFlag,
        #[command(flatten)]
        namespace: Namespace,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// Emit an event; runs waiting for it wake up.
    Emit {
        /// Event name (events are write-once per namespace).
        event: String,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        data: String,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Answer the event a run waits for: its payload checked against the wait's schema.
    Approve {
        run: String,
        /// The payload (JSON).
        #[arg(long, default_value = "true", conflicts_with = "budget")]
        data: String,
        /// Raise the spend budget the run is parked at instead (US dollars, above what was spent).
        #[arg(long, value_name = "USD")]
        budget: Option<String>,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Cancel a run (and its unfinished children). A running run stops at its next step boundary.
    Cancel {
        run: String,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Start the local server in the background: it carries every local run on (woken by
    /// events, timers and crashes) without a `cairn dev run` in a terminal; `run`, `resume`
    /// and `retry` then submit to it and follow. Its processes get this command's environment.
    Up {
        /// Flow processes running at once, in all.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Stop the local server: its flow processes finish their steps in flight and give their
    /// runs back (the next `up` carries them on); killed if still up after --timeout.
    Down {
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Whether the local server is up (exit 0) or not (exit 1), and how many run trees are not
    /// finished.
    Status,
    /// The local server itself, in the foreground (what `up` starts).
    #[command(hide = true)]
    Serve {
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Carry on a run without repeating its input, on the binary it started with, and
    /// supervise it until it finishes, as `run` does.
    Resume {
        run: String,
        /// Processes running at once (children included).
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Run a failed run again from its last checkpoint (completed steps are not run again,
    /// crashes count from zero), on the binary it started with, and supervise it until it
    /// finishes. Set what it lacked first: its processes get this command's environment (the
    /// server's, when a `cairn dev up` server carries it on).
    Retry {
        run: String,
        /// Processes running at once (children included).
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// A new run from another's checkpoints, supervised until it finishes: those completed
    /// before --from-step are reused (not paid again), some may be given other values, and its
    /// waits may be answered ahead. It runs on the source's binary unless --binary names one.
    Fork {
        #[command(flatten)]
        fork: kubectl::fork::ForkArgs,
        /// Run the fork on this binary (a rebuilt flow) instead of its source's.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Processes running at once (children included).
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// A run's artifacts (objects in the artifact store: `<CAIRN_HOME>/artifacts`, or
    /// CAIRN_ARTIFACTS_URL), or, with `get NAME`, one of them.
    Artifacts {
        #[command(flatten)]
        artifacts: kubectl::artifacts::ArtifactsArgs,
        #[command(flatten)]
        namespace: Namespace,
        #[command(flatten)]
        output: OutputFlag,
    },
    /// What a run's processes printed, execution by execution (kept under the dev root).
    Logs {
        run: String,
        /// Only this execution.
        #[arg(long)]
        attempt: Option<i32>,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Delete a run with its children, steps and attempts. A run not finished is refused
    /// unless --force, which cancels it first.
    Delete {
        run: String,
        /// Delete a run that has not finished (it is cancelled first).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Wait until a run reaches a phase (or any final phase), like `kubectl wait`.
    Wait {
        run: String,
        #[command(flatten)]
        namespace: Namespace,
        /// A phase (pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled), `finished`,
        /// `input` (finished, or waiting for an event or a budget), or `created` (until the run
        /// exists; otherwise an unknown run fails at once).
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
    /// A run goes with everything it owns (children, steps, attempts), and its artifacts once
    /// no other run (a fork) refers to them. An event some run still waits for is kept.
    Gc {
        /// Age beyond which finished runs and events are deleted (e.g. 7d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        #[command(flatten)]
        namespace: NamespaceFilter,
    },
    /// Serve the web console over the local database: runs listed and inspected in a browser,
    /// their questions answered, steered, their logs read, live. A `cairn dev up` server
    /// carries runs on (one is started if none is up).
    ///
    /// Prints the console's URL, with this session's token, on the first line.
    Dashboard {
        /// The loopback address to serve on (port 0: any free one).
        #[arg(long, default_value = super::CONSOLE_ADDR)]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        namespace: Namespace,
    },
    /// Print the private Postgres URL (starting and migrating it if needed).
    DbUrl,
    /// Stop the private Postgres.
    DbStop,
}

#[derive(Args)]
pub struct DevRun {
    /// The flow binary (built with the `cairn` SDK).
    pub binary: PathBuf,
    /// Flow name, as registered in the binary.
    #[arg(long)]
    pub flow: String,
    /// Input JSON.
    #[arg(long, default_value = "null")]
    pub input: String,
    /// Run name (idempotency key): the same name resumes the same run. Default: <flow>-<random>.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub namespace: Namespace,
    /// Crashed attempts before the run fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: i32,
    /// Delay before relaunching after the first crash; doubles per crash.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
    /// Processes running at once (children included).
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// What the run may spend, its children included (US dollars): past it, the run parks
    /// until `cairn dev approve RUN --budget USD` raises it.
    #[arg(long, value_name = "USD")]
    pub budget: Option<String>,
}

pub(super) async fn run_dev(command: DevCommand) -> anyhow::Result<ExitCode> {
    match command {
        DevCommand::Run(args) => {
            let input = parse_json(&args.input, "--input")?;
            dev::run::run(args, input).await
        }
        DevCommand::Runs { namespace, output } => {
            dev::runs::list(namespace.name.as_deref(), output.json()).await
        }
        DevCommand::Inspect {
            run,
            step,
            namespace,
            output,
        } => match step.step {
            Some(key) => dev::runs::inspect_step(&run, &key, &namespace.name, output.json()).await,
            None => dev::runs::inspect(&run, &namespace.name, output.json()).await,
        },
        DevCommand::Emit {
            event,
            data,
            namespace,
        } => {
            let payload = parse_json(&data, "--data")?;
            dev::steer::emit(&event, &payload, &namespace.name).await
        }
        DevCommand::Approve {
            run,
            data: _,
            budget: Some(budget),
            namespace,
        } => dev::steer::raise_budget(&run, &budget, &namespace.name).await,
        DevCommand::Approve {
            run,
            data,
            budget: None,
            namespace,
        } => {
            let payload = parse_json(&data, "--data")?;
            dev::steer::approve(&run, &payload, &namespace.name).await
        }
        DevCommand::Cancel { run, namespace } => dev::steer::cancel(&run, &namespace.name).await,
        DevCommand::Artifacts {
            artifacts,
            namespace,
            output,
        } => match &artifacts.action {
            None => dev::artifacts::list(&artifacts.run, &namespace.name, output.json()).await,
            Some(kubectl::artifacts::ArtifactAction::Get { name, file }) => {
                dev::artifacts::get(&artifacts.run, name, &namespace.name, file).await
            }
        },
        DevCommand::Logs {
            run,
            attempt,
            namespace,
        } => dev::logs::print(&run, &namespace.name, attempt).await,
        DevCommand::Up { parallel } => dev::server::up(parallel).await,
        DevCommand::Down { timeout } => dev::server::down(timeout).await,
        DevCommand::Status => dev::server::status().await,
        DevCommand::Serve { parallel } => dev::server::serve(parallel).await,
        DevCommand::Resume {
            run,
            parallel,
            namespace,
        } => dev::run::resume(&run, &namespace.name, parallel).await,
        DevCommand::Retry {
            run,
            parallel,
            namespace,
        } => dev::run::retry(&run, &namespace.name, parallel).await,
        DevCommand::Fork {
            fork,
            binary,
            parallel,
            namespace,
        } => dev::run::fork(&fork, binary.as_deref(), &namespace.name, parallel).await,
        DevCommand::Delete {
            run,
            force,
            namespace,
        } => dev::steer::delete(&run, &namespace.name, force).await,
        DevCommand::Wait {
            run,
            namespace,
            until,
            event,
            timeout,
        } => dev::steer::wait(&run, &namespace.name, &until, event.as_deref(), timeout).await,
        DevCommand::Gc {
            older_than,
            namespace,
        } => dev::db::gc(older_than, namespace.name.as_deref()).await,
        DevCommand::Dashboard { listen, namespace } => {
            crate::surface::mcp::check_loopback(listen)?;
            let backend = dev::surface_backend(None, Some(namespace.name)).await?;
            crate::surface::console::serve(backend, listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::DbUrl => dev::db::url().await,
        DevCommand::DbStop => dev::db::stop(),
    }
}
