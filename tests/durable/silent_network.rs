//! A network gone silent between a flow process and Postgres (no reset, no answer): the
//! engine call in flight gives up after `CAIRN_DATABASE_CALL_TIMEOUT_MS`, the attempt ends as
//! crashed, and a relaunch carries the run on once the network answers again.

use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use cairn_tests::relay::Relay;
use serde_json::json;

use super::*;

#[tokio::test]
async fn a_silent_database_connection_becomes_a_crash_and_a_relaunch() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let relay = Relay::start(&db);
    let id = db
        .create_run("unheard", "looper", json!({ "n": 3, "step_ms": 500 }))
        .await;
    let mut launcher = db.launcher(FLOWS, &log, &[("CAIRN_DATABASE_CALL_TIMEOUT_MS", "1000")]);
    launcher.database_url = relay.url.clone();
    let supervisor = db.supervise_in_background(&launcher, id);

    // Silent while step tick:1 runs: its checkpoint gets no answer.
    log.wait_for("tick:1").await;
    relay.freeze();
    let deadline = tokio::time::Instant::now() + cairn_tests::PATIENCE;
    while outcomes(&db.attempts(id).await).first().map(String::as_str) != Some("crashed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempt 1 did not end while the network was silent: {:?}",
            db.attempts(id).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    relay.thaw();
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    let attempts = outcomes(&db.attempts(id).await);
    assert_eq!(attempts.first().map(String::as_str), Some("crashed"));
    assert_eq!(attempts.last().map(String::as_str), Some("completed"));
    let summary = log.summary();
    assert_eq!(summary.first().map(String::as_str), Some("tick:0@1"));
    assert!(
        summary.iter().any(|e| e.starts_with("tick:2@")),
        "the run went on past the silence: {summary:?}"
    );
}
