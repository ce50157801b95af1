//! The durable core (issue 2): the engine (real Postgres) and the `cairn dev` supervisor
//! launching the real flow processes of `test-flows`, one module per behaviour. Side effects
//! are counted from the flows' effect log, never from logs of the system under test.

mod artifacts;
mod bookkeeping;
mod budgets;
mod concurrency;
mod control;
mod crashes;
mod event_scope;
mod events;
mod fencing;
mod forks;
mod graceful_stop;
mod outputs;
mod retries;
mod silent_network;
mod sleep_and_children;

use cairn_engine::{EngineError, launcher, runner};
use cairn_tests::{NS, TestDb};
use serde_json::Value;

pub const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

pub fn ms(delta: chrono::TimeDelta) -> i64 {
    delta.num_milliseconds()
}

pub async fn emit(
    db: &TestDb,
    event: &str,
    payload: Value,
) -> Result<launcher::Emitted, EngineError> {
    launcher::emit(&mut *db.conn().await, NS, event, &payload).await
}

pub fn outcomes(attempts: &[cairn_engine::read_api::Attempt]) -> Vec<String> {
    attempts
        .iter()
        .map(|a| a.outcome.as_deref().unwrap_or("running").to_owned())
        .collect()
}

/// Claims the run, which must be at attempt `number` afterwards.
pub async fn claimed(
    conn: &mut sqlx::PgConnection,
    id: uuid::Uuid,
    number: i32,
) -> runner::Attempt {
    let attempt = launcher::start_attempt(conn, id)
        .await
        .unwrap()
        .expect("the run is pending");
    assert_eq!(attempt.number, number);
    attempt
}

pub fn step<'a>(key: &'a str, result: &'a Value) -> runner::CompletedStep<'a> {
    runner::CompletedStep {
        key,
        result,
        duration_ms: 1,
        tries: 1,
        usage: Default::default(),
    }
}

pub fn assert_fenced<T: std::fmt::Debug>(what: &str, outcome: Result<T, EngineError>) {
    match outcome {
        Err(EngineError::Fenced(message)) => assert!(
            message.contains("no longer current"),
            "{what}: unclear message {message:?}"
        ),
        other => panic!("{what} by a superseded attempt was not fenced: {other:?}"),
    }
}
