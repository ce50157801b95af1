//! Typed calls to the engine's stored functions (`sql/migrations`). Each function here is one
//! round trip; the rules themselves live in SQL. Used by the SDK inside flow processes and by the
//! supervisors (`cairn dev`, the operator).

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Errors the engine reports, by their SQLSTATE (see the header of the migration).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The attempt was superseded; the process must stop without writing more.
    #[error("{0}")]
    Fenced(String),
    #[error("{0}")]
    EventConflict(String),
    #[error("{0}")]
    RunConflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The run is not in a state that allows the operation (e.g. retrying a run that did not fail).
    #[error("{0}")]
    WrongState(String),
    /// An emitted payload does not satisfy the schema of a wait for that event.
    #[error("{0}")]
    InvalidPayload(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl EngineError {
    fn from_sqlx(err: sqlx::Error) -> Self {
        let Some(db) = err.as_database_error() else {
            return EngineError::Database(err);
        };
        let hint = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|e| e.hint())
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        let message = format!("{}{hint}", db.message());
        match db.code().as_deref() {
            Some("CN001") => EngineError::Fenced(message),
            Some("CN002") => EngineError::EventConflict(message),
            Some("CN003") => EngineError::RunConflict(message),
            Some("CN004") => EngineError::NotFound(message),
            Some("CN005") => EngineError::WrongState(message),
            _ => EngineError::Database(err),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

trait EngineResult<T> {
    fn engine(self) -> Result<T>;
}
impl<T> EngineResult<T> for std::result::Result<T, sqlx::Error> {
    fn engine(self) -> Result<T> {
        self.map_err(EngineError::from_sqlx)
    }
}

/// A request to create a run; idempotent by (namespace, name).
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub flow: &'a str,
    pub input: &'a Value,
    pub max_attempts: i32,
    pub retry_backoff_ms: i64,
}

/// Creates a run, or returns the existing one created by the same request. Returns
/// `(run id, created)`.
pub async fn create_run(conn: &mut PgConnection, run: &NewRun<'_>) -> Result<(Uuid, bool)> {
    let row = sqlx::query!(
        r#"SELECT run_id AS "run_id!", created AS "created!"
           FROM cairn.create_run($1, $2, $3, $4, $5, $6)"#,
        run.namespace,
        run.name,
        run.flow,
        run.input,
        run.max_attempts,
        run.retry_backoff_ms,
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok((row.run_id, row.created))
}

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

/// The outcome of claiming a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The run is now running this attempt: launch its process with it.
    Started(Attempt),
    /// The run is not pending any more (someone else claimed it, or it ended).
    NotPending,
    /// The running budget is used up; the run stays pending. Says why, for the run's status.
    Refused(String),
}

/// Claims a pending run for a new process if fewer than `max_running` runs are running in all
/// and fewer than `max_in_namespace` in its namespace (`None`: no cap), and issues the new
/// attempt's token.
pub async fn claim(
    conn: &mut PgConnection,
    run_id: Uuid,
    max_running: Option<i32>,
    max_in_namespace: Option<i32>,
) -> Result<Claim> {
    let row = sqlx::query!(
        "SELECT attempt, token, refused FROM cairn.claim($1, $2, $3)",
        run_id,
        max_running,
        max_in_namespace
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(match (row.attempt, row.token, row.refused) {
        (Some(number), Some(token), _) => Claim::Started(Attempt {
            run_id,
            number,
            token,
        }),
        (_, _, Some(why)) => Claim::Refused(why),
        _ => Claim::NotPending,
    })
}

/// Claims a pending run with no running budget; `None` when it is not pending any more.
pub async fn start_attempt(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<Attempt>> {
    Ok(match claim(conn, run_id, None, None).await? {
        Claim::Started(attempt) => Some(attempt),
        _ => None,
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
           FROM cairn_runner.load_run($1, $2, $3)"#,
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

/// Checkpoints a step. Returns true when the run was cancelled at this boundary.
pub async fn complete_step(
    conn: &mut PgConnection,
    attempt: &Attempt,
    step: &CompletedStep<'_>,
) -> Result<bool> {
    let cancelled = sqlx::query_scalar!(
        r#"SELECT cairn_runner.complete_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) AS "cancelled!""#,
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

pub async fn complete_run(
    conn: &mut PgConnection,
    attempt: &Attempt,
    result: &Value,
) -> Result<()> {
    sqlx::query!(
        "SELECT cairn_runner.complete_run($1, $2, $3, $4)",
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
        "SELECT cairn_runner.fail_run($1, $2, $3, $4)",
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
        "SELECT cairn_runner.acknowledge_cancel($1, $2, $3)",
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
}

pub async fn await_event(
    conn: &mut PgConnection,
    attempt: &Attempt,
    wait: &EventWait<'_>,
) -> Result<EventOutcome> {
    let row = sqlx::query!(
        r#"SELECT outcome AS "outcome!", payload FROM cairn_runner.await_event($1, $2, $3, $4, $5, $6, $7, $8)"#,
        attempt.token,
        attempt.run_id,
        attempt.number,
        wait.key,
        wait.event,
        wait.timeout_ms,
        wait.question,
        wait.schema,
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
           FROM cairn_runner.sleep($1, $2, $3, $4, $5, $6, $7)"#,
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
        r#"SELECT cairn_runner.spawn_child($1, $2, $3, $4, $5, $6, $7) AS "id!""#,
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
        r#"SELECT outcome AS "outcome!", results FROM cairn_runner.join_children($1, $2, $3, $4, $5)"#,
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

/// Where an emit comes from: outside (CLI, operator) or a flow's step (checkpointed).
#[derive(Debug, Clone, Copy)]
pub enum Emitter<'a> {
    External {
        namespace: &'a str,
    },
    /// A flow's step, on behalf of its own run.
    Run {
        attempt: &'a Attempt,
        key: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The same payload had already been emitted: nothing changed.
    pub duplicate: bool,
    /// Runs woken by this emit.
    pub woken: i32,
}

/// A run waiting for an event, as an emitter checks it.
struct Waiter {
    run_name: String,
    question: Option<String>,
    schema: Option<Value>,
}

/// Emits an event after checking the payload against the schema of every wait for it, in one
/// transaction that holds the event's lock, so no wait can slip in between check and emit.
pub async fn emit(
    conn: &mut PgConnection,
    emitter: Emitter<'_>,
    event: &str,
    payload: &Value,
) -> Result<Emitted> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.engine()?;
    let waiters = match emitter {
        Emitter::External { namespace } => sqlx::query_as!(
            Waiter,
            r#"SELECT run_name AS "run_name!", question, schema FROM cairn.event_waiters($1, $2)"#,
            namespace,
            event
        )
        .fetch_all(&mut *tx)
        .await
        .engine()?,
        Emitter::Run { attempt, .. } => sqlx::query_as!(
            Waiter,
            r#"SELECT run_name AS "run_name!", question, schema
               FROM cairn_runner.event_waiters($1, $2, $3)"#,
            attempt.token,
            attempt.run_id,
            event
        )
        .fetch_all(&mut *tx)
        .await
        .engine()?,
    };
    for waiter in &waiters {
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
    let emitted = match emitter {
        Emitter::External { namespace } => {
            let row = sqlx::query!(
                r#"SELECT duplicate AS "duplicate!", woken AS "woken!" FROM cairn.emit_event($1, $2, $3)"#,
                namespace,
                event,
                payload
            )
            .fetch_one(&mut *tx)
            .await
            .engine()?;
            Emitted {
                duplicate: row.duplicate,
                woken: row.woken,
            }
        }
        Emitter::Run { attempt, key } => {
            sqlx::query!(
                "SELECT cairn_runner.emit($1, $2, $3, $4, $5, $6)",
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
            Emitted {
                duplicate: false,
                woken: 0,
            }
        }
    };
    tx.commit().await.engine()?;
    Ok(emitted)
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

/// Settles a run whose process died while it was running. `retry_in_ms` comes from the
/// lifecycle policy (`None` gives up). Returns the run's state afterwards.
pub async fn record_crash(
    conn: &mut PgConnection,
    run_id: Uuid,
    attempt: i32,
    reason: &str,
    retry_in_ms: Option<i64>,
) -> Result<String> {
    sqlx::query_scalar!(
        r#"SELECT cairn.record_crash($1, $2, $3, $4) AS "state!""#,
        run_id,
        attempt,
        reason,
        retry_in_ms
    )
    .fetch_one(conn)
    .await
    .engine()
}

/// Makes due sleeping, retrying and timed-out runs runnable; returns how many.
pub async fn wake_due(conn: &mut PgConnection) -> Result<i32> {
    sqlx::query_scalar!(r#"SELECT cairn.wake_due() AS "woken!""#)
        .fetch_one(conn)
        .await
        .engine()
}

/// Milliseconds until the next timer, by the database clock.
pub async fn next_wake_ms(conn: &mut PgConnection) -> Result<Option<i64>> {
    sqlx::query_scalar!("SELECT cairn.next_wake_ms()")
        .fetch_one(conn)
        .await
        .engine()
}

/// Fails the run if it has outlived `deadline_seconds` (by the database clock), fencing off a
/// running attempt; returns its state afterwards.
pub async fn expire_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    deadline_seconds: i64,
) -> Result<String> {
    sqlx::query_scalar!(
        r#"SELECT cairn.expire_run($1, $2) AS "state!""#,
        run_id,
        deadline_seconds
    )
    .fetch_one(conn)
    .await
    .engine()
}

/// Makes a failed run runnable again from its last checkpoint, with a fresh crash budget.
pub async fn retry_run(conn: &mut PgConnection, run_id: Uuid) -> Result<String> {
    sqlx::query_scalar!(r#"SELECT cairn.retry_run($1) AS "state!""#, run_id)
        .fetch_one(conn)
        .await
        .engine()
}

/// Cancels a run (and its unfinished children); returns its state afterwards.
pub async fn cancel_run(conn: &mut PgConnection, run_id: Uuid) -> Result<String> {
    sqlx::query_scalar!(r#"SELECT cairn.cancel_run($1) AS "state!""#, run_id)
        .fetch_one(conn)
        .await
        .engine()
}
