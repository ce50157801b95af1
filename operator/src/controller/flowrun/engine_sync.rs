//! Stage "sync with the engine" (I/O): the engine's run for the FlowRun, created once by
//! (namespace, name), then what the FlowRun asks of it: cancel (`spec.cancel`), retry (the
//! retry annotation, once per value), the budget (`spec.budget`, else the Flow's) and the
//! deadline (`spec.deadlineSeconds`, by the database clock). Ends with the run as the engine
//! now has it.

use cairn_crds::{FlowRun, ForkOf, RETRY_ANNOTATION};
use cairn_engine::launcher::{self as engine, Concurrency, NewRun};
use cairn_engine::read::{self, RunRecord};
use cairn_engine::{EngineError, Phase};
use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::resolve::{Invalid, Resolved};
use crate::controller::{Context, Error};
use crate::kubectl::logic::to_utc;

/// The engine's run, and what this stage did to it.
pub struct Synced {
    pub record: RunRecord,
    /// The retry annotation's value acted on last (for the status).
    pub retried: Option<String>,
    /// When the run must have finished, if it has a deadline.
    pub deadline: Option<DateTime<Utc>>,
}

pub async fn sync(
    ctx: &Context,
    run: &FlowRun,
    resolved: &Resolved,
) -> Result<Result<Synced, Invalid>, Error> {
    let namespace = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let input = run.spec.input.clone().unwrap_or(serde_json::Value::Null);
    let request = NewRun {
        namespace: &namespace,
        name: &name,
        flow: &resolved.flow,
        input: &input,
        max_attempts: resolved.max_attempts,
        retry_backoff_ms: resolved.retry_backoff.as_millis() as i64,
        // Events sent to the namespace before the FlowRun was created are not for this run.
        created_at: run.metadata.creation_timestamp.as_ref().map(to_utc),
        flowrun_uid: run.metadata.uid.as_deref().and_then(|u| u.parse().ok()),
        concurrency: resolved.concurrency.as_ref().map(|c| Concurrency {
            group: &c.group,
            key: c.key.as_deref(),
        }),
    };
    // Connections are taken per call and never held across another acquire: reconciles run
    // concurrently and must not starve the pool.
    let created = match &run.spec.fork_of {
        None => engine::create_run(&mut *ctx.pool.acquire().await?, &request)
            .await
            .map(|_| ())
            .map_err(Refused::from),
        Some(fork) => create_fork(ctx, run, fork, request).await?,
    };
    match created {
        // (No Kubernetes Event for this: the status says it, and an Event is one more write
        // to the API server for every FlowRun admitted.)
        Ok(()) => {}
        Err(Refused::Invalid(invalid)) => return Ok(Err(invalid)),
        Err(Refused::Engine(EngineError::RunConflict(message))) => {
            return Ok(Err(Invalid {
                reason: "RunConflict",
                message,
            }));
        }
        Err(Refused::Engine(e)) => return Err(e.into()),
    }
    let record = read::find(&ctx.pool, &namespace, &name).await?;
    tracing::Span::current().record("attempt", record.attempt);
    let mut changed = false;
    if run.spec.cancel && !record.phase.is_terminal() {
        engine::cancel_run(&mut *ctx.pool.acquire().await?, record.id).await?;
        changed = true;
    }
    let mut retried = run.status.as_ref().and_then(|s| s.retried.clone());
    if let Some(asked) = retry_asked(run) {
        changed |= retry(ctx, run, &record).await?;
        retried = Some(asked.to_owned());
    }
    if !record.phase.is_terminal() && differs(resolved.budget_usd, record.budget_usd) {
        changed |= set_budget(ctx, run, &record, resolved.budget_usd).await?;
    }
    let deadline = run
        .spec
        .deadline_seconds
        .map(|seconds| record.created_at + chrono::Duration::seconds(seconds));
    if let (Some(at), Some(seconds)) = (deadline, run.spec.deadline_seconds)
        && at <= Utc::now()
        && !record.phase.is_terminal()
    {
        // The database clock has the last word; a running attempt is fenced off, and the
        // kubelet stops its pod (activeDeadlineSeconds).
        let state = engine::expire_run(&mut *ctx.pool.acquire().await?, record.id, seconds).await?;
        changed = true;
        if state == Phase::Failed {
            let note = format!("the run did not finish within {seconds} seconds");
            ctx.warn(run, "DeadlineExceeded", &note).await;
        }
    }
    let record = match changed {
        true => read::find(&ctx.pool, &namespace, &name).await?,
        false => record,
    };
    Ok(Ok(Synced {
        record,
        retried,
        deadline,
    }))
}

/// A fork's run, from its source's checkpoints (once: later reconciles find it made). Its
/// source must be a run of this namespace; what the engine refuses (an unknown step, an output
/// for a step the fork does not reuse) is shown as the reason the FlowRun cannot run.
async fn create_fork(
    ctx: &Context,
    run: &FlowRun,
    fork: &ForkOf,
    request: NewRun<'_>,
) -> Result<Result<(), Refused>, Error> {
    let invalid = |reason: &'static str, message: String| {
        Ok(Err(Refused::Invalid(Invalid { reason, message })))
    };
    // Made already: the source may be gone since, and is not needed any more.
    if let Ok(existing) = read::find(&ctx.pool, request.namespace, request.name).await
        && existing.fork_of.is_some()
        && existing.flowrun_uid.is_some()
        && existing.flowrun_uid == request.flowrun_uid
    {
        return Ok(Ok(()));
    }
    let source = match read::find(&ctx.pool, request.namespace, &fork.run).await {
        Ok(source) if source.namespace == request.namespace => source,
        Err(e) if !e.is::<read::NotFound>() => return Err(e.into()),
        _ => {
            let message = format!(
                "spec.forkOf.run: no run \"{}\" in namespace \"{}\" to fork from",
                fork.run, request.namespace
            );
            return invalid("ForkSourceNotFound", message);
        }
    };
    if source.flow != request.flow {
        let message = format!(
            "spec.forkOf.run: run \"{}\" is of flow \"{}\", not \"{}\": a fork runs its source's flow",
            fork.run, source.flow, request.flow
        );
        return invalid("ForkInvalid", message);
    }
    let empty = serde_json::json!({});
    let request = engine::Fork {
        name: request.name,
        // Without spec.input, the source's.
        input: run.spec.input.as_ref(),
        max_attempts: request.max_attempts,
        retry_backoff_ms: request.retry_backoff_ms,
        created_at: request.created_at,
        flowrun_uid: request.flowrun_uid,
        source: source.id,
        from_step: &fork.step,
        outputs: fork.outputs.as_ref().unwrap_or(&empty),
        answers: fork.answers.as_ref().unwrap_or(&empty),
    };
    match engine::fork_run(&mut *ctx.pool.acquire().await?, &request).await {
        Ok((_, true, reused)) => {
            let note = format!(
                "forked from {} at step {}: {reused} step(s) reused, not paid again",
                fork.run, fork.step
            );
            ctx.event(run, "Forked", &note).await;
            Ok(Ok(()))
        }
        Ok((_, false, _)) => Ok(Ok(())),
        Err(EngineError::NotFound(message)) => invalid("ForkPointNotFound", message),
        Err(EngineError::WrongState(message)) => invalid("ForkInvalid", message),
        Err(e) => Ok(Err(Refused::Engine(e))),
    }
}

/// Why the engine did not make a FlowRun's run.
enum Refused {
    Invalid(Invalid),
    Engine(EngineError),
}

impl From<EngineError> for Refused {
    fn from(e: EngineError) -> Refused {
        Refused::Engine(e)
    }
}

fn differs(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > 1e-9,
        (a, b) => a.is_some() != b.is_some(),
    }
}

/// Holds the run's tree to the budget asked for, waking what a raise lets go on. A budget below
/// what was already spent is refused, with a Warning saying both figures.
async fn set_budget(
    ctx: &Context,
    run: &FlowRun,
    record: &RunRecord,
    usd: Option<f64>,
) -> Result<bool, Error> {
    match engine::set_budget(&mut *ctx.pool.acquire().await?, record.id, usd).await {
        Ok(woken) => {
            if woken > 0 {
                let note = format!(
                    "budget raised to ${:.2}: {woken} run(s) go on",
                    usd.unwrap_or_default()
                );
                ctx.event(run, "BudgetRaised", &note).await;
            }
            Ok(true)
        }
        Err(EngineError::WrongState(message)) => {
            ctx.warn(run, "BudgetBelowSpend", &message).await;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The retry annotation's value, when not yet acted on (each value is acted on once).
pub fn retry_asked(run: &FlowRun) -> Option<&str> {
    let done = run.status.as_ref().and_then(|s| s.retried.as_deref());
    run.annotations()
        .get(RETRY_ANNOTATION)
        .map(String::as_str)
        .filter(|asked| Some(*asked) != done)
}

/// A failed run is made runnable again from its last checkpoint; a retry asked of a run that
/// has not failed is noted and ignored. Returns whether the engine's run changed.
async fn retry(ctx: &Context, run: &FlowRun, record: &RunRecord) -> Result<bool, Error> {
    if record.phase != Phase::Failed {
        let note = format!(
            "only a failed run can be retried; this one is {}",
            record.phase
        );
        ctx.warn(run, "RetryIgnored", &note).await;
        return Ok(false);
    }
    engine::retry_run(&mut *ctx.pool.acquire().await?, record.id).await?;
    let note = "retrying the failed run from its last checkpoint";
    ctx.event(run, "Retried", note).await;
    Ok(true)
}
