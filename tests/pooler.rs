//! Flow processes through PgBouncer in transaction mode (`CAIRN_DATABASE_POOLER=transaction`):
//! two server connections serve every flow process of a run tree, and each engine call runs
//! in a transaction of its own, so its statements never land on a server that lacks them.

use cairn_operator::lifecycle::Phase;
use cairn_tests::{NS, PgBouncer, TestDb};
use serde_json::json;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

#[tokio::test]
async fn flows_run_through_pgbouncer_in_transaction_mode_with_two_server_connections() {
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start(&db, 2);
    let log = db.log("effects");
    let mut launcher = db.launcher(FLOWS, &log, &[("CAIRN_DATABASE_POOLER", "transaction")]);
    launcher.database_url = bouncer.runner_url.clone();

    // Twenty children (eight processes at a time), a long run of steps, and a wait for an
    // event, all at once: far more flow processes than server connections.
    let fan = db.create_run("fan", "fanout", json!({ "n": 20 })).await;
    let looper = db
        .create_run("loop", "looper", json!({ "n": 300, "step_ms": 0 }))
        .await;
    let approval = db
        .create_run("approval", "approval", json!({ "event": "go" }))
        .await;
    let runs = [fan, looper, approval].map(|id| db.supervise_in_background(&launcher, id));
    db.wait_for_phase(approval, Phase::Waiting).await;
    cairn_engine::launcher::emit(
        &mut *db.conn().await,
        NS,
        "go",
        &json!({ "approved": true, "by": "pooler" }),
    )
    .await
    .expect("emit");

    for (run, handle) in ["fan", "loop", "approval"].iter().zip(runs) {
        let record = handle.await.expect("supervisor");
        assert_eq!(record.phase, Phase::Succeeded, "{run}: {:?}", record.error);
    }
    for i in 0..20 {
        assert_eq!(log.count(&format!("work:{i}")), 1, "{:?}", log.summary());
    }
    for i in 0..300 {
        assert_eq!(log.count(&format!("tick:{i}")), 1, "tick {i} ran once");
    }
    assert_eq!(log.count("step:after"), 1);
    assert_eq!(
        db.run(approval).await.result,
        Some(json!({ "got": { "approved": true, "by": "pooler" } }))
    );
}
