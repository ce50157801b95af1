//! Issue 2 through the real `cairn` command line (`target/<profile>/cairn`): exit codes, the
//! result on the last stdout line, clear errors, and crash recovery under `cairn dev run`.

use std::process::{Output, Stdio};
use std::time::Duration;

use cairn_operator::lifecycle::Phase;
use cairn_tests::{EffectLog, PATIENCE, TestDb, cairn_cli, sigkill};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

/// `cairn <args>` against the test's database, its flows logging to `log`.
fn cairn(db: &TestDb, log: &EffectLog, args: &[&str]) -> Command {
    let mut command = Command::new(cairn_cli());
    command
        .args(args)
        .env("CAIRN_DATABASE_URL", &db.url)
        .env("CAIRN_TEST_LOG", &log.path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn finish(child: Child) -> Output {
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("cairn did not exit within {PATIENCE:?}"))
        .expect("wait for cairn")
}

async fn run(mut command: Command) -> Output {
    finish(command.spawn().expect("cannot start cairn")).await
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The last stdout line, as JSON.
fn last_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "cairn printed nothing on stdout; stderr:\n{}",
            stderr(output)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last stdout line {line:?}: {e}"))
}

fn dev_run<'a>(flow: &'a str, input: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "dev",
        "run",
        FLOWS,
        "--flow",
        flow,
        "--input",
        input,
        "--name",
        name,
        "--retry-backoff",
        "100ms",
    ]
}

#[tokio::test]
async fn dev_run_prints_the_result_and_exits_zero() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let output = run(cairn(&db, &log, &dev_run("echo", r#"{"x":1}"#, "hello"))).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(last_line(&output), json!({ "echo": { "x": 1 } }));
    assert_eq!(log.summary(), ["step:echo@1"]);
}

#[tokio::test]
async fn dev_run_with_the_same_name_resumes_without_running_steps_again() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let args = dev_run("echo", r#"{"x":2}"#, "again");
    let first = run(cairn(&db, &log, &args)).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let second = run(cairn(&db, &log, &args)).await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("resuming run again"),
        "{}",
        stderr(&second)
    );
    assert_eq!(last_line(&second), last_line(&first));
    assert_eq!(log.summary(), ["step:echo@1"], "the step ran once in all");

    // Same name, other input: refused with the engine's explanation.
    let conflict = run(cairn(&db, &log, &dev_run("echo", r#"{"x":3}"#, "again"))).await;
    assert_eq!(conflict.status.code(), Some(2));
    assert!(
        stderr(&conflict).contains("already exists")
            && stderr(&conflict).contains("different input"),
        "{}",
        stderr(&conflict)
    );
}

#[tokio::test]
async fn dev_run_recovers_from_a_sigkill_inside_a_step() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let child = cairn(
        &db,
        &log,
        &dev_run("steps", r#"{"hang":"inside:b"}"#, "killed"),
    )
    .spawn()
    .expect("cannot start cairn");
    let hung = log.wait_for("hang:inside:b").await;
    sigkill(hung.pid);
    let output = finish(child).await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(last_line(&output), json!(["a done", "b done", "c done"]));
    assert_eq!(log.count("step:a"), 1, "{:?}", log.summary());
    assert_eq!(log.count("step:b"), 2, "{:?}", log.summary());
    assert_eq!(log.count("step:c"), 1, "{:?}", log.summary());
    assert!(
        stderr(&output).contains("SIGKILL"),
        "the crash is reported: {}",
        stderr(&output)
    );
}

#[tokio::test]
async fn dev_run_of_a_failing_run_exits_non_zero_with_the_error_json() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let output = run(cairn(
        &db,
        &log,
        &dev_run("typed", r#"{"topic":5,"count":1}"#, "bad"),
    ))
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let error = last_line(&output);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("topic") && message.contains("expected a string"),
        "{error}"
    );
    assert!(log.effects().is_empty());
}

#[tokio::test]
async fn emit_wakes_a_waiting_dev_run_and_refuses_a_payload_failing_its_schema() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let child = cairn(
        &db,
        &log,
        &dev_run("approval", r#"{"event":"ok-1"}"#, "asks"),
    )
    .spawn()
    .expect("cannot start cairn");
    // `cairn wait`, like `kubectl wait`, needs the run to exist.
    let id = run_id(&db, "asks").await;
    let waited = run(cairn(
        &db,
        &log,
        &[
            "wait",
            "asks",
            "--for",
            "waiting",
            "--event",
            "ok-1",
            "--timeout",
            "60s",
        ],
    ))
    .await;
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));

    let refused = run(cairn(
        &db,
        &log,
        &["emit", "ok-1", "--data", r#"{"approved":"yes","by":"x"}"#],
    ))
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains(r#""yes" is not of type "boolean""#),
        "{}",
        stderr(&refused)
    );
    assert_eq!(db.run(id).await.phase, Phase::Waiting);

    let accepted = run(cairn(
        &db,
        &log,
        &["emit", "ok-1", "--data", r#"{"approved":true,"by":"x"}"#],
    ))
    .await;
    assert_eq!(accepted.status.code(), Some(0), "{}", stderr(&accepted));
    assert!(
        String::from_utf8_lossy(&accepted.stdout).contains("1 run(s) woken"),
        "{:?}",
        accepted
    );
    let output = finish(child).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        last_line(&output),
        json!({ "got": { "approved": true, "by": "x" } })
    );
}

/// The id of the run named `name`, once it exists.
async fn run_id(db: &TestDb, name: &str) -> uuid::Uuid {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(run) = cairn_operator::store::find(&db.pool, cairn_tests::NS, name).await {
            return run.id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {name} was not created within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- clear errors --------------------------------------------------------------------------

#[tokio::test]
async fn dev_run_of_an_unknown_flow_names_the_registered_ones() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let output = run(cairn(&db, &log, &dev_run("nope", "null", "unknown"))).await;
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains(r#"flow "nope" is not registered"#) && err.contains("echo"),
        "{err}"
    );
    cairn_operator::store::connect(&db.url).await.unwrap();
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn.runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0, "no run is created for an unknown flow");
}

#[tokio::test]
async fn dev_run_of_a_missing_binary_says_so() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let missing = db.dir.join("no-such-binary");
    let missing = missing.to_str().unwrap();
    let output = run(cairn(
        &db,
        &log,
        &["dev", "run", missing, "--flow", "echo", "--name", "missing"],
    ))
    .await;
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains(missing) && err.contains("not found"), "{err}");
}

#[tokio::test]
async fn dev_run_with_invalid_input_json_says_so() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let output = run(cairn(&db, &log, &dev_run("echo", "{not json", "invalid"))).await;
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("--input is not valid JSON"), "{err}");
}

#[tokio::test]
async fn a_database_down_at_start_gives_a_clear_error() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let mut command = cairn(&db, &log, &dev_run("echo", "null", "down"));
    command.env("CAIRN_DATABASE_URL", "postgres://nobody@127.0.0.1:1/x");
    let started = std::time::Instant::now();
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("cannot connect to the database at postgres://nobody@127.0.0.1:1/x")
            && err.contains("CAIRN_DATABASE_URL"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("refused"), "the cause is not named: {err}");
    // Generous: a refused connection is known at once; it must not sit out a pool timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to give up on a refused connection",
        started.elapsed()
    );
}
