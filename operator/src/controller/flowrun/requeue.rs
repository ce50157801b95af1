//! Stage "next requeue" (pure): when to look at the run again without being asked — the
//! deadline, the end of a finished run's time to live (then it is deleted), a pod the kubelet
//! is still trying to start, children waiting for the pinned digest, the safety net of a run
//! queued for a slot. Everything else (pods, events, timers, children finishing) brings its
//! own reconcile.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;

use crate::controller::pod;
use cairn_engine::read::RunRecord;

/// What is due after this reconcile.
#[derive(Debug, PartialEq)]
pub enum After {
    /// The finished run's time to live is over: delete the FlowRun.
    Delete,
    /// Look again at this time, or (`None`) only when something changes.
    LookAt(Option<DateTime<Utc>>),
}

pub struct Due<'a> {
    pub record: &'a RunRecord,
    pub pods: &'a [Pod],
    /// How long a finished run stays (`None` or zero: for ever).
    pub ttl: Option<Duration>,
    pub deadline: Option<DateTime<Utc>>,
    pub children_deferred: bool,
    /// A limit (the running budget, its Flow's concurrency) held its launch back.
    pub held: bool,
}

pub fn after(due: &Due, now: DateTime<Utc>) -> After {
    let record = due.record;
    let expiry_or_deadline = if record.phase.is_terminal() {
        let ttl = due.ttl.filter(|ttl| !ttl.is_zero());
        match (ttl, record.finished_at) {
            (Some(ttl), Some(finished)) => {
                let expires = finished + chrono::Duration::from_std(ttl).unwrap_or_default();
                if expires <= now {
                    return After::Delete;
                }
                Some(expires)
            }
            _ => None,
        }
    } else {
        due.deadline
    };
    let children = due
        .children_deferred
        .then(|| now + chrono::Duration::seconds(1));
    // A pod the kubelet is still trying to start: look again when its grace ends.
    let start_check = due
        .pods
        .iter()
        .filter(|p| pod::attempt_of(p) == Some(record.attempt))
        .filter_map(pod::start_retried_until)
        .filter(|until| *until > now)
        .min();
    // A freed slot wakes queued runs; this look is only the safety net.
    let slot_check = due.held.then(|| now + chrono::Duration::seconds(30));
    After::LookAt(
        [expiry_or_deadline, children, start_check, slot_check]
            .into_iter()
            .flatten()
            .min(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::flowrun::fixtures::{pod, record};
    use cairn_engine::Phase;
    use serde_json::json;

    fn due<'a>(record: &'a RunRecord, pods: &'a [Pod]) -> Due<'a> {
        Due {
            record,
            pods,
            ttl: None,
            deadline: None,
            children_deferred: false,
            held: false,
        }
    }

    #[test]
    fn a_finished_run_is_deleted_when_its_time_to_live_is_over_and_kept_with_none() {
        let now = Utc::now();
        let done = record(Phase::Succeeded, 1);
        let finished = done.finished_at.unwrap();
        let ttl = |seconds: u64| Due {
            ttl: Some(Duration::from_secs(seconds)),
            ..due(&done, &[])
        };
        assert_eq!(
            after(&ttl(3600), now),
            After::LookAt(Some(finished + chrono::Duration::hours(1)))
        );
        assert_eq!(after(&ttl(1), now), After::Delete);
        assert_eq!(after(&ttl(0), now), After::LookAt(None), "0 keeps it");
        assert_eq!(after(&due(&done, &[]), now), After::LookAt(None));
    }

    #[test]
    fn the_earliest_due_look_wins() {
        let now = Utc::now();
        let running = record(Phase::Running, 1);
        let deadline = now + chrono::Duration::minutes(10);
        let with_deadline = Due {
            deadline: Some(deadline),
            ..due(&running, &[])
        };
        assert_eq!(after(&with_deadline, now), After::LookAt(Some(deadline)));
        let queued = Due {
            held: true,
            ..with_deadline
        };
        assert_eq!(
            after(&queued, now),
            After::LookAt(Some(now + chrono::Duration::seconds(30)))
        );
        let children = Due {
            children_deferred: true,
            ..queued
        };
        assert_eq!(
            after(&children, now),
            After::LookAt(Some(now + chrono::Duration::seconds(1)))
        );
        // A deadline does not apply to a finished run.
        let done = record(Phase::Failed, 1);
        let finished = Due {
            deadline: Some(deadline),
            ..due(&done, &[])
        };
        assert_eq!(after(&finished, now), After::LookAt(None));
    }

    #[test]
    fn a_pod_held_back_by_the_kubelet_is_looked_at_when_its_grace_ends() {
        let now = Utc::now();
        let running = record(Phase::Running, 1);
        let created = now - chrono::Duration::seconds(10);
        let mut held = pod(
            &running,
            1,
            json!({
                "phase": "Pending",
                "containerStatuses": [{ "name": "flow", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                    "state": { "waiting": { "reason": "CreateContainerConfigError" } } }],
            }),
        );
        held.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(created.timestamp()).unwrap(),
            ));
        let pods = [held];
        let grace = chrono::Duration::seconds(pod::START_GRACE_SECONDS);
        assert_eq!(
            after(&due(&running, &pods), now),
            After::LookAt(Some(
                DateTime::from_timestamp(created.timestamp(), 0).unwrap() + grace
            ))
        );
    }
}
