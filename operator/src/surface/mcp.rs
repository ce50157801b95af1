//! `cairn mcp`: an MCP server (the official Rust SDK, rmcp) through which agents operate runs,
//! on stdio or on streamable HTTP at 127.0.0.1. Its tools are [`Backend`]'s operations; an
//! operation that fails is a tool error carrying the CLI's own message.
//!
//! Long operations are a handle and a poll: `start_run` returns the run's name at once, and
//! `wait_run` waits (bounded) until the run finishes or needs an answer. MCP's own task
//! extension is not used: the official clients do not speak it yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Backend, Filter, Start};
use crate::kubectl::Until;
use crate::kubectl::fork::ForkArgs;
use crate::lifecycle::Phase;

/// The longest `wait_run` holds a call (clients commonly give up on a call after 60 s), and
/// its default.
const MAX_WAIT: Duration = Duration::from_secs(50);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The most of a run's logs one call returns (the end of them).
const MAX_LOGS: usize = 64 * 1024;
/// The most runs listed as resources.
const MAX_LISTED_RESOURCES: usize = 200;
/// Resources: `cairn://runs/{namespace}/{name}`.
const RUN_URI: &str = "cairn://runs/";

const INSTRUCTIONS: &str = "Cairn runs durable flows: each run is a sequence of checkpointed \
steps that may wait for an event (often a person's approval, with a JSON schema for the answer). \
start_run returns a run's name at once; then call wait_run until it is finished or waits for \
input; inspect_run shows its steps, costs and the open question with its schema; answer_wait \
answers it, or raise_budget when it is parked at its spend budget. Namespaces default to the \
server's.";

#[derive(Clone)]
pub struct CairnMcp {
    backend: Arc<Backend>,
    tool_router: ToolRouter<Self>,
}

/// A run, by name, in a namespace.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunRef {
    /// The run's name.
    pub run: String,
    /// Its namespace (default: the server's).
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// The namespace (default: the server's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Every namespace the caller may read.
    #[serde(default)]
    pub all_namespaces: bool,
    /// Only runs in this phase: pending, running, waiting, sleeping, retrying, succeeded,
    /// failed or cancelled.
    #[serde(default)]
    pub phase: Option<String>,
    /// Only runs of this flow.
    #[serde(default)]
    pub flow: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StartArgs {
    /// The flow: on a cluster, a Flow of the namespace; locally (`--dev`), a flow registered
    /// in the server's `--binary`.
    pub flow: String,
    /// The run's input (JSON).
    #[serde(default)]
    pub input: Value,
    /// The run's name, its idempotency key: starting the same name again is the same run.
    /// Default: `<flow>-<random>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// What the run may spend, its children included, in US dollars (e.g. "5"): past it, the
    /// run parks until raise_budget raises it.
    #[serde(default)]
    pub budget_usd: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitArgs {
    pub run: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// What to wait for: `input` (finished, or waiting for an answer; the default),
    /// `finished`, or a phase.
    #[serde(default)]
    pub until: Option<String>,
    /// How long to wait at most, in seconds (default 30, at most 50). Call again if it is
    /// not there yet.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AnswerArgs {
    pub run: String,
    /// The answer: it must satisfy the JSON schema of the run's open wait (inspect_run shows it).
    pub payload: Value,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct BudgetArgs {
    /// A run parked at a spend budget (its own, or a parent's: that one is raised).
    pub run: String,
    /// The new budget in US dollars, above what the run's tree spent (e.g. "5" or "12.50").
    pub usd: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ForkToolArgs {
    /// The run to fork (it is not changed).
    pub run: String,
    /// The step to run again (its key, as inspect_run shows it), with everything after it; the
    /// steps completed before it are reused, not paid again.
    pub from_step: String,
    /// The fork's input (default: the source's).
    #[serde(default)]
    pub input: Option<Value>,
    /// Other values for steps before from_step, by step key.
    #[serde(default)]
    pub set_outputs: BTreeMap<String, Value>,
    /// Events sent to the fork alone, by event name, answering its waits when reached.
    #[serde(default)]
    pub answers: BTreeMap<String, Value>,
    /// The fork's name (default: `<run>-fork-<random>`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LogsArgs {
    pub run: String,
    /// Only this execution (attempt).
    #[serde(default)]
    pub attempt: Option<i32>,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A tool's answer: JSON as structured content, or an error with the CLI's message.
type Answer = Result<CallToolResult, String>;

fn structured(value: Value) -> Answer {
    Ok(CallToolResult::structured(value))
}

fn text(text: String) -> Answer {
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
}

fn failed(error: anyhow::Error) -> String {
    format!("{error:#}")
}

#[tool_router]
impl CairnMcp {
    pub fn new(backend: Backend) -> CairnMcp {
        CairnMcp {
            backend: Arc::new(backend),
            tool_router: Self::tool_router(),
        }
    }

    fn namespace(&self, given: Option<String>) -> String {
        given.unwrap_or_else(|| self.backend.default_namespace())
    }

    #[tool(
        description = "List runs (children under their parents) with phase, steps, cost and what they wait for.",
        annotations(read_only_hint = true)
    )]
    async fn list_runs(&self, Parameters(args): Parameters<ListArgs>) -> Answer {
        let phase = match args.phase.as_deref().map(str::parse::<Phase>) {
            Some(Err(_)) => {
                return Err(format!(
                    "unknown phase {:?} (expected one of: pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled)",
                    args.phase.unwrap_or_default()
                ));
            }
            parsed => parsed.transpose().unwrap_or_default(),
        };
        let filter = Filter {
            namespace: (!args.all_namespaces).then(|| self.namespace(args.namespace)),
            phase,
            flow: args.flow,
        };
        structured(self.backend.list(&filter).await.map_err(failed)?)
    }

    #[tool(
        description = "A run with its steps (duration, tokens, cost, model, output preview), attempts, children, totals and the open wait with its question and JSON schema.",
        annotations(read_only_hint = true)
    )]
    async fn inspect_run(&self, Parameters(args): Parameters<RunRef>) -> Answer {
        let namespace = self.namespace(args.namespace);
        structured(
            self.backend
                .inspect(&namespace, &args.run)
                .await
                .map_err(failed)?,
        )
    }

    #[tool(
        description = "Start a run of a flow and return its name (a handle) at once; then poll it with wait_run."
    )]
    async fn start_run(&self, Parameters(args): Parameters<StartArgs>) -> Answer {
        let namespace = self.namespace(args.namespace);
        let start = Start {
            namespace: namespace.clone(),
            flow: args.flow,
            input: args.input,
            name: args.name,
            budget: args.budget_usd,
        };
        let (run, message) = self.backend.start(start).await.map_err(failed)?;
        structured(json!({ "run": run, "namespace": namespace, "message": message }))
    }

    #[tool(
        description = "Wait (at most timeout_seconds) until a run is finished or waits for an answer (or another `until`); returns whether it got there and the run as inspect_run shows it. Call again while `reached` is false.",
        annotations(read_only_hint = true)
    )]
    async fn wait_run(&self, Parameters(args): Parameters<WaitArgs>) -> Answer {
        let namespace = self.namespace(args.namespace);
        let until = match args.until.as_deref() {
            None => Until::Input,
            Some(text) => text.parse::<Until>()?,
        };
        let timeout = args
            .timeout_seconds
            .map_or(DEFAULT_WAIT, Duration::from_secs)
            .min(MAX_WAIT);
        let reached = self
            .backend
            .wait(&namespace, &args.run, until, timeout)
            .await
            .map_err(failed)?;
        let run = self
            .backend
            .inspect(&namespace, &args.run)
            .await
            .map_err(failed)?;
        structured(json!({ "reached": reached, "until": until.to_string(), "run": run }))
    }

    #[tool(
        description = "Answer the event a run waits for. The payload is checked against the wait's JSON schema first; one that fails it is refused with the reason."
    )]
    async fn answer_wait(&self, Parameters(args): Parameters<AnswerArgs>) -> Answer {
        let namespace = self.namespace(args.namespace);
        let said = self.backend.answer(&namespace, &args.run, args.payload);
        text(said.await.map_err(failed)?)
    }

    #[tool(
        description = "Raise the spend budget a run is parked at (inspect_run shows what was spent and the limit), letting it and the runs parked at that budget go on."
    )]
    async fn raise_budget(&self, Parameters(args): Parameters<BudgetArgs>) -> Answer {
        let namespace = self.namespace(args.namespace);
        let said = self.backend.raise_budget(&namespace, &args.run, &args.usd);
        text(said.await.map_err(failed)?)
    }

    #[tool(
        description = "Cancel a run and its unfinished children: a parked run ends now, a running one at its next step boundary.",
        annotations(destructive_hint = true)
    )]
    async fn cancel_run(&self, Parameters(args): Parameters<RunRef>) -> Answer {
        let namespace = self.namespace(args.namespace);
        text(
            self.backend
                .cancel(&namespace, &args.run)
                .await
                .map_err(failed)?,
        )
    }

    #[tool(
        description = "Run a failed run again from its last checkpoint: completed steps are not run (nor paid) again."
    )]
    async fn retry_run(&self, Parameters(args): Parameters<RunRef>) -> Answer {
        let namespace = self.namespace(args.namespace);
        text(
            self.backend
                .retry(&namespace, &args.run)
                .await
                .map_err(failed)?,
        )
    }

    #[tool(
        description = "A new run from another's checkpoints: the steps before from_step are reused (not paid again), some may be given other values, and its waits may be answered ahead."
    )]
    async fn fork_run(&self, Parameters(args): Parameters<ForkToolArgs>) -> Answer {
        let namespace = self.namespace(args.namespace);
        let pairs = |map: &BTreeMap<String, Value>| -> Vec<String> {
            map.iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect()
        };
        let fork = ForkArgs {
            run: args.run,
            from_step: args.from_step,
            input: args.input.map(|input| input.to_string()),
            set_output: pairs(&args.set_outputs),
            answer: pairs(&args.answers),
            name: args.name,
        };
        text(self.backend.fork(&namespace, &fork).await.map_err(failed)?)
    }

    #[tool(
        description = "What a run's processes printed, execution by execution (the last 64 KiB).",
        annotations(read_only_hint = true)
    )]
    async fn run_logs(&self, Parameters(args): Parameters<LogsArgs>) -> Answer {
        let namespace = self.namespace(args.namespace);
        let logs = self
            .backend
            .logs(&namespace, &args.run, args.attempt)
            .await
            .map_err(failed)?;
        text(tail(logs, MAX_LOGS))
    }
}

/// The end of `text`, at most `max` bytes of it, saying what was left out.
fn tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("(the first {start} bytes left out)\n{}", &text[start..])
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CairnMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("cairn", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let filter = Filter {
            namespace: Some(self.backend.default_namespace()),
            ..Filter::default()
        };
        let listed = self.backend.list(&filter).await.map_err(internal)?;
        let runs = listed["runs"].as_array().cloned().unwrap_or_default();
        // The newest (lists are oldest first); the template reaches any other.
        let newest = runs.len().saturating_sub(MAX_LISTED_RESOURCES);
        let resources = runs[newest..]
            .iter()
            .filter_map(|run| {
                let namespace = run["namespace"].as_str()?;
                let name = run["name"].as_str()?;
                Some(
                    Resource::new(format!("{RUN_URI}{namespace}/{name}"), name)
                        .with_description(format!("run {name} of flow {}", run["flow"]))
                        .with_mime_type("application/json"),
                )
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{RUN_URI}{{namespace}}/{{name}}"), "run")
                .with_description("A run as inspect_run shows it")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let Some((namespace, name)) = uri
            .strip_prefix(RUN_URI)
            .and_then(|rest| rest.split_once('/'))
        else {
            return Err(McpError::resource_not_found(
                format!("unknown resource {uri} (runs are {RUN_URI}NAMESPACE/NAME)"),
                None,
            ));
        };
        let run = self
            .backend
            .inspect(namespace, name)
            .await
            .map_err(|e| McpError::resource_not_found(failed(e), None))?;
        let contents =
            ResourceContents::text(run.to_string(), uri.clone()).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

fn internal(error: anyhow::Error) -> McpError {
    McpError::internal_error(failed(error), None)
}

/// Where the HTTP transport's token is, unless `CAIRN_MCP_TOKEN` gives it.
pub const TOKEN_ENV: &str = "CAIRN_MCP_TOKEN";

/// The HTTP transport's bearer token: `CAIRN_MCP_TOKEN`, or a new one written (mode 0600) to
/// a file under the dev root, whose path is said (the token itself never is).
pub fn token() -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(token) = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    let token =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let path = crate::localdb::LocalPostgres::default_root().join("mcp-token");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(token.as_bytes()))
        .map_err(|e| anyhow::anyhow!("cannot write the token to {}: {e}", path.display()))?;
    eprintln!(
        "cairn mcp: the bearer token is in {} (or set {TOKEN_ENV})",
        path.display()
    );
    Ok(token)
}

/// Serves `server` on stdio until the client closes it.
pub async fn serve_stdio(server: CairnMcp) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    server
        .serve(rmcp::transport::stdio())
        .await?
        .waiting()
        .await?;
    Ok(())
}

/// Serves `server` on streamable HTTP at `http://{addr}/mcp` (loopback only) until SIGINT or
/// SIGTERM; every request must carry `Authorization: Bearer <token>`.
pub async fn serve_http(
    server: CairnMcp,
    addr: std::net::SocketAddr,
    token: String,
) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    check_loopback(addr)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let service: StreamableHttpService<CairnMcp, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(server.clone()),
        Default::default(),
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
    );
    let token = Arc::new(format!("Bearer {token}"));
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(move |request, next| {
            bearer(token.clone(), request, next)
        }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("cairn mcp: serving http://{}/mcp", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            super::stop_signal().await;
            stop.cancel();
        })
        .await?;
    Ok(())
}

/// Refuses an address other than a loopback one: the server acts with the user's credentials.
pub fn check_loopback(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(crate::kubectl::input(format!(
        "cairn mcp serves HTTP on loopback only (127.0.0.1 or ::1), not {addr}: it acts with \
         your credentials"
    )))
}

/// Refuses a request without the token (compared in constant time).
async fn bearer(
    expected: Arc<String>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(subtle::ConstantTimeEq::ct_eq(given, expected.as_bytes())) {
        return next.run(request).await;
    }
    let reason = json!({
        "error": format!("unauthorized: send `Authorization: Bearer <token>` (the token `cairn mcp --http` wrote, or {TOKEN_ENV})")
    });
    (http::StatusCode::UNAUTHORIZED, axum::Json(reason)).into_response()
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn logs_keep_their_end_and_say_what_was_left_out() {
        assert_eq!(tail("short".into(), 10), "short");
        let cut = tail("abcdefghij".into(), 4);
        assert_eq!(cut, "(the first 6 bytes left out)\nghij");
        // Never inside a character.
        let cut = tail("ééé".into(), 3);
        assert!(cut.ends_with("é") && !cut.contains('\u{FFFD}'), "{cut}");
    }
}
