//! Issue 2 through the real `cairn` command line (`target/<profile>/cairn`): exit codes, the
//! result on the last stdout line, clear errors, and crash recovery under `cairn dev run`; the
//! operator's read API against a real database; `kubectl cairn` where no cluster is needed.

use std::process::{Output, Stdio};
use std::time::Duration;

use cairn_operator::lifecycle::Phase;
use cairn_tests::cli::{cairn, finish, last_line, run, run_id, stderr};
use cairn_tests::{TestDb, cairn_cli, sigkill};
use serde_json::{Value, json};
use tokio::process::Command;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

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
    // `cairn dev wait`, like `kubectl wait`, needs the run to exist.
    let id = run_id(&db, "asks").await;
    let waited = run(cairn(
        &db,
        &log,
        &[
            "dev",
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
        &[
            "dev",
            "emit",
            "ok-1",
            "--data",
            r#"{"approved":"yes","by":"x"}"#,
        ],
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
        &[
            "dev",
            "emit",
            "ok-1",
            "--data",
            r#"{"approved":true,"by":"x"}"#,
        ],
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
    cairn_engine::schema::connect(&db.url).await.unwrap();
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
    assert_eq!(
        output.status.code(),
        Some(1),
        "an operation that failed, not a mistake in what was asked"
    );
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

// ---- the operator's read API, against a real database ------------------------------------------

/// The read API's list query (its HTTP, authorization and filter parsing are tested in
/// `controller::api` and on the cluster), as the JSON it serves.
async fn read_list(
    pool: &sqlx::PgPool,
    phases: &[cairn_operator::lifecycle::Phase],
    flow: Option<&str>,
) -> Value {
    let runs = cairn_operator::controller::api::list(pool, "default", phases, flow)
        .await
        .unwrap();
    serde_json::to_value(cairn_engine::read_api::RunList { runs }).unwrap()
}

/// The read API's run query: the JSON document, or the error's status and message.
async fn read_detail(
    pool: &sqlx::PgPool,
    namespace: &str,
    name: &str,
) -> Result<Value, (u16, String)> {
    cairn_operator::controller::api::detail(pool, namespace, name)
        .await
        .map(|d| serde_json::to_value(d).unwrap())
        .map_err(|e| (e.status.as_u16(), e.message))
}

fn names(list: &Value) -> Vec<&str> {
    list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_read_api_queries_give_runs_their_steps_and_wait_and_clear_errors() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let done = run(cairn(&db, &log, &dev_run("echo", r#"{"x":1}"#, "done-api"))).await;
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    let child = cairn(
        &db,
        &log,
        &dev_run("approval", r#"{"event":"ok-api"}"#, "asks-api"),
    )
    .spawn()
    .expect("cannot start cairn");
    run_id(&db, "asks-api").await;
    let waited = run(cairn(
        &db,
        &log,
        &[
            "dev",
            "wait",
            "asks-api",
            "--for",
            "waiting",
            "--event",
            "ok-api",
            "--timeout",
            "60s",
        ],
    ))
    .await;
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));

    let all = read_list(&db.pool, &[], None).await;
    assert_eq!(names(&all), ["done-api", "asks-api"]);
    let waiting = read_list(&db.pool, &[cairn_operator::lifecycle::Phase::Waiting], None).await;
    assert_eq!(names(&waiting), ["asks-api"]);
    assert_eq!(waiting["runs"][0]["waiting_for_event"], "ok-api");
    assert_eq!(waiting["runs"][0]["phase"], "Waiting");
    let by_flow = read_list(&db.pool, &[], Some("echo")).await;
    assert_eq!(names(&by_flow), ["done-api"]);
    assert_eq!(by_flow["runs"][0]["steps"], 1);

    let detail = read_detail(&db.pool, "default", "asks-api").await.unwrap();
    assert_eq!(detail["run"]["phase"], "Waiting");
    assert_eq!(detail["wait"]["kind"], "event");
    assert_eq!(detail["wait"]["event"], "ok-api");
    assert_eq!(detail["wait"]["question"], "Approve?");
    assert_eq!(
        detail["wait"]["schema"]["properties"]["approved"]["type"], "boolean",
        "{detail}"
    );
    let steps: Vec<(&str, &str)> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps[0], ("before", "completed"), "{detail}");
    assert_eq!(steps.last().unwrap().1, "waiting", "{detail}");
    assert_eq!(detail["attempts"][0]["outcome"], "suspended", "{detail}");
    assert_eq!(detail["totals"]["steps"], 1);
    assert_eq!(detail["children"], json!([]));

    // `cairn dev inspect -o json` prints the same document.
    let inspected = run(cairn(
        &db,
        &log,
        &["dev", "inspect", "asks-api", "-o", "json"],
    ))
    .await;
    assert_eq!(inspected.status.code(), Some(0), "{}", stderr(&inspected));
    let local: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(local["run"], detail["run"]);
    assert_eq!(local["wait"], detail["wait"]);
    let table = run(cairn(&db, &log, &["dev", "inspect", "asks-api"])).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("Question:  Approve?") && text.contains("cairn dev emit ok-api"),
        "{text}"
    );

    let (status, message) = read_detail(&db.pool, "default", "nope").await.unwrap_err();
    assert_eq!(status, 404);
    assert!(message.contains(r#"run "nope" not found"#), "{message}");
    // By id, but in another namespace: not found either.
    let id = run_id(&db, "asks-api").await;
    let by_id = read_detail(&db.pool, "default", &id.to_string()).await;
    assert!(by_id.is_ok(), "a run can be named by its id: {by_id:?}");
    let (status, message) = read_detail(&db.pool, "other", &id.to_string())
        .await
        .unwrap_err();
    assert_eq!(status, 404, "{message}");

    let emitted = run(cairn(
        &db,
        &log,
        &[
            "dev",
            "emit",
            "ok-api",
            "--data",
            r#"{"approved":true,"by":"t"}"#,
        ],
    ))
    .await;
    assert_eq!(emitted.status.code(), Some(0), "{}", stderr(&emitted));
    let output = finish(child).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

// ---- `kubectl cairn` where no cluster is needed ---------------------------------------------

/// The `cairn` binary installed as the kubectl plugin `kubectl-cairn` (a symlink), with a
/// kubeconfig of one context whose API server does not exist.
struct Plugin {
    dir: std::path::PathBuf,
}

impl Plugin {
    fn new() -> Plugin {
        let dir = std::env::temp_dir().join(format!(
            "cairn-plugin-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(cairn_cli(), dir.join("kubectl-cairn")).unwrap();
        std::fs::write(
            dir.join("kubeconfig"),
            "apiVersion: v1\nkind: Config\n\
             clusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
             users: [{name: u, user: {token: t}}]\n\
             contexts: [{name: only, context: {cluster: c, user: u, namespace: team}}]\n\
             current-context: only\n",
        )
        .unwrap();
        Plugin { dir }
    }

    async fn run(&self, kubeconfig: &str, args: &[&str]) -> Output {
        let mut command = Command::new(self.dir.join("kubectl-cairn"));
        command
            .args(args)
            .env("KUBECONFIG", self.dir.join(kubeconfig))
            .env("HOME", &self.dir)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("CAIRN_API_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        run(command).await
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn kubectl_cairn_is_the_same_binary_and_says_kubectl_cairn() {
    let plugin = Plugin::new();
    let help = plugin.run("kubeconfig", &["--help"]).await;
    assert_eq!(help.status.code(), Some(0), "{}", stderr(&help));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: kubectl cairn"), "{text}");
    for command in [
        "runs", "inspect", "approve", "emit", "cancel", "retry", "logs", "wait", "dev",
    ] {
        assert!(
            text.contains(&format!("\n  {command} ")),
            "{command}: {text}"
        );
    }
}

#[tokio::test]
async fn kubectl_cairn_errors_say_what_is_wrong_with_exit_codes() {
    let plugin = Plugin::new();

    // No cluster configured at all: 1, and how to point at one.
    let none = plugin.run("missing-kubeconfig", &["runs"]).await;
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    let err = stderr(&none);
    assert!(
        err.contains("no Kubernetes cluster to talk to") && err.contains("KUBECONFIG"),
        "{err}"
    );

    // A context that does not exist: 2, naming the ones that do.
    let wrong = plugin
        .run("kubeconfig", &["runs", "--context", "nope"])
        .await;
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    let err = stderr(&wrong);
    assert!(
        err.contains(r#"cannot use kube context "nope""#) && err.contains("contexts: only"),
        "{err}"
    );

    // The API server is down: 1, saying so.
    let down = plugin.run("kubeconfig", &["inspect", "some-run"]).await;
    assert_eq!(down.status.code(), Some(1), "{}", stderr(&down));
    let err = stderr(&down);
    assert!(
        err.contains("the Kubernetes API server is unreachable") && err.contains("refused"),
        "{err}"
    );

    // Bad input is refused before anything is sent: 2.
    let bad_json = plugin
        .run("kubeconfig", &["approve", "some-run", "--data", "{nope"])
        .await;
    assert_eq!(bad_json.status.code(), Some(2), "{}", stderr(&bad_json));
    assert!(
        stderr(&bad_json).contains("--data is not valid JSON"),
        "{}",
        stderr(&bad_json)
    );
    let bad_phase = plugin.run("kubeconfig", &["runs", "--phase", "done"]).await;
    assert_eq!(bad_phase.status.code(), Some(2), "{}", stderr(&bad_phase));
    assert!(
        stderr(&bad_phase).contains("unknown phase"),
        "{}",
        stderr(&bad_phase)
    );
    let bad_until = plugin
        .run(
            "kubeconfig",
            &["wait", "r", "--for", "sometime", "--timeout", "1s"],
        )
        .await;
    assert_eq!(bad_until.status.code(), Some(2), "{}", stderr(&bad_until));
}
