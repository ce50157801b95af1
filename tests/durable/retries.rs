//! Retries: a step retried in-process, permanent errors, and crash retries with growing backoff up to max attempts.

use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use serde_json::json;

use super::*;

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
    // No checkpoint: only the failed step, shown with its error.
    let steps: Vec<(String, String)> = db
        .steps(id)
        .await
        .into_iter()
        .map(|s| (s.key, s.status))
        .collect();
    assert_eq!(steps, [("flaky".to_owned(), "failed".to_owned())]);
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
