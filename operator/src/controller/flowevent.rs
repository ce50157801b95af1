//! FlowEvents deliver engine events. Creating one is the approval: Kubernetes RBAC decides who
//! may create them. Delivery is idempotent (the engine's events are write-once). An event
//! counts from the FlowEvent's creation: it reaches the runs that existed then, or with
//! `spec.flowRun` that one FlowRun only (by uid, so never a later one reusing the name).
//! Deleting a delivered FlowEvent for the namespace deletes its event, so a later wait for
//! that name waits for a new one.

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{API_VERSION, FlowEvent, FlowEventStatus, FlowRun};
use cairn_engine::launcher::Addressing;
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
            && other.spec.flow_run.is_none()
    });
    // An event sent to one run goes with that run.
    if !delivered || still_named || gone.spec.flow_run.is_some() {
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

/// Who a FlowEvent's event is for, as the engine addresses it.
enum Target {
    Found(Addressing),
    /// The FlowRun it names is not in the engine yet: try again shortly.
    NotYet,
    /// The FlowRun it names is gone (deleted, or replaced by one of the same name).
    Gone(String),
}

async fn target(event: &FlowEvent, ctx: &Context, namespace: &str) -> Result<Target, Error> {
    let sent_at = event
        .metadata
        .creation_timestamp
        .as_ref()
        .map(crate::kubectl::logic::to_utc);
    let Some(wanted) = &event.spec.flow_run else {
        return Ok(Target::Found(Addressing { run: None, sent_at }));
    };
    let runs: Api<FlowRun> = Api::namespaced(ctx.client.clone(), namespace);
    let run = runs.get_opt(&wanted.name).await?;
    let Some(run) = run.filter(|run| run.uid().as_deref() == Some(wanted.uid.as_str())) else {
        return Ok(Target::Gone(format!(
            "FlowRun {} (uid {}) no longer exists; this event was for it alone and does not \
             reach a FlowRun created again under its name (approve that one with `kubectl \
             cairn approve {}`)",
            wanted.name, wanted.uid, wanted.name
        )));
    };
    let run_id = run.status.as_ref().and_then(|s| s.run_id.as_deref());
    Ok(match run_id.and_then(|id| id.parse().ok()) {
        Some(id) => Target::Found(Addressing {
            run: Some(id),
            sent_at,
        }),
        None => Target::NotYet,
    })
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
    let emitted = match target(event, ctx, &namespace).await? {
        Target::NotYet => return Ok(Action::requeue(Duration::from_secs(2))),
        Target::Gone(message) => Err(message),
        Target::Found(to) => {
            let mut conn = ctx.pool.acquire().await?;
            match engine::emit_to(&mut conn, &namespace, &event.spec.event, &payload, to).await {
                Ok(emitted) => Ok(emitted),
                // Refused for good: said on the object; a new FlowEvent is the way to retry.
                Err(
                    EngineError::InvalidPayload(message)
                    | EngineError::EventConflict(message)
                    | EngineError::NotFound(message),
                ) => Err(message),
                Err(e) => return Err(e.into()),
            }
        }
    };
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
        Err(message) => {
            ctx.warn(event, "Refused", &message).await;
            FlowEventStatus {
                delivered: Some(false),
                message: Some(message),
                observed_generation: event.meta().generation,
                ..Default::default()
            }
        }
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
