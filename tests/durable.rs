//! Issue 2, the durable core: the engine (real Postgres) and the `cairn dev` supervisor
//! launching the real flow processes of `test-flows`. Side effects are counted from the flows'
//! effect log, never from logs of the system under test.

use std::time::Duration;

use cairn_engine::read;
use cairn_engine::runner::{self, Parked};
use cairn_engine::{EngineError, launcher};
use cairn_operator::lifecycle::Phase;
use cairn_tests::{NS, TestDb, sigkill};
use serde_json::{Value, json};

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

fn ms(delta: chrono::TimeDelta) -> i64 {
    delta.num_milliseconds()
}

async fn emit(db: &TestDb, event: &str, payload: Value) -> Result<launcher::Emitted, EngineError> {
    launcher::emit(&mut *db.conn().await, NS, event, &payload).await
}

fn outcomes(attempts: &[read::AttemptRecord]) -> Vec<String> {
    attempts
        .iter()
        .map(|a| a.outcome.as_deref().unwrap_or("running").to_owned())
        .collect()
}

// ---- 1. SIGKILL -----------------------------------------------------------------------------

#[tokio::test]
async fn sigkill_inside_a_step_relaunches_and_completed_steps_run_once() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("kill-inside", "steps", json!({ "hang": "inside:b" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    let hung = log.wait_for("hang:inside:b").await;
    assert_eq!(hung.attempt, 1);
    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(["a done", "b done", "c done"])));
    assert_eq!((run.attempt, run.crashes), (2, 1));
    // `a` completed before the kill: never again. `b` never completed in attempt 1, so it ran
    // again in attempt 2 (exactly twice). `c` once.
    assert_eq!(log.count("step:a"), 1, "{:?}", log.summary());
    assert_eq!(log.count("step:b"), 2, "{:?}", log.summary());
    assert_eq!(log.count("step:c"), 1, "{:?}", log.summary());
    let steps: Vec<(String, Option<i32>)> = db
        .steps(id)
        .await
        .into_iter()
        .map(|s| (s.key, s.attempt))
        .collect();
    assert_eq!(
        steps,
        [
            ("a".into(), Some(1)),
            ("b".into(), Some(2)),
            ("c".into(), Some(2))
        ],
        "checkpoints (key, attempt)"
    );
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["crashed", "completed"]);
    let detail = attempts[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("SIGKILL"), "crash detail: {detail}");
}

#[tokio::test]
async fn sigkill_between_steps_relaunches_and_every_step_runs_once() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("kill-between", "steps", json!({ "hang": "before:b" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    let hung = log.wait_for("hang:before:b").await;
    assert_eq!(hung.attempt, 1);
    assert_eq!(
        db.checkpoint(id, "a").await,
        Some(json!("a done")),
        "a is checkpointed before the kill"
    );
    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(["a done", "b done", "c done"])));
    assert_eq!((run.attempt, run.crashes), (2, 1));
    for step in ["step:a", "step:b", "step:c"] {
        assert_eq!(log.count(step), 1, "{step}: {:?}", log.summary());
    }
    let attempts: Vec<i32> = log
        .effects()
        .iter()
        .filter(|e| e.what.starts_with("step:"))
        .map(|e| e.attempt)
        .collect();
    assert_eq!(
        attempts,
        [1, 2, 2],
        "a ran in attempt 1, b and c in attempt 2"
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["crashed", "completed"]);
}

// ---- 2. Fencing ------------------------------------------------------------------------------

/// Claims the run, which must be at attempt `number` afterwards.
async fn claimed(conn: &mut sqlx::PgConnection, id: uuid::Uuid, number: i32) -> runner::Attempt {
    let attempt = launcher::start_attempt(conn, id)
        .await
        .unwrap()
        .expect("the run is pending");
    assert_eq!(attempt.number, number);
    attempt
}

fn step<'a>(key: &'a str, result: &'a Value) -> runner::CompletedStep<'a> {
    runner::CompletedStep {
        key,
        result,
        duration_ms: 1,
        tries: 1,
        usage: Default::default(),
    }
}

fn assert_fenced<T: std::fmt::Debug>(what: &str, outcome: Result<T, EngineError>) {
    match outcome {
        Err(EngineError::Fenced(message)) => assert!(
            message.contains("no longer current"),
            "{what}: unclear message {message:?}"
        ),
        other => panic!("{what} by a superseded attempt was not fenced: {other:?}"),
    }
}

#[tokio::test]
async fn fencing_rejects_every_write_of_a_superseded_attempt() {
    let db = TestDb::new().await;
    let id = db.create_run("fenced", "steps", json!({})).await;
    let mut conn = db.conn().await;

    let a1 = claimed(&mut conn, id, 1).await;
    assert_eq!(
        launcher::start_attempt(&mut conn, id).await.unwrap(),
        None,
        "a running run cannot be claimed twice"
    );
    runner::load_run(&mut conn, &a1).await.unwrap();
    let done = json!("a done");
    assert!(
        !runner::complete_step(&mut conn, &a1, &step("a", &done))
            .await
            .unwrap()
    );

    // The supervisor loses attempt 1 (a partition, a pod it gave up on) and relaunches at once.
    let state = launcher::record_crash(&mut conn, id, 1, "lost", Some(0))
        .await
        .unwrap();
    assert_eq!(state, Some(Phase::Retrying));
    assert!(launcher::wake_due(&mut conn).await.unwrap() >= 1);
    let a2 = claimed(&mut conn, id, 2).await;

    // Attempt 1 is a zombie: everything it tries to write is refused.
    let late = json!("b from the zombie");
    assert_fenced(
        "complete_step",
        runner::complete_step(&mut conn, &a1, &step("b", &late)).await,
    );
    assert_fenced(
        "complete_run",
        runner::complete_run(&mut conn, &a1, &json!("zombie result")).await,
    );
    assert_fenced(
        "fail_run",
        runner::fail_run(&mut conn, &a1, &json!({ "message": "zombie" })).await,
    );
    assert_fenced("load_run", runner::load_run(&mut conn, &a1).await);
    let wait = runner::EventWait {
        key: "event:x",
        event: "x",
        timeout_ms: None,
        question: None,
        schema: None,
    };
    assert_fenced(
        "await_event",
        runner::await_event(&mut conn, &a1, &wait).await,
    );
    assert_fenced(
        "sleep",
        runner::sleep(&mut conn, &a1, "sleep:s", None, 60_000, 0).await,
    );
    assert_fenced(
        "spawn_child",
        runner::spawn_child(&mut conn, &a1, "spawn:echo", "child", "echo", &json!(1)).await,
    );
    // Even with the current attempt's token, the old attempt number is refused (the fence).
    let forged = runner::Attempt {
        number: 1,
        ..a2.clone()
    };
    assert_fenced(
        "complete_step with the current token and an old attempt",
        runner::complete_step(&mut conn, &forged, &step("b", &late)).await,
    );
    assert_fenced(
        "emit",
        runner::emit(&mut conn, &a1, "emit:e", "e", &json!(1)).await,
    );
    drop(conn);

    // Nothing of the zombie's was written.
    let run = db.run(id).await;
    assert_eq!((run.phase, run.attempt), (Phase::Running, 2));
    assert_eq!((run.result, run.error), (None, None));
    let keys: Vec<String> = db.steps(id).await.into_iter().map(|s| s.key).collect();
    assert_eq!(keys, ["a"]);
    assert_eq!(db.waits(id).await, 0);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn.runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "no child was created");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "no event was emitted");
    assert_eq!(
        outcomes(&db.attempts(id).await),
        ["crashed", "running"],
        "the zombie did not end anyone's attempt"
    );

    // The current attempt writes normally, and finishes the run.
    let mut conn = db.conn().await;
    let b = json!("b done");
    runner::complete_step(&mut conn, &a2, &step("b", &b))
        .await
        .unwrap();
    runner::complete_run(&mut conn, &a2, &json!("ok"))
        .await
        .unwrap();
    assert_fenced(
        "complete_run after the end",
        runner::complete_run(&mut conn, &a1, &json!("zombie")).await,
    );
    let run = db.run(id).await;
    assert_eq!(
        (run.phase, run.result),
        (Phase::Succeeded, Some(json!("ok")))
    );
}

#[tokio::test]
async fn a_superseded_flow_process_exits_without_running_or_writing_anything() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("zombie", "steps", json!({})).await;
    let mut conn = db.conn().await;
    let a1 = claimed(&mut conn, id, 1).await;
    launcher::record_crash(&mut conn, id, 1, "lost", Some(0))
        .await
        .unwrap();
    launcher::wake_due(&mut conn).await.unwrap();
    let a2 = claimed(&mut conn, id, 2).await;
    drop(conn);

    // Processes launched as the supervisor does: the runner login, the attempt and its token.
    let launch = |attempt: &runner::Attempt| {
        std::process::Command::new(FLOWS)
            .env(cairn::env::DATABASE_URL, &db.runner_url)
            .env(cairn::env::RUN_ID, id.to_string())
            .env(cairn::env::ATTEMPT, attempt.number.to_string())
            .env(cairn::env::TOKEN, &attempt.token)
            .env("CAIRN_TEST_LOG", &log.path)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run test-flows")
    };
    // A late process of attempt 1 (the runner contract's exit code 77: superseded).
    let zombie = launch(&a1);
    assert_eq!(
        zombie.status.code(),
        Some(cairn::Exit::Superseded.code()),
        "{}",
        String::from_utf8_lossy(&zombie.stderr)
    );
    assert!(log.effects().is_empty(), "{:?}", log.summary());
    assert!(db.steps(id).await.is_empty());
    assert_eq!(db.run(id).await.phase, Phase::Running);

    // The current attempt runs the flow.
    let current = launch(&a2);
    assert_eq!(
        current.status.code(),
        Some(cairn::Exit::Completed.code()),
        "{}",
        String::from_utf8_lossy(&current.stderr)
    );
    assert_eq!(db.run(id).await.phase, Phase::Succeeded);
    assert_eq!(log.summary(), ["step:a@2", "step:b@2", "step:c@2"]);
}

// ---- 3. Events -------------------------------------------------------------------------------

#[tokio::test]
async fn an_event_emitted_before_the_wait_completes_the_run_without_suspending() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let payload = json!({ "approved": true, "by": "ann" });
    let emitted = emit(&db, "go", payload.clone()).await.unwrap();
    assert_eq!(
        emitted,
        launcher::Emitted {
            duplicate: false,
            woken: 0
        }
    );

    let id = db
        .create_run("early", "approval", json!({ "event": "go" }))
        .await;
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

// ---- 5. Durable sleep --------------------------------------------------------------------------

#[tokio::test]
async fn a_durable_sleep_suspends_the_process_and_wakes_no_earlier_than_its_deadline() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher = db.launcher(FLOWS, &log, &[(cairn::env::INLINE_SLEEP_MAX_MS, "0")]);
    let id = db.create_run("nap", "sleeper", json!({ "ms": 2000 })).await;
    let supervisor = db.supervise_in_background(&launcher, id);

    let sleeping = db.wait_for_phase(id, Phase::Sleeping).await;
    assert!(sleeping.wake_at.is_some());
    assert_eq!(outcomes(&db.attempts(id).await), ["suspended"]);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.attempt, 2, "the sleep ended the first process");
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["suspended", "completed"]);
    assert_eq!(attempts[0].detail.as_deref(), Some("sleeping"));
    let nap = db
        .steps(id)
        .await
        .into_iter()
        .find(|s| s.key == "sleep:nap")
        .expect("the sleep is checkpointed");
    // nap.started_at: when the flow first reached the sleep (database clock).
    let slept = ms(attempts[1].started_at - nap.started_at);
    assert!(
        (2000..15_000).contains(&slept),
        "the flow went on {slept} ms after it started sleeping"
    );
    assert_eq!(log.summary(), ["step:before@1", "step:after@2"]);
}

#[tokio::test]
async fn a_short_sleep_stays_in_process() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("doze", "sleeper", json!({ "ms": 300 })).await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.attempt, 1, "no suspension");
    let nap = db
        .steps(id)
        .await
        .into_iter()
        .find(|s| s.key == "sleep:nap")
        .expect("the sleep is checkpointed");
    assert!(nap.duration_ms >= 300.0, "slept {} ms", nap.duration_ms);
    assert_eq!(log.summary(), ["step:before@1", "step:after@1"]);
}

// ---- 6. Fan-out ------------------------------------------------------------------------------

#[tokio::test]
async fn fan_out_of_twenty_children_joins_all_results_in_order() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("fan", "fanout", json!({ "n": 20 })).await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    let expected: Vec<u64> = (0..20).map(|i| i * i).collect();
    assert_eq!(run.result, Some(json!(expected)));
    for i in 0..20 {
        assert_eq!(
            log.count(&format!("work:{i}")),
            1,
            "child {i}: {:?}",
            log.summary()
        );
    }
    assert_eq!(log.effects().len(), 20);
    let tree = read::tree(&db.pool, id).await.unwrap();
    assert_eq!(tree.len(), 21, "the root and its 20 children");
    for child in tree.iter().filter(|r| r.id != id) {
        assert_eq!(child.parent_id, Some(id));
        assert_eq!(child.phase, Phase::Succeeded, "{}", child.name);
        assert_eq!(child.attempt, 1, "{} ran once", child.name);
    }
}

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

// ---- 8. Retries ------------------------------------------------------------------------------

#[tokio::test]
async fn a_step_failing_twice_succeeds_on_its_third_try() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("flaky", "flaky", json!({ "fail_times": 2, "max_tries": 3 }))
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(3)));
    assert_eq!(run.attempt, 1, "step retries stay in-process");
    assert_eq!(log.summary(), ["try:1@1", "try:2@1", "try:3@1"]);
    let steps = db.steps(id).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].tries, Some(3));
}

#[tokio::test]
async fn a_permanent_step_error_is_not_retried() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "permanent",
            "flaky",
            json!({ "fail_times": 0, "max_tries": 3, "permanent": true }),
        )
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Failed);
    let message = run.error_message().unwrap_or_default();
    assert!(
        message.contains("bad request") && message.contains("after 1 try"),
        "error: {message}"
    );
    assert_eq!(log.summary(), ["try:1@1"]);
    assert_eq!((run.attempt, run.crashes), (1, 0), "no run-level retry");
    assert!(db.steps(id).await.is_empty());
}

#[tokio::test]
async fn a_step_that_always_fails_fails_the_run_after_its_tries() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "hopeless",
            "flaky",
            json!({ "fail_times": 99, "max_tries": 3 }),
        )
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Failed);
    let message = run.error_message().unwrap_or_default();
    assert!(
        message.contains("step \"flaky\" failed after 3 tries")
            && message.contains("transient failure on try 3"),
        "error: {message}"
    );
    assert_eq!(log.summary(), ["try:1@1", "try:2@1", "try:3@1"]);
    assert_eq!(
        (run.attempt, run.crashes),
        (1, 0),
        "a flow error is not a crash"
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["failed"]);
}

#[tokio::test]
async fn a_flow_crashing_every_time_fails_after_max_attempts_with_growing_backoff() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run_with("crasher", "crasher", json!(null), 3, 200)
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Failed);
    assert_eq!((run.attempt, run.crashes), (3, 3));
    let message = run.error_message().unwrap_or_default();
    assert!(
        message.contains("gave up after 3 crashed attempts") && message.contains("SIGABRT"),
        "error: {message}"
    );
    assert_eq!(run.error.as_ref().unwrap()["kind"], "crashed");
    assert_eq!(log.summary(), ["start@1", "start@2", "start@3"]);
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["crashed", "crashed", "crashed"]);
    // Relaunches wait for the backoff (database clock): 200 ms, then 400 ms.
    for (i, backoff) in [(1, 200), (2, 400)] {
        let gap = ms(attempts[i].started_at - attempts[i - 1].ended_at.expect("ended"));
        assert!(
            (backoff..10_000).contains(&gap),
            "attempt {} started {gap} ms after attempt {i} crashed; backoff is {backoff} ms",
            i + 1
        );
    }
}

// ---- 9. Malformed input ----------------------------------------------------------------------

#[tokio::test]
async fn malformed_input_fails_the_run_once_naming_the_field() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher = db.launcher(FLOWS, &log, &[]);
    for (name, input, problem) in [
        (
            "wrong-type",
            json!({ "topic": 5, "count": 1 }),
            "invalid type: integer `5`, expected a string",
        ),
        ("missing", json!({ "topic": "x" }), "missing field `count`"),
    ] {
        let id = db.create_run(name, "typed", input).await;
        let run = db.supervise(&launcher, id).await;
        assert_eq!(run.phase, Phase::Failed, "{name}");
        let message = run.error_message().unwrap_or_default();
        assert!(
            message.contains("the input of flow \"typed\"") && message.contains(problem),
            "{name}: error {message}"
        );
        if name == "wrong-type" {
            assert!(message.contains("at topic"), "names the field: {message}");
        }
        assert_eq!((run.attempt, run.crashes), (1, 0), "{name}: no crash loop");
        assert_eq!(outcomes(&db.attempts(id).await), ["failed"], "{name}");
    }
    assert!(log.effects().is_empty(), "{:?}", log.summary());
}

// ---- 10. Idempotent creation -----------------------------------------------------------------

#[tokio::test]
async fn creating_a_run_twice_by_name_is_idempotent_and_a_different_request_conflicts() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    let input = json!({ "topic": "x", "count": 1 });
    let request = launcher::NewRun {
        namespace: NS,
        name: "once",
        flow: "typed",
        input: &input,
        max_attempts: 3,
        retry_backoff_ms: 100,
    };
    let (id, created) = launcher::create_run(&mut conn, &request).await.unwrap();
    assert!(created);
    let (again, created) = launcher::create_run(&mut conn, &request).await.unwrap();
    assert_eq!((again, created), (id, false));

    let other_input = json!({ "topic": "y", "count": 1 });
    let different_input = launcher::NewRun {
        input: &other_input,
        ..request.clone()
    };
    match launcher::create_run(&mut conn, &different_input).await {
        Err(EngineError::RunConflict(message)) => assert!(
            message.contains("\"once\"") && message.contains("different input"),
            "{message}"
        ),
        other => panic!("expected a run conflict, got {other:?}"),
    }
    let different_flow = launcher::NewRun {
        flow: "echo",
        ..request.clone()
    };
    match launcher::create_run(&mut conn, &different_flow).await {
        Err(EngineError::RunConflict(message)) => {
            assert!(message.contains("different flow"), "{message}")
        }
        other => panic!("expected a run conflict, got {other:?}"),
    }
    // Another namespace is another name.
    let elsewhere = launcher::NewRun {
        namespace: "other",
        ..request.clone()
    };
    let (other_id, created) = launcher::create_run(&mut conn, &elsewhere).await.unwrap();
    assert!(created && other_id != id);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn.runs")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(runs, 2);
}

// ---- 11. Cost and usage ----------------------------------------------------------------------

#[tokio::test]
async fn usage_recorded_by_steps_is_summed_per_run() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("costly", "costly", json!(null)).await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);

    let totals = read::totals(&db.pool, id).await.unwrap();
    assert_eq!(totals.steps, 4);
    // plan 0.25; draft 0.5 + 0.25; free 0; retried 2 tries × 0.125 (the failed try was paid).
    assert!((totals.usd - 1.25).abs() < 1e-9, "usd {}", totals.usd);
    assert_eq!(totals.tokens_in, 100 + 210 + 2000);
    assert_eq!(totals.tokens_out, 20 + 45 + 200);
    assert!((run.usd - 1.25).abs() < 1e-9, "run record usd {}", run.usd);

    let steps = db.steps(id).await;
    let by_key = |key: &str| steps.iter().find(|s| s.key == key).expect(key);
    assert_eq!(by_key("draft").model.as_deref(), Some("model-b"));
    assert_eq!(by_key("free").usd, None);
    assert_eq!(by_key("retried").tries, Some(2));
}

#[tokio::test]
async fn deleting_a_run_removes_its_children_and_every_row_they_own() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("fan-del", "fanout", json!({ "n": 3 })).await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);

    let count = async |table: &str| -> i64 {
        let sql = format!("SELECT count(*) FROM cairn.{table}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(count("runs").await, 4, "the parent and its 3 children");
    assert!(count("steps").await > 0 && count("attempts").await > 0);

    sqlx::query("DELETE FROM cairn.runs WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    for table in ["runs", "steps", "attempts", "waits"] {
        assert_eq!(count(table).await, 0, "rows left in cairn.{table}");
    }
}

// ---- Least privilege: what a flow process can touch --------------------------------------------

#[tokio::test]
async fn a_flow_process_can_touch_only_its_own_run_and_no_table() {
    let db = TestDb::new().await;
    let mine = db.create_run("mine", "steps", json!({})).await;
    let theirs = db.create_run("theirs", "steps", json!({})).await;
    let my_attempt = claimed(&mut *db.conn().await, mine, 1).await;
    claimed(&mut *db.conn().await, theirs, 1).await;
    // Connected as flow processes are: the runner login.
    let mut runner = <sqlx::PgConnection as sqlx::Connection>::connect(&db.runner_url)
        .await
        .unwrap();

    runner::load_run(&mut runner, &my_attempt).await.unwrap();
    let done = json!("a done");
    runner::complete_step(&mut runner, &my_attempt, &step("a", &done))
        .await
        .unwrap();

    // Another run, with this process's token: refused, reading as writing.
    let forged = runner::Attempt {
        run_id: theirs,
        ..my_attempt.clone()
    };
    assert_fenced(
        "load_run of another run",
        runner::load_run(&mut runner, &forged).await,
    );
    let stolen = json!("forged");
    assert_fenced(
        "complete_step on another run",
        runner::complete_step(&mut runner, &forged, &step("a", &stolen)).await,
    );
    // The tables and the launchers' functions: no access at all.
    for sql in [
        "SELECT count(*) FROM cairn.steps",
        "UPDATE cairn.runs SET state = 'succeeded'",
        "SELECT cairn.wake_due()",
        "SELECT * FROM cairn.runner_login",
    ] {
        let refused = sqlx::query(sql).execute(&mut runner).await.unwrap_err();
        assert!(
            refused.to_string().contains("permission denied"),
            "{sql}: {refused}"
        );
    }
    let bypass = sqlx::query("SELECT * FROM cairn.load_run($1, 1)")
        .bind(theirs)
        .execute(&mut runner)
        .await
        .unwrap_err();
    assert!(bypass.to_string().contains("permission denied"), "{bypass}");

    assert!(
        db.steps(theirs).await.is_empty(),
        "nothing of theirs changed"
    );
    assert_eq!(db.steps(mine).await.len(), 1);
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
        launcher::claim(conn, id, Some(2), Some(1)).await.unwrap()
    };
    let Claim::Started(first) = claim(&mut conn, a1).await else {
        panic!("a1 did not start")
    };
    assert_eq!((first.run_id, first.number), (a1, 1));
    assert!(first.token.len() >= 32, "a token of 32+ hex digits");
    match claim(&mut conn, a2).await {
        Claim::Refused(why) => assert!(
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
        Claim::Refused(why) => assert!(why.contains("2 of 2 flow pods are running"), "{why}"),
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
        launcher::claim(&mut conn, c1, None, None).await.unwrap(),
        Claim::Started(_)
    ));
}

// ---- Failure: a storm of SIGKILLs ---------------------------------------------------------------

/// A small xorshift generator: random kill points, reproducible from the printed seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test]
async fn a_storm_of_fifty_sigkills_at_random_points_never_runs_a_completed_step_again() {
    const KILLS: usize = 50;
    let db = TestDb::new().await;
    let log = db.log("effects");
    // Relaunch at once after every crash (no backoff), and never give up within the storm.
    let id = db
        .create_run_with(
            "storm",
            "storm",
            json!({ "steps": 120, "step_ms": 10 }),
            KILLS as i32 + 10,
            0,
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill storm seed {seed}");

    let mut killed_attempt = 0;
    for _ in 0..KILLS {
        // The next attempt's process has entered the flow; kill it 0–40 ms later: while it
        // replays, inside a step, or between two.
        log.wait_for_count(1, |e| e.what == "start" && e.attempt > killed_attempt)
            .await;
        let started = log
            .effects()
            .into_iter()
            .find(|e| e.what == "start" && e.attempt > killed_attempt)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(next_random(&mut seed) % 40)).await;
        sigkill(started.pid);
        killed_attempt = started.attempt;
    }
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(120)));
    assert_eq!(
        run.crashes, KILLS as i32,
        "every kill landed on a live process"
    );
    // Which attempt completed each step, and every execution of each.
    let completed_in: std::collections::HashMap<String, i32> = db
        .steps(id)
        .await
        .into_iter()
        .map(|s| (s.key, s.attempt.expect("completing attempt")))
        .collect();
    assert_eq!(completed_in.len(), 120);
    let executions: Vec<(String, i32)> = log
        .effects()
        .into_iter()
        .filter_map(|e| Some((e.what.strip_prefix("step:")?.to_owned(), e.attempt)))
        .collect();
    for (key, attempt) in &executions {
        assert!(
            *attempt <= completed_in[key],
            "step {key} ran in attempt {attempt}, after attempt {} had completed it",
            completed_in[key]
        );
    }
    // A step runs again only when a kill interrupted it: at most once per kill.
    let reruns = executions.len() - completed_in.len();
    assert!(reruns <= KILLS, "{reruns} re-executions for {KILLS} kills");
    eprintln!(
        "{KILLS} kills: {reruns} interrupted steps ran again, 0 completed steps ran again, {} attempts",
        run.attempt
    );
}
