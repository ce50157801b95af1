//! `cairn dev approve`, `delete` and `wait` through the real command line, against a real
//! Postgres: what they do, and their exit codes (0 done, 1 the operation failed or the run's
//! state does not allow it, 2 a mistake in what was asked), as `cairn --help` says;
//! `cairn dev run` stopped by Ctrl-C, and `logs` of what its processes printed.

use std::time::{Duration, Instant};

use cairn_operator::lifecycle::Phase;
use cairn_tests::cli::{cairn, finish, last_line, run, run_id, stderr, wait_waiting};
use cairn_tests::{EffectLog, TestDb};
use serde_json::json;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

/// `cairn dev run` of flow `approval` as run `name`, waiting for event `event`, in the background.
fn start_approval(db: &TestDb, log: &EffectLog, name: &str, event: &str) -> tokio::process::Child {
    let input = json!({ "event": event }).to_string();
    cairn(
        db,
        log,
        &[
            "dev", "run", FLOWS, "--flow", "approval", "--input", &input, "--name", name,
        ],
    )
    .spawn()
    .expect("cannot start cairn")
}

#[tokio::test]
async fn approve_answers_the_wait_checking_its_schema_and_refuses_what_cannot_be_approved() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let child = start_approval(&db, &log, "asks", "ok-2");
    wait_waiting(&db, &log, "asks", "ok-2").await;

    let bad = run(cairn(
        &db,
        &log,
        &[
            "dev",
            "approve",
            "asks",
            "--data",
            r#"{"approved":"yes","by":"x"}"#,
        ],
    ))
    .await;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a payload failing the schema: {}",
        stderr(&bad)
    );
    assert!(stderr(&bad).contains("is not of type"), "{}", stderr(&bad));

    let unknown = run(cairn(&db, &log, &["dev", "approve", "nobody"])).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("nobody"), "{}", stderr(&unknown));

    let good = run(cairn(
        &db,
        &log,
        &[
            "dev",
            "approve",
            "asks",
            "--data",
            r#"{"approved":true,"by":"x"}"#,
        ],
    ))
    .await;
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("asks: approved (event ok-2"),
        "{:?}",
        good
    );
    let output = finish(child).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        last_line(&output),
        json!({ "got": { "approved": true, "by": "x" } })
    );

    // Finished, it waits for nothing: the operation is refused (1), saying why.
    let again = run(cairn(&db, &log, &["dev", "approve", "asks"])).await;
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("waits for no event"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test]
async fn delete_refuses_an_unfinished_run_unless_forced() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let mut child = start_approval(&db, &log, "parked", "never-1");
    wait_waiting(&db, &log, "parked", "never-1").await;

    let refused = run(cairn(&db, &log, &["dev", "delete", "parked"])).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    let id = run_id(&db, "parked").await;
    assert_eq!(
        db.run(id).await.phase,
        Phase::Waiting,
        "refused: nothing changed"
    );

    let forced = run(cairn(&db, &log, &["dev", "delete", "parked", "--force"])).await;
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn.runs WHERE root_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the run and everything under it are gone");
    // Its supervisor sees the run gone and stops; whatever it says, it must not hang.
    let _ = child.start_kill();
    finish(child).await;

    let gone = run(cairn(&db, &log, &["dev", "delete", "parked"])).await;
    assert_eq!(gone.status.code(), Some(2), "{}", stderr(&gone));
}

#[tokio::test]
async fn wait_on_an_unknown_run_fails_at_once_unless_it_waits_for_its_creation() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    // `--for created`, like `kubectl wait --for=create`: until the run exists.
    let created = cairn(
        &db,
        &log,
        &[
            "dev",
            "wait",
            "later",
            "--for",
            "created",
            "--timeout",
            "60s",
        ],
    )
    .spawn()
    .expect("cannot start cairn");
    let later = run(cairn(
        &db,
        &log,
        &[
            "dev", "run", FLOWS, "--flow", "echo", "--input", "1", "--name", "later",
        ],
    ))
    .await;
    assert_eq!(later.status.code(), Some(0), "{}", stderr(&later));
    let created = finish(created).await;
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    let bad = run(cairn(&db, &log, &["dev", "wait", "later", "--for", "soon"])).await;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("or created"), "{}", stderr(&bad));

    let started = Instant::now();
    let output = run(cairn(
        &db,
        &log,
        &["dev", "wait", "no-such-run", "--timeout", "5m"],
    ))
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no-such-run"),
        "{}",
        stderr(&output)
    );
    // Not the five minutes of --timeout: the error comes as soon as the run is looked up.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_run_created_again_under_a_reused_name_waits_for_its_own_approval() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let approve = |data: &'static str| vec!["dev", "approve", "x", "--data", data];

    // The first run named x is approved (addressed to it), finishes and is deleted. An event
    // for the whole namespace under the same name is sent as well, before x is created again.
    let first = start_approval(&db, &log, "x", "approve-x");
    wait_waiting(&db, &log, "x", "approve-x").await;
    let approved = run(cairn(
        &db,
        &log,
        &approve(r#"{"approved":true,"by":"ann"}"#),
    ))
    .await;
    assert_eq!(approved.status.code(), Some(0), "{}", stderr(&approved));
    assert_eq!(finish(first).await.status.code(), Some(0));
    let broadcast = r#"{"approved":true,"by":"anyone"}"#;
    let emitted = run(cairn(
        &db,
        &log,
        &["dev", "emit", "approve-x", "--data", broadcast],
    ))
    .await;
    assert_eq!(emitted.status.code(), Some(0), "{}", stderr(&emitted));
    let deleted = run(cairn(&db, &log, &["dev", "delete", "x"])).await;
    assert_eq!(deleted.status.code(), Some(0), "{}", stderr(&deleted));

    // x again: neither earlier event answers it; it waits for its own approval.
    let second = start_approval(&db, &log, "x", "approve-x");
    wait_waiting(&db, &log, "x", "approve-x").await;
    let approved = run(cairn(
        &db,
        &log,
        &approve(r#"{"approved":false,"by":"bob"}"#),
    ))
    .await;
    assert_eq!(approved.status.code(), Some(0), "{}", stderr(&approved));
    let output = finish(second).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        last_line(&output),
        json!({ "got": { "approved": false, "by": "bob" } })
    );
}

#[tokio::test]
async fn an_attempt_claimed_by_a_cairn_dev_that_died_before_launching_is_not_a_crash() {
    // A `cairn dev run` claimed attempt 1 and died before starting the process; the run
    // allows one attempt only, so counting that as a crash would fail it.
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run_with("lost", "steps", json!({}), 1, 100).await;
    cairn_engine::launcher::start_attempt(&mut *db.conn().await, id)
        .await
        .unwrap()
        .expect("claimed");

    let resumed = run(cairn(
        &db,
        &log,
        &[
            "dev", "run", FLOWS, "--flow", "steps", "--input", "{}", "--name", "lost",
        ],
    ))
    .await;
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let record = db.run(id).await;
    assert_eq!(
        (record.phase, record.attempt, record.crashes),
        (Phase::Succeeded, 1, 0),
        "launched again under attempt 1, no crash counted"
    );
}

#[tokio::test]
async fn ctrl_c_lets_the_step_in_flight_finish_and_costs_no_crash() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let input = json!({ "n": 3, "step_ms": 1500 }).to_string();
    let args = [
        "dev", "run", FLOWS, "--flow", "looper", "--input", &input, "--name", "stopped",
    ];
    let child = cairn(&db, &log, &args).spawn().expect("cannot start cairn");
    log.wait_for("tick:0").await;
    cairn_tests::sigint(child.id().expect("cairn's pid"));
    let stopped = finish(child).await;
    assert_eq!(stopped.status.code(), Some(1), "{}", stderr(&stopped));
    assert!(
        stderr(&stopped).contains("finish their step in flight"),
        "{}",
        stderr(&stopped)
    );
    // The step in flight finished and was checkpointed; the run went back, with no crash.
    let id = run_id(&db, "stopped").await;
    let record = db.run(id).await;
    assert_eq!(
        (record.phase, record.crashes, record.steps),
        (Phase::Pending, 0, 1),
        "{}",
        stderr(&stopped)
    );

    // Carried on by name alone: no binary, flow or input repeated.
    let resumed = run(cairn(&db, &log, &["dev", "resume", "stopped"])).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert_eq!(
        log.summary(),
        ["tick:0@1", "tick:1@2", "tick:2@2"],
        "each step once: the one in flight at Ctrl-C finished in the first process"
    );

    // What each execution printed is kept: the first one's stop is in its log.
    let logs = run(cairn(&db, &log, &["dev", "logs", "stopped"])).await;
    assert_eq!(logs.status.code(), Some(0), "{}", stderr(&logs));
    let printed = String::from_utf8_lossy(&logs.stdout).into_owned();
    let first = printed.find("── execution 1").expect(&printed);
    let stop = printed.find("told to stop (SIGTERM)").expect(&printed);
    let second = printed.find("── execution 2").expect(&printed);
    assert!(first < stop && stop < second, "{printed}");
    let only = run(cairn(
        &db,
        &log,
        &["dev", "logs", "stopped", "--attempt", "2"],
    ))
    .await;
    let only = String::from_utf8_lossy(&only.stdout).into_owned();
    assert!(
        only.starts_with("── execution 2") && !only.contains("told to stop"),
        "{only}"
    );
    let unknown = run(cairn(&db, &log, &["dev", "logs", "nobody"])).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}

#[tokio::test]
async fn a_run_keeps_the_binary_it_started_with_and_a_rebuild_applies_to_new_runs() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    // A build of the flows where a user's build would be.
    let build = db.dir.join("my-flows");
    std::fs::copy(FLOWS, &build).expect("copy the test flows");
    let build = build.to_str().expect("a UTF-8 path");
    let input = json!({ "event": "go" }).to_string();
    let args = |name| {
        [
            "dev", "run", build, "--flow", "approval", "--input", &input, "--name", name,
        ]
    };
    let child = cairn(&db, &log, &args("old"))
        .spawn()
        .expect("cannot start cairn");
    wait_waiting(&db, &log, "old", "go").await;
    cairn_tests::sigint(child.id().expect("cairn's pid"));
    finish(child).await;

    // Rebuilt meanwhile, into something that no longer runs at all.
    std::fs::write(build, "#!/bin/sh\nexit 3\n").expect("rebuild");
    let approve = [
        "dev",
        "approve",
        "old",
        "--data",
        r#"{"approved":true,"by":"me"}"#,
    ];
    let approved = run(cairn(&db, &log, &approve)).await;
    assert_eq!(approved.status.code(), Some(0), "{}", stderr(&approved));
    let resumed = run(cairn(&db, &log, &args("old"))).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("with the binary it started with (sha256:"),
        "{}",
        stderr(&resumed)
    );

    // Its copy lives under the dev root it started from: elsewhere, resuming says so.
    let mut elsewhere = cairn(&db, &log, &["dev", "resume", "old"]);
    elsewhere.env("CAIRN_HOME", db.dir.join("another-home"));
    let elsewhere = run(elsewhere).await;
    assert_eq!(elsewhere.status.code(), Some(1), "{}", stderr(&elsewhere));
    assert!(
        stderr(&elsewhere).contains("is not in the binary store"),
        "{}",
        stderr(&elsewhere)
    );

    // A new run takes the rebuild, which is refused for what it is.
    let fresh = run(cairn(&db, &log, &args("new"))).await;
    assert_eq!(fresh.status.code(), Some(2), "{}", stderr(&fresh));
    assert!(
        stderr(&fresh).contains("did not describe its flows"),
        "{}",
        stderr(&fresh)
    );
}

#[tokio::test]
async fn retry_runs_a_failed_run_again_from_its_last_checkpoint() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let args = ["dev", "run", FLOWS, "--flow", "configured", "--name", "cfg"];
    let failed = run(cairn(&db, &log, &args)).await;
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("CAIRN_TEST_API_KEY is not set"),
        "{}",
        stderr(&failed)
    );

    // Still without what it lacks: it fails again, its first step not run again.
    let again = run(cairn(&db, &log, &["dev", "retry", "cfg"])).await;
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    // With it: it succeeds.
    let mut fixed = cairn(&db, &log, &["dev", "retry", "cfg"]);
    fixed.env("CAIRN_TEST_API_KEY", "k-123");
    let fixed = run(fixed).await;
    assert_eq!(fixed.status.code(), Some(0), "{}", stderr(&fixed));
    assert_eq!(last_line(&fixed), json!("k-123"));
    assert_eq!(
        log.summary(),
        ["prepare@1", "call@1", "call@2", "call@3"],
        "prepare checkpointed once; the failed call tried once per retry"
    );

    // What cannot be retried.
    let succeeded = run(cairn(&db, &log, &["dev", "retry", "cfg"])).await;
    assert_eq!(succeeded.status.code(), Some(1), "{}", stderr(&succeeded));
    assert!(
        stderr(&succeeded).contains("only a failed run can be retried"),
        "{}",
        stderr(&succeeded)
    );
    let unknown = run(cairn(&db, &log, &["dev", "retry", "nobody"])).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}

#[tokio::test]
async fn inspect_shows_what_steps_returned_but_never_a_sensitive_value() {
    const SECRET: &str = "sk-local-do-not-show-42";
    let db = TestDb::new().await;
    let log = db.log("effects");
    let input = json!({ "secret": SECRET }).to_string();
    let args = [
        "dev",
        "run",
        FLOWS,
        "--flow",
        "secretive",
        "--input",
        &input,
        "--name",
        "sec",
    ];
    let ran = run(cairn(&db, &log, &args)).await;
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    // The master keys were made on first use, readable by their owner only.
    let keys = db.dir.join("cairn-home/step-keys");
    let mode = std::fs::metadata(&keys).expect("step-keys").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let table = run(cairn(&db, &log, &["dev", "inspect", "sec"])).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    for expected in ["OUTPUT", "(sensitive)", "like ours", "called with a key of"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let step = run(cairn(
        &db,
        &log,
        &[
            "dev",
            "inspect",
            "sec",
            "--step",
            "credentials",
            "-o",
            "json",
        ],
    ))
    .await;
    assert_eq!(step.status.code(), Some(0), "{}", stderr(&step));
    let step: serde_json::Value = serde_json::from_slice(&step.stdout).unwrap();
    assert_eq!(
        (&step["sensitive"], &step["output"]),
        (&json!(true), &json!(null))
    );
    let whole = run(cairn(
        &db,
        &log,
        &["dev", "inspect", "sec", "--step", "tricky"],
    ))
    .await;
    let whole_text = String::from_utf8_lossy(&whole.stdout);
    assert!(
        whole_text.contains(r#""looks": "like ours""#),
        "{whole_text}"
    );
    let unknown = run(cairn(
        &db,
        &log,
        &["dev", "inspect", "sec", "--step", "nope"],
    ))
    .await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains(r#"no step "nope""#),
        "{}",
        stderr(&unknown)
    );

    // Nowhere: not in the table, the JSON detail, the run's output or its logs.
    let detail = run(cairn(&db, &log, &["dev", "inspect", "sec", "-o", "json"])).await;
    let logs = run(cairn(&db, &log, &["dev", "logs", "sec"])).await;
    for shown in [&table, &detail, &ran, &logs] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&shown.stdout),
            stderr(shown)
        );
        assert!(!all.contains(SECRET), "{all}");
    }
}

#[tokio::test]
async fn a_run_past_its_budget_waits_for_approve_budget_which_refuses_less_than_was_spent() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let input = json!({ "before": [0.25, 0.25, 0.25] }).to_string();
    let args = [
        "dev", "run", FLOWS, "--flow", "spender", "--input", &input, "--name", "thrifty",
        "--budget", "0.3",
    ];
    let child = cairn(&db, &log, &args).spawn().expect("cannot start cairn");
    run_id(&db, "thrifty").await;
    let waited = run(cairn(
        &db,
        &log,
        &[
            "dev",
            "wait",
            "thrifty",
            "--for",
            "waiting",
            "--timeout",
            "60s",
        ],
    ))
    .await;
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));

    let shown = run(cairn(&db, &log, &["dev", "inspect", "thrifty"])).await;
    let text = String::from_utf8_lossy(&shown.stdout);
    for expected in [
        "Budget:    $0.5000 of $0.3000 spent",
        "Over budget: $0.5000 spent of $0.3000 (run thrifty)",
        "cairn dev approve thrifty --budget <USD above $0.5000>",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let event = run(cairn(&db, &log, &["dev", "approve", "thrifty"])).await;
    assert_eq!(event.status.code(), Some(1), "{}", stderr(&event));
    assert!(stderr(&event).contains("--budget"), "{}", stderr(&event));
    let less = run(cairn(
        &db,
        &log,
        &["dev", "approve", "thrifty", "--budget", "0.4"],
    ))
    .await;
    assert_eq!(less.status.code(), Some(2), "{}", stderr(&less));
    assert!(
        stderr(&less).contains("below what it has already spent ($0.5000)"),
        "{}",
        stderr(&less)
    );
    let raised = run(cairn(
        &db,
        &log,
        &["dev", "approve", "thrifty", "--budget", "1"],
    ))
    .await;
    assert_eq!(raised.status.code(), Some(0), "{}", stderr(&raised));
    let finished = finish(child).await;
    assert_eq!(finished.status.code(), Some(0), "{}", stderr(&finished));
    assert_eq!(last_line(&finished), json!(0.75));
    assert_eq!(log.summary(), ["pay:1@1", "pay:2@1", "pay:3@2"]);
}

#[tokio::test]
async fn fork_runs_the_steps_from_its_point_on_the_sources_binary_and_shows_what_it_reused() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let ran = run(cairn(
        &db,
        &log,
        &[
            "dev", "run", FLOWS, "--flow", "steps", "--name", "s1", "--input", "{}",
        ],
    ))
    .await;
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    let args = [
        "dev",
        "fork",
        "s1",
        "--from-step",
        "c",
        "--set-output",
        r#"b="b, edited""#,
        "--name",
        "s2",
    ];
    let forked = run(cairn(&db, &log, &args)).await;
    assert_eq!(forked.status.code(), Some(0), "{}", stderr(&forked));
    assert_eq!(last_line(&forked), json!(["a done", "b, edited", "c done"]));
    assert!(
        stderr(&forked).contains("1 step(s) reused"),
        "{}",
        stderr(&forked)
    );
    assert_eq!(
        log.summary(),
        ["step:a@1", "step:b@1", "step:c@1", "step:c@1"],
        "the fork ran c alone"
    );
    let shown = run(cairn(&db, &log, &["dev", "inspect", "s2"])).await;
    let text = String::from_utf8_lossy(&shown.stdout);
    for expected in [
        "Forked:    from s1 at step c (1 step(s) reused, 1 set)",
        "reused",
        "set",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let unknown = run(cairn(
        &db,
        &log,
        &["dev", "fork", "s1", "--from-step", "nope"],
    ))
    .await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains(r#"has no step "nope""#),
        "{}",
        stderr(&unknown)
    );
    let taken = run(cairn(
        &db,
        &log,
        &["dev", "fork", "s1", "--from-step", "b", "--name", "s2"],
    ))
    .await;
    assert_eq!(taken.status.code(), Some(2), "{}", stderr(&taken));
}
