//! Events and wait timeouts: emitted before or during the wait, duplicates and conflicts, schema checks, and a timeout that stays timed out.

use std::time::Duration;

use cairn_engine::runner::{self, Parked};
use cairn_engine::{EngineError, launcher};
use cairn_operator::lifecycle::Phase;
use cairn_tests::{TestDb, sigkill};
use serde_json::{Value, json};

use super::*;

// ---- 3. Events -------------------------------------------------------------------------------

#[tokio::test]
async fn an_event_emitted_before_the_wait_completes_the_run_without_suspending() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("early", "approval", json!({ "event": "go" }))
        .await;
    let payload = json!({ "approved": true, "by": "ann" });
    let emitted = emit(&db, "go", payload.clone()).await.unwrap();
    assert_eq!(
        emitted,
        launcher::Emitted {
            duplicate: false,
            woken: 0
        }
    );

    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": payload })));
    assert_eq!(run.attempt, 1, "one process, never suspended");
    assert_eq!(outcomes(&db.attempts(id).await), ["completed"]);
    assert_eq!(
        log.summary(),
        [
            "step:before@1".to_owned(),
            format!("saw:{payload}@1"),
            "step:after@1".to_owned()
        ]
    );
}

#[tokio::test]
async fn an_event_emitted_during_the_suspension_wakes_the_run() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("suspended", "approval", json!({ "event": "go" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    let waiting = db.wait_for_phase(id, Phase::Waiting).await;
    let waiting_for = waiting.waiting_for.expect("waiting_for");
    assert_eq!(waiting_for["event"], "go");
    assert_eq!(waiting_for["question"], "Approve?");
    assert!(waiting_for["schema"].is_object(), "{waiting_for}");
    assert_eq!(outcomes(&db.attempts(id).await), ["suspended"]);

    let payload = json!({ "approved": false, "by": "bob" });
    let emitted = emit(&db, "go", payload.clone()).await.unwrap();
    assert_eq!(
        emitted,
        launcher::Emitted {
            duplicate: false,
            woken: 1
        }
    );
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": payload })));
    assert_eq!(run.attempt, 2);
    assert_eq!(
        log.summary(),
        [
            "step:before@1".to_owned(),
            format!("saw:{payload}@2"),
            "step:after@2".to_owned()
        ]
    );
    assert_eq!(db.waits(id).await, 0);
}

#[tokio::test]
async fn a_duplicate_emit_is_a_no_op_and_a_different_payload_is_a_conflict() {
    let db = TestDb::new().await;
    let first = json!({ "approved": true, "by": "ann" });
    assert!(!emit(&db, "e", first.clone()).await.unwrap().duplicate);

    // Same payload (key order does not matter): nothing changes.
    let again = emit(&db, "e", json!({ "by": "ann", "approved": true }))
        .await
        .unwrap();
    assert_eq!(
        again,
        launcher::Emitted {
            duplicate: true,
            woken: 0
        }
    );

    match emit(&db, "e", json!({ "approved": false, "by": "ann" })).await {
        Err(EngineError::EventConflict(message)) => {
            assert!(
                message.contains("\"e\"")
                    && message.contains("already emitted")
                    && message.contains("different payload"),
                "unclear conflict message: {message}"
            );
        }
        other => panic!("expected an event conflict, got {other:?}"),
    }
    let stored: Vec<Value> =
        sqlx::query_scalar("SELECT payload FROM cairn.events WHERE name = 'e'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, [first], "the first write wins");
}

#[tokio::test]
async fn an_emit_failing_the_waits_schema_is_refused_and_changes_nothing() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("strict", "approval", json!({ "event": "go" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    db.wait_for_phase(id, Phase::Waiting).await;

    for (payload, problem) in [
        (
            json!({ "approved": "yes", "by": "bob" }),
            r#""yes" is not of type "boolean""#,
        ),
        (
            json!({ "approved": true }),
            r#""by" is a required property"#,
        ),
    ] {
        match emit(&db, "go", payload.clone()).await {
            Err(EngineError::InvalidPayload(message)) => {
                assert!(
                    message.contains(problem)
                        && message.contains("\"go\"")
                        && message.contains("strict"),
                    "{payload}: message should name the event, the run and the problem: {message}"
                );
            }
            other => panic!("{payload} should be refused, got {other:?}"),
        }
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "a refused payload is not stored");
    // Give a wrongly woken run time to be relaunched, then check it was not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = db.run(id).await;
    assert_eq!((run.phase, run.attempt), (Phase::Waiting, 1));
    assert_eq!(db.waits(id).await, 1);
    assert_eq!(log.summary(), ["step:before@1"]);

    let good = json!({ "approved": true, "by": "carol" });
    assert_eq!(emit(&db, "go", good.clone()).await.unwrap().woken, 1);
    let run = supervisor.await.unwrap();
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": good })));
}

// ---- 4. Wait timeouts --------------------------------------------------------------------------

#[tokio::test]
async fn a_timed_out_wait_stays_timed_out_after_a_late_emit_and_a_crash() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "timeout",
            "approval",
            json!({ "event": "late", "timeout_ms": 500, "hang": "after-wait" }),
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    // Attempt 1 suspends; at the deadline attempt 2 sees the timeout, then hangs.
    let hung = log.wait_for("hang:after-wait").await;
    assert_eq!(hung.attempt, 2);
    assert_eq!(
        db.checkpoint(id, "event:late").await,
        Some(json!({ "timed_out": true }))
    );
    // The event arrives too late: stored, but it wakes nothing and changes no outcome.
    let emitted = emit(&db, "late", json!({ "approved": true, "by": "dan" }))
        .await
        .unwrap();
    assert_eq!(emitted.woken, 0);
    // The process dies after the timeout; the replay must see the same outcome.
    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": null })));
    assert_eq!(run.attempt, 3);
    let saw: Vec<(String, i32)> = log
        .effects()
        .into_iter()
        .filter(|e| e.what.starts_with("saw:"))
        .map(|e| (e.what, e.attempt))
        .collect();
    assert_eq!(
        saw,
        [("saw:null".into(), 2), ("saw:null".into(), 3)],
        "every pass after the wait saw the timeout"
    );
    assert_eq!(log.count("step:before"), 1);
    assert_eq!(log.count("step:after"), 1);
    assert_eq!(
        db.checkpoint(id, "event:late").await,
        Some(json!({ "timed_out": true }))
    );
    assert_eq!(
        outcomes(&db.attempts(id).await),
        ["suspended", "crashed", "completed"]
    );
}

#[tokio::test]
async fn an_event_emitted_after_the_deadline_does_not_count_even_before_the_relaunch() {
    let db = TestDb::new().await;
    let id = db.create_run("deadline", "approval", json!({})).await;
    let mut conn = db.conn().await;
    let a1 = claimed(&mut conn, id, 1).await;
    let wait = runner::EventWait {
        key: "event:x",
        event: "x",
        timeout_ms: Some(300),
        question: None,
        schema: None,
        include_earlier: false,
    };
    assert_eq!(
        runner::await_event(&mut conn, &a1, &wait).await.unwrap(),
        Parked::Suspended
    );
    // This test is about time: the emit comes after the deadline (database clock), while the
    // run still waits to be relaunched.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let emitted = emit(&db, "x", json!("too late")).await.unwrap();
    assert_eq!(emitted.woken, 0, "the deadline has passed");
    assert!(launcher::wake_due(&mut conn).await.unwrap() >= 1);
    let a2 = claimed(&mut conn, id, 2).await;
    assert_eq!(
        runner::await_event(&mut conn, &a2, &wait).await.unwrap(),
        Parked::Ready(None),
        "timed out, although the event exists now"
    );
    assert_eq!(
        db.checkpoint(id, "event:x").await,
        Some(json!({ "timed_out": true }))
    );
}
