//! `kubectl cairn`: runs on Kubernetes, through the current kube context. FlowRuns and
//! FlowEvents are the interface (so Kubernetes RBAC decides who may approve, cancel or retry);
//! the operator's read API adds what the database knows (steps, attempts, costs).
//!
//! One module per group of commands (`runs`, `inspect`, `events`: approve and emit, `steer`:
//! cancel, retry and wait, `logs`), each adding its commands to [`Kube`] (`client`); the
//! decisions are in `logic` and the text in `render`, both without I/O.
//!
//! Exit codes: 0 done, 1 the operation failed (cluster or operator unreachable, a run in a state
//! that does not allow it, a wait that ended elsewhere or timed out), 2 the input was wrong
//! (unknown run, bad JSON, a payload failing the schema).

pub mod artifacts;
pub mod budget;
mod client;
mod events;
pub mod fork;
mod inspect;
pub(crate) mod logic;
mod logs;
mod read_api;
pub mod render;
mod runs;
mod schedule;
mod steer;

use std::sync::OnceLock;

pub use client::Kube;
pub use logic::Until;
pub use runs::runs_json;

/// A mistake in what was asked (exit code 2), as opposed to an operation that failed (1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

pub(crate) fn input(message: impl Into<String>) -> anyhow::Error {
    InputError(message.into()).into()
}

/// JSON given on the command line (`--data`, `--input`...); a mistake names the flag.
pub(crate) fn parse_json(text: &str, flag: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| input(format!("{flag} is not valid JSON: {e} (got {text:?})")))
}

/// The exit code for an error of any command (`kubectl cairn`, `cairn dev`, the operator): 2
/// for a mistake in what was asked (an unknown run, bad JSON, a payload failing the wait's
/// schema, a name taken with other input), 1 for an operation that failed.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    use cairn_engine::EngineError;
    let asked_wrong = |e: &(dyn std::error::Error + 'static)| {
        e.is::<InputError>()
            || e.is::<cairn_engine::read::NotFound>()
            || matches!(
                e.downcast_ref::<EngineError>(),
                Some(
                    EngineError::NotFound(_)
                        | EngineError::InvalidPayload(_)
                        | EngineError::RunConflict(_)
                        | EngineError::EventConflict(_)
                )
            )
    };
    if error.chain().any(asked_wrong) { 2 } else { 1 }
}

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// How the user invoked us, for hints: `kubectl cairn` (as a kubectl plugin) or `cairn`.
pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("cairn")
}

pub fn set_program(name: &'static str) {
    let _ = PROGRAM.set(name);
}

/// Where to find the cluster, and as whom (the flags every command shares).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub context: Option<String>,
    pub namespace: Option<String>,
    /// `--as`: impersonate this user (with `--as-group`, these groups).
    pub as_user: Option<String>,
    pub as_groups: Vec<String>,
}
