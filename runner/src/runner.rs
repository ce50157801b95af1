//! The in-process run loop: the binary a supervisor launches registers its flows with a
//! [`Runner`], which reads the runner contract from the environment, runs the requested flow
//! against its checkpoints and exits with a code that tells the supervisor what happened.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::conn::{Pooler, RunnerConn, engine_call};
use crate::ctx::{Ctx, decode};
use crate::error::{Interrupted, StepFailed};
use cairn_engine::EngineError;
use cairn_engine::artifacts::ArtifactSettings;
use cairn_engine::checkpoint::StepKeys;
use cairn_engine::protocol::{self, Exit, env};
use cairn_engine::runner::{self as engine, Handshake};
use cairn_engine::traces::AttemptTracing;

/// The runner contract read from the environment.
#[derive(Debug, Clone)]
pub struct RunnerEnv {
    pub database_url: String,
    pub attempt: engine::Attempt,
    pub inline_sleep_max: Duration,
    pub pooler: Pooler,
    /// After SIGTERM, how long the step in flight may go on before it is abandoned.
    pub stop_grace: Duration,
    /// The longest one database call may take before the attempt ends as crashed.
    pub call_timeout: Duration,
    /// The namespace's step keys, which seal and open sensitive steps' values.
    pub step_keys: Option<StepKeys>,
    /// Where large results and stored artifacts go (a bad setting: its message, reported by
    /// the first step that needs the store, so that it fails that run rather than crashing).
    pub artifacts: Option<Result<ArtifactSettings, String>>,
    /// Where the spans of the steps this process executes go, and their parent (a bad
    /// setting: its message, logged; the run goes on untraced).
    pub traces: Option<Result<AttemptTracing, String>>,
}

impl RunnerEnv {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| anyhow!("{name} is not set; this binary is meant to be launched by `cairn dev` or the Cairn operator"))
        };
        let run_id = var(env::RUN_ID)?;
        let attempt = var(env::ATTEMPT)?;
        Ok(RunnerEnv {
            database_url: var(env::DATABASE_URL)?,
            attempt: engine::Attempt {
                run_id: run_id
                    .parse()
                    .map_err(|e| anyhow!("{}={run_id:?} is not a UUID: {e}", env::RUN_ID))?,
                number: attempt
                    .parse()
                    .map_err(|e| anyhow!("{}={attempt:?} is not a number: {e}", env::ATTEMPT))?,
                token: var(env::TOKEN)?,
            },
            inline_sleep_max: millis(
                env::INLINE_SLEEP_MAX_MS,
                protocol::DEFAULT_INLINE_SLEEP_MAX_MS,
            )?,
            pooler: std::env::var(env::POOLER)
                .unwrap_or_default()
                .parse()
                .map_err(|e| anyhow!("{}: {e}", env::POOLER))?,
            stop_grace: millis(env::STOP_GRACE_MS, protocol::DEFAULT_STOP_GRACE_MS)?,
            call_timeout: millis(env::CALL_TIMEOUT_MS, protocol::DEFAULT_CALL_TIMEOUT_MS)?,
            step_keys: std::env::var(env::STEP_KEYS)
                .ok()
                .map(|keys| StepKeys::parse(&keys))
                .transpose()
                .map_err(|e| anyhow!("{}: {e}", env::STEP_KEYS))?,
            artifacts: std::env::var(env::ARTIFACTS).ok().map(|text| {
                ArtifactSettings::parse(&text).map_err(|e| format!("{}: {e}", env::ARTIFACTS))
            }),
            traces: AttemptTracing::from_env(&std::env::var(env::FLOW).unwrap_or_default())
                .transpose(),
        })
    }

    /// The process's database connection, bounded by `call_timeout`.
    async fn connect(&self) -> Result<RunnerConn, sqlx::Error> {
        RunnerConn::connect(&self.database_url, self.pooler, self.call_timeout).await
    }
}

/// A duration in milliseconds from the environment variable `name`, or `default` if unset.
fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    let Ok(value) = std::env::var(name) else {
        return Ok(Duration::from_millis(default));
    };
    let ms = value
        .parse()
        .map_err(|e| anyhow!("{name}={value:?} is not a number of milliseconds: {e}"))?;
    Ok(Duration::from_millis(ms))
}

/// How this SDK names itself to the engine (in the message of a protocol it does not serve).
const SDK: &str = concat!("the Cairn Rust SDK ", env!("CARGO_PKG_VERSION"));

type FlowFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Value>> + Send>>;
type FlowFn = Arc<dyn Fn(Ctx, Value) -> FlowFuture + Send + Sync>;

/// Registers flows by name and runs the one the environment asks for.
///
/// ```ignore
/// #[tokio::main]
/// async fn main() {
///     cairn::Runner::new().flow("research", research).run().await
/// }
/// ```
#[derive(Default)]
pub struct Runner {
    flows: BTreeMap<String, FlowFn>,
}

impl Runner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` under `name`. Its input is decoded from the run's JSON input into `I`
    /// (a mismatch fails the run with a message naming the field); its output is stored as JSON.
    pub fn flow<I, O, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(Ctx, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<O>> + Send + 'static,
    {
        let flow_name = name.to_owned();
        let f = Arc::new(f);
        let erased: FlowFn = Arc::new(move |ctx, input| {
            let f = f.clone();
            let flow_name = flow_name.clone();
            Box::pin(async move {
                let input: I = decode(input, &format!("the input of flow \"{flow_name}\""))?;
                let output = f(ctx, input).await?;
                Ok(serde_json::to_value(output)?)
            })
        });
        self.flows.insert(name.to_owned(), erased);
        self
    }

    pub fn flow_names(&self) -> Vec<&str> {
        self.flows.keys().map(String::as_str).collect()
    }

    /// Runs the flow named by the environment and exits the process with its [`Exit`] code.
    pub async fn run(self) -> ! {
        init_tracing();
        if std::env::var_os(env::DESCRIBE).is_some() {
            println!("{}", json!({ "flows": self.flow_names() }));
            std::process::exit(0);
        }
        let exit = match RunnerEnv::from_env() {
            Ok(runner_env) => self.execute(&runner_env).await,
            Err(e) => {
                tracing::error!("{e:#}");
                Exit::Crashed
            }
        };
        write_termination_message(exit);
        std::process::exit(exit.code());
    }

    /// Executes one attempt of one run. Public so tests and embedders can run flows in-process.
    pub async fn execute(&self, runner_env: &RunnerEnv) -> Exit {
        let attempt = &runner_env.attempt;
        let span = tracing::info_span!("run", run_id = %attempt.run_id, attempt = attempt.number);
        let _guard = span.enter();
        // From here on SIGTERM no longer kills the process: it stops the flow (below).
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot handle SIGTERM"))
            .ok();
        let mut conn = match runner_env.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                let why = cairn_engine::error::explain_connect_error(&runner_env.database_url, &e);
                tracing::error!("cannot reach the database {why}");
                return Exit::Crashed;
            }
        };
        match engine_call!(conn, |conn| engine::handshake(conn, attempt, SDK)) {
            Ok(Handshake::Served) => {}
            Ok(Handshake::NotServed(why)) => {
                tracing::error!("{why}");
                return Exit::Failed;
            }
            Err(EngineError::Fenced(why)) => {
                tracing::warn!("{why}");
                return Exit::Superseded;
            }
            Err(e) => {
                tracing::error!("cannot start the run: {e}");
                return Exit::Crashed;
            }
        }
        let run = match engine_call!(conn, |conn| engine::load_run(conn, attempt)) {
            Ok(run) => run,
            Err(EngineError::Fenced(why)) => {
                tracing::warn!("{why}");
                return Exit::Superseded;
            }
            Err(e) => {
                tracing::error!("cannot load the run: {e}");
                return Exit::Crashed;
            }
        };
        tracing::info!(run = %run.name, flow = %run.flow, checkpoints = run.steps.len(), "entering flow");

        let Some(flow) = self.flows.get(&run.flow).cloned() else {
            let message = format!(
                "flow \"{}\" is not registered in this binary (it registers: {})",
                run.flow,
                self.flow_names().join(", ")
            );
            return finish_failed(&mut conn, attempt, &message, "unknown_flow").await;
        };
        let input = run.input.clone();
        let ctx = Ctx::new(
            attempt.clone(),
            run,
            conn,
            runner_env.inline_sleep_max,
            runner_env.step_keys.clone(),
            runner_env.artifacts.clone(),
            runner_env.traces.clone(),
        );
        let outcome = tokio::select! {
            outcome = flow(ctx.clone(), input) => outcome,
            () = stop_after_grace(&ctx, terminate, runner_env.stop_grace) => {
                // The step in flight is dropped mid-way, maybe mid-query: give the run back
                // on a connection of its own.
                return match runner_env.connect().await {
                    Ok(mut conn) => release(&mut conn, attempt).await,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reach the database to give the run back");
                        Exit::Crashed
                    }
                };
            }
        };
        let (replayed, executed) = ctx.step_counts();
        tracing::info!(replayed, executed, "flow returned");

        // The run's own record decides, whatever the flow did with the interruption.
        if let Some(why) = ctx.interruption() {
            return match why {
                Interrupted::Suspended => Exit::Suspended,
                Interrupted::Cancelled => Exit::Cancelled,
                Interrupted::Superseded => Exit::Superseded,
                Interrupted::Unavailable | Interrupted::StoreUnavailable => Exit::Crashed,
                Interrupted::Stopping => release(&mut *ctx.connection().await, attempt).await,
            };
        }
        let mut conn = ctx.connection().await;
        match outcome {
            Ok(result) => {
                match engine_call!(*conn, |conn| engine::complete_run(conn, attempt, &result)) {
                    Ok(()) => Exit::Completed,
                    Err(e) => settle_error(e),
                }
            }
            Err(err) => {
                let message = format!("{err:#}");
                tracing::error!(error = %message, "flow failed");
                let mut error = json!({ "message": message, "kind": "flow_error" });
                // Names the step whose failure failed the run, for `inspect`.
                if let Some(step) = err.downcast_ref::<StepFailed>() {
                    error["step"] = json!(step.key);
                    error["tries"] = json!(step.tries);
                }
                finish_with(&mut conn, attempt, &error).await
            }
        }
    }
}

/// Once told to stop (SIGTERM), asks the flow to stop at its next step boundary; resolves
/// when `grace` has passed since without the flow returning (the step in flight is then
/// abandoned). Never resolves without a SIGTERM.
async fn stop_after_grace(
    ctx: &Ctx,
    terminate: Option<tokio::signal::unix::Signal>,
    grace: Duration,
) {
    let Some(mut terminate) = terminate else {
        return std::future::pending().await;
    };
    terminate.recv().await;
    tracing::warn!(
        ?grace,
        "told to stop (SIGTERM): the step in flight may finish, then the run goes to a new process"
    );
    ctx.request_stop();
    tokio::time::sleep(grace).await;
    tracing::warn!(
        ?grace,
        "the step in flight did not finish within the grace: abandoning it"
    );
}

/// Gives the run back after a stop request: it is pending again, for a new process.
async fn release(conn: &mut RunnerConn, attempt: &engine::Attempt) -> Exit {
    match engine_call!(*conn, |conn| engine::release(conn, attempt)) {
        Ok(()) => {
            tracing::info!("gave the run back; a new process continues it");
            Exit::Stopped
        }
        Err(e) => settle_error(e),
    }
}

async fn finish_failed(
    conn: &mut RunnerConn,
    attempt: &engine::Attempt,
    message: &str,
    kind: &str,
) -> Exit {
    finish_with(conn, attempt, &json!({ "message": message, "kind": kind })).await
}

async fn finish_with(conn: &mut RunnerConn, attempt: &engine::Attempt, error: &Value) -> Exit {
    match engine_call!(*conn, |conn| engine::fail_run(conn, attempt, error)) {
        Ok(()) => Exit::Failed,
        Err(e) => settle_error(e),
    }
}

fn settle_error(err: EngineError) -> Exit {
    match err {
        EngineError::Fenced(why) => {
            tracing::warn!("{why}");
            Exit::Superseded
        }
        other => {
            tracing::error!("cannot record the outcome: {other}");
            Exit::Crashed
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if std::env::var(env::LOG_FORMAT).as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn write_termination_message(exit: Exit) {
    let path =
        std::env::var(env::TERMINATION_LOG).unwrap_or_else(|_| "/dev/termination-log".into());
    if std::path::Path::new(&path).exists() {
        let _ = std::fs::write(&path, json!({ "outcome": exit.as_str() }).to_string());
    }
}
