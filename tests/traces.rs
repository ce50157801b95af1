//! Traces (issue 17): each run is one OpenTelemetry trace, sent to a real OpenTelemetry
//! Collector over OTLP. The example agent, run by `cairn dev run` through a crash inside a step
//! and a wait for a person, gives one trace: its run span at the root, an attempt span per
//! process under it, each executed step under the attempt that completed it (with the GenAI
//! attributes and its cost), its waits under the run, its child runs under it too. A collector
//! that is down costs the spans, never the run; nor does a setting that cannot work, which
//! turns traces off saying why.

use std::time::Duration;

use cairn_engine::traces::{self, Exporter};
use cairn_engine::{launcher, runner};
use cairn_tests::cli::{cairn, finish, run, stderr, wait_waiting};
use cairn_tests::example_trace::{example_trace_problems, trace_of_run};
use cairn_tests::otelcol::{Collector, ReceivedSpan, render_tree};
use cairn_tests::{EffectLog, PATIENCE, TestDb, built_binary};
use serde_json::json;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

/// `cairn dev run` of the example as run `name` with `env`, approved once it waits for its
/// person; the output of `cairn dev run` once it finished.
async fn approved_example(
    db: &TestDb,
    log: &EffectLog,
    name: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let agent = built_binary("agent");
    let input = json!({ "topic": "tracing agents", "breadth": 2 }).to_string();
    let args = [
        "dev",
        "run",
        agent.to_str().unwrap(),
        "--flow",
        "research",
        "--name",
        name,
        "--input",
        &input,
        "--retry-backoff",
        "100ms",
    ];
    let mut command = cairn(db, log, &args);
    command
        .envs(env.iter().copied())
        .env("CAIRN_EXAMPLE_LLM_MS", "5");
    let follower = command.spawn().expect("cannot start cairn");
    wait_waiting(db, log, name, &format!("approve-{name}")).await;
    let approved = run(cairn(db, log, &["dev", "approve", name])).await;
    assert_eq!(approved.status.code(), Some(0), "{}", stderr(&approved));
    let output = finish(follower).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    output
}

/// The trace of run `name` (namespace `default`), once the run's span arrived.
async fn trace_of(collector: &Collector, name: &str) -> Vec<ReceivedSpan> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let spans = collector.spans();
        if let Some(trace) = trace_of_run(&spans, "default", name) {
            return trace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span of run {name} within {PATIENCE:?}; the collector has:\n{}",
            render_tree(&spans)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_example_is_one_trace_across_its_crash_and_its_wait() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let collector = Collector::start(&db.dir.join("otelcol"));
    let name = "traced";
    let ledger = db.dir.join("ledger.tsv");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("CAIRN_EXAMPLE_CRASH_AT", "draft".into()),
        ("CAIRN_EXAMPLE_LEDGER", ledger.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    approved_example(&db, &log, name, &env).await;

    let trace = trace_of(&collector, name).await;
    let shown = render_tree(&trace);
    println!("{shown}");
    let problems = example_trace_problems(&trace, name, 2);
    assert!(problems.is_empty(), "{problems:#?} in\n{shown}");
}

#[tokio::test]
async fn a_retried_run_sends_its_span_again_with_only_the_attempts_since() {
    let db = TestDb::new().await;
    let collector = Collector::start(&db.dir.join("otelcol"));
    let url = format!("{}/v1/traces", collector.endpoint());
    let exporter = Exporter::to_url(&url, "cairn-test").unwrap();
    let id = db.create_run("retried", "steps", json!({})).await;
    let export = || traces::export_finished(&db.pool, &exporter, None, 100);
    let mut conn = db.conn().await;
    let first = launcher::start_attempt(&mut conn, id)
        .await
        .unwrap()
        .unwrap();
    let trace = traces::run_trace(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(
        traces::run_trace(&mut conn, id).await.unwrap(),
        Some(trace),
        "a run keeps its trace"
    );
    runner::fail_run(&mut conn, &first, &json!({ "message": "the API was down" }))
        .await
        .unwrap();
    assert_eq!(export().await.unwrap(), 1);
    assert_eq!(export().await.unwrap(), 0, "exported once");

    launcher::retry_run(&mut conn, id).await.unwrap();
    let second = launcher::start_attempt(&mut conn, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(traces::run_trace(&mut conn, id).await.unwrap(), Some(trace));
    runner::complete_run(&mut conn, &second, &json!("done"))
        .await
        .unwrap();
    assert_eq!(export().await.unwrap(), 1, "finished again, exported again");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let spans = loop {
        let spans = collector.spans();
        if spans.len() >= 4 || tokio::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            let phase = s.attributes.get("cairn.run.phase");
            let outcome = s.attributes.get("cairn.attempt.outcome");
            (
                s.name.clone(),
                phase.or(outcome).map(|v| v.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("run steps", "\"failed\""),
        ("attempt 1", "\"failed\""),
        ("run steps", "\"succeeded\""),
        ("attempt 2", "\"completed\""),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(names, expected, "{}", render_tree(&spans));
    let failed = &spans[0];
    assert_eq!(failed.error.as_deref(), Some("the API was down"));
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == trace.trace_id.to_string())
    );
    assert_eq!(
        spans[0].span_id, spans[2].span_id,
        "the same run span, ended again"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_the_spans_not_the_run() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let output = approved_example(&db, &log, "untraced", &env).await;
    // Each process says so once, then sends nothing more; the launcher says so once too.
    let said = stderr(&output);
    let count = |text: &str| said.matches(text).count();
    assert!(count("no more spans from this process") >= 1, "{said}");
    assert_eq!(count("cannot send the spans of finished runs"), 1, "{said}");
}

#[tokio::test]
async fn a_trace_setting_that_cannot_work_turns_traces_off_saying_why_and_nothing_else() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let args = [
        "dev",
        "run",
        FLOWS,
        "--flow",
        "echo",
        "--input",
        r#"{"ok": true}"#,
    ];
    let mut command = cairn(&db, &log, &args);
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let said = stderr(&output);
    assert!(said.contains("runs are not traced"), "{said}");
    assert!(
        said.contains("OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or unset"),
        "{said}"
    );
}
