//! FlowEvents deliver engine events. Creating one is the approval: Kubernetes RBAC decides who
//! may create them. Delivery is idempotent (the engine's events are write-once). Deleting a
//! delivered FlowEvent deletes its event, so a later wait for that name (a run created again
//! under a reused name) is not answered by it.

use std::sync::Arc;

use cairn_crds::{API_VERSION, FlowEvent, FlowEventStatus};
use cairn_engine::{EngineError, launcher as engine};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::error::{AtStage, Stage};
use super::{Context, Error, FIELD_MANAGER};

/// A FlowEvent was deleted: if it delivered its event and no other FlowEvent of the namespace
/// names the same event, the event goes too. `remaining` is the watch cache, without it.
pub async fn forget(
    gone: &FlowEvent,
    remaining: &kube::runtime::reflector::Store<FlowEvent>,
    ctx: &Context,
) {
    let delivered = gone.status.as_ref().and_then(|s| s.delivered) == Some(true);
    let namespace = gone.namespace().unwrap_or_default();
    let still_named = remaining.state().iter().any(|other| {
        other.namespace().as_deref() == Some(namespace.as_str())
            && other.spec.event == gone.spec.event
    });
    if !delivered || still_named {
        return;
    }
    let deleted = async {
        engine::delete_event(
            &mut *ctx.pool.acquire().await?,
            &namespace,
            &gone.spec.event,
        )
        .await
        .map_err(Error::from)
    }
    .await;
    match deleted {
        Ok(_) => {
            tracing::info!(%namespace, event = %gone.spec.event, "FlowEvent deleted: its event is gone too")
        }
        Err(e) => {
            tracing::warn!(%namespace, event = %gone.spec.event, error = %e, "cannot delete the event of a deleted FlowEvent; retention removes it later")
        }
    }
}

pub async fn reconcile(event: Arc<FlowEvent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let delivered = deliver(&event, &ctx).await.at(Stage::Deliver);
    if delivered.is_ok() {
        super::succeeded(&ctx, event.as_ref());
    }
    delivered
}

async fn deliver(event: &FlowEvent, ctx: &Context) -> Result<Action, Error> {
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
            ctx.event(event, "Delivered", &note).await;
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
            ctx.warn(event, "Refused", &message).await;
            FlowEventStatus {
                delivered: Some(false),
                message: Some(message),
                observed_generation: event.meta().generation,
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    let patch = json!({ "apiVersion": API_VERSION, "kind": "FlowEvent", "status": status });
    Api::<FlowEvent>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &event.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Action::await_change())
}
