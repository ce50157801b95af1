//! Child flows spawned inside a flow become child FlowRuns, owned by the parent FlowRun (so
//! they show up in kubectl and are deleted with it) and running the parent's pinned image.

use cairn_crds::{API_VERSION, FlowRun, FlowRunSpec, LABEL_PARENT};
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};
use cairn_engine::read::{self, RunRecord};

/// Creates the FlowRuns of the children the run spawned. They run the parent's pinned digest,
/// so nothing is created before it is known: returns false when that deferred the children.
pub async fn ensure_child_flowruns(
    ctx: &Context,
    parent: &FlowRun,
    record: &RunRecord,
    image: Option<&str>,
    env: &[EnvVar],
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
    for child in children {
        // Already there: nothing to send (the spec is immutable anyway).
        if known > 0 && api.get_opt(&child.name).await?.is_some() {
            continue;
        }
        let spec = FlowRunSpec {
            image: Some(image.to_owned()),
            flow: Some(child.flow.clone()),
            input: Some(child.input.clone()),
            profile: parent.spec.profile.clone(),
            env: env.to_vec(),
            retry: parent.spec.retry.clone(),
            ..Default::default()
        };
        let flowrun = json!({
            "apiVersion": API_VERSION,
            "kind": "FlowRun",
            "metadata": {
                "name": child.name,
                "labels": { LABEL_PARENT: parent.name_any() },
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
