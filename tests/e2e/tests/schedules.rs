//! FlowSchedules on the real cluster (issue 19), with schedules every few seconds (cron's
//! seconds field): Forbid skips slots while a run is under way (the engine's record shows no
//! two runs overlapping); Replace cancels the run under way; `kubectl cairn schedule trigger`
//! starts one now; suspend stops new runs; a bad expression or time zone is a condition; and a
//! leader change starts no slot twice.

use std::time::Duration;

use cairn_crds::{FlowRun, FlowSchedule};
use cairn_e2e::{Phase, Scenario};
use k8s_openapi::api::core::v1::Event;
use serde_json::json;

use crate::kubectl_cairn::{Plugin, expect};

fn schedule(name: &str, cron: &str, policy: &str, ms: u64) -> serde_json::Value {
    json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowSchedule", "metadata": { "name": name },
        "spec": {
            "schedule": cron, "concurrencyPolicy": policy,
            "successfulRunsHistoryLimit": 20, "failedRunsHistoryLimit": 20,
            "template": { "spec": { "flowRef": "tick", "input": { "ms": ms } } },
        },
    })
}

/// The FlowRuns of schedule `name` (by the label it gives them).
async fn runs_of(sc: &Scenario, name: &str) -> Vec<FlowRun> {
    let selector = format!("{}={name}", cairn_crds::LABEL_SCHEDULE);
    let params = kube::api::ListParams::default().labels(&selector);
    let list = sc.api::<FlowRun>().list(&params).await;
    list.map(|l| l.items).unwrap_or_default()
}

fn phase(run: &FlowRun) -> Option<Phase> {
    run.status.as_ref().and_then(|s| s.phase)
}

/// Waits (up to `secs`) until schedule `name`'s runs satisfy `cond`.
async fn until_runs(
    sc: &Scenario,
    name: &str,
    secs: u64,
    cond: impl Fn(&[FlowRun]) -> bool,
) -> Result<Vec<FlowRun>, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let runs = runs_of(sc, name).await;
        if cond(&runs) {
            return Ok(runs);
        }
        if std::time::Instant::now() > deadline {
            let seen: Vec<String> = runs
                .iter()
                .map(|r| {
                    format!(
                        "{}:{:?}",
                        r.metadata.name.clone().unwrap_or_default(),
                        phase(r)
                    )
                })
                .collect();
            return Err(format!("after {secs}s: {seen:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn reasons_on(sc: &Scenario, name: &str) -> Vec<String> {
    let selector = format!("involvedObject.name={name},involvedObject.kind=FlowSchedule");
    let events = sc
        .api::<Event>()
        .list(&kube::api::ListParams::default().fields(&selector))
        .await;
    events
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}

async fn suspend(sc: &Scenario, name: &str) -> anyhow::Result<()> {
    sc.patch::<FlowSchedule>(name, json!({ "spec": { "suspend": true } }))
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn schedules_forbid_replace_trigger_suspend_and_survive_a_leader_change() -> anyhow::Result<()>
{
    let mut sc = Scenario::with_operator("schedules").await?;
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "tick" },
        "spec": { "image": sc.setup.flows_image.name, "flow": "sleeper" },
    }))
    .await?;
    // Bad schedules are conditions, not crash loops.
    let mut bad = schedule("bad-cron", "61 * * * *", "Allow", 1);
    sc.create::<FlowSchedule>(bad.clone()).await?;
    bad["metadata"]["name"] = json!("bad-zone");
    bad["spec"]["schedule"] = json!("@hourly");
    bad["spec"]["timeZone"] = json!("Mars/Base");
    sc.create::<FlowSchedule>(bad).await?;
    for (name, reason) in [
        ("bad-cron", "InvalidSchedule"),
        ("bad-zone", "UnknownTimeZone"),
    ] {
        let said = sc
            .wait_for::<FlowSchedule>(name, "say what is wrong", 60, move |fs| {
                fs.status
                    .iter()
                    .flat_map(|s| &s.conditions)
                    .any(|c| c.reason == reason && c.status == "False")
            })
            .await;
        sc.check(
            &format!("{name}: condition {reason}"),
            said.is_ok(),
            said.err().unwrap_or_default(),
        );
    }

    sc.create::<FlowSchedule>(schedule("forbid", "*/2 * * * * *", "Forbid", 4000))
        .await?;
    sc.create::<FlowSchedule>(schedule("replace", "*/3 * * * * *", "Replace", 600_000))
        .await?;
    let forbid = until_runs(&sc, "forbid", 180, |runs| {
        runs.iter()
            .filter(|r| phase(r) == Some(Phase::Succeeded))
            .count()
            >= 2
    })
    .await;
    sc.check(
        "Forbid: runs succeed one after another",
        forbid.is_ok(),
        forbid.as_ref().err().cloned().unwrap_or_default(),
    );
    let replaced = until_runs(&sc, "replace", 180, |runs| {
        runs.iter().any(|r| phase(r) == Some(Phase::Cancelled))
    })
    .await;
    sc.check(
        "Replace: a new slot cancels the run under way",
        replaced.is_ok(),
        replaced.err().unwrap_or_default(),
    );
    suspend(&sc, "replace").await?;

    // Triggered by hand, whatever the policy.
    let plugin = Plugin { sc: &sc };
    let triggered = plugin.kc(&["schedule", "trigger", "forbid"]);
    expect(
        &mut sc,
        "kubectl cairn schedule trigger starts a run now",
        &triggered,
        0,
        &["forbid: triggered", "forbid-manual-"],
    );
    let manual = until_runs(&sc, "forbid", 60, |runs| {
        runs.iter().any(|r| {
            r.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("forbid-manual-"))
        })
    })
    .await;
    sc.check(
        "the triggered run exists",
        manual.is_ok(),
        manual.err().unwrap_or_default(),
    );
    suspend(&sc, "forbid").await?;
    let suspended = sc
        .wait_for::<FlowSchedule>("forbid", "show Suspended", 60, |fs| {
            fs.status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.reason == "Suspended")
        })
        .await;
    sc.check(
        "a suspended schedule says so",
        suspended.is_ok(),
        suspended.err().unwrap_or_default(),
    );
    let reasons = reasons_on(&sc, "forbid").await;
    sc.check(
        "Forbid said it skipped slots",
        reasons.iter().any(|r| r == "Skipped"),
        format!("{reasons:?}"),
    );
    // From the engine's record, exact: no two scheduled runs of Forbid were under way at once.
    let overlaps = sc
        .count(
            "SELECT count(*) FROM cairn.runs a JOIN cairn.runs b ON a.name < b.name
             WHERE a.name ~ '^forbid-[0-9]+$' AND b.name ~ '^forbid-[0-9]+$'
               AND a.created_at < coalesce(b.finished_at, now())
               AND b.created_at < coalesce(a.finished_at, now())",
        )
        .await?;
    sc.check("Forbid: no two runs overlapped", overlaps == 0, overlaps);

    // A leader change: the standby takes over the schedule; no slot starts twice.
    sc.create::<FlowSchedule>(schedule("steady", "*/2 * * * * *", "Allow", 1))
        .await?;
    let before = until_runs(&sc, "steady", 120, |runs| runs.len() >= 2).await;
    sc.check(
        "Allow: runs start every slot",
        before.is_ok(),
        before.err().unwrap_or_default(),
    );
    let standby = sc
        .start_operator(cairn_e2e::operator::free_addr("127.0.0.1")?, &[])
        .await?;
    sc.operators[0].kill();
    let took_over = sc.operators[standby]
        .wait_log("holding the Lease", Duration::from_secs(90))
        .await;
    sc.check(
        "the standby takes the Lease",
        took_over.is_ok(),
        format!("{took_over:?}"),
    );
    let made_before = runs_of(&sc, "steady").await.len();
    let after = until_runs(&sc, "steady", 120, |runs| runs.len() >= made_before + 2).await;
    sc.check(
        "the new leader goes on with the schedule",
        after.is_ok(),
        after.err().unwrap_or_default(),
    );
    suspend(&sc, "steady").await?;
    let twice = sc
        .count(
            "SELECT count(*) FROM cairn.attempts a JOIN cairn.runs r ON r.id = a.run_id
                WHERE r.name ~ '^steady-' AND a.attempt > 1",
        )
        .await?;
    sc.check("no slot's run was started twice", twice == 0, twice);
    sc.finish();
    Ok(())
}
