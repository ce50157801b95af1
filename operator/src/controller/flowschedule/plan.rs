//! Stage "plan" (pure): from a FlowSchedule, its parsed schedule, its runs under way and the
//! time, what to do now — which slots start (by name: a slot's run is named by its nominal
//! time, so it starts once whatever restarts or leader changes come between), which runs the
//! Replace policy cancels, what was skipped or missed, and when to look again.

use std::time::Duration;

use cairn_crds::{ConcurrencyPolicy, FlowSchedule, TRIGGER_ANNOTATION};
use jiff::Timestamp;
use kube::ResourceExt;

use crate::schedule::{Schedule, jitter, run_name};

/// A run to start: its name, and the slot it is for (`None`: triggered by hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub name: String,
    pub slot: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub start: Vec<Start>,
    /// Runs under way that the Replace policy cancels.
    pub cancel: Vec<String>,
    /// Slots passed but not started: skipped by Forbid or Replace (only the latest starts), or
    /// missed (past the starting deadline or the catch-up limit).
    pub skipped: usize,
    pub missed: usize,
    pub last_schedule_time: Option<Timestamp>,
    pub next_schedule_time: Option<Timestamp>,
    /// When to look again (`None`: when something changes).
    pub look_again: Option<Timestamp>,
    pub suspended_at: Option<Timestamp>,
    pub last_trigger: Option<String>,
}

/// `newest_started`: the latest slot among the schedule's runs (their annotation), which a
/// status not yet seen since they were made may lack.
pub fn plan(
    fs: &FlowSchedule,
    schedule: &Schedule,
    active: &[String],
    newest_started: Option<Timestamp>,
    now: Timestamp,
) -> Plan {
    let status = fs.status.clone().unwrap_or_default();
    let name = fs.name_any();
    let recorded = status.last_schedule_time.map(|t| t.0);
    let mut plan = Plan {
        last_schedule_time: recorded.max(newest_started),
        last_trigger: status.last_trigger.clone(),
        ..Plan::default()
    };
    // By hand: once per annotation value, whatever the policy (as `kubectl create job --from`).
    let asked = fs.annotations().get(TRIGGER_ANNOTATION);
    if let Some(value) = asked.filter(|v| Some(*v) != status.last_trigger.as_ref()) {
        plan.start.push(Start {
            name: run_name(&name, None, value),
            slot: None,
        });
        plan.last_trigger = Some(value.clone());
    }
    if fs.spec.suspend {
        plan.suspended_at = Some(status.suspended_at.map_or(now, |t| t.0));
        return plan;
    }
    let created = fs.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut since = plan.last_schedule_time.unwrap_or(created).max(created);
    // Slots passed while suspended are not caught up: passed over for good.
    if status.suspended_at.is_some() {
        since = since.max(now);
        plan.last_schedule_time = plan.last_schedule_time.max(schedule.at_or_before(now));
    }
    let deadline = fs
        .spec
        .starting_deadline_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64));
    let catch_up = fs.spec.catch_up.unwrap_or(1).clamp(1, 100) as usize;
    let mut due = schedule.due(since, now, deadline, catch_up.max(1));
    plan.missed = due.missed;
    plan.next_schedule_time = due.next;
    let max_jitter = Duration::from_secs(fs.spec.jitter_seconds.unwrap_or(0).max(0) as u64);
    let uid = fs.uid().unwrap_or_default();
    let start_of = |slot: Timestamp| {
        let gap = schedule
            .next_after(slot)
            .map_or(Duration::ZERO, |next| gap_between(slot, next));
        slot + jitter(&uid, slot, max_jitter, gap)
    };
    // The latest slot waits for its jitter; the look at it comes then.
    if let Some(&latest) = due.slots.last()
        && start_of(latest) > now
    {
        due.slots.pop();
        plan.look_again = Some(start_of(latest));
    } else {
        // Slots missed (past the deadline or the catch-up) are passed over once, not again.
        plan.last_schedule_time = plan.last_schedule_time.max(due.latest);
    }
    if plan.look_again.is_none() {
        plan.look_again = due.next.map(start_of);
    }
    let Some(&latest) = due.slots.last() else {
        return plan;
    };
    plan.last_schedule_time = Some(latest);
    let passed = due.slots.len();
    let slots = match fs.spec.concurrency_policy {
        ConcurrencyPolicy::Allow => due.slots,
        ConcurrencyPolicy::Forbid if !active.is_empty() => Vec::new(),
        ConcurrencyPolicy::Forbid => vec![latest],
        ConcurrencyPolicy::Replace => {
            let new = run_name(&name, Some(latest), "");
            plan.cancel = active.iter().filter(|a| **a != new).cloned().collect();
            vec![latest]
        }
    };
    plan.skipped = passed - slots.len();
    plan.start.extend(slots.into_iter().map(|slot| Start {
        name: run_name(&name, Some(slot), ""),
        slot: Some(slot),
    }));
    plan
}

fn gap_between(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::{FlowScheduleSpec, FlowScheduleStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Schedule "nightly" every hour, created at midnight, last started at `last`.
    fn nightly(policy: ConcurrencyPolicy, last: Option<&str>) -> FlowSchedule {
        let mut fs = FlowSchedule::new(
            "nightly",
            FlowScheduleSpec {
                schedule: "0 * * * *".into(),
                concurrency_policy: policy,
                ..Default::default()
            },
        );
        fs.metadata.uid = Some("uid-1".into());
        fs.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
        fs.status = Some(FlowScheduleStatus {
            last_schedule_time: last.map(|t| Time(at(t))),
            ..Default::default()
        });
        fs
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", None).unwrap()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.start.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_due_slot_starts_once_under_its_own_name() {
        let fs = nightly(ConcurrencyPolicy::Allow, Some("2026-01-01T01:00:00Z"));
        let now = at("2026-01-01T02:00:10Z");
        let plan = plan(&fs, &hourly(), &[], None, now);
        assert_eq!(names(&plan), ["nightly-1767232800"]);
        assert_eq!(plan.last_schedule_time, Some(at("2026-01-01T02:00:00Z")));
        assert_eq!(plan.look_again, Some(at("2026-01-01T03:00:00Z")));
        // Once recorded, the same slot is not due again.
        let mut done = fs.clone();
        done.status.as_mut().unwrap().last_schedule_time = Some(Time(at("2026-01-01T02:00:00Z")));
        assert!(
            super::plan(&done, &hourly(), &[], None, now)
                .start
                .is_empty()
        );
    }

    #[test]
    fn forbid_skips_while_a_run_is_under_way_and_replace_cancels_it() {
        let now = at("2026-01-01T02:00:10Z");
        let busy = ["nightly-1767229200".to_owned()];
        let forbid = nightly(ConcurrencyPolicy::Forbid, Some("2026-01-01T01:00:00Z"));
        let skipped = plan(&forbid, &hourly(), &busy, None, now);
        assert!(skipped.start.is_empty());
        assert_eq!(skipped.skipped, 1);
        // The slot is passed over for good, not started when the run ends.
        assert_eq!(skipped.last_schedule_time, Some(at("2026-01-01T02:00:00Z")));
        assert_eq!(
            names(&plan(&forbid, &hourly(), &[], None, now)),
            ["nightly-1767232800"]
        );
        let replace = nightly(ConcurrencyPolicy::Replace, Some("2026-01-01T01:00:00Z"));
        let replaced = plan(&replace, &hourly(), &busy, None, now);
        assert_eq!(replaced.cancel, busy);
        assert_eq!(names(&replaced), ["nightly-1767232800"]);
        // A look before the status says the slot started: its run, already made, is neither
        // cancelled nor made again.
        let made = ["nightly-1767232800".to_owned()];
        let newest = Some(at("2026-01-01T02:00:00Z"));
        let again = plan(&replace, &hourly(), &made, newest, now);
        assert!(
            again.start.is_empty() && again.cancel.is_empty(),
            "{again:?}"
        );
    }

    #[test]
    fn after_a_gap_the_latest_slot_starts_and_the_rest_are_counted() {
        let mut fs = nightly(ConcurrencyPolicy::Allow, Some("2026-01-01T01:00:00Z"));
        let now = at("2026-01-01T05:30:00Z");
        let plan1 = plan(&fs, &hourly(), &[], None, now);
        assert_eq!(names(&plan1), ["nightly-1767243600"]);
        assert_eq!(plan1.missed, 3);
        fs.spec.catch_up = Some(2);
        fs.spec.starting_deadline_seconds = Some(7200);
        let plan2 = plan(&fs, &hourly(), &[], None, now);
        assert_eq!(names(&plan2), ["nightly-1767240000", "nightly-1767243600"]);
    }

    #[test]
    fn suspended_nothing_starts_and_slots_passed_meanwhile_are_not_caught_up() {
        let mut fs = nightly(ConcurrencyPolicy::Allow, Some("2026-01-01T01:00:00Z"));
        fs.spec.suspend = true;
        let now = at("2026-01-01T05:30:00Z");
        let held = plan(&fs, &hourly(), &[], None, now);
        assert!(held.start.is_empty() && held.look_again.is_none());
        assert_eq!(held.suspended_at, Some(now));
        fs.spec.suspend = false;
        fs.status.as_mut().unwrap().suspended_at = Some(Time(now));
        let resumed = plan(&fs, &hourly(), &[], None, at("2026-01-01T05:30:05Z"));
        assert!(resumed.start.is_empty(), "{resumed:?}");
        assert_eq!(resumed.suspended_at, None);
        assert_eq!(resumed.look_again, Some(at("2026-01-01T06:00:00Z")));
        // The status it writes keeps them passed over at the next look too.
        let status = fs.status.as_mut().unwrap();
        status.suspended_at = None;
        status.last_schedule_time = resumed.last_schedule_time.map(Time);
        let next_look = plan(&fs, &hourly(), &[], None, at("2026-01-01T05:30:10Z"));
        assert!(
            next_look.start.is_empty() && next_look.missed == 0,
            "{next_look:?}"
        );
    }

    #[test]
    fn a_trigger_starts_one_run_per_value_and_jitter_delays_the_slot() {
        let mut fs = nightly(ConcurrencyPolicy::Forbid, Some("2026-01-01T02:00:00Z"));
        fs.annotations_mut()
            .insert(TRIGGER_ANNOTATION.into(), "t1".into());
        let busy = ["nightly-1767232800".to_owned()];
        let now = at("2026-01-01T02:30:00Z");
        let triggered = plan(&fs, &hourly(), &busy, None, now);
        assert_eq!(triggered.start.len(), 1);
        assert!(triggered.start[0].name.starts_with("nightly-manual-"));
        assert_eq!(triggered.last_trigger.as_deref(), Some("t1"));
        fs.status.as_mut().unwrap().last_trigger = Some("t1".into());
        assert!(plan(&fs, &hourly(), &busy, None, now).start.is_empty());

        fs.spec.jitter_seconds = Some(600);
        let early = plan(&fs, &hourly(), &[], None, at("2026-01-01T03:00:00Z"));
        let start = early.look_again.unwrap();
        assert!(early.start.is_empty() || start > at("2026-01-01T03:00:00Z"));
        assert!(start < at("2026-01-01T03:10:00Z"), "{start}");
        let later = plan(&fs, &hourly(), &[], None, start);
        assert_eq!(names(&later), ["nightly-1767236400"]);
    }
}
