//! Spend budgets on the real cluster (issue 17): a Flow's budget covers each run's tree; a
//! child whose step takes the tree past it parks (its FlowRun Waiting, BudgetExceeded) with no
//! pod; `kubectl cairn approve CHILD --budget` raises the parent's FlowRun budget, refusing less
//! than was spent, and both go on; `kubectl get fr` shows cost and budget.

use cairn_crds::FlowRun;
use cairn_e2e::{Phase, Scenario};
use serde_json::json;

use crate::kubectl_cairn::{Plugin, expect};

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_child_past_its_parents_budget_waits_for_the_raise_then_both_finish() -> anyhow::Result<()>
{
    let mut sc = Scenario::with_operator("budgets").await?;
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "spender" },
        "spec": { "image": sc.setup.flows_image.name, "flow": "spender", "budget": { "usd": "1" } },
    }))
    .await?;
    let input = json!({ "before": [0.25], "child": [0.5, 0.5, 0.5], "after": [0.25] });
    cairn_e2e::flows::run_of(&sc, "budgeted", "spender", input).await?;
    let child = "budgeted-spender-1".to_owned(); // names::child_run_name, short enough to read

    // The child's second step takes the tree to $1.25 of $1.
    let parked = sc
        .wait_run(&child, "park at its parent's budget", 240, |s| {
            s.waiting_for.as_ref().is_some_and(|w| w.budget.is_some())
        })
        .await;
    let status = parked.map(|r| r.status.unwrap_or_default());
    let seen = status
        .as_ref()
        .map(|s| {
            let budget = s
                .waiting_for
                .as_ref()
                .and_then(|w| w.budget.clone())
                .unwrap_or_default();
            let reason = s
                .conditions
                .first()
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            format!(
                "{}:{}:{}:{reason}",
                budget.run, budget.spent_usd, budget.limit_usd
            )
        })
        .unwrap_or_else(|e| e.clone());
    sc.check(
        "the child parks at its parent's budget, saying what was spent",
        seen == "budgeted:1.250000:1.000000:BudgetExceeded",
        &seen,
    );
    // The parent's status follows when the child stops running.
    let parent = sc
        .wait_run("budgeted", "show its tree's cost", 60, |s| {
            s.cost_usd.as_deref() == Some("1.250000")
        })
        .await
        .ok()
        .and_then(|r| r.status)
        .unwrap_or_default();
    let costs = format!("{:?}:{:?}", parent.cost_usd, parent.budget_usd);
    sc.check(
        "the parent's status shows its tree's cost and its budget",
        costs == r#"Some("1.250000"):Some("1.00")"#,
        &costs,
    );
    let (_, table, _) = sc.kubectl_env(&["get", "fr", "-n", &sc.ns], None, &[]);
    sc.check(
        "kubectl get fr shows cost and budget",
        table.contains("COST") && table.contains("BUDGET") && table.contains("1.00"),
        &table,
    );

    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);
    let got = kc(&sc, &["approve", &child, "--budget", "1.2"]);
    expect(
        &mut sc,
        "approve --budget below the spend: exit 2, saying both",
        &got,
        2,
        &["below what it has already spent ($1.2500)"],
    );
    let got = kc(
        &sc,
        &[
            "approve",
            &child,
            "--budget",
            "3",
            "--wait",
            "--timeout",
            "240s",
        ],
    );
    expect(
        &mut sc,
        "approve CHILD --budget raises the parent's budget and the child goes on",
        &got,
        0,
        &["budgeted: budget set to $3.00", "goes on"],
    );
    let done = sc.wait_phase("budgeted", Phase::Succeeded, 240).await;
    let outcome = done
        .map(|r: FlowRun| {
            let s = r.status.unwrap_or_default();
            let budget = r.spec.budget.map(|b| b.usd);
            let result = s.result.and_then(|r| r.as_f64());
            format!("{result:?}:{:?}:{:?}:{budget:?}", s.cost_usd, s.budget_usd)
        })
        .unwrap_or_else(|e| e);
    sc.check(
        "the parent succeeds, its tree having spent $2 of the $3 set in its spec",
        outcome == r#"Some(2.0):Some("2.000000"):Some("3.00"):Some("3")"#,
        &outcome,
    );
    // The operator's counters: every execution's spend, counted once as it ended.
    let metrics = sc.operators[0].get("/metrics").await.unwrap_or_default();
    let series = format!("namespace=\"{}\",flow=\"spender\"", sc.ns);
    let value = |metric: &str| -> Option<f64> {
        let prefix = format!("{metric}{{{series}");
        metrics.lines().find_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            rest.rsplit(' ').next()?.parse().ok()
        })
    };
    let counted = (
        value("cairn_spend_usd_total"),
        metrics
            .lines()
            .filter(|l| l.starts_with("cairn_tokens_total") && l.contains(&series))
            .count(),
    );
    sc.check(
        "the operator counts the tree's spend and tokens by namespace and flow",
        counted == (Some(2.0), 2),
        format!("{counted:?} in:\n{metrics}"),
    );
    sc.finish();
    Ok(())
}
