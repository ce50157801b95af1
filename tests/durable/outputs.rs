//! Step outputs (issue 17): what each step returned is shown, a sensitive step's value is
//! stored sealed and shown nowhere, yet a replay after a kill opens it; the step whose failure
//! failed a run is named with its error.

use cairn_engine::checkpoint;
use cairn_operator::controller::api;
use cairn_operator::lifecycle::Phase;
use cairn_tests::{NS, TestDb, sigkill};
use serde_json::json;

use super::*;

const SECRET: &str = "sk-live-0123456789abcdef";

#[tokio::test]
async fn a_sensitive_value_is_sealed_hidden_everywhere_and_opened_for_replay() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "secretive",
            "secretive",
            json!({ "secret": SECRET, "hang": "before:use" }),
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let hung = log.wait_for("hang:before:use").await;
    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    // The second process opened the sealed credentials without running their step again.
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!((run.attempt, run.crashes), (2, 1));
    assert_eq!(log.count("credentials"), 1, "{:?}", log.summary());
    let result = run.result.unwrap();
    assert_eq!(
        result["used"],
        json!(format!("called with a key of {} characters", SECRET.len()))
    );
    // A plain value shaped like Cairn's sealed form comes back as it was.
    assert_eq!(
        result["tricky"],
        json!({ "$cairn": "sealed", "looks": "like ours" })
    );

    // The row holds ciphertext only.
    let stored = db.checkpoint(id, "credentials").await.unwrap();
    assert!(checkpoint::is_sealed(&stored), "{stored}");
    assert!(!stored.to_string().contains(SECRET), "{stored}");

    // The steps table: previews for plain steps, none for the sensitive one.
    let steps = db.steps(id).await;
    let by_key = |key: &str| steps.iter().find(|s| s.key == key).unwrap().clone();
    let credentials = by_key("credentials");
    assert!(credentials.sensitive && credentials.preview.is_none());
    let tricky = by_key("tricky");
    assert!(!tricky.sensitive);
    assert!(tricky.preview.as_deref().unwrap().contains("like ours"));
    assert_eq!(
        by_key("use").preview.as_deref(),
        Some(r#""called with a key of 24 characters""#)
    );

    // The read API (and so `inspect`, locally and on Kubernetes): the whole run and each step.
    let detail = api::detail(&db.pool, NS, "secretive").await.unwrap();
    assert!(!serde_json::to_string(&detail).unwrap().contains(SECRET));
    let hidden = api::step(&db.pool, NS, "secretive", "credentials")
        .await
        .unwrap();
    assert!(hidden.sensitive && hidden.output.is_none(), "{hidden:?}");
    let shown = api::step(&db.pool, NS, "secretive", "tricky")
        .await
        .unwrap();
    assert_eq!(
        shown.output,
        Some(json!({ "$cairn": "sealed", "looks": "like ours" }))
    );
    let missing = api::step(&db.pool, NS, "secretive", "nope")
        .await
        .unwrap_err();
    assert_eq!(missing.status.as_u16(), 404);
    assert!(missing.message.contains("no step \"nope\""), "{missing}");
}

#[tokio::test]
async fn without_the_right_key_a_replay_fails_saying_which_key_it_needs() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "lost-key",
            "secretive",
            json!({ "secret": SECRET, "configured": true }),
        )
        .await;
    let first = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(first.phase, Phase::Failed, "{:?}", first.result);
    // Retried with its configuration set, by a launcher whose master keys are others (the
    // old ones were lost): the sealed credentials cannot be opened, and the error says whose
    // key they need.
    launcher::retry_run(&mut *db.conn().await, id)
        .await
        .unwrap();
    let mut other = db.launcher(FLOWS, &log, &[("CAIRN_TEST_API_KEY", "set")]);
    other.step_keys = checkpoint::StepKeys::generate();
    let run = db.supervise(&other, id).await;
    assert_eq!(run.phase, Phase::Failed);
    let message = run.error_message().unwrap();
    let sealed_with = db.step_keys.for_namespace(NS).sealing_key_id();
    assert!(
        message.contains("\"credentials\"") && message.contains(&sealed_with),
        "{message}"
    );
    assert_eq!(log.count("credentials"), 1, "{:?}", log.summary());
}

#[tokio::test]
async fn the_step_whose_failure_failed_the_run_is_shown_with_its_error() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("unconfigured", "configured", json!(null))
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Failed);
    let steps = db.steps(id).await;
    let keys: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s.key.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(keys, [("prepare", "completed"), ("call", "failed")]);
    let failed = &steps[1];
    assert_eq!(failed.tries, Some(1));
    let error = failed.error.as_deref().unwrap();
    assert!(error.contains("CAIRN_TEST_API_KEY is not set"), "{error}");
    let step = api::step(&db.pool, NS, "unconfigured", "call")
        .await
        .unwrap();
    assert_eq!((step.status.as_str(), step.output), ("failed", None));
}
