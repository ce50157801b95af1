//! The contract between a launcher (the operator, `cairn dev`) and a flow process: what the
//! process is given (its environment), what it says back (its exit code and termination
//! message), and the versions each side speaks. Pure: no I/O.
//!
//! Versions (see README, "Upgrading"):
//! - [`RUNNER_PROTOCOL`]: the functions a flow process calls (`cairn_runner_v<N>` in SQL). An
//!   SDK states it in `cairn_runner.handshake` before anything else. A run keeps its image, and
//!   so its SDK, for life, so the engine serves the current protocol and the previous one.
//! - [`LAUNCHER_CONTRACT`]: what launchers rely on in the schema. A migration raises the
//!   schema's contract only when launchers built before it could no longer work with it.

/// The runner protocol this SDK speaks.
pub const RUNNER_PROTOCOL: i32 = 1;

/// The launcher contract this build implements: it works with any schema whose contract is
/// at most this (`cairn.engine_info().launcher_contract`), including schemas migrated by newer
/// releases, so that rolling an operator back works.
pub const LAUNCHER_CONTRACT: i32 = 1;

/// The environment a launcher gives a flow process.
pub mod env {
    /// Postgres URL the process checkpoints to.
    pub const DATABASE_URL: &str = "CAIRN_DATABASE_URL";
    /// The run to execute (UUID).
    pub const RUN_ID: &str = "CAIRN_RUN_ID";
    /// The attempt number this process was launched as (what fences it off once superseded).
    pub const ATTEMPT: &str = "CAIRN_ATTEMPT";
    /// The attempt's token: every database call carries it; it grants access to this run only.
    pub const TOKEN: &str = "CAIRN_TOKEN";
    /// The flow's name, for logs; the database record is authoritative.
    pub const FLOW: &str = "CAIRN_FLOW";
    /// Sleeps at most this long stay in-process (default [`super::DEFAULT_INLINE_SLEEP_MAX_MS`]).
    pub const INLINE_SLEEP_MAX_MS: &str = "CAIRN_INLINE_SLEEP_MAX_MS";
    /// When set, the binary prints the flows it registers as JSON and exits.
    pub const DESCRIBE: &str = "CAIRN_DESCRIBE";
    /// `json` for JSON log lines.
    pub const LOG_FORMAT: &str = "CAIRN_LOG_FORMAT";
    /// Where to write the outcome summary (Kubernetes reads /dev/termination-log).
    pub const TERMINATION_LOG: &str = "CAIRN_TERMINATION_LOG";
    /// `transaction` behind a pooler in transaction mode (PgBouncer); unset: a direct connection.
    pub const POOLER: &str = "CAIRN_DATABASE_POOLER";
    /// After SIGTERM, how long the step in flight may go on before it is abandoned (default
    /// [`super::DEFAULT_STOP_GRACE_MS`]). Either way the process then gives the run back.
    pub const STOP_GRACE_MS: &str = "CAIRN_STOP_GRACE_MS";
    /// The longest one database call may take (default [`super::DEFAULT_CALL_TIMEOUT_MS`]):
    /// past it the database counts as unreachable and the attempt ends as crashed, so a silent
    /// network becomes a relaunch.
    pub const CALL_TIMEOUT_MS: &str = "CAIRN_DATABASE_CALL_TIMEOUT_MS";
    /// The step keys of the run's namespace (see `checkpoint::StepKeys`): sensitive steps'
    /// values are sealed with the first and opened with any. Unset: no step may be sensitive.
    pub const STEP_KEYS: &str = "CAIRN_STEP_KEYS";
    /// Where artifacts are kept, and the sizes that send results there
    /// (`artifacts::ArtifactSettings` as JSON). Unset: results stay in Postgres, and a flow
    /// that stores an artifact fails saying so.
    pub const ARTIFACTS: &str = "CAIRN_ARTIFACTS";
    /// The span of this attempt in the run's trace (W3C Trace Context, the variable
    /// OpenTelemetry SDKs read), given when the launcher traces runs: the process's spans are
    /// its children. The `OTEL_EXPORTER_OTLP_*` variables say where spans go.
    pub const TRACEPARENT: &str = "TRACEPARENT";
}

/// The default of [`env::INLINE_SLEEP_MAX_MS`].
pub const DEFAULT_INLINE_SLEEP_MAX_MS: u64 = 10_000;
/// The default of [`env::STOP_GRACE_MS`]. A pod's termination grace period must be longer.
pub const DEFAULT_STOP_GRACE_MS: u64 = 20_000;
/// The default of [`env::CALL_TIMEOUT_MS`]. Engine calls take milliseconds.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 30_000;

/// How a flow process ended. The database holds the truth; the exit code is a fast hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The flow returned; its result is stored.
    Completed,
    /// The flow failed; its error is stored (this includes an SDK whose runner protocol the
    /// engine does not serve: the engine failed the run, saying so).
    Failed,
    /// The run waits (event, timer, children); relaunch when the wait ends.
    Suspended,
    Cancelled,
    /// A newer attempt owns the run; this one wrote nothing further.
    Superseded,
    /// Told to stop (SIGTERM), it gave the run back at a step boundary: relaunch at once.
    Stopped,
    /// The process could not do its job (bad environment, database unreachable): a crash.
    Crashed,
}

impl Exit {
    /// Parking and cancelling exit 0 like completing: none of them is an error, and Kubernetes
    /// shows a pod that exited 0 as Completed rather than Error.
    pub const fn code(self) -> i32 {
        match self {
            Exit::Completed | Exit::Suspended | Exit::Stopped | Exit::Cancelled => 0,
            Exit::Failed => 1,
            Exit::Crashed => 70,
            Exit::Superseded => 77,
        }
    }

    /// What an exit code means under the runner contract, for messages.
    pub fn describe_code(code: i32) -> Option<&'static str> {
        match code {
            0 => Some("completed, suspended, stopped or cancelled"),
            1 => Some("the flow failed"),
            70 => Some("crashed: could not do its job"),
            77 => Some("superseded by a newer attempt"),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Exit::Completed => "completed",
            Exit::Failed => "failed",
            Exit::Suspended => "suspended",
            Exit::Cancelled => "cancelled",
            Exit::Superseded => "superseded",
            Exit::Stopped => "stopped",
            Exit::Crashed => "crashed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_described() {
        for exit in [
            Exit::Completed,
            Exit::Failed,
            Exit::Suspended,
            Exit::Cancelled,
            Exit::Superseded,
            Exit::Stopped,
            Exit::Crashed,
        ] {
            assert!(Exit::describe_code(exit.code()).is_some(), "{exit:?}");
        }
        assert_eq!(Exit::describe_code(3), None);
    }
}
