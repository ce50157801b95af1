//! Steering runs: cancellation, deadlines, retrying a failed run, and the running budget.

use std::time::Duration;

use cairn_engine::runner;
use cairn_engine::{EngineError, launcher};
use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use serde_json::json;

use super::*;

// ---- 7. Cancellation -------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_waiting_run_ends_it_at_once_and_clears_its_wait() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("cancel-waiting", "approval", json!({ "event": "never" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    db.wait_for_phase(id, Phase::Waiting).await;
    assert_eq!(db.waits(id).await, 1);

    let state = launcher::cancel_run(&mut *db.conn().await, id)
        .await
        .unwrap();
    assert_eq!(
        state,
        Phase::Cancelled,
        "a parked run is cancelled immediately"
    );
    let run = db.run(id).await;
    assert_eq!(run.phase, Phase::Cancelled);
    assert_eq!((run.wake_at, run.waiting_for), (None, None));
    assert_eq!(db.waits(id).await, 0, "its wait is cleared");
    assert_eq!(supervisor.await.unwrap().phase, Phase::Cancelled);

    let emitted = emit(&db, "never", json!({ "approved": true, "by": "eve" }))
        .await
        .unwrap();
    assert_eq!(emitted.woken, 0, "a later emit wakes nothing");
    let run = db.run(id).await;
    assert_eq!((run.phase, run.attempt), (Phase::Cancelled, 1));
    assert_eq!(log.summary(), ["step:before@1"]);
}

#[tokio::test]
async fn cancelling_a_running_run_stops_it_at_the_next_step_boundary() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "cancel-running",
            "looper",
            json!({ "n": 1000, "step_ms": 30 }),
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let is_tick = |e: &cairn_tests::Effect| e.what.starts_with("tick:");
    log.wait_for_count(3, is_tick).await;

    let state = launcher::cancel_run(&mut *db.conn().await, id)
        .await
        .unwrap();
    assert_eq!(state, Phase::Running, "a running run is only flagged");
    let ticks_at_cancel = log.effects().iter().filter(|e| is_tick(e)).count();
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Cancelled, "{:?}", run.error);
    let message = run.error_message().unwrap_or_default().to_owned();
    assert!(
        message.contains("cancelled at step boundary"),
        "error: {message}"
    );
    let ticks = log.effects().iter().filter(|e| is_tick(e)).count();
    // At most the step already under way when the flag was set completes; nothing after it.
    assert!(
        (ticks_at_cancel..=ticks_at_cancel + 1).contains(&ticks),
        "{ticks_at_cancel} ticks when cancelled, {ticks} in the end"
    );
    assert_eq!(
        db.steps(id).await.len(),
        ticks,
        "every tick that ran is checkpointed, no more"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        log.effects().iter().filter(|e| is_tick(e)).count(),
        ticks,
        "no step ran after the cancellation"
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["cancelled"]);
}

// ---- Deadlines and retrying a failed run ------------------------------------------------------

#[tokio::test]
async fn a_run_past_its_deadline_fails_and_its_running_attempt_is_fenced_off() {
    let db = TestDb::new().await;
    let id = db.create_run("late", "steps", json!({})).await;
    let mut conn = db.conn().await;
    let a1 = claimed(&mut conn, id, 1).await;
    let done = json!("a done");
    runner::complete_step(&mut conn, &a1, &step("a", &done))
        .await
        .unwrap();

    // Inside its deadline (by the database clock) nothing happens.
    assert_eq!(
        launcher::expire_run(&mut conn, id, 3600).await.unwrap(),
        Phase::Running
    );
    assert_eq!(
        launcher::expire_run(&mut conn, id, 0).await.unwrap(),
        Phase::Failed
    );
    // The attempt that was running can no longer write: it pays for nothing more.
    let late = json!("b done");
    assert_fenced(
        "complete_step",
        runner::complete_step(&mut conn, &a1, &step("b", &late)).await,
    );
    let run = db.run(id).await;
    assert_eq!(run.phase, Phase::Failed);
    assert_eq!(run.error.as_ref().unwrap()["kind"], "deadline");
    assert!(
        run.error_message()
            .unwrap_or_default()
            .contains("did not finish within 0 seconds")
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["failed"]);
    // Expiring a finished run changes nothing.
    assert_eq!(
        launcher::expire_run(&mut conn, id, 0).await.unwrap(),
        Phase::Failed
    );
}

#[tokio::test]
async fn retrying_a_failed_run_resumes_from_its_last_checkpoint_and_only_failed_runs_retry() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("retried", "steps", json!({})).await;
    {
        // Attempt 1 completes `a`, then the flow fails.
        let mut conn = db.conn().await;
        let a1 = claimed(&mut conn, id, 1).await;
        let done = json!("a done");
        runner::complete_step(&mut conn, &a1, &step("a", &done))
            .await
            .unwrap();
        runner::fail_run(&mut conn, &a1, &json!({ "message": "the API was down" }))
            .await
            .unwrap();
        assert_eq!(
            launcher::retry_run(&mut conn, id).await.unwrap(),
            Phase::Pending
        );
    }
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(["a done", "b done", "c done"])));
    assert_eq!(run.attempt, 2);
    // `a` came back from its checkpoint; only `b` and `c` ran.
    assert_eq!(log.summary(), ["step:b@2", "step:c@2"]);
    assert_eq!(outcomes(&db.attempts(id).await), ["failed", "completed"]);

    let refused = launcher::retry_run(&mut *db.conn().await, id).await;
    match refused {
        Err(EngineError::WrongState(message)) => {
            assert!(message.contains("only a failed run"), "{message}")
        }
        other => panic!("retrying a succeeded run: {other:?}"),
    }
}

// ---- The running budget ----------------------------------------------------------------------

#[tokio::test]
async fn the_running_budget_holds_runs_pending_until_a_slot_frees_globally_and_per_namespace() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    let input = json!({});
    let create = async |namespace: &str, name: &str| {
        let run = launcher::NewRun {
            namespace,
            name,
            flow: "steps",
            input: &input,
            max_attempts: 3,
            retry_backoff_ms: 100,
            created_at: None,
            flowrun_uid: None,
            concurrency: None,
        };
        launcher::create_run(&mut *db.conn().await, &run)
            .await
            .unwrap()
            .0
    };
    let (a1, a2, b1) = (
        create("a", "a1").await,
        create("a", "a2").await,
        create("b", "b1").await,
    );
    use launcher::Claim;

    // Two slots in all, one per namespace. A started claim carries the attempt's token.
    let claim = async |conn: &mut sqlx::PgConnection, id| {
        launcher::claim(conn, id, &budget(Some(2), Some(1)))
            .await
            .unwrap()
    };
    let Claim::Started(first) = claim(&mut conn, a1).await else {
        panic!("a1 did not start")
    };
    assert_eq!((first.run_id, first.number), (a1, 1));
    assert!(first.token.len() >= 32, "a token of 32+ hex digits");
    match claim(&mut conn, a2).await {
        Claim::Refused(launcher::Held { why, .. }) => assert!(
            why.contains("1 of 1 flow pods are running in namespace \"a\""),
            "{why}"
        ),
        other => panic!("a2 got {other:?}"),
    }
    assert_eq!(
        db.run(a2).await.phase,
        Phase::Pending,
        "a refused run stays pending"
    );
    assert!(matches!(claim(&mut conn, b1).await, Claim::Started(_)));
    // The global cap now binds too.
    let c1 = create("c", "c1").await;
    match claim(&mut conn, c1).await {
        Claim::Refused(launcher::Held { why, .. }) => {
            assert!(why.contains("2 of 2 flow pods are running"), "{why}")
        }
        other => panic!("c1 got {other:?}"),
    }
    // a1 parks: its slot frees, and a2 takes it.
    let done = json!("a done");
    runner::complete_step(&mut conn, &first, &step("a", &done))
        .await
        .unwrap();
    runner::complete_run(&mut conn, &first, &json!("finished"))
        .await
        .unwrap();
    assert!(matches!(claim(&mut conn, a2).await, Claim::Started(_)));
    assert_eq!(claim(&mut conn, a2).await, Claim::NotPending);
    // No cap at all: everything starts.
    assert!(matches!(
        launcher::claim(&mut conn, c1, &Default::default())
            .await
            .unwrap(),
        Claim::Started(_)
    ));
}

fn budget(max_running: Option<i32>, max_in_namespace: Option<i32>) -> launcher::Limits {
    launcher::Limits {
        max_running,
        max_in_namespace,
        ..Default::default()
    }
}
