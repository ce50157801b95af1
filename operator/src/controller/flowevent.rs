//! FlowEvents deliver engine events. Creating one is the approval: Kubernetes RBAC decides who
//! may create them. Delivery is idempotent (the engine's events are write-once).

use std::sync::Arc;

use cairn_crds::{FlowEvent, FlowEventStatus};
use cairn_engine::{EngineError, launcher as engine};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};

pub async fn reconcile(event: Arc<FlowEvent>, ctx: Arc<Context>) -> Result<Action, Error> {
    if event.status.as_ref().and_then(|s| s.delivered).is_some() {
        return Ok(Action::await_change());
    }
    let namespace = event.namespace().unwrap_or_default();
    let payload = event
        .spec
        .payload
        .clone()
        .unwrap_or(serde_json::Value::Null);
    let mut conn = ctx.pool.acquire().await?;
    let emitted = engine::emit(&mut conn, &namespace, &event.spec.event, &payload).await;
    let status = match emitted {
        Ok(emitted) => {
            let note = match emitted.duplicate {
                true => "already delivered with this payload".to_owned(),
                false => format!("delivered; {} run(s) woken", emitted.woken),
            };
            ctx.event(event.as_ref(), "Delivered", &note).await;
            FlowEventStatus {
                delivered: Some(true),
                delivered_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )),
                woken: Some(emitted.woken),
                message: Some(note),
                observed_generation: event.meta().generation,
                conditions: vec![],
            }
        }
        // Refused for good: say why on the object; a new FlowEvent is the way to retry.
        Err(EngineError::InvalidPayload(message) | EngineError::EventConflict(message)) => {
            ctx.warn(event.as_ref(), "Refused", &message).await;
            FlowEventStatus {
                delivered: Some(false),
                message: Some(message),
                observed_generation: event.meta().generation,
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    let patch =
        json!({ "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowEvent", "status": status });
    Api::<FlowEvent>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &event.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Action::await_change())
}
