//! Fencing and least privilege: every write of a superseded attempt is refused, a superseded process exits without running anything, and a flow process can touch only its own run.

use cairn_engine::launcher;
use cairn_engine::runner;
use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use serde_json::json;

use super::*;

// ---- 2. Fencing ------------------------------------------------------------------------------

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
        include_earlier: false,
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

#[tokio::test]
async fn an_attempt_whose_process_never_connected_is_reissued_and_its_old_token_opens_nothing() {
    // A launcher claimed attempt 1 and died before starting its process.
    let db = TestDb::new().await;
    let id = db.create_run("lost-launch", "steps", json!({})).await;
    let mut conn = db.conn().await;
    let lost = claimed(&mut conn, id, 1).await;
    let again = launcher::reissue(&mut conn, id, 1)
        .await
        .unwrap()
        .expect("never connected: reissued");
    assert_eq!(again.number, 1, "under the same number");
    assert_ne!(again.token, lost.token, "with a fresh token");
    assert_fenced(
        "a handshake with the old token",
        runner::handshake(&mut conn, &lost, "test").await,
    );
    assert!(matches!(
        runner::handshake(&mut conn, &again, "test").await,
        Ok(runner::Handshake::Served)
    ));
    // Connected now: its process started, so losing it is a crash, not a reissue.
    assert!(launcher::reissue(&mut conn, id, 1).await.unwrap().is_none());
    let record = db.run(id).await;
    assert_eq!((record.attempt, record.crashes), (1, 0));
}
