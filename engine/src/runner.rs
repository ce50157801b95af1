//! The runner protocol, version 1: the calls a flow process makes, each one round trip to a
//! function of schema `cairn_runner_v1` (`sql/schema/30_runner_protocol.sql`). The process's
//! database login can call nothing else, and every call carries the attempt's token.
//! [`handshake`] comes first: it tells the engine which protocol this SDK speaks.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{EngineError, EngineResult, Result};
use crate::protocol::RUNNER_PROTOCOL;

/// A process's claim on its run: the run, the attempt it was launched as, and that attempt's
/// token. Every call a flow process makes carries it; the database refuses calls for any other
/// run, or from an attempt that was superseded.
#[derive(Clone, PartialEq, Eq)]
pub struct Attempt {
    pub run_id: Uuid,
    pub number: i32,
    pub token: String,
}

impl std::fmt::Debug for Attempt {
    // The token is a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("run_id", &self.run_id)
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

/// The engine's answer to [`handshake`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The engine serves this SDK's protocol.
    Served,
    /// It does not: the engine has failed the run with this message, naming both sides'
    /// versions. The process must exit (relaunching it could never help).
    NotServed(String),
}

/// States this SDK's runner protocol ([`RUNNER_PROTOCOL`]) for the attempt; the first call a
/// flow process makes. `sdk` names the SDK in the message a refusal stores (e.g. "the Cairn
/// Rust SDK 0.1.0").
pub async fn handshake(conn: &mut PgConnection, attempt: &Attempt, sdk: &str) -> Result<Handshake> {
    handshake_as(conn, attempt, RUNNER_PROTOCOL, sdk).await
}

/// [`handshake`] stating any protocol: for tests of how the engine treats other SDKs.
pub async fn handshake_as(
    conn: &mut PgConnection,
    attempt: &Attempt,
    protocol: i32,
    sdk: &str,
) -> Result<Handshake> {
    let row = sqlx::query!(
        r#"SELECT served AS "served!", message FROM cairn_runner.handshake($1, $2, $3, $4, $5)"#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        protocol,
        sdk
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(match (row.served, row.message) {
        (true, _) => Handshake::Served,
        (false, message) => Handshake::NotServed(message.unwrap_or_default()),
    })
}

/// What a process needs to enter its flow.
#[derive(Debug)]
pub struct LoadedRun {
    pub namespace: String,
    pub name: String,
    pub flow: String,
    pub input: Value,
    /// Completed steps: key → checkpointed result.
    pub steps: serde_json::Map<String, Value>,
}

pub async fn load_run(conn: &mut PgConnection, attempt: &Attempt) -> Result<LoadedRun> {
    let row = sqlx::query!(
        r#"SELECT namespace AS "namespace!", name AS "name!", flow AS "flow!",
                  input AS "input!", steps AS "steps!"
           FROM cairn_runner_v1.load_run($1, $2, $3)"#,
        attempt.token,
        attempt.run_id,
        attempt.number
    )
    .fetch_one(conn)
    .await
    .engine()?;
    let steps = match row.steps {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Ok(LoadedRun {
        namespace: row.namespace,
        name: row.name,
        flow: row.flow,
        input: row.input,
        steps,
    })
}

/// Usage reported by a step, as stored.
#[derive(Debug, Clone, Default)]
pub struct StepUsage {
    pub usd: Option<f64>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub model: Option<String>,
    pub meta: Option<Value>,
}

/// A step's outcome to checkpoint.
#[derive(Debug)]
pub struct CompletedStep<'a> {
    pub key: &'a str,
    pub result: &'a Value,
    pub duration_ms: i64,
    pub tries: i32,
    pub usage: StepUsage,
}

/// Checkpoints a step. Returns true when the process must stop at this boundary: the run was
/// cancelled, or parked because the step took it past a spend budget.
pub async fn complete_step(
    conn: &mut PgConnection,
    attempt: &Attempt,
    step: &CompletedStep<'_>,
) -> Result<bool> {
    let cancelled = sqlx::query_scalar!(
        r#"SELECT cairn_runner_v1.complete_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) AS "cancelled!""#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        step.key,
        step.result,
        step.duration_ms,
        step.tries,
        step.usage.usd,
        step.usage.tokens_in,
        step.usage.tokens_out,
        step.usage.model.as_deref(),
        step.usage.meta.as_ref(),
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(cancelled)
}

/// Records that this run is about to write the object `artifact` to the artifact store (or to
/// refer to it): retention leaves it alone meanwhile. Returns whether it was recorded already;
/// false after the write means retention took it meanwhile: write it again.
pub async fn touch_artifact(
    conn: &mut PgConnection,
    attempt: &Attempt,
    artifact: &crate::artifacts::ArtifactRef,
) -> Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT cairn_runner_v1.touch_artifact($1, $2, $3, $4, $5) AS "recorded!""#,
        attempt.token,
        attempt.run_id,
        artifact.digest,
        artifact.size as i64,
        artifact.content_type
    )
    .fetch_one(conn)
    .await
    .engine()
}

pub async fn complete_run(
    conn: &mut PgConnection,
    attempt: &Attempt,
    result: &Value,
) -> Result<()> {
    sqlx::query!(
        "SELECT cairn_runner_v1.complete_run($1, $2, $3, $4)",
        attempt.token,
        attempt.run_id,
        attempt.number,
        result
    )
    .execute(conn)
    .await
    .engine()?;
    Ok(())
}

pub async fn fail_run(conn: &mut PgConnection, attempt: &Attempt, error: &Value) -> Result<()> {
    sqlx::query!(
        "SELECT cairn_runner_v1.fail_run($1, $2, $3, $4)",
        attempt.token,
        attempt.run_id,
        attempt.number,
        error
    )
    .execute(conn)
    .await
    .engine()?;
    Ok(())
}

pub async fn acknowledge_cancel(conn: &mut PgConnection, attempt: &Attempt) -> Result<()> {
    sqlx::query!(
        "SELECT cairn_runner_v1.acknowledge_cancel($1, $2, $3)",
        attempt.token,
        attempt.run_id,
        attempt.number
    )
    .execute(conn)
    .await
    .engine()?;
    Ok(())
}

/// Gives the run back after a stop request (SIGTERM) at a step boundary: it is pending again
/// at once, for a new process, and the stop is not a crash.
pub async fn release(conn: &mut PgConnection, attempt: &Attempt) -> Result<()> {
    sqlx::query!(
        "SELECT cairn_runner_v1.release($1, $2, $3)",
        attempt.token,
        attempt.run_id,
        attempt.number
    )
    .execute(conn)
    .await
    .engine()?;
    Ok(())
}

/// The outcome of reaching a wait, a sleep or a join.
#[derive(Debug, Clone, PartialEq)]
pub enum Parked<T> {
    /// Done: the value is checkpointed.
    Ready(T),
    /// The run was suspended; the process must exit.
    Suspended,
    /// Cancellation was requested.
    Cancelled,
}

/// What a wait for an event produced: the payload, or `None` when it timed out.
pub type EventOutcome = Parked<Option<Value>>;

#[derive(Debug)]
pub struct EventWait<'a> {
    pub key: &'a str,
    pub event: &'a str,
    pub timeout_ms: Option<i64>,
    pub question: Option<&'a str>,
    pub schema: Option<&'a Value>,
    /// Take an event sent to the namespace before the run was created (`cairn.event_reaches`).
    pub include_earlier: bool,
}

pub async fn await_event(
    conn: &mut PgConnection,
    attempt: &Attempt,
    wait: &EventWait<'_>,
) -> Result<EventOutcome> {
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", payload FROM cairn_runner_v1.await_event($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        wait.key,
        wait.event,
        wait.timeout_ms,
        wait.question,
        wait.schema,
        wait.include_earlier,
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(match row.outcome.as_str() {
        "received" => Parked::Ready(row.payload),
        "timed_out" => Parked::Ready(None),
        "cancelled" => Parked::Cancelled,
        _ => Parked::Suspended,
    })
}

/// The outcome of reaching a durable sleep.
#[derive(Debug, Clone, PartialEq)]
pub enum SleepOutcome {
    Done,
    /// Short enough to sleep in-process for this many milliseconds, then ask again.
    Inline(u64),
    Suspended,
    Cancelled,
}

pub async fn sleep(
    conn: &mut PgConnection,
    attempt: &Attempt,
    key: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
    duration_ms: i64,
    inline_max_ms: i64,
) -> Result<SleepOutcome> {
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", remaining_ms AS "remaining_ms!"
           FROM cairn_runner_v1.sleep($1, $2, $3, $4, $5, $6, $7)"#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        key,
        until,
        duration_ms,
        inline_max_ms,
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(match row.outcome.as_str() {
        "done" => SleepOutcome::Done,
        "inline" => SleepOutcome::Inline(row.remaining_ms.max(0) as u64),
        "cancelled" => SleepOutcome::Cancelled,
        _ => SleepOutcome::Suspended,
    })
}

pub async fn spawn_child(
    conn: &mut PgConnection,
    attempt: &Attempt,
    key: &str,
    child_name: &str,
    flow: &str,
    input: &Value,
) -> Result<Uuid> {
    sqlx::query_scalar!(
        r#"SELECT cairn_runner_v1.spawn_child($1, $2, $3, $4, $5, $6, $7) AS "id!""#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        key,
        child_name,
        flow,
        input
    )
    .fetch_one(conn)
    .await
    .engine()
}

/// Joins children: when all are finished, their outcomes in the order given.
pub async fn join_children(
    conn: &mut PgConnection,
    attempt: &Attempt,
    key: &str,
    children: &[Uuid],
) -> Result<Parked<Value>> {
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", results FROM cairn_runner_v1.join_children($1, $2, $3, $4, $5)"#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        key,
        children
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(match row.outcome.as_str() {
        "done" => Parked::Ready(row.results.unwrap_or(Value::Null)),
        "cancelled" => Parked::Cancelled,
        _ => Parked::Suspended,
    })
}

/// A run waiting for an event, as an emitter checks it.
pub(crate) struct Waiter {
    pub(crate) run_name: String,
    pub(crate) question: Option<String>,
    pub(crate) schema: Option<Value>,
}

/// Checks a payload against the schema of every wait it would complete.
pub(crate) fn check_waiters(waiters: &[Waiter], event: &str, payload: &Value) -> Result<()> {
    for waiter in waiters {
        if let Some(schema) = &waiter.schema {
            check_payload(schema, payload).map_err(|problems| {
                EngineError::InvalidPayload(format!(
                    "payload for event \"{event}\" does not match the schema run \"{}\" waits with{}: {problems}",
                    waiter.run_name,
                    waiter
                        .question
                        .as_deref()
                        .map(|q| format!(" (question: {q:?})"))
                        .unwrap_or_default()
                ))
            })?;
        }
    }
    Ok(())
}

/// Emits an event from a flow's step (checkpointed under `key`, so a replay does not emit
/// again), after checking the payload against the schema of every wait for it, in one
/// transaction that holds the event's lock, so no wait can slip in between check and emit.
pub async fn emit(
    conn: &mut PgConnection,
    attempt: &Attempt,
    key: &str,
    event: &str,
    payload: &Value,
) -> Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.engine()?;
    let waiters = sqlx::query_as!(
        Waiter,
        r#"SELECT run_name AS "run_name!", question, schema
           FROM cairn_runner_v1.event_waiters($1, $2, $3)"#,
        attempt.token,
        attempt.run_id,
        event
    )
    .fetch_all(&mut *tx)
    .await
    .engine()?;
    check_waiters(&waiters, event, payload)?;
    sqlx::query!(
        "SELECT cairn_runner_v1.emit($1, $2, $3, $4, $5, $6)",
        attempt.token,
        attempt.run_id,
        attempt.number,
        key,
        event,
        payload
    )
    .execute(&mut *tx)
    .await
    .engine()?;
    tx.commit().await.engine()
}

/// Checks a payload against a JSON schema; the error lists every problem with its location.
pub fn check_payload(schema: &Value, payload: &Value) -> std::result::Result<(), String> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the wait's schema is not a valid JSON schema: {e}"))?;
    let problems: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{e} (at {at})")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
