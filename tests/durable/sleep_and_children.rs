//! Durable sleeps (suspending, or in-process when short) and fan-out of children joined in order.

use cairn_engine::read;
use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use serde_json::json;

use super::*;

// ---- 5. Durable sleep --------------------------------------------------------------------------

#[tokio::test]
async fn a_durable_sleep_suspends_the_process_and_wakes_no_earlier_than_its_deadline() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher = db.launcher(FLOWS, &log, &[(cairn::env::INLINE_SLEEP_MAX_MS, "0")]);
    let id = db.create_run("nap", "sleeper", json!({ "ms": 2000 })).await;
    let supervisor = db.supervise_in_background(&launcher, id);

    let sleeping = db.wait_for_phase(id, Phase::Sleeping).await;
    assert!(sleeping.wake_at.is_some());
    assert_eq!(outcomes(&db.attempts(id).await), ["suspended"]);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.attempt, 2, "the sleep ended the first process");
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["suspended", "completed"]);
    assert_eq!(attempts[0].detail.as_deref(), Some("sleeping"));
    let nap = db
        .steps(id)
        .await
        .into_iter()
        .find(|s| s.key == "sleep:nap")
        .expect("the sleep is checkpointed");
    // nap.started_at: when the flow first reached the sleep (database clock).
    let slept = ms(attempts[1].started_at - nap.started_at);
    assert!(
        (2000..15_000).contains(&slept),
        "the flow went on {slept} ms after it started sleeping"
    );
    assert_eq!(log.summary(), ["step:before@1", "step:after@2"]);
}

#[tokio::test]
async fn a_short_sleep_stays_in_process() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("doze", "sleeper", json!({ "ms": 300 })).await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.attempt, 1, "no suspension");
    let nap = db
        .steps(id)
        .await
        .into_iter()
        .find(|s| s.key == "sleep:nap")
        .expect("the sleep is checkpointed");
    assert!(nap.duration_ms >= 300.0, "slept {} ms", nap.duration_ms);
    assert_eq!(log.summary(), ["step:before@1", "step:after@1"]);
}

// ---- 6. Fan-out ------------------------------------------------------------------------------

#[tokio::test]
async fn fan_out_of_twenty_children_joins_all_results_in_order() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db.create_run("fan", "fanout", json!({ "n": 20 })).await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    let expected: Vec<u64> = (0..20).map(|i| i * i).collect();
    assert_eq!(run.result, Some(json!(expected)));
    for i in 0..20 {
        assert_eq!(
            log.count(&format!("work:{i}")),
            1,
            "child {i}: {:?}",
            log.summary()
        );
    }
    assert_eq!(log.effects().len(), 20);
    let tree = read::tree(&db.pool, id).await.unwrap();
    assert_eq!(tree.len(), 21, "the root and its 20 children");
    for child in tree.iter().filter(|r| r.id != id) {
        assert_eq!(child.parent_id, Some(id));
        assert_eq!(child.phase, Phase::Succeeded, "{}", child.name);
        assert_eq!(child.attempt, 1, "{} ran once", child.name);
    }
}
