//! How a flow stops early, and how a step says "don't retry me".

/// A flow was stopped by its run, not by a failure: the SDK returns this from `step`, `wait`,
/// `sleep` or `join`, and the flow should propagate it with `?`. The runner looks at the run's
/// own record, not at this value, so a flow that swallows it still exits correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    #[error("the run is suspended until what it waits for arrives")]
    Suspended,
    /// The run was cancelled; or, at a step boundary, parked because the step took it past a
    /// spend budget (the engine's answer does not tell them apart; the run's record does).
    #[error("the run was cancelled (or parked at its spend budget): this process stops here")]
    Cancelled,
    #[error("this attempt was superseded by a newer one and must stop")]
    Superseded,
    /// The process was told to stop (SIGTERM: a node drain, a deleted pod); it gives the run
    /// back at this step boundary and a new process continues it.
    #[error("this process was told to stop; the run continues in a new one")]
    Stopping,
    /// The database could not be reached mid-run; the attempt ends as crashed and the
    /// supervisor retries it. Steps completed so far are kept.
    #[error("lost the connection to the database")]
    Unavailable,
    /// The artifact store could not be reached to write or read a step's object; the attempt
    /// ends as crashed and the supervisor retries it. Nothing was checkpointed for that step.
    #[error("the artifact store is unavailable")]
    StoreUnavailable,
}

/// Wraps an error that retrying cannot fix (bad request, refused by policy): the step fails at
/// once instead of using its retry budget.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Permanent(pub anyhow::Error);

/// Marks an error as not retryable: `return Err(cairn::permanent(err))`.
pub fn permanent(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Permanent(err.into()))
}

/// True when the error (or anything it wraps) was marked permanent or is an interruption.
pub fn is_permanent(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.is::<Permanent>() || cause.is::<Interrupted>())
}

/// What a step's error is wrapped in once its tries are spent: the runner names the step (and
/// its tries) in the run's error when the flow lets it fail the run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("step \"{key}\" failed after {tries} {}", if *.tries == 1 { "try" } else { "tries" })]
pub struct StepFailed {
    pub key: String,
    pub tries: u32,
}
