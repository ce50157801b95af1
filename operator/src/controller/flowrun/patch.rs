//! Stage "patch" (I/O): writes the status built, as a JSON merge patch of what changed since
//! the status last seen, and only when something did.

use cairn_crds::{FlowRun, FlowRunStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::controller::{Context, Error};

pub async fn patch_status(
    ctx: &Context,
    run: &FlowRun,
    status: &FlowRunStatus,
) -> Result<(), Error> {
    if run.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<FlowRun> =
        Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    patch_changes(&api, &run.name_any(), &run.status, status).await?;
    ctx.written_status.wrote(run, status);
    Ok(())
}

/// Writes object `name`'s status `wanted` as a JSON merge patch of what changed since `seen`:
/// the API server applies it for a fraction of a server-side apply's CPU, which counts when
/// thousands of runs change at once. Only this operator writes Cairn's statuses.
pub(crate) async fn patch_changes<K>(
    api: &Api<K>,
    name: &str,
    seen: &impl serde::Serialize,
    wanted: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let seen = serde_json::to_value(seen).map_err(kube::Error::SerdeError)?;
    let wanted = serde_json::to_value(wanted).map_err(kube::Error::SerdeError)?;
    let patch = json!({ "status": merge_patch(&seen, &wanted) });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: changed values, `null` for
/// removed keys, objects compared key by key (arrays are replaced whole).
fn merge_patch(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = serde_json::Map::new();
            for (key, old) in from {
                match to.get(key) {
                    None => {
                        patch.insert(key.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(key.clone(), merge_patch(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (key, new) in to {
                if !from.contains_key(key) {
                    patch.insert(key.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_patch_sends_what_changed_and_nulls_what_went() {
        let seen = json!({
            "phase": "Waiting",
            "attempt": 1,
            "waitingFor": { "event": "approve", "question": "ok?" },
            "conditions": [{ "type": "Ready", "reason": "Waiting" }],
        });
        let wanted = json!({
            "phase": "Running",
            "attempt": 1,
            "waitingFor": { "event": "approve" },
            "conditions": [{ "type": "Ready", "reason": "Running" }],
            "pod": "run-a2",
        });
        let patch = merge_patch(&seen, &wanted);
        assert_eq!(
            patch,
            json!({
                "phase": "Running",
                "waitingFor": { "question": null },
                "conditions": [{ "type": "Ready", "reason": "Running" }],
                "pod": "run-a2",
            })
        );
        // Applied as a merge patch (RFC 7386), it gives exactly what was wanted.
        let mut applied = seen.clone();
        json_patch::merge(&mut applied, &patch);
        assert_eq!(applied, wanted);
        // From no status at all, the whole status.
        assert_eq!(merge_patch(&serde_json::Value::Null, &wanted), wanted);
    }
}
