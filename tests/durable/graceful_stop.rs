//! SIGTERM (a node drain, a deleted pod): the flow process lets the step in flight finish and
//! checkpoint within its grace (`CAIRN_STOP_GRACE_MS`), or abandons it past that, and gives the
//! run back at once. Either way a new process continues it and the stop is not a crash.

use cairn_operator::lifecycle::Phase;
use cairn_tests::{TestDb, sigterm};
use serde_json::json;
use uuid::Uuid;

use super::*;

async fn crashes(db: &TestDb, id: Uuid) -> i32 {
    sqlx::query_scalar("SELECT crashes FROM cairn.runs WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sigterm_mid_step_lets_the_step_finish_then_a_new_process_continues() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("drained", "looper", json!({ "n": 3, "step_ms": 1500 }))
        .await;
    let launcher = db.launcher(FLOWS, &log, &[("CAIRN_STOP_GRACE_MS", "60000")]);
    let supervisor = db.supervise_in_background(&launcher, id);
    let in_flight = log.wait_for("tick:1").await;
    sigterm(in_flight.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(
        log.summary(),
        ["tick:0@1", "tick:1@1", "tick:2@2"],
        "the step in flight finished and was kept; the next one ran in a new process"
    );
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["suspended", "completed"]);
    assert_eq!(attempts[0].detail.as_deref(), Some("stopped"));
    assert_eq!(crashes(&db, id).await, 0, "a stop is not a crash");
}

#[tokio::test]
async fn a_step_that_outlasts_the_grace_is_abandoned_and_the_run_given_back() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("hurried", "looper", json!({ "n": 2, "step_ms": 3000 }))
        .await;
    let launcher = db.launcher(FLOWS, &log, &[("CAIRN_STOP_GRACE_MS", "100")]);
    let supervisor = db.supervise_in_background(&launcher, id);
    let in_flight = log.wait_for("tick:0").await;
    sigterm(in_flight.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(
        log.summary(),
        ["tick:0@1", "tick:0@2", "tick:1@2"],
        "the abandoned step ran again in the new process"
    );
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["suspended", "completed"]);
    assert_eq!(crashes(&db, id).await, 0, "a stop is not a crash");
}
