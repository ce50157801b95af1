//! Stage "decide" (pure): what happens next to the run, from the engine's record and what its
//! pods say of the current attempt's process — `lifecycle::decide`, shared with `cairn dev`.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;

use crate::controller::pod;
use crate::lifecycle::{self, Next, RunView};
use cairn_engine::read::RunRecord;

pub fn next(record: &RunRecord, pods: &[Pod], seen_at: DateTime<Utc>) -> Next {
    lifecycle::decide(
        &RunView::of(record),
        &pod::process_of(pods, record.attempt, seen_at),
    )
}

/// The cache can trail the API server: a pod created a moment ago may be missing, one that
/// started may still look stuck. Ending an attempt (and deleting a pod that seems never to
/// have started) is concluded only from pods read from the API server.
pub fn needs_listed_pods(next: &Next) -> bool {
    matches!(next, Next::RecordCrash { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::flowrun::fixtures::{pod, record};
    use cairn_engine::Phase;

    #[test]
    fn a_running_attempt_whose_pod_failed_is_a_crash_confirmed_from_the_api_server() {
        let now = Utc::now();
        let running = record(Phase::Running, 1);
        let failed = pod(
            &running,
            1,
            serde_json::json!({
                "phase": "Failed",
                "containerStatuses": [{ "name": "flow", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                    "state": { "terminated": { "exitCode": 3, "reason": "Error" } } }],
            }),
        );
        let next = next(&running, &[failed], now);
        assert!(
            matches!(&next, Next::RecordCrash { attempt: 1, reason, .. } if reason.contains('3')),
            "{next:?}"
        );
        assert!(needs_listed_pods(&next));
    }

    #[test]
    fn a_pending_run_launches_and_a_running_pod_is_left_alone() {
        let now = Utc::now();
        assert_eq!(next(&record(Phase::Pending, 0), &[], now), Next::Launch);
        let running = record(Phase::Running, 2);
        let alive = pod(&running, 2, serde_json::json!({ "phase": "Running" }));
        let next = next(&running, &[alive], now);
        assert_eq!(next, Next::Idle);
        assert!(!needs_listed_pods(&next));
    }
}
