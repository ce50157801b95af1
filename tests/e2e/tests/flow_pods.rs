//! What flow pods offer flow code on the real cluster, under the restricted Pod Security
//! Standard: a writable /tmp (the root filesystem stays read-only), and the volumes, labels,
//! annotations and affinity a Flow and its ResourceProfile give them.

use cairn_crds::{Flow, FlowRun, ResourceProfile};
use cairn_e2e::{Phase, Scenario};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::json;

/// A scenario with an operator, in a namespace that enforces the restricted standard.
async fn restricted_scenario(name: &str) -> anyhow::Result<Scenario> {
    let sc = Scenario::with_operator(name).await?;
    let enforce = "pod-security.kubernetes.io/enforce=restricted";
    let (rc, _, err) = sc.kubectl(&["label", "namespace", &sc.ns, enforce], None);
    anyhow::ensure!(rc == 0, "labelling the namespace restricted: {err}");
    Ok(sc)
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn flow_code_can_write_to_tmp_under_the_restricted_standard() -> anyhow::Result<()> {
    let mut sc = restricted_scenario("tmp").await?;
    // The example agent appends every model call to its ledger file; one it cannot write says
    // so in its log ("cannot append to the ledger ...: Read-only file system").
    sc.create::<FlowRun>(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": { "name": "scratch" },
        "spec": {
            "image": sc.setup.image.name, "flow": "summarize",
            "input": { "topic": "disks", "subtopic": "scratch space" },
            "env": [{ "name": "CAIRN_EXAMPLE_LEDGER", "value": "/tmp/ledger" }],
        },
    }))
    .await?;
    let name = "a flow writes its files to /tmp, in a pod the restricted standard admits";
    let written = match sc.wait_phase("scratch", Phase::Succeeded, 120).await {
        // The runner's last line; the ledger's complaint, if any, came before it.
        Ok(_) => sc.wait_run_log("scratch", "flow returned", 60).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(pod) => {
            let log = sc.log_of(&pod).await;
            sc.check(
                name,
                !log.contains("cannot append to the ledger"),
                format!("the flow could not write /tmp/ledger: {log}"),
            );
        }
        Err(e) => sc.fail_explained(name, e, "scratch").await,
    }
    sc.finish();
    Ok(())
}

/// A Flow with a volume (a ConfigMap) and pod labels and annotations, on a profile with an
/// affinity and labels of its own, in a namespace that enforces the restricted standard: the
/// flow reads the mounted file and writes 10 MB to /tmp, and its pod carries every setting.
#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_flow_reads_its_mounted_config_map_and_writes_10_mb_to_tmp() -> anyhow::Result<()> {
    let mut sc = restricted_scenario("volumes").await?;
    let profile_name = format!("{}-files", sc.ns);
    let profile: ResourceProfile = serde_json::from_value(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "ResourceProfile",
        "metadata": { "name": profile_name },
        "spec": {
            // /tmp is as large as the ephemeral-storage limit: room for 10 MB, not for much more.
            "resources": { "limits": { "ephemeral-storage": "64Mi", "memory": "256Mi" } },
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchExpressions": [
                    { "key": "kubernetes.io/os", "operator": "In", "values": ["linux"] }] }] } } },
            "podLabels": { "tier": "profile", "team": "from-profile" },
            "podAnnotations": { "example.com/cost-center": "42" },
        },
    }))?;
    sc.create_cluster_scoped(profile).await?;
    sc.create::<ConfigMap>(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "agent-prompts" },
        "data": { "prompt.txt": "Answer in one sentence." },
    }))
    .await?;
    sc.create::<Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "files" },
        "spec": {
            "image": sc.setup.flows_image.name, "flow": "files", "profile": profile_name,
            "volumes": [{ "name": "prompts", "configMap": { "name": "agent-prompts" } }],
            "volumeMounts": [{ "name": "prompts", "mountPath": "/etc/agent", "readOnly": true }],
            "podLabels": { "team": "research" },
            "podAnnotations": { "example.com/owner": "research" },
        },
    }))
    .await?;
    sc.create::<FlowRun>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowRun", "metadata": { "name": "files" },
        "spec": { "flowRef": "files",
                  "input": { "scratch_mb": 10, "read": "/etc/agent/prompt.txt" } },
    }))
    .await?;
    let name = "the flow read the mounted ConfigMap and wrote 10 MB to /tmp";
    match sc.wait_phase("files", Phase::Succeeded, 180).await {
        Ok(run) => {
            let result = run.status.and_then(|s| s.result).unwrap_or_default();
            sc.check(
                name,
                result == json!({ "scratch_bytes": 10 << 20, "read": "Answer in one sentence." }),
                format!("result {result}"),
            );
        }
        Err(e) => sc.fail_explained(name, e, "files").await,
    }
    let pod = match sc.pods_of("files").await.into_iter().next() {
        Some(pod) => sc.api::<Pod>().get_opt(&pod).await?,
        None => None,
    };
    let meta = pod.as_ref().map(|p| p.metadata.clone()).unwrap_or_default();
    let spec = pod.and_then(|p| p.spec).unwrap_or_default();
    let labels = meta.labels.unwrap_or_default();
    let annotations = meta.annotations.unwrap_or_default();
    let mounted = spec
        .containers
        .first()
        .and_then(|c| c.volume_mounts.clone());
    sc.check(
        "its pod has the Flow's labels over the profile's, both's annotations, the affinity and the mount",
        labels.get("team").map(String::as_str) == Some("research")
            && labels.get("tier").map(String::as_str) == Some("profile")
            && labels.contains_key("cairn.dev/run")
            && annotations.get("example.com/cost-center").map(String::as_str) == Some("42")
            && annotations.get("example.com/owner").map(String::as_str) == Some("research")
            && spec.affinity.as_ref().is_some_and(|a| a.node_affinity.is_some())
            && mounted.as_ref().is_some_and(|m| m.iter().any(|m| m.mount_path == "/etc/agent")),
        format!("labels {labels:?}, annotations {annotations:?}, affinity {:?}, mounts {mounted:?}", spec.affinity),
    );
    sc.finish();
    Ok(())
}
