//! Which runs an event reaches (`cairn.event_reaches`): one sent to the namespace reaches the
//! runs that existed when it was sent, and a later run only if its flow asks
//! (`include_earlier`); one addressed to a run reaches that run alone. So a run created again
//! under a reused name waits for its own approval.

use cairn_engine::EngineError;
use cairn_engine::launcher::{self, Addressing, NewRun};
use cairn_operator::lifecycle::Phase;
use cairn_tests::{NS, TestDb};
use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;

async fn emit_to(db: &TestDb, event: &str, payload: &Value, to: Addressing) -> launcher::Emitted {
    launcher::emit_to(&mut *db.conn().await, NS, event, payload, to)
        .await
        .expect("emit")
}

fn to_run(id: Uuid) -> Addressing {
    Addressing {
        run: Some(id),
        sent_at: None,
    }
}

#[tokio::test]
async fn an_event_sent_before_a_run_was_created_reaches_it_only_if_its_flow_asks() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let old = json!({ "approved": true, "by": "the run before" });
    emit(&db, "approve-x", old.clone()).await.unwrap();

    // Created after the event: it waits, as a run reusing a name must.
    let reused = db
        .create_run("x", "approval", json!({ "event": "approve-x" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), reused);
    let waiting = db.wait_for_phase(reused, Phase::Waiting).await;
    assert_eq!(
        waiting.waiting_for.expect("waiting_for")["event"],
        "approve-x"
    );

    // Its flow asks for earlier events: the same event reaches it at once.
    let asks = db
        .create_run(
            "asks",
            "approval",
            json!({ "event": "approve-x", "include_earlier": true }),
        )
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), asks).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": old })));
    assert_eq!(run.attempt, 1, "never suspended");

    // An approval addressed to the waiting run answers it.
    let new = json!({ "approved": false, "by": "ann" });
    let emitted = emit_to(&db, "approve-x", &new, to_run(reused)).await;
    assert_eq!(emitted.woken, 1);
    let run = supervisor.await.unwrap();
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": new })));
}

#[tokio::test]
async fn a_run_counts_from_when_it_was_asked_for_not_from_when_the_engine_heard_of_it() {
    // A FlowRun and its FlowEvent applied together: the event may reach the engine first.
    let db = TestDb::new().await;
    let log = db.log("effects");
    let asked_for = Utc::now() - TimeDelta::seconds(10);
    let payload = json!({ "approved": true, "by": "ann" });
    let sent = Addressing {
        run: None,
        sent_at: Some(asked_for + TimeDelta::seconds(1)),
    };
    emit_to(&db, "go", &payload, sent).await;
    let (id, _) = launcher::create_run(
        &mut *db.conn().await,
        &NewRun {
            namespace: NS,
            name: "together",
            flow: "approval",
            input: &json!({ "event": "go" }),
            max_attempts: 3,
            retry_backoff_ms: 100,
            created_at: Some(asked_for),
            flowrun_uid: None,
            concurrency: None,
        },
    )
    .await
    .expect("create_run");
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!({ "got": payload })));
}

#[tokio::test]
async fn an_event_addressed_to_a_run_reaches_that_run_alone_and_is_write_once_for_it() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher = db.launcher(FLOWS, &log, &[]);
    let a = db
        .create_run("a", "approval", json!({ "event": "go" }))
        .await;
    let b = db
        .create_run("b", "approval", json!({ "event": "go" }))
        .await;
    let (run_a, run_b) = (
        db.supervise_in_background(&launcher, a),
        db.supervise_in_background(&launcher, b),
    );
    db.wait_for_phase(a, Phase::Waiting).await;
    db.wait_for_phase(b, Phase::Waiting).await;

    let yes = json!({ "approved": true, "by": "ann" });
    assert_eq!(emit_to(&db, "go", &yes, to_run(a)).await.woken, 1);
    assert_eq!(run_a.await.unwrap().result, Some(json!({ "got": yes })));
    assert_eq!(db.run(b).await.phase, Phase::Waiting, "b was not addressed");

    // Write-once per run: the same payload again changes nothing, another one is refused.
    assert!(emit_to(&db, "go", &yes, to_run(a)).await.duplicate);
    let no = json!({ "approved": false, "by": "bob" });
    match launcher::emit_to(&mut *db.conn().await, NS, "go", &no, to_run(a)).await {
        Err(EngineError::EventConflict(message)) => {
            assert!(message.contains(&a.to_string()), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A run that does not exist (deleted, say) is a clear error, not a silent event.
    match launcher::emit_to(&mut *db.conn().await, NS, "go", &no, to_run(Uuid::new_v4())).await {
        Err(EngineError::NotFound(message)) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("expected not found, got {other:?}"),
    }

    // b still answers to the namespace's event, which the one addressed to a did not use up.
    assert_eq!(emit(&db, "go", no.clone()).await.unwrap().woken, 1);
    assert_eq!(run_b.await.unwrap().result, Some(json!({ "got": no })));
}
