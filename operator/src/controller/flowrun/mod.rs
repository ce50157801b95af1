//! FlowRun reconciliation: a pipeline of named stages, each in its own module, each pure or
//! doing I/O. A failure carries its stage (see `controller::error`).
//!
//! | stage | module | |
//! |---|---|---|
//! | dereference: the Flow and ResourceProfile named | `dereference` | I/O (caches) |
//! | resolve: what to run, with defaults | `resolve` | pure |
//! | sync with the engine: the run's row; cancel, retry, deadline | `engine_sync` | I/O (database) |
//! | observe pods: the run's pods, its pinned digest | `observe` | I/O (cache; API to confirm) |
//! | decide: what happens next (`lifecycle::decide`) | `decide` | pure |
//! | act: launch, record a crash, create children's FlowRuns | `act` | I/O |
//! | build status | `status` | pure |
//! | patch: the status, as a merge patch | `patch` | I/O |
//! | tidy: old pods, ended attempts' tokens | `controller::history` | I/O (best effort) |
//! | next requeue, or the end of the time to live | `requeue` | pure |

mod act;
pub mod blocked;
mod decide;
mod dereference;
mod engine_sync;
#[cfg(test)]
pub(crate) mod fixtures;
mod observe;
pub(crate) mod patch;
mod pod_settings;
mod requeue;
mod resolve;
mod status;

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{FINALIZER, Flow, FlowRun, ResourceProfile};
use cairn_engine::launcher::HeldBy;
use cairn_engine::read;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use tracing::Instrument;

use super::error::{AtStage, Stage};
use super::{Context, Error, janitor};
pub use act::delete_token;
pub use pod_settings::PodSettings;
pub use resolve::{Invalid, Resolved, resolve};
pub use status::build_status;

/// What one scope's FlowRun controller reconciles with: the operator's context and the watch
/// caches of that scope's flow pods and Flows, and of the ResourceProfiles.
pub struct Scope {
    pub ctx: Arc<Context>,
    pub pods: Store<Pod>,
    pub flows: Store<Flow>,
    pub profiles: Store<ResourceProfile>,
}

pub async fn reconcile(run: Arc<FlowRun>, scope: Arc<Scope>) -> Result<Action, Error> {
    let ctx = &scope.ctx;
    // Statuses are built and patched from the one last written (see `WrittenStatuses`).
    let run = match ctx.written_status.seen(&run) {
        seen if seen != run.status => Arc::new(FlowRun {
            status: seen,
            ..FlowRun::clone(&run)
        }),
        _ => run,
    };
    let namespace = run.namespace().unwrap_or_default();
    // Every log line of this reconcile carries the run, its namespace and (once read) attempt.
    let span = tracing::info_span!(
        "flowrun",
        namespace = %namespace,
        run = %run.name_any(),
        attempt = tracing::field::Empty
    );
    let api: Api<FlowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let started = std::time::Instant::now();
    let outcome = async {
        // Its namespace is being deleted and its runs forgotten: registering it again would
        // bring them back.
        if ctx.forgotten_namespaces().contains(&namespace) {
            return Ok(Action::await_change());
        }
        // FlowRuns made by older operators carry a finalizer: it goes, since a finalizer
        // can outlive the operator's rights to remove it (`janitor`). A deleted FlowRun's run is
        // forgotten on the watch's delete event; one held by that finalizer, here.
        let legacy = run.finalizers().iter().any(|f| f == FINALIZER);
        if run.meta().deletion_timestamp.is_some() {
            if legacy {
                janitor::forget_deleted(ctx, &run).await;
                release_finalizer(&api, &run).await.at(Stage::Cleanup)?;
            }
            return Ok(Action::await_change());
        }
        let action = apply(&run, &scope).await?;
        if legacy {
            // `apply` bound the run to this FlowRun: the sweep now finds it if the delete
            // event is missed.
            release_finalizer(&api, &run).await.at(Stage::Cleanup)?;
        }
        Ok(action)
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if outcome.is_ok() {
        super::succeeded(ctx, run.as_ref());
    }
    outcome
}

/// The stages, in order, for a FlowRun that is not being deleted.
async fn apply(run: &FlowRun, scope: &Scope) -> Result<Action, Error> {
    let ctx = scope.ctx.as_ref();
    let referenced = dereference::fetch(run, scope)
        .await
        .at(Stage::Dereference)?;
    let namespace = run.namespace().unwrap_or_default();
    let resolved = match resolve(
        &run.spec,
        run.pod_settings_flow(),
        &namespace,
        referenced.flow.as_ref(),
        referenced.profile.as_ref(),
    ) {
        Ok(resolved) => resolved,
        Err(invalid) => {
            // Not a crash loop: report once, look again when something changes or in a minute.
            ctx.warn(run, invalid.reason, &invalid.message).await;
            let look_again = Action::requeue(Duration::from_secs(60));
            return report_invalid(ctx, run, &invalid, look_again).await;
        }
    };
    // A key is computed once: only a run not yet in the engine is stopped by a bad one.
    let key_error = resolved
        .concurrency
        .as_ref()
        .and_then(|c| c.key_error.as_ref());
    if let Some(invalid) = key_error.filter(|_| {
        run.status
            .as_ref()
            .and_then(|s| s.run_id.as_ref())
            .is_none()
    }) {
        ctx.warn(run, invalid.reason, &invalid.message).await;
        return report_invalid(ctx, run, invalid, Action::requeue(Duration::from_secs(60))).await;
    }
    let synced = match engine_sync::sync(ctx, run, &resolved)
        .await
        .at(Stage::SyncEngine)?
    {
        Ok(synced) => synced,
        Err(conflict) => return report_invalid(ctx, run, &conflict, Action::await_change()).await,
    };
    let record = synced.record;

    let observe::Observed { mut pods, pinned } = observe::cached(&scope.pods, run, &record);
    let children_ready = act::create_children(
        ctx,
        run,
        &record,
        pinned.as_deref(),
        &resolved,
        &scope.flows,
    )
    .await
    .at(Stage::Act)?;
    let seen_at = chrono::Utc::now();
    let mut next = decide::next(&record, &pods, seen_at);
    if decide::needs_listed_pods(&next) {
        pods = observe::listed(ctx, run, &record)
            .await
            .at(Stage::ObservePods)?;
        next = decide::next(&record, &pods, seen_at);
    }
    let launch = act::Launch {
        run,
        record: &record,
        resolved: &resolved,
        image: pinned.as_deref().unwrap_or(&resolved.image),
        deadline: synced.deadline,
    };
    let acted = act::act(ctx, launch, next, &pods, seen_at)
        .await
        .at(Stage::Act)?;
    // A run the budget held back queues for a slot; any other leaves the queue. (One held by
    // its Flow's concurrency is queued in the engine, which says when its turn may have come.)
    let for_slot = acted.held.as_ref().is_some_and(|h| h.by == HeldBy::Budget);
    ctx.queue_for_slot(run, for_slot);
    pods.extend(acted.launched);

    // The status from what the engine now says.
    let record = match acted.changed {
        true => read::find(&ctx.pool, &namespace, &run.name_any())
            .await
            .at(Stage::Act)?,
        false => record,
    };
    let status = build_status(
        run,
        &record,
        &pods,
        pinned,
        synced.retried,
        acted.held.as_ref(),
    );
    patch::patch_status(ctx, run, &status)
        .await
        .at(Stage::PatchStatus)?;
    super::history::tidy(ctx, run, &record, &pods).await;

    let due = requeue::Due {
        record: &record,
        pods: &pods,
        ttl: resolved
            .ttl_after_finished
            .or(ctx.config.default_ttl_after_finished()),
        deadline: synced.deadline,
        children_deferred: !children_ready,
        held: acted.held.is_some(),
    };
    let now = chrono::Utc::now();
    match requeue::after(&due, now) {
        requeue::After::Delete => {
            Api::<FlowRun>::namespaced(ctx.client.clone(), &namespace)
                .delete(&run.name_any(), &Default::default())
                .await
                .at(Stage::Expire)?;
            // Its run is forgotten on the delete event, like any deleted FlowRun's.
            Ok(Action::await_change())
        }
        requeue::After::LookAt(Some(at)) => {
            Ok(Action::requeue((at - now).to_std().unwrap_or_default()))
        }
        requeue::After::LookAt(None) => Ok(Action::await_change()),
    }
}

/// A run that cannot run as written shows why on its status (and its Ready condition).
async fn report_invalid(
    ctx: &Context,
    run: &FlowRun,
    invalid: &Invalid,
    then: Action,
) -> Result<Action, Error> {
    let status = status::invalid_status(run, invalid);
    patch::patch_status(ctx, run, &status)
        .await
        .at(Stage::PatchStatus)?;
    Ok(then)
}

/// A reconcile that failed: backs off, and at the start of a failure streak says why with a
/// Warning Event and, on the FlowRun, the condition `Reconciled` False (best effort: the API
/// server may be what fails).
pub fn on_error(run: Arc<FlowRun>, error: &Error, scope: Arc<Scope>) -> Action {
    let (action, said) = super::failed(run.as_ref(), error, scope.ctx.clone());
    if let Some(message) = said.filter(|_| run.meta().deletion_timestamp.is_none()) {
        let status = status::failing_status(&run, error.category().as_str(), &message);
        tokio::spawn(async move {
            if let Err(e) = patch::patch_status(&scope.ctx, &run, &status).await {
                tracing::debug!(error = %e, "cannot show the reconcile error on the FlowRun");
            }
        });
    }
    action
}

/// Removes the finalizer older operators put on FlowRuns (a JSON patch that tests it is still
/// there at that index, so no other finalizer is touched).
async fn release_finalizer(api: &Api<FlowRun>, run: &FlowRun) -> Result<(), kube::Error> {
    let Some(index) = run.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch = serde_json::json!([
        { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("a JSON patch");
    match api
        .patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        // Gone already, or changed meanwhile: the next event looks again.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        other => other.map(|_| ()),
    }
}
