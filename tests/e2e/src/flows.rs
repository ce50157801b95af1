//! The flows the scenarios run: the example agent's manifests (examples/agent/k8s/) with the
//! harness's image, and variants of it.

use cairn_crds::Flow;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Scenario;

/// A manifest of examples/agent/k8s/, typed.
pub fn example<K: DeserializeOwned>(sc: &Scenario, file: &str) -> anyhow::Result<K> {
    let path = sc.setup.repo_file(&format!("examples/agent/k8s/{file}"));
    Ok(serde_yaml::from_str(&std::fs::read_to_string(path)?)?)
}

/// Flow `research` of examples/agent/k8s/flow.yaml on the harness's image, with `profile` (or
/// none: the example's `small` is cluster-scoped, made only by the scenario that tests it).
pub async fn research_flow(sc: &Scenario, profile: Option<&str>) -> anyhow::Result<Flow> {
    let mut flow: Flow = example(sc, "flow.yaml")?;
    flow.spec.image = sc.setup.image.name.clone();
    flow.spec.profile = profile.map(str::to_owned);
    sc.create(serde_json::to_value(flow)?).await
}

/// Flow `slow`: the example agent with every LLM call taking 4 s (so a test can act while a call
/// is in flight) and its ledger in the pod's log.
pub async fn slow_flow(sc: &Scenario) -> anyhow::Result<Flow> {
    sc.create(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "Flow",
        "metadata": { "name": "slow" },
        "spec": {
            "image": sc.setup.image.name,
            "flow": "research",
            "retry": { "maxAttempts": 3, "backoffSeconds": 1 },
            "env": [
                { "name": "CAIRN_EXAMPLE_LLM_MS", "value": "4000" },
                { "name": "CAIRN_EXAMPLE_LEDGER", "value": "-" },
            ],
        },
    }))
    .await
}

/// A FlowRun of `flow_ref` with `input`.
pub async fn run_of(
    sc: &Scenario,
    name: &str,
    flow_ref: &str,
    input: serde_json::Value,
) -> anyhow::Result<cairn_crds::FlowRun> {
    sc.create(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": { "name": name },
        "spec": { "flowRef": flow_ref, "input": input },
    }))
    .await
}

/// A FlowEvent delivering `event` with `payload`.
pub async fn event(
    sc: &Scenario,
    name: &str,
    event: &str,
    payload: serde_json::Value,
) -> anyhow::Result<cairn_crds::FlowEvent> {
    sc.create(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "FlowEvent",
        "metadata": { "name": name },
        "spec": { "event": event, "payload": payload },
    }))
    .await
}
