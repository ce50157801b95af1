//! Child runs on the real cluster: their pods carry the parent's resolved settings (the profile,
//! service account, pull secret, volumes and pod labels of the parent's Flow), and a parent named with 200 characters gets its
//! children, whose labels and pods stay within Kubernetes' limits, and succeeds.

use cairn_crds::{ANNOTATION_PARENT, Flow, FlowRun, LABEL_PARENT, ResourceProfile};
use cairn_e2e::flows::{event, example, research_flow, run_of};
use cairn_e2e::{Phase, Scenario};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;

/// The child FlowRuns of `parent`, selected as `kubectl cairn` and the README say.
async fn children_of(sc: &Scenario, parent: &str) -> Vec<FlowRun> {
    let selector = cairn_crds::parent_selector(parent);
    sc.api::<FlowRun>()
        .list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The first pod of FlowRun `run`.
async fn first_pod(sc: &Scenario, run: &str) -> Option<Pod> {
    let name = sc.pods_of(run).await.into_iter().next()?;
    sc.api::<Pod>().get_opt(&name).await.ok().flatten()
}

/// What a pod carries of its run's settings: service account, pull secrets, cpu request, the
/// paths mounted from volumes of its Flow, label `team`.
type PodSettings = (
    Option<String>,
    Vec<String>,
    Option<String>,
    Vec<String>,
    Option<String>,
);

fn settings_of(pod: &Pod) -> PodSettings {
    let spec = pod.spec.clone().unwrap_or_default();
    let flows_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.config_map.is_some())
        .map(|v| v.name.as_str())
        .collect();
    let mounted = spec.containers[0].volume_mounts.iter().flatten();
    let mounted = mounted.filter(|m| flows_volumes.contains(&m.name.as_str()));
    let secrets = spec.image_pull_secrets.iter().flatten();
    let cpu = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref()?.get("cpu").map(|q| q.0.clone()));
    (
        spec.service_account_name.clone(),
        secrets.map(|s| s.name.clone()).collect(),
        cpu,
        mounted.map(|m| m.mount_path.clone()).collect(),
        pod.labels().get("team").cloned(),
    )
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_child_pod_carries_the_profile_and_service_account_of_its_parents_flow()
-> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("child-settings").await?;
    // The parent's Flow: a profile of this scenario's own (the example's, 50m of cpu), a
    // service account, a pull secret, a ConfigMap mounted and a pod label. Its children have
    // no Flow of their own.
    let profile_name = format!("small-{}", sc.ns);
    let mut profile: ResourceProfile = example(&sc, "profile.yaml")?;
    profile.metadata.name = Some(profile_name.clone());
    sc.create_cluster_scoped(profile).await?;
    sc.create::<ServiceAccount>(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "agents" },
        "automountServiceAccountToken": false,
    }))
    .await?;
    sc.create::<Secret>(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "registry" },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": "{\"auths\":{}}" },
    }))
    .await?;
    sc.create::<ConfigMap>(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "prompts" },
        "data": { "style.txt": "terse" },
    }))
    .await?;
    sc.create::<Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "research" },
        "spec": { "image": sc.setup.image.name, "flow": "research", "profile": profile_name,
                  "serviceAccountName": "agents", "imagePullSecrets": [{ "name": "registry" }],
                  "volumes": [{ "name": "prompts", "configMap": { "name": "prompts" } }],
                  "volumeMounts": [{ "name": "prompts", "mountPath": "/etc/prompts" }],
                  "podLabels": { "team": "research" } },
    }))
    .await?;
    run_of(
        &sc,
        "fan-out",
        "research",
        json!({ "topic": "t", "breadth": 2 }),
    )
    .await?;

    let name = "the parent fans out and waits for approval";
    if let Err(e) = sc.wait_event("fan-out", "approve-fan-out", 180).await {
        sc.fail_explained(name, e, "fan-out").await;
        sc.finish();
        return Ok(());
    }
    sc.check(name, true, "");

    let want = (
        Some("agents".to_owned()),
        vec!["registry".to_owned()],
        Some("50m".to_owned()),
        vec!["/etc/prompts".to_owned()],
        Some("research".to_owned()),
    );
    let children = children_of(&sc, "fan-out").await;
    sc.check(
        "both children are FlowRuns of the parent",
        children.len() == 2,
        format!("expected 2 child FlowRuns; saw {}", children.len()),
    );
    for child in &children {
        let child = child.name_any();
        let name = format!(
            "child {child}'s pod has the service account, pull secret, profile, mount and label"
        );
        let seen = first_pod(&sc, &child).await.as_ref().map(settings_of);
        sc.check(
            &name,
            seen.as_ref() == Some(&want),
            format!(
                "expected (account, pull secrets, cpu request, mounts, team) {want:?}; saw {seen:?}"
            ),
        );
        let spec = sc.run(&child).await.map(|r| r.spec).unwrap_or_default();
        sc.check(
            &format!("child {child}'s spec names them"),
            spec.profile.as_deref() == Some(profile_name.as_str())
                && spec.service_account_name.as_deref() == Some("agents"),
            format!("saw {spec:?}"),
        );
    }
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_run_named_with_200_characters_gets_its_children_and_succeeds() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("long-name").await?;
    research_flow(&sc, None).await?;
    let parent: String = "research-with-a-rather-long-name-"
        .chars()
        .cycle()
        .take(199)
        .chain(['z'])
        .collect();
    assert_eq!(parent.len(), 200);
    run_of(
        &sc,
        &parent,
        "research",
        json!({ "topic": "t", "breadth": 2 }),
    )
    .await?;
    let approve = format!("approve-{parent}");

    let name = "a parent named with 200 characters gets its children and waits for approval";
    if let Err(e) = sc.wait_event(&parent, &approve, 180).await {
        sc.fail_explained(name, e, &parent).await;
        sc.finish();
        return Ok(());
    }
    sc.check(name, true, "");

    let children = children_of(&sc, &parent).await;
    sc.check(
        "its 2 child FlowRuns are selected by the shortened label",
        children.len() == 2,
        format!("saw {} children", children.len()),
    );
    for child in &children {
        let label = child
            .labels()
            .get(LABEL_PARENT)
            .cloned()
            .unwrap_or_default();
        sc.check(
            "a child's label fits, its annotation names the parent in full",
            label.len() <= 63 && child.annotations().get(ANNOTATION_PARENT) == Some(&parent),
            format!("label {label:?}, annotations {:?}", child.annotations()),
        );
        let phase = child.status.as_ref().and_then(|s| s.phase);
        sc.check(
            "a child succeeded",
            phase == Some(Phase::Succeeded),
            format!("{} is {phase:?}", child.name_any()),
        );
    }
    let mut pods = Vec::new();
    for run in children
        .iter()
        .map(|c| c.name_any())
        .chain([parent.clone()])
    {
        pods.extend(sc.pods_of(&run).await);
    }
    let distinct: std::collections::BTreeSet<&String> = pods.iter().collect();
    sc.check(
        "every pod of the parent and children has a name of its own within 63 characters",
        pods.len() >= 3 && distinct.len() == pods.len() && pods.iter().all(|p| p.len() <= 63),
        format!("pods {pods:?}"),
    );

    let name = "approved, the parent succeeds";
    event(&sc, &approve, &approve, json!(true)).await?;
    match sc.wait_phase(&parent, Phase::Succeeded, 180).await {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, &parent).await,
    }
    sc.finish();
    Ok(())
}
