//! Issue 7, failures: Postgres restarts under runs that are mid-step and under runs that wait.
//! This binary owns its Postgres (the harness starts one per test binary) and restarts it, so
//! its tests run one at a time.

use std::collections::HashMap;
use std::time::Duration;

use cairn_engine::launcher;
use cairn_operator::lifecycle::Phase;
use cairn_tests::{NS, TestDb, restart_postgres};
use serde_json::json;
use tokio::sync::Mutex;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

/// One restart at a time: the tests share this binary's Postgres.
static SERVER: Mutex<()> = Mutex::const_new(());

async fn restart(down: Duration) {
    tokio::task::spawn_blocking(move || restart_postgres(down))
        .await
        .expect("restart");
}

#[tokio::test]
async fn a_postgres_restart_mid_step_loses_nothing_and_reruns_no_completed_step() {
    let _alone = SERVER.lock().await;
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run_with(
            "mid-step",
            "storm",
            json!({ "steps": 40, "step_ms": 50 }),
            5,
            100,
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    // A third of the way in, Postgres goes away for a second: the flow process loses its
    // connection mid-step and the supervisor its own.
    log.wait_for("step:s12").await;
    restart(Duration::from_secs(1)).await;
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(40)));
    assert!(
        run.attempt >= 2,
        "the process that lost its database was relaunched"
    );
    let completed_in: HashMap<String, i32> = db
        .steps(id)
        .await
        .into_iter()
        .map(|s| (s.key, s.attempt.expect("completing attempt")))
        .collect();
    assert_eq!(completed_in.len(), 40, "every step's checkpoint is there");
    for effect in log.effects() {
        if let Some(key) = effect.what.strip_prefix("step:") {
            assert!(
                effect.attempt <= completed_in[key],
                "step {key} ran again in attempt {} after attempt {} completed it",
                effect.attempt,
                completed_in[key]
            );
        }
    }
}

#[tokio::test]
async fn a_postgres_restart_while_a_run_waits_keeps_its_wait_and_the_event_wakes_it() {
    let _alone = SERVER.lock().await;
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("patient", "approval", json!({ "event": "approve-patient" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    db.wait_for_phase(id, Phase::Waiting).await;

    restart(Duration::from_secs(1)).await;
    // The wait survived; the supervisor (reconnected) relaunches the run when the event comes.
    let waiting = db.run(id).await;
    assert_eq!(waiting.phase, Phase::Waiting);
    let payload = json!({ "approved": true, "by": "ann" });
    let emitted = launcher::emit(&mut *db.conn().await, NS, "approve-patient", &payload)
        .await
        .unwrap();
    assert_eq!(emitted.woken, 1);
    let run = supervisor.await.unwrap();
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
}
