//! The decisions of `kubectl cairn`, without I/O: FlowEvent names, payload checks, what a
//! FlowRun's status says, and when a wait is over.

use std::str::FromStr;

use cairn_crds::{FlowRun, FlowRunStatus, RETRY_ANNOTATION};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::Value;

use super::render::RunRow;
use crate::lifecycle::Phase;

/// The FlowEvent object name for an event: for the namespace, the event name itself when it
/// is a valid object name (so `kubectl apply` of `x` and `kubectl cairn emit x` meet on one
/// object); for one FlowRun, the event name and the start of the run's uid (so approving a
/// FlowRun created again under a reused name makes a new object). Otherwise a DNS-safe form
/// with a hash of the original, so distinct events never share an object.
pub fn flowevent_name(event: &str, flow_run: Option<&cairn_crds::FlowRunRef>) -> String {
    match flow_run {
        None => object_name(event),
        Some(run) => object_name(&format!("{event}-{}", run.uid.get(..8).unwrap_or(&run.uid))),
    }
}

fn object_name(event: &str) -> String {
    if is_dns_subdomain(event) {
        return event.to_owned();
    }
    let mut safe = String::with_capacity(event.len());
    for c in event.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_alphanumeric() || c == '.' {
            c
        } else {
            '-'
        };
        // No runs of separators.
        if matches!(c, '-' | '.') && safe.ends_with(['-', '.']) {
            continue;
        }
        safe.push(c);
    }
    let safe = safe.trim_matches(['-', '.']);
    let hash = format!(
        "{:08x}",
        cairn_engine::names::fnv1a(event.as_bytes()) as u32
    );
    // 253 characters at most; keep room for "-" and the hash.
    let keep = safe
        .char_indices()
        .nth(253 - 9)
        .map_or(safe, |(i, _)| &safe[..i]);
    let keep = keep.trim_end_matches(['-', '.']);
    if keep.is_empty() {
        format!("event-{hash}")
    } else {
        format!("{keep}-{hash}")
    }
}

/// An RFC 1123 subdomain as Kubernetes checks object names (`IsDNS1123Subdomain`: at most
/// 253 characters, dot-separated lowercase alphanumeric labels with inner dashes).
fn is_dns_subdomain(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(ok_char)
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.starts_with(alnum) && label.ends_with(alnum))
}

/// Checks a payload against the schema `run` waits with, as the engine will on delivery; the
/// error names every failing place (`(at /approved)`) and shows the schema.
pub fn check_payload(
    run: &str,
    event: &str,
    schema: Option<&Value>,
    payload: &Value,
) -> Result<(), String> {
    let Some(schema) = schema else {
        return Ok(());
    };
    cairn_engine::runner::check_payload(schema, payload).map_err(|problems| {
        format!(
            "the payload {payload} does not match the schema run \"{run}\" waits for event \"{event}\" with: {problems}\n  schema: {schema}\n  fix --data to match it (nothing was created)"
        )
    })
}

/// Kubernetes' time as chrono's.
pub fn to_utc(time: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(time.0.as_second(), time.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

pub fn phase(run: &FlowRun) -> Option<Phase> {
    run.status.as_ref()?.phase
}

/// The flow a FlowRun runs: its inline flow, or the Flow it refers to.
pub fn flow_of(run: &FlowRun) -> String {
    run.spec
        .flow
        .clone()
        .or_else(|| run.spec.flow_ref.clone())
        .unwrap_or_default()
}

/// What a FlowRun waits for, in words.
pub fn waiting_summary(status: &FlowRunStatus) -> String {
    if let Some(waiting) = &status.waiting_for {
        if let Some(event) = &waiting.event {
            return format!("event {event}");
        }
        if let Some(n) = waiting.children {
            return format!("{n} child run(s)");
        }
    }
    match (status.phase, &status.wake_at) {
        (Some(Phase::Sleeping), Some(at)) => {
            format!("timer {}", to_utc(at).format("%Y-%m-%d %H:%M:%SZ"))
        }
        (Some(Phase::Retrying), _) => "retry backoff".into(),
        _ => String::new(),
    }
}

/// A `runs` line from a FlowRun.
pub fn row_of(run: &FlowRun) -> RunRow {
    let status = run.status.clone().unwrap_or_default();
    RunRow {
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        flow: flow_of(run),
        phase: status.phase,
        execution: status.attempt,
        crashes: status.crashes,
        steps: status.steps_completed,
        usd: status.cost_usd.as_deref().and_then(|c| c.parse().ok()),
        waiting: waiting_summary(&status),
        created: run.metadata.creation_timestamp.as_ref().map(to_utc),
        parent: run.parent_name().map(str::to_owned),
    }
}

/// A retry was asked for (the annotation) that the operator has not acted on yet.
pub fn retry_pending(run: &FlowRun) -> bool {
    let asked = run.annotations().get(RETRY_ANNOTATION);
    let done = run.status.as_ref().and_then(|s| s.retried.as_ref());
    asked.is_some() && asked != done
}

/// "Running (attempt 2, 3 steps)", for progress and errors.
pub fn describe(run: &FlowRun) -> String {
    let Some(status) = &run.status else {
        return "not yet seen by the operator (no status)".into();
    };
    let phase = status
        .phase
        .map(|p| p.to_string())
        .unwrap_or_else(|| "Unknown".into());
    let mut details = Vec::new();
    if let Some(attempt) = status.attempt {
        details.push(format!("attempt {attempt}"));
    }
    if let Some(steps) = status.steps_completed {
        details.push(format!("{steps} steps"));
    }
    let waiting = waiting_summary(status);
    if !waiting.is_empty() {
        details.push(format!("waiting for {waiting}"));
    }
    if details.is_empty() {
        phase
    } else {
        format!("{phase} ({})", details.join(", "))
    }
}

/// What `wait --for` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Phase(Phase),
    /// Any final phase.
    Finished,
    /// Finished, or waiting for an answer from outside (an event or a raised budget): where an
    /// agent that started the run has something to do.
    Input,
}

impl FromStr for Until {
    type Err = String;
    fn from_str(s: &str) -> Result<Until, String> {
        if s.eq_ignore_ascii_case("finished") {
            return Ok(Until::Finished);
        }
        if s.eq_ignore_ascii_case("input") {
            return Ok(Until::Input);
        }
        s.parse::<Phase>().map(Until::Phase).map_err(|_| {
            format!("unknown phase {s:?} (expected finished, input, or one of: pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled)")
        })
    }
}

impl std::fmt::Display for Until {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Until::Phase(p) => write!(f, "{p}"),
            Until::Finished => f.write_str("finished"),
            Until::Input => f.write_str("finished or waiting for input"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Reached,
    NotYet,
    /// It will not get there: why.
    Never(String),
}

/// Whether `run` is where `wait --for` wants it (with `event`: waiting for that event).
pub fn verdict(run: &FlowRun, until: Until, event: Option<&str>) -> Verdict {
    let Some(phase) = phase(run) else {
        return Verdict::NotYet;
    };
    // A failed run about to be retried is not finished.
    let terminal = phase.is_terminal() && !retry_pending(run);
    let waits_for_event = |name: &str| {
        run.status
            .as_ref()
            .and_then(|s| s.waiting_for.as_ref())
            .and_then(|w| w.event.as_deref())
            == Some(name)
    };
    let waits_for_input = run
        .status
        .as_ref()
        .and_then(|s| s.waiting_for.as_ref())
        .is_some_and(|w| w.event.is_some() || w.budget.is_some());
    let reached = match until {
        Until::Finished => terminal,
        Until::Input => terminal || (phase == Phase::Waiting && waits_for_input),
        Until::Phase(target) => {
            phase == target && event.is_none_or(waits_for_event) && !retry_pending(run)
        }
    };
    if reached {
        Verdict::Reached
    } else if terminal {
        Verdict::Never(format!(
            "{} finished as {phase} and will never be {until}{}",
            run.name_any(),
            run.status
                .as_ref()
                .and_then(|s| s.error.as_deref())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ))
    } else {
        Verdict::NotYet
    }
}

/// Why a run cannot be approved now, when it does not wait for an event.
pub fn not_waiting_for_event(run: &FlowRun) -> String {
    let name = run.name_any();
    let over = run
        .status
        .as_ref()
        .and_then(|s| s.waiting_for.as_ref()?.budget.as_ref());
    if let Some(over) = over {
        return format!(
            "{name} is parked at the spend budget of {} (${} spent of ${}): raise it with `{} approve {name} --budget <USD>`",
            over.run,
            over.spent_usd,
            over.limit_usd,
            super::program()
        );
    }
    match phase(run) {
        None => format!(
            "{name} has no status yet: the operator has not picked it up (is it running, and does it watch namespace \"{}\"?)",
            run.namespace().unwrap_or_default()
        ),
        Some(p) if p.is_terminal() => {
            format!("{name} is not waiting for an event: it is {p}; there is nothing to approve")
        }
        Some(_) => format!(
            "{name} is not waiting for an event: it is {}; `{} wait {name} --for waiting` waits until it asks",
            describe(run),
            super::program()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::{FlowRunSpec, LABEL_PARENT, WaitingFor};
    use serde_json::json;

    #[test]
    fn valid_event_names_are_kept() {
        for name in ["approve-research-demo", "a", "ok-1", "v1.2.approve"] {
            assert_eq!(flowevent_name(name, None), name);
        }
    }

    #[test]
    fn other_event_names_become_dns_safe_and_distinct() {
        let a = flowevent_name("Approve_Research Demo!", None);
        assert!(a.starts_with("approve-research-demo-"), "{a}");
        assert!(is_dns_subdomain(&a), "{a}");
        let b = flowevent_name("approve_research_demo", None);
        assert!(b.starts_with("approve-research-demo-"), "{b}");
        assert_ne!(a, b, "different events, different objects");
        assert_eq!(a, flowevent_name("Approve_Research Demo!", None), "stable");
        let weird = flowevent_name("--__--", None);
        assert!(
            weird.starts_with("event-") && is_dns_subdomain(&weird),
            "{weird}"
        );
        let long = flowevent_name(&"X".repeat(400), None);
        assert!(long.len() <= 253 && is_dns_subdomain(&long), "{long}");
        let dots = flowevent_name("a..b", None);
        assert!(is_dns_subdomain(&dots), "{dots}");
    }

    #[test]
    fn an_approval_for_one_flowrun_is_its_own_object() {
        let run = |uid: &str| cairn_crds::FlowRunRef {
            name: "x".into(),
            uid: uid.into(),
        };
        let first = run("0b5d39cb-0268-4e0b-9a53-1c3a8f0e2d11");
        let again = run("f6720481-7aa4-4d0e-8d4f-93c1a4e8b0aa");
        let name = flowevent_name("approve-x", Some(&first));
        assert_eq!(name, "approve-x-0b5d39cb");
        assert_ne!(name, flowevent_name("approve-x", Some(&again)));
        assert_ne!(name, flowevent_name("approve-x", None));
        let long = flowevent_name(&"a".repeat(253), Some(&first));
        assert!(long.len() <= 253 && is_dns_subdomain(&long), "{long}");
        assert_ne!(long, flowevent_name(&"a".repeat(253), Some(&again)));
    }

    #[test]
    fn payloads_are_checked_against_the_schema_with_the_failing_path() {
        let schema = json!({
            "type": "object",
            "properties": { "approved": { "type": "boolean" }, "by": { "type": "string" } },
            "required": ["approved"],
        });
        assert!(check_payload("r", "e", Some(&schema), &json!({ "approved": true })).is_ok());
        assert!(check_payload("r", "e", None, &json!("anything")).is_ok());
        let err =
            check_payload("r", "ok-1", Some(&schema), &json!({ "approved": "yes" })).unwrap_err();
        assert!(
            err.contains(r#""yes" is not of type "boolean" (at /approved)"#)
                && err.contains("run \"r\"")
                && err.contains("event \"ok-1\"")
                && err.contains("schema:"),
            "{err}"
        );
        let err =
            check_payload("r", "e", Some(&json!({ "type": "boolean" })), &json!(null)).unwrap_err();
        assert!(err.contains("null is not of type \"boolean\""), "{err}");
    }

    fn flowrun(phase: Option<Phase>, event: Option<&str>) -> FlowRun {
        let mut run = FlowRun::new(
            "r",
            FlowRunSpec {
                flow_ref: Some("research".into()),
                ..Default::default()
            },
        );
        run.status = phase.map(|phase| FlowRunStatus {
            phase: Some(phase),
            attempt: Some(2),
            steps_completed: Some(3),
            waiting_for: event.map(|e| WaitingFor {
                event: Some(e.into()),
                ..Default::default()
            }),
            error: (phase == Phase::Failed).then(|| "boom".into()),
            ..Default::default()
        });
        run
    }

    #[test]
    fn wait_verdicts() {
        use Verdict::*;
        let waiting = flowrun(Some(Phase::Waiting), Some("approve-r"));
        assert_eq!(
            verdict(&waiting, Until::Phase(Phase::Waiting), None),
            Reached
        );
        assert_eq!(
            verdict(&waiting, Until::Phase(Phase::Waiting), Some("approve-r")),
            Reached
        );
        assert_eq!(
            verdict(&waiting, Until::Phase(Phase::Waiting), Some("other")),
            NotYet
        );
        assert_eq!(verdict(&waiting, Until::Finished, None), NotYet);
        assert_eq!(verdict(&flowrun(None, None), Until::Finished, None), NotYet);

        let failed = flowrun(Some(Phase::Failed), None);
        assert_eq!(verdict(&failed, Until::Finished, None), Reached);
        match verdict(&failed, Until::Phase(Phase::Succeeded), None) {
            Never(why) => assert!(
                why.contains("finished as Failed") && why.contains("boom"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // Asked to retry, not acted on yet: not finished, and may still succeed.
        let mut retrying = failed.clone();
        retrying
            .annotations_mut()
            .insert(RETRY_ANNOTATION.into(), "2030-01-01T00:00:00Z".into());
        assert!(retry_pending(&retrying));
        assert_eq!(verdict(&retrying, Until::Finished, None), NotYet);
        assert_eq!(
            verdict(&retrying, Until::Phase(Phase::Succeeded), None),
            NotYet
        );
        assert_eq!(
            verdict(&retrying, Until::Phase(Phase::Failed), None),
            NotYet
        );
        retrying.status.as_mut().unwrap().retried = Some("2030-01-01T00:00:00Z".into());
        assert!(!retry_pending(&retrying));

        // Input: finished, or waiting for an answer (not for children, not a wait just left).
        assert_eq!(verdict(&waiting, Until::Input, None), Reached);
        assert_eq!(verdict(&failed, Until::Input, None), Reached);
        assert_eq!(
            verdict(&flowrun(Some(Phase::Waiting), None), Until::Input, None),
            NotYet
        );
        let left = flowrun(Some(Phase::Pending), Some("approve-r"));
        assert_eq!(verdict(&left, Until::Input, None), NotYet);
    }

    #[test]
    fn until_parses_phases_and_finished() {
        assert_eq!("finished".parse::<Until>(), Ok(Until::Finished));
        assert_eq!("input".parse::<Until>(), Ok(Until::Input));
        assert_eq!("Waiting".parse::<Until>(), Ok(Until::Phase(Phase::Waiting)));
        assert!(
            "done"
                .parse::<Until>()
                .unwrap_err()
                .contains("expected finished")
        );
    }

    #[test]
    fn rows_and_descriptions_come_from_the_status() {
        let mut run = flowrun(Some(Phase::Waiting), Some("approve-r"));
        run.status.as_mut().unwrap().cost_usd = Some("0.012300".into());
        // A child made before the annotation: its label has the parent's (short) name.
        run.labels_mut()
            .insert(LABEL_PARENT.into(), "parent-run".into());
        assert_eq!(row_of(&run).parent.as_deref(), Some("parent-run"));
        // Since: the annotation has the full name, the label a shortened one.
        let long = "p".repeat(200);
        run.labels_mut()
            .insert(LABEL_PARENT.into(), cairn_crds::parent_label(&long));
        run.annotations_mut()
            .insert(cairn_crds::ANNOTATION_PARENT.into(), long.clone());
        assert_eq!(row_of(&run).parent.as_deref(), Some(long.as_str()));
        run.annotations_mut()
            .insert(cairn_crds::ANNOTATION_PARENT.into(), "parent-run".into());
        let row = row_of(&run);
        assert_eq!(row.flow, "research");
        assert_eq!(row.usd, Some(0.0123));
        assert_eq!(row.waiting, "event approve-r");
        assert_eq!(row.parent.as_deref(), Some("parent-run"));
        assert_eq!(
            describe(&run),
            "Waiting (attempt 2, 3 steps, waiting for event approve-r)"
        );
        let running = flowrun(Some(Phase::Running), None);
        assert!(
            not_waiting_for_event(&running).contains("is not waiting for an event: it is Running")
        );
        assert!(not_waiting_for_event(&flowrun(None, None)).contains("no status yet"));
    }
}
