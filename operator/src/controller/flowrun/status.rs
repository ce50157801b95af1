//! Stage "build status" (pure): the status a FlowRun shows, from the engine's record, its pods
//! and what this reconcile did; or, for a run that cannot run as written, the reason. The
//! status stays small: history lives in the engine.

use cairn_crds::{BudgetWait, FlowRun, FlowRunStatus, WaitingFor};
use cairn_engine::launcher::{Held, HeldBy};
use cairn_engine::read::RunRecord;
use cairn_engine::{Phase, Wait};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use super::resolve::Invalid;
use crate::controller::pod;

/// Results larger than this stay in the database only (status must stay small).
const MAX_STATUS_RESULT_BYTES: usize = 4096;

pub fn invalid_status(run: &FlowRun, invalid: &Invalid) -> FlowRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    status.phase = Some(status.phase.unwrap_or(Phase::Pending));
    status.error = Some(invalid.message.clone());
    status.observed_generation = run.meta().generation;
    status.conditions = vec![condition(
        run,
        "Ready",
        false,
        invalid.reason,
        &invalid.message,
    )];
    status
}

/// The status shown while reconciling the FlowRun keeps failing: what it showed, with the
/// condition `Reconciled` False saying why (`reason`: the error's category). The next status
/// built by a reconcile that succeeds has no such condition.
pub fn failing_status(run: &FlowRun, reason: &str, message: &str) -> FlowRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    let failing = condition(run, RECONCILED, false, reason, message);
    status.conditions.retain(|c| c.type_ != RECONCILED);
    status.conditions.push(failing);
    status
}

/// The condition a persistent reconcile error shows as.
pub const RECONCILED: &str = "Reconciled";

/// The status the FlowRun should show, from the engine's record and the pods.
pub fn build_status(
    run: &FlowRun,
    record: &RunRecord,
    pods: &[Pod],
    pinned: Option<String>,
    retried: Option<String>,
    held: Option<&Held>,
) -> FlowRunStatus {
    let waiting_for = record.wait().map(|wait| match wait {
        Wait::Event {
            event,
            question,
            schema,
            deadline,
        } => WaitingFor {
            event: Some(event),
            question,
            schema,
            deadline: deadline.map(to_time),
            ..WaitingFor::default()
        },
        Wait::Children { unfinished, .. } => WaitingFor {
            children: unfinished.map(|n| n as i32),
            ..WaitingFor::default()
        },
        Wait::Budget {
            run,
            spent,
            limit,
            question,
        } => WaitingFor {
            question,
            budget: Some(BudgetWait {
                run,
                spent_usd: format!("{spent:.6}"),
                limit_usd: format!("{limit:.6}"),
            }),
            ..WaitingFor::default()
        },
        Wait::Sleep { .. } | Wait::Retry { .. } => WaitingFor::default(),
    });
    let result = record.result.clone().filter(|r| {
        serde_json::to_string(r)
            .map(|s| s.len() <= MAX_STATUS_RESULT_BYTES)
            .unwrap_or(false)
    });
    let current_pod = pods
        .iter()
        .filter(|p| pod::attempt_of(p) == Some(record.attempt))
        .find_map(|p| p.metadata.name.clone());
    let (ready, reason, message) = match record.phase {
        Phase::Succeeded => (true, "Succeeded", "the flow completed".to_owned()),
        Phase::Failed => (
            false,
            "Failed",
            record.error_message().unwrap_or("failed").to_owned(),
        ),
        Phase::Cancelled => (false, "Cancelled", "the run was cancelled".to_owned()),
        Phase::Waiting => match record.wait() {
            Some(Wait::Budget { run, limit, .. }) => (
                false,
                "BudgetExceeded",
                format!(
                    "past the budget of {run} (${limit:.2}); raise it to go on (no pod runs meanwhile)"
                ),
            ),
            _ => (
                false,
                "Waiting",
                "waiting; no pod runs meanwhile".to_owned(),
            ),
        },
        Phase::Sleeping => (
            false,
            "Sleeping",
            "sleeping; no pod runs meanwhile".to_owned(),
        ),
        Phase::Retrying => (false, "Retrying", "relaunching after a crash".to_owned()),
        Phase::Running => (
            false,
            "Running",
            format!("attempt {} is running", record.attempt),
        ),
        Phase::Pending => match held {
            Some(Held {
                by: HeldBy::Budget,
                why,
            }) => (false, "WaitingForSlot", why.clone()),
            Some(Held {
                by: HeldBy::Concurrency,
                why,
            }) => (false, "ConcurrencyLimit", why.clone()),
            None => (false, "Pending", "about to launch".to_owned()),
        },
    };
    FlowRunStatus {
        phase: Some(record.phase),
        run_id: Some(record.id.to_string()),
        attempt: Some(record.attempt),
        crashes: Some(record.crashes),
        pod: current_pod.or_else(|| run.status.as_ref().and_then(|s| s.pod.clone())),
        image_digest: pinned,
        waiting_for,
        wake_at: record.wake_at.map(to_time),
        steps_completed: Some(record.steps),
        result,
        error: record.error_message().map(str::to_owned),
        cost_usd: Some(format!("{:.6}", record.tree_usd)),
        budget_usd: record.budget_usd.map(|usd| format!("{usd:.2}")),
        started_at: Some(to_time(record.created_at)),
        finished_at: record.finished_at.map(to_time),
        retried,
        observed_generation: run.meta().generation,
        conditions: vec![condition(run, "Ready", ready, reason, &message)],
    }
}

fn condition(run: &FlowRun, type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    // Keep the transition time while the condition does not change, as conditions should.
    let previous = run
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.reason == reason && c.status == if ok { "True" } else { "False" });
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: run.meta().generation,
        last_transition_time: previous
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| to_time(chrono::Utc::now())),
    }
}

/// In whole seconds, as the API server keeps it: a status built here then equals the one
/// read back, so it is not written again.
fn to_time(at: chrono::DateTime<chrono::Utc>) -> Time {
    let seconds = k8s_openapi::jiff::Timestamp::from_second(at.timestamp());
    Time(seconds.unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::flowrun::fixtures::{flowrun, pod, record};
    use serde_json::json;

    fn reason(status: &FlowRunStatus) -> (&str, &str) {
        let ready = &status.conditions[0];
        (ready.reason.as_str(), ready.message.as_str())
    }

    #[test]
    fn a_parked_run_shows_what_it_waits_for_and_that_no_pod_runs() {
        let mut waiting = record(Phase::Waiting, 1);
        waiting.waiting_for = Some(json!({
            "event": "approve", "question": "Ship it?", "schema": { "type": "boolean" }
        }));
        let pods = [pod(&waiting, 1, json!({ "phase": "Succeeded" }))];
        let status = build_status(&flowrun(json!({})), &waiting, &pods, None, None, None);
        let wait = status.waiting_for.as_ref().expect("waitingFor");
        assert_eq!(wait.event.as_deref(), Some("approve"));
        assert_eq!(wait.question.as_deref(), Some("Ship it?"));
        assert_eq!(status.phase, Some(Phase::Waiting));
        assert_eq!(status.pod.as_deref(), Some("run-a1"));
        assert_eq!(
            reason(&status),
            ("Waiting", "waiting; no pod runs meanwhile")
        );
        assert_eq!(status.run_id, Some(waiting.id.to_string()));
    }

    #[test]
    fn a_run_held_back_by_a_limit_says_which_and_why() {
        let pending = record(Phase::Pending, 0);
        let held = |by, why: &str| Held {
            by,
            why: why.into(),
        };
        let why = "50 flow pods run already (--max-running)";
        let budget = held(HeldBy::Budget, why);
        let status = build_status(
            &flowrun(json!({})),
            &pending,
            &[],
            None,
            None,
            Some(&budget),
        );
        assert_eq!(reason(&status), ("WaitingForSlot", why));
        let why = "Flow \"billing\" allows 2 run(s) at a time per key \"a\"";
        let key = held(HeldBy::Concurrency, why);
        let status = build_status(&flowrun(json!({})), &pending, &[], None, None, Some(&key));
        assert_eq!(reason(&status), ("ConcurrencyLimit", why));
        let status = build_status(&flowrun(json!({})), &pending, &[], None, None, None);
        assert_eq!(reason(&status).0, "Pending");
    }

    #[test]
    fn a_large_result_stays_in_the_database_and_a_failure_says_why() {
        let mut done = record(Phase::Succeeded, 1);
        done.result = Some(json!("x".repeat(MAX_STATUS_RESULT_BYTES)));
        let status = build_status(&flowrun(json!({})), &done, &[], None, None, None);
        assert_eq!(status.result, None);
        assert!(status.finished_at.is_some());
        assert!(status.conditions[0].status == "True");
        let mut failed = record(Phase::Failed, 5);
        failed.crashes = 3;
        failed.error = Some(json!({ "message": "no more attempts: out of memory" }));
        let status = build_status(&flowrun(json!({})), &failed, &[], None, None, None);
        // Five executions (two of them after waits), three of which crashed.
        assert_eq!((status.attempt, status.crashes), (Some(5), Some(3)));
        assert_eq!(
            reason(&status),
            ("Failed", "no more attempts: out of memory")
        );
        assert_eq!(
            status.error.as_deref(),
            Some("no more attempts: out of memory")
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_it_changes() {
        let running = record(Phase::Running, 1);
        let first = build_status(&flowrun(json!({})), &running, &[], None, None, None);
        let previous = serde_json::to_value(&first).unwrap();
        let again = build_status(&flowrun(previous.clone()), &running, &[], None, None, None);
        assert_eq!(
            again.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        // Pod and digest carry over from the status when no pod is seen.
        let mut shown = previous;
        shown["pod"] = json!("run-a1");
        let kept = build_status(&flowrun(shown), &running, &[], None, None, None);
        assert_eq!(kept.pod.as_deref(), Some("run-a1"));
    }

    #[test]
    fn a_persistent_reconcile_error_shows_as_a_condition_until_a_reconcile_succeeds() {
        let running = record(Phase::Running, 1);
        let shown = build_status(&flowrun(json!({})), &running, &[], None, None, None);
        let run = flowrun(serde_json::to_value(&shown).unwrap());
        let failing = failing_status(&run, "Forbidden", "act: pods is forbidden");
        let types: Vec<&str> = failing
            .conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["Ready", RECONCILED]);
        assert_eq!(failing.conditions[1].reason, "Forbidden");
        // Failing again, differently: still one such condition, saying the latest.
        let run = flowrun(serde_json::to_value(&failing).unwrap());
        let again = failing_status(&run, "Conflict", "act: conflict");
        assert_eq!(again.conditions.len(), 2);
        assert_eq!(again.conditions[1].reason, "Conflict");
        // A reconcile that succeeds writes the status without it.
        let run = flowrun(serde_json::to_value(&again).unwrap());
        let healed = build_status(&run, &running, &[], None, None, None);
        assert!(healed.conditions.iter().all(|c| c.type_ != RECONCILED));
    }
}
