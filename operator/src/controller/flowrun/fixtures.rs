//! Test fixtures of the reconcile's pure stages: engine records, pods and FlowRuns.

use cairn_crds::FlowRun;
use cairn_engine::Phase;
use cairn_engine::read::RunRecord;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use cairn_crds::{LABEL_ATTEMPT, LABEL_RUN};

pub fn record(phase: Phase, attempt: i32) -> RunRecord {
    let created = chrono::Utc::now() - chrono::Duration::minutes(5);
    RunRecord {
        id: uuid::Uuid::new_v4(),
        namespace: "ns".into(),
        name: "run".into(),
        flow: "research".into(),
        parent_id: None,
        phase,
        attempt,
        crashes: 0,
        max_attempts: 3,
        retry_backoff_ms: 10_000,
        wake_at: None,
        waiting_for: None,
        cancel_requested: false,
        result: None,
        error: None,
        created_at: created,
        updated_at: created,
        finished_at: phase
            .is_terminal()
            .then_some(created + chrono::Duration::minutes(1)),
        steps: 0,
        usd: 0.0,
        tree_usd: 0.0,
        budget_usd: None,
        fork_of: None,
        flowrun_uid: None,
    }
}

/// A pod of `record`'s run for `attempt`, with the given status.
pub fn pod(record: &RunRecord, attempt: i32, status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("run-a{attempt}"),
            "namespace": "ns",
            "labels": { LABEL_RUN: record.id.to_string(), LABEL_ATTEMPT: attempt.to_string() },
        },
        "status": status,
    }))
    .expect("a pod")
}

pub fn flowrun(status: Value) -> FlowRun {
    serde_json::from_value(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": { "name": "run", "namespace": "ns", "generation": 1, "uid": "u-1" },
        "spec": { "image": "localhost/agent:dev", "flow": "research" },
        "status": status,
    }))
    .expect("a FlowRun")
}
