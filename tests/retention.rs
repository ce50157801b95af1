//! Retention: finished runs and old events are deleted (cairn.gc, `cairn dev gc`) with
//! everything they own, while anything still in use is kept; an event deleted with its
//! FlowEvent no longer answers a later wait.

use cairn_engine::Phase;
use cairn_engine::launcher::{self, Collected};
use cairn_engine::runner::{self, CompletedStep, EventWait, Parked, StepUsage};
use cairn_tests::{NS, TestDb, cairn_cli};
use serde_json::json;
use uuid::Uuid;

/// A run that finished `hours` ago, with one checkpointed step and one child.
async fn finished_run(db: &TestDb, name: &str, hours: i64) -> Uuid {
    let id = db.create_run(name, "any", json!(null)).await;
    let mut conn = db.conn().await;
    let attempt = launcher::start_attempt(&mut conn, id)
        .await
        .unwrap()
        .unwrap();
    let step = CompletedStep {
        key: "plan",
        result: &json!("a plan"),
        duration_ms: 1,
        tries: 1,
        usage: StepUsage::default(),
    };
    runner::complete_step(&mut conn, &attempt, &step)
        .await
        .unwrap();
    runner::spawn_child(
        &mut conn,
        &attempt,
        "spawn",
        &format!("{name}-child"),
        "any",
        &json!(1),
    )
    .await
    .unwrap();
    runner::complete_run(&mut conn, &attempt, &json!("done"))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE cairn.runs SET finished_at = now() - make_interval(hours => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(hours as i32)
    .execute(&mut *conn)
    .await
    .unwrap();
    id
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn emit_hours_ago(db: &TestDb, event: &str, hours: i32) {
    launcher::emit(&mut *db.conn().await, NS, event, &json!({ "ok": true }))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE cairn.events SET emitted_at = now() - make_interval(hours => $2) WHERE name = $1",
    )
    .bind(event)
    .bind(hours)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn gc_deletes_old_finished_runs_with_what_they_own_and_old_events_nobody_waits_for() {
    let db = TestDb::new().await;
    let old = finished_run(&db, "old", 48).await;
    let recent = finished_run(&db, "recent", 1).await;
    // Unfinished, however old: never collected.
    let parked = db.create_run("parked", "any", json!(null)).await;
    sqlx::query("UPDATE cairn.runs SET created_at = now() - interval '30 days' WHERE id = $1")
        .bind(parked)
        .execute(&db.pool)
        .await
        .unwrap();
    emit_hours_ago(&db, "old-event", 48).await;
    emit_hours_ago(&db, "recent-event", 1).await;
    // An old event whose waiter was woken but has not resumed yet (its wait row stays until
    // the resumed process checkpoints it: e.g. queued for a slot) is kept.
    emit_hours_ago(&db, "awaited", 48).await;
    let waiter = db.create_run("waiter", "any", json!(null)).await;
    // It existed when the event was sent (or the event would not reach it).
    sqlx::query("UPDATE cairn.runs SET created_at = now() - interval '50 hours' WHERE id = $1")
        .bind(waiter)
        .execute(&db.pool)
        .await
        .unwrap();
    let attempt = launcher::start_attempt(&mut *db.conn().await, waiter)
        .await
        .unwrap()
        .unwrap();
    let wait = EventWait {
        key: "wait",
        event: "awaited",
        timeout_ms: None,
        question: None,
        schema: None,
        include_earlier: false,
    };
    sqlx::query("INSERT INTO cairn.waits (run_id, step_key, kind, namespace, event_name, deadline, created_at) VALUES ($1, 'wait', 'event', $2, 'awaited', NULL, now() - interval '49 hours')")
        .bind(waiter)
        .bind(NS)
        .execute(&db.pool)
        .await
        .unwrap();

    let cutoff = chrono::Utc::now() - chrono::Duration::hours(24);
    let collected = launcher::gc(&mut *db.conn().await, Some(cutoff), Some(cutoff), None)
        .await
        .unwrap();
    assert_eq!(collected, Collected { runs: 1, events: 1 });

    let in_tree = |id: Uuid| format!("SELECT count(*) FROM cairn.runs WHERE root_id = '{id}'");
    assert_eq!(
        count(&db, &in_tree(old)).await,
        0,
        "the old run and its child"
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM cairn.steps WHERE run_id = '{old}'")
        )
        .await,
        0
    );
    assert_eq!(count(&db, &in_tree(recent)).await, 2);
    assert_eq!(db.run(parked).await.phase, Phase::Pending);
    let events = count(&db, "SELECT count(*) FROM cairn.events").await;
    assert_eq!(events, 2, "recent-event and awaited stay");

    // The resumed process still finds the event it was woken for.
    let outcome = runner::await_event(&mut *db.conn().await, &attempt, &wait).await;
    assert!(matches!(outcome, Ok(Parked::Ready(Some(_)))), "{outcome:?}");
}

#[tokio::test]
async fn a_deleted_event_no_longer_answers_and_the_name_can_be_emitted_again() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    launcher::emit(&mut conn, NS, "approve-x", &json!("first"))
        .await
        .unwrap();
    assert!(
        launcher::delete_event(&mut conn, NS, "approve-x")
            .await
            .unwrap()
    );
    assert!(
        !launcher::delete_event(&mut conn, NS, "approve-x")
            .await
            .unwrap()
    );

    let id = db.create_run("x", "any", json!(null)).await;
    let attempt = launcher::start_attempt(&mut conn, id)
        .await
        .unwrap()
        .unwrap();
    let wait = EventWait {
        key: "approval",
        event: "approve-x",
        timeout_ms: None,
        question: None,
        schema: None,
        include_earlier: false,
    };
    let outcome = runner::await_event(&mut conn, &attempt, &wait)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Parked::Suspended,
        "the deleted approval must not answer"
    );
    let emitted = launcher::emit(&mut conn, NS, "approve-x", &json!("second"))
        .await
        .unwrap();
    assert_eq!((emitted.duplicate, emitted.woken), (false, 1));
}

#[tokio::test]
async fn cairn_dev_gc_says_what_it_deleted() {
    let db = TestDb::new().await;
    finished_run(&db, "old", 48).await;
    finished_run(&db, "recent", 1).await;
    emit_hours_ago(&db, "old-event", 48).await;
    let output = tokio::process::Command::new(cairn_cli())
        .args(["dev", "gc", "--older-than", "1d"])
        .env("CAIRN_DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "deleted 1 finished run(s) and 1 event(s) older than 1day, and 0 artifact(s) no run refers to"
    );
    let bad = tokio::process::Command::new(cairn_cli())
        .args(["dev", "gc", "--older-than", "soon"])
        .env("CAIRN_DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--older-than"));
}

#[tokio::test]
async fn an_ended_attempts_token_opens_nothing_not_even_reads() {
    let db = TestDb::new().await;
    let id = db.create_run("parked", "any", json!(null)).await;
    let attempt = launcher::start_attempt(&mut *db.conn().await, id)
        .await
        .unwrap()
        .unwrap();
    let mut runner_conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.runner_url)
        .await
        .unwrap();
    let wait = EventWait {
        key: "approval",
        event: "approve-parked",
        timeout_ms: None,
        question: Some("Ship it?"),
        schema: None,
        include_earlier: false,
    };
    let parked = runner::await_event(&mut runner_conn, &attempt, &wait)
        .await
        .unwrap();
    assert_eq!(parked, Parked::Suspended);
    // The process has exited; a copy of its token (its Secret) must not read or write anything.
    let read = runner::emit(
        &mut runner_conn,
        &attempt,
        "emit:x",
        "approve-parked",
        &json!(1),
    )
    .await;
    assert!(
        matches!(read, Err(cairn_engine::EngineError::Fenced(_))),
        "{read:?}"
    );
    let handshake = runner::handshake(&mut runner_conn, &attempt, "a leaked token").await;
    assert!(
        matches!(handshake, Err(cairn_engine::EngineError::Fenced(_))),
        "{handshake:?}"
    );
    let hash: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT token_hash FROM cairn.runs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(hash, None, "the parked run keeps no token");
}
