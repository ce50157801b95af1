//! Input and bookkeeping: malformed input, idempotent creation by name, cost and usage, deleting a run with its children.

use cairn_engine::read;
use cairn_engine::{EngineError, launcher};
use cairn_operator::lifecycle::Phase;
use cairn_tests::{NS, TestDb};
use serde_json::json;

use super::*;

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
        created_at: None,
        flowrun_uid: None,
        concurrency: None,
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

#[tokio::test]
async fn a_run_belongs_to_its_flowrun_and_a_reused_name_starts_clean() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    let input = json!({ "topic": "x", "count": 1 });
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let unbound = launcher::NewRun {
        namespace: NS,
        name: "reused",
        flow: "typed",
        input: &input,
        max_attempts: 3,
        retry_backoff_ms: 100,
        created_at: None,
        flowrun_uid: None,
        concurrency: None,
    };
    // A run from before the binding (or a child the engine made) is bound by its FlowRun.
    let (id, _) = launcher::create_run(&mut conn, &unbound).await.unwrap();
    let of_first = launcher::NewRun {
        flowrun_uid: Some(first),
        ..unbound.clone()
    };
    assert_eq!(
        launcher::create_run(&mut conn, &of_first).await.unwrap(),
        (id, false)
    );
    // The FlowRun was deleted unseen and created again: the new one gets a run of its own.
    let of_second = launcher::NewRun {
        flowrun_uid: Some(second),
        ..unbound.clone()
    };
    let (fresh, created) = launcher::create_run(&mut conn, &of_second).await.unwrap();
    assert!(created && fresh != id, "a new run, not the old one's rows");
    assert!(
        !launcher::forget_flowrun(&db.pool, first, NS, "reused")
            .await
            .unwrap()
    );
    assert!(
        launcher::forget_flowrun(&db.pool, second, NS, "reused")
            .await
            .unwrap()
    );
    // A namespace being deleted is forgotten whole: runs and events.
    let (_, _) = launcher::create_run(&mut conn, &unbound).await.unwrap();
    launcher::emit(&mut conn, NS, "some-event", &json!(1))
        .await
        .unwrap();
    assert_eq!(launcher::forget_namespace(&db.pool, NS).await.unwrap(), 1);
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM cairn.runs) + (SELECT count(*) FROM cairn.events)",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(left, 0);
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
