//! Child flows spawned inside a flow become child FlowRuns, owned by the parent FlowRun (so
//! they show up in kubectl and are deleted with it) and running the parent's pinned image.
//! They inherit the parent's resolved settings unless their own Flow sets them
//! ([`child_settings`], the one place that rule lives).

use std::sync::Arc;

use cairn_crds::{
    ANNOTATION_PARENT, ANNOTATION_POD_SETTINGS_FLOW, API_VERSION, Flow, FlowRun, FlowRunSpec,
    LABEL_PARENT, parent_label,
};
use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::flowrun::Resolved;
use super::{Context, Error, FIELD_MANAGER};
use cairn_engine::read::{self, RunRecord};

/// Creates the FlowRuns of the children the run spawned. They run the parent's pinned digest,
/// so nothing is created before it is known: returns false when that deferred the children.
/// `flows` are the Flows the operator knows (its cache), where a child's own Flow is looked up.
pub async fn ensure_child_flowruns(
    ctx: &Context,
    parent: &FlowRun,
    record: &RunRecord,
    image: Option<&str>,
    resolved: &Resolved,
    flows: &Store<Flow>,
) -> Result<bool, Error> {
    let children = read::children(&ctx.pool, record.id).await?;
    if children.is_empty() {
        return Ok(true);
    }
    let Some(image) = image else {
        return Ok(false);
    };
    let namespace = parent.namespace().unwrap_or_default();
    let api: Api<FlowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let known = parent
        .status
        .as_ref()
        .and_then(|s| s.steps_completed)
        .unwrap_or(0);
    let parent_name = parent.name_any();
    for child in children {
        // Already there: nothing to send (its settings were decided when it was made).
        if known > 0 && api.get_opt(&child.name).await?.is_some() {
            continue;
        }
        let flows = flows.state();
        let in_namespace = flows
            .iter()
            .map(Arc::as_ref)
            .filter(|f| f.namespace().as_deref() == Some(namespace.as_str()));
        let own = own_flow(in_namespace, &resolved.image, &child.flow);
        let settings = child_settings(resolved, own);
        let spec = FlowRunSpec {
            image: Some(image.to_owned()),
            flow: Some(child.flow.clone()),
            input: Some(child.input.clone()),
            profile: settings.profile,
            env: settings.env,
            service_account_name: settings.service_account_name,
            image_pull_secrets: settings.image_pull_secrets,
            retry: parent.spec.retry.clone(),
            ..Default::default()
        };
        let mut annotations = json!({ ANNOTATION_PARENT: parent_name });
        if let Some(flow) = &settings.pod_settings_flow {
            annotations[ANNOTATION_POD_SETTINGS_FLOW] = json!(flow);
        }
        let flowrun = json!({
            "apiVersion": API_VERSION,
            "kind": "FlowRun",
            "metadata": {
                "name": child.name,
                // A label value holds 63 characters: the label selects, the annotation names.
                "labels": { LABEL_PARENT: parent_label(&parent_name) },
                "annotations": annotations,
                "ownerReferences": [parent.controller_owner_ref(&())],
            },
            "spec": spec,
        });
        api.patch(
            &child.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&flowrun),
        )
        .await?;
    }
    Ok(true)
}

/// What a child FlowRun is created with, beyond its image, flow and input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildSettings {
    pub profile: Option<String>,
    pub service_account_name: Option<String>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub env: Vec<EnvVar>,
    /// The Flow whose volumes, mounts, pod labels and annotations its pods take
    /// ([`ANNOTATION_POD_SETTINGS_FLOW`]): they cannot be copied into a FlowRun's spec.
    pub pod_settings_flow: Option<String>,
}

/// The precedence rule for a child run's settings: each comes from the child's own Flow
/// where that Flow sets it, else from the parent's resolved settings (themselves the parent
/// FlowRun's over its Flow's). The env merges by name: the own Flow's variables replace the
/// parent's of the same name and add the rest. The result is written into the child's spec
/// once, at creation, so later changes to the parent's Flow do not reach running children.
/// Pod settings (volumes, mounts, pod labels and annotations) are the exception: the child
/// names a Flow, its own else its parent's, and they are read from it at each launch, as for
/// any run with a flowRef.
pub fn child_settings(parent: &Resolved, own_flow: Option<&Flow>) -> ChildSettings {
    let own = own_flow.map(|f| &f.spec);
    let own_env = own.map_or(&[][..], |f| &f.env[..]);
    let mut env: Vec<EnvVar> = parent
        .env
        .iter()
        .filter(|var| !own_env.iter().any(|o| o.name == var.name))
        .cloned()
        .collect();
    env.extend(own_env.iter().cloned());
    let own_secrets = own.map(|f| &f.image_pull_secrets).filter(|s| !s.is_empty());
    ChildSettings {
        profile: own
            .and_then(|f| f.profile.clone())
            .or_else(|| parent.profile_name.clone()),
        service_account_name: own
            .and_then(|f| f.service_account_name.clone())
            .or_else(|| parent.service_account.clone()),
        image_pull_secrets: own_secrets.unwrap_or(&parent.image_pull_secrets).clone(),
        env,
        pod_settings_flow: own_flow
            .map(ResourceExt::name_any)
            .or_else(|| parent.pod_settings_flow.clone()),
    }
}

/// A child's own Flow: one of `flows` (those of its namespace) for flow `flow` in the same
/// image repository as the parent's `image`, the first by name when several are. A child
/// runs its parent's binary, so a Flow of another image describes another program.
pub fn own_flow<'a>(
    flows: impl IntoIterator<Item = &'a Flow>,
    image: &str,
    flow: &str,
) -> Option<&'a Flow> {
    flows
        .into_iter()
        .filter(|f| f.spec.flow == flow && repository(&f.spec.image) == repository(image))
        .min_by_key(|f| f.name_any())
}

/// An image reference without its tag or digest (`registry:5000/agent:dev` →
/// `registry:5000/agent`).
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::FlowSpec;
    use std::time::Duration;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn secret(name: &str) -> LocalObjectReference {
        LocalObjectReference { name: name.into() }
    }

    fn parent() -> Resolved {
        Resolved {
            image: "localhost/agent:dev".into(),
            flow: "research".into(),
            profile_name: Some("gpu".into()),
            profile: None,
            env: vec![var("MODEL", "big"), var("REGION", "eu")],
            service_account: Some("agents".into()),
            image_pull_secrets: vec![secret("registry")],
            max_attempts: 3,
            retry_backoff: Duration::from_secs(10),
            ttl_after_finished: None,
            pod: Default::default(),
            pod_settings_flow: Some("research".into()),
            budget_usd: Some(5.0),
            concurrency: None,
        }
    }

    fn flow(name: &str, image: &str, flow: &str) -> Flow {
        Flow::new(
            name,
            FlowSpec {
                image: image.into(),
                flow: flow.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn without_a_flow_of_its_own_a_child_inherits_the_parents_resolved_settings() {
        let settings = child_settings(&parent(), None);
        assert_eq!(
            settings,
            ChildSettings {
                profile: Some("gpu".into()),
                service_account_name: Some("agents".into()),
                image_pull_secrets: vec![secret("registry")],
                env: vec![var("MODEL", "big"), var("REGION", "eu")],
                pod_settings_flow: Some("research".into()),
            }
        );
        // A parent on the operator's defaults passes nothing on: the child gets them too.
        let plain = Resolved {
            profile_name: None,
            service_account: None,
            image_pull_secrets: vec![],
            env: vec![],
            pod_settings_flow: None,
            ..parent()
        };
        assert_eq!(child_settings(&plain, None), ChildSettings::default());
    }

    #[test]
    fn the_childs_own_flow_wins_where_it_says_something() {
        let mut own = flow("summarize", "localhost/agent:dev", "summarize");
        // Nothing set: the parent's, as without a Flow, but its pods take the own Flow's
        // volumes and labels (none) rather than the parent's.
        assert_eq!(
            child_settings(&parent(), Some(&own)),
            ChildSettings {
                pod_settings_flow: Some("summarize".into()),
                ..child_settings(&parent(), None)
            }
        );
        own.spec.profile = Some("small".into());
        own.spec.env = vec![var("MODEL", "tiny"), var("CHILD", "1")];
        let settings = child_settings(&parent(), Some(&own));
        assert_eq!(settings.profile.as_deref(), Some("small"));
        assert_eq!(settings.service_account_name.as_deref(), Some("agents"));
        assert_eq!(settings.image_pull_secrets, [secret("registry")]);
        assert_eq!(
            settings.env,
            [var("REGION", "eu"), var("MODEL", "tiny"), var("CHILD", "1")]
        );
        own.spec.service_account_name = Some("summarizers".into());
        own.spec.image_pull_secrets = vec![secret("other")];
        let settings = child_settings(&parent(), Some(&own));
        assert_eq!(
            settings.service_account_name.as_deref(),
            Some("summarizers")
        );
        assert_eq!(settings.image_pull_secrets, [secret("other")]);
    }

    #[test]
    fn a_childs_own_flow_is_its_flow_in_the_same_image_repository() {
        let flows = [
            flow("z-summarize", "localhost/agent:v1", "summarize"),
            flow("other-image", "localhost/other:dev", "summarize"),
            flow("research", "localhost/agent:dev", "research"),
            flow("a-summarize", "localhost/agent@sha256:abc", "summarize"),
        ];
        let found = |image: &str, name: &str| own_flow(&flows, image, name).map(|f| f.name_any());
        assert_eq!(
            found("localhost/agent:dev", "summarize").as_deref(),
            Some("a-summarize"),
            "any tag or digest of the repository; the first by name"
        );
        assert_eq!(
            found("localhost/other@sha256:1", "summarize").as_deref(),
            Some("other-image")
        );
        assert_eq!(found("localhost/agent:dev", "draft"), None);
        assert_eq!(found("registry:5000/agent:dev", "summarize"), None);
        assert_eq!(repository("registry:5000/agent"), "registry:5000/agent");
        assert_eq!(repository("registry:5000/agent:dev"), "registry:5000/agent");
    }
}
