//! A Flow's concurrency limits on the real cluster (issue 19): 10 runs of one customer with
//! `maxPerKey: 2` never have more than 2 under way, start in creation order, survive an
//! operator restart mid-queue and all finish; another customer's run is not held up behind
//! them; a run whose input has no key says so; a Flow with half a limit is refused at apply.

use cairn_crds::{Flow, FlowRun};
use cairn_e2e::{Phase, Scenario};
use serde_json::json;

const RUNS: usize = 10;

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn ten_runs_of_one_customer_go_two_at_a_time_in_order_and_all_finish() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("concurrency").await?;
    let flow = |concurrency: serde_json::Value| {
        json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "billing" },
            "spec": { "image": sc.setup.flows_image.name, "flow": "sleeper", "concurrency": concurrency },
        })
    };
    let refused = sc
        .create::<Flow>(flow(json!({ "key": "input.customer" })))
        .await;
    let said = refused
        .map(|_| "accepted".to_owned())
        .unwrap_or_else(|e| format!("{e:#}"));
    sc.check(
        "a key without maxPerKey is refused at apply, saying why",
        said.contains("concurrency.key and concurrency.maxPerKey go together"),
        &said,
    );
    sc.create::<Flow>(flow(json!({ "key": "input.customer", "maxPerKey": 2 })))
        .await?;
    // Each in a second of its own: a FlowRun's creationTimestamp, the order runs are queued
    // in, counts whole seconds.
    for i in 0..RUNS {
        let input = json!({ "customer": "a", "ms": 1500 });
        cairn_e2e::flows::run_of(&sc, &format!("a-{i}"), "billing", input).await?;
        let second = unix_second();
        while unix_second() == second {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    cairn_e2e::flows::run_of(&sc, "b-0", "billing", json!({ "customer": "b", "ms": 1 })).await?;
    cairn_e2e::flows::run_of(&sc, "no-key", "billing", json!({ "ms": 1 })).await?;

    let held = sc
        .wait_run("a-9", "be held by the key's limit", 120, |s| {
            s.conditions.iter().any(|c| c.reason == "ConcurrencyLimit")
        })
        .await
        .map(|run| condition(&run, "ConcurrencyLimit"));
    let says = held.unwrap_or_else(|e| e);
    sc.check(
        "a held run says which limit and key hold it, and who runs",
        says.contains(r#"Flow "billing" allows 2 run(s) at a time per key "a""#)
            && says.contains("running: a-"),
        &says,
    );
    let other = sc.wait_phase("b-0", Phase::Succeeded, 180).await;
    sc.check(
        "another customer's run is not held behind the queue",
        other.is_ok(),
        other.err().unwrap_or_default(),
    );
    let no_key = sc
        .wait_run("no-key", "say its key cannot be computed", 120, |s| {
            s.conditions
                .iter()
                .any(|c| c.reason == "InvalidConcurrencyKey")
        })
        .await
        .map(|run| condition(&run, "InvalidConcurrencyKey"));
    let says = no_key.unwrap_or_else(|e| e);
    sc.check(
        "a run whose input lacks the key says so",
        says.contains("No such key: customer"),
        &says,
    );

    // The limits are the engine's: a new operator picks up the queue where the old one left it.
    let admitted =
        "SELECT count(*) FROM cairn.runs WHERE concurrency_key = 'a' AND admitted_at IS NOT NULL";
    let mut restarted = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !restarted && std::time::Instant::now() < deadline {
        restarted = sc.count(admitted).await? >= 3;
        if !restarted {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
    sc.operators[0].stop();
    sc.start_operator(cairn_e2e::operator::free_addr("127.0.0.1")?, &[])
        .await?;
    sc.check(
        "the operator restarted with the queue half done",
        restarted,
        "fewer than 3 admitted in 90 s",
    );

    let mut unfinished = Vec::new();
    for i in 0..RUNS {
        if let Err(e) = sc
            .wait_phase(&format!("a-{i}"), Phase::Succeeded, 300)
            .await
        {
            unfinished.push(e);
        }
    }
    sc.check(
        "all 10 runs of customer a finish",
        unfinished.is_empty(),
        unfinished.join("; "),
    );
    // From the engine's record, exact: how many held a place at each admission.
    let most = sc
        .count(
            "SELECT max((SELECT count(*) FROM cairn.runs o
                         WHERE o.concurrency_key = 'a' AND o.admitted_at <= r.admitted_at
                           AND (o.finished_at IS NULL OR o.finished_at > r.admitted_at)))
             FROM cairn.runs r WHERE r.concurrency_key = 'a'",
        )
        .await?;
    sc.check(
        "never more than 2 of customer a's runs under way",
        most == 2,
        most,
    );
    let pool = sc.pool().await?;
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM cairn.runs WHERE concurrency_key = 'a' ORDER BY admitted_at, name",
    )
    .fetch_all(&pool)
    .await?;
    let created: Vec<String> = (0..RUNS).map(|i| format!("a-{i}")).collect();
    sc.check(
        "they started in creation order",
        order == created,
        format!("{order:?}"),
    );
    let runs = sc
        .api::<FlowRun>()
        .list(&Default::default())
        .await?
        .items
        .len();
    sc.check("12 FlowRuns, none lost", runs == RUNS + 2, runs);
    sc.finish();
    Ok(())
}

/// The message of the run's condition with `reason`.
fn condition(run: &FlowRun, reason: &str) -> String {
    let conditions = run.status.iter().flat_map(|s| &s.conditions);
    conditions
        .filter(|c| c.reason == reason)
        .map(|c| c.message.clone())
        .next()
        .unwrap_or_default()
}

fn unix_second() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap_or_default().as_secs()
}
