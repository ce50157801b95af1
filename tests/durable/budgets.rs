//! Spend budgets (issue 17): a run's budget covers its tree; a step that takes the tree past
//! it parks the run that spent, at that step boundary, until the budget is raised; a budget
//! below what was spent is refused; nothing is paid twice.

use std::time::Duration;

use cairn_engine::{EngineError, Wait};
use cairn_operator::lifecycle::Phase;
use cairn_tests::{EffectLog, TestDb};
use serde_json::json;

use super::*;

/// `run`'s effects, as `what@attempt`.
fn paid(log: &EffectLog, run: &str) -> Vec<String> {
    log.effects()
        .into_iter()
        .filter(|e| e.run == run)
        .map(|e| format!("{}@{}", e.what, e.attempt))
        .collect()
}

#[tokio::test]
async fn a_budget_crossed_by_a_child_parks_the_child_until_the_parent_budget_is_raised() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let input = json!({ "before": [0.25], "child": [0.5, 0.5, 0.5], "after": [0.25] });
    let id = db.create_run("budgeted", "spender", input).await;
    launcher::set_budget(&mut *db.conn().await, id, Some(1.0))
        .await
        .unwrap();
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    // The child's second step takes the tree to $1.25: the child parks right after it.
    let child_name = cairn_engine::names::child_run_name("budgeted", "spender", 1);
    let child = loop {
        let tree = cairn_engine::read::tree(&db.pool, id).await.unwrap();
        if let Some(child) = tree.into_iter().find(|r| r.name == child_name)
            && child.phase == Phase::Waiting
        {
            break child;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match child.wait() {
        Some(Wait::Budget {
            run,
            spent,
            limit,
            question,
        }) => {
            assert_eq!((run.as_str(), spent, limit), ("budgeted", 1.25, 1.0));
            let question = question.unwrap();
            assert!(
                question.contains("$1.25") && question.contains("$1.00"),
                "{question}"
            );
        }
        other => panic!("the child waits for {other:?}, not its parent's budget"),
    }
    assert_eq!(paid(&log, &child_name), ["pay:1@1", "pay:2@1"]);
    let parent = db.run(id).await;
    assert_eq!((parent.tree_usd, parent.budget_usd), (1.25, Some(1.0)));

    // Below what was spent: refused, saying both.
    match launcher::set_budget(&mut *db.conn().await, id, Some(1.2)).await {
        Err(EngineError::WrongState(message)) => assert!(
            message.contains("below what it has already spent") && message.contains("1.25"),
            "{message}"
        ),
        other => panic!("a budget below the spend was not refused: {other:?}"),
    }
    // Raised: the child goes on from where it stopped, and so does its parent.
    let woken = launcher::set_budget(&mut *db.conn().await, id, Some(3.0))
        .await
        .unwrap();
    assert_eq!(woken, 1);
    let run = supervisor.await.unwrap();
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(2.0)));
    assert_eq!(run.tree_usd, 2.0);
    assert_eq!(paid(&log, "budgeted"), ["pay:1@1", "pay:2@2"]);
    assert_eq!(
        paid(&log, &child_name),
        ["pay:1@1", "pay:2@1", "pay:3@2"],
        "each step paid once; the second execution started after the raise"
    );
}

#[tokio::test]
async fn a_run_past_its_own_budget_parks_and_without_a_budget_nothing_stops_it() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let steps = json!({ "before": [0.5, 0.5, 0.5] });
    let limited = db.create_run("limited", "spender", steps.clone()).await;
    let free = db.create_run("free", "spender", steps).await;
    launcher::set_budget(&mut *db.conn().await, limited, Some(0.75))
        .await
        .unwrap();
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let unlimited = db.supervise(&launcher_, free).await;
    assert_eq!(unlimited.phase, Phase::Succeeded);

    let supervisor = db.supervise_in_background(&launcher_, limited);
    let parked = db.wait_for_phase(limited, Phase::Waiting).await;
    assert!(
        matches!(parked.wait(), Some(Wait::Budget { ref run, .. }) if run == "limited"),
        "{:?}",
        parked.waiting_for
    );
    assert_eq!(paid(&log, "limited"), ["pay:1@1", "pay:2@1"]);
    // An attempt parked at its budget is not a crash.
    assert_eq!((parked.attempt, parked.crashes), (1, 0));
    // Lifting the budget (none) lets it go on too.
    launcher::set_budget(&mut *db.conn().await, limited, None)
        .await
        .unwrap();
    let run = supervisor.await.unwrap();
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(paid(&log, "limited"), ["pay:1@1", "pay:2@1", "pay:3@2"]);
}
