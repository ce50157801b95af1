//! Forgetting runs whose FlowRun is gone. FlowRuns carry no finalizer: a finalizer outlives
//! the operator's rights when a namespace is deleted (its RoleBinding may go first) and would
//! keep the namespace Terminating for ever. Instead:
//!
//! - the watch's delete event forgets the FlowRun's run at once (`forget_deleted`);
//! - every [`SWEEP_EVERY`], runs bound to a FlowRun the watch cache does not hold are checked
//!   against the API server, and forgotten when it says the FlowRun is gone (a delete the
//!   operator missed: it was down, or its watch was between connections);
//! - with given namespaces, a namespace found gone or being deleted is forgotten whole (its
//!   runs and events), and its runs are left alone by the reconciles from then on. The
//!   operator may `get` each namespace it watches (a ClusterRole limited to their names), a
//!   right that survives the namespace's RoleBinding.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_crds::FlowRun;
use cairn_engine::launcher;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use uuid::Uuid;

use super::Context;

/// How often the sweep runs (a namespace's rows go within this of its deletion).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// On the watch's delete event: forget the FlowRun's run (best effort: the sweep retries).
pub async fn forget_deleted(ctx: &Context, run: &FlowRun) {
    let Some(uid) = run.uid().and_then(|u| u.parse::<Uuid>().ok()) else {
        return;
    };
    let namespace = run.namespace().unwrap_or_default();
    ctx.queue_for_slot(run, false);
    match launcher::forget_flowrun(&ctx.pool, uid, &namespace, &run.name_any()).await {
        Ok(true) => {
            tracing::info!(%namespace, run = %run.name_any(), "FlowRun deleted: its run is forgotten")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(%namespace, run = %run.name_any(), error = %e, "cannot forget a deleted FlowRun's run yet; the sweep will")
        }
    }
}

/// Sweeps one scope (a namespace, or `None`: all) for as long as the operator acts, first
/// after [`SWEEP_EVERY`] (the cache of FlowRuns is full by then; it only spares requests: each
/// run forgotten is confirmed gone by the API server).
pub async fn sweep(ctx: Arc<Context>, scope: Option<String>, runs: Store<FlowRun>) {
    let mut warned = false;
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if let Some(namespace) = &scope {
            forget_namespace_if_gone(&ctx, namespace, &mut warned).await;
        }
        if let Err(e) = forget_missed(&ctx, scope.as_deref(), &runs).await {
            tracing::warn!(error = %format!("{e:#}"), "sweeping runs of deleted FlowRuns failed; trying again later");
        }
    }
}

async fn forget_namespace_if_gone(ctx: &Context, namespace: &str, warned: &mut bool) {
    let found = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(namespace)
        .await;
    let going = match found {
        Ok(None) => true,
        Ok(Some(ns)) => ns.metadata.deletion_timestamp.is_some(),
        Err(e) => {
            if !*warned {
                tracing::warn!(%namespace, error = %e, "cannot read the watched namespace: if it is deleted, its runs stay in the database until it can be read (the chart grants `get` on each watched namespace)");
                *warned = true;
            }
            return;
        }
    };
    if !going {
        ctx.forgotten_namespaces().remove(namespace);
        return;
    }
    let first = ctx.forgotten_namespaces().insert(namespace.to_owned());
    match launcher::forget_namespace(&ctx.pool, namespace).await {
        Ok(runs) if first || runs > 0 => {
            tracing::info!(%namespace, runs, "the namespace is being deleted: its runs and events are forgotten");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%namespace, error = %e, "cannot forget the deleted namespace's runs yet")
        }
    }
}

/// Runs bound to a FlowRun not in the cache, whose FlowRun the API server says is gone.
async fn forget_missed(
    ctx: &Context,
    scope: Option<&str>,
    runs: &Store<FlowRun>,
) -> anyhow::Result<()> {
    let cached: HashSet<String> = runs.state().iter().filter_map(|r| r.uid()).collect();
    let bound = launcher::bound_flowruns(&ctx.pool, scope).await?;
    tracing::debug!(cached = cached.len(), bound = bound.len(), "sweep");
    for (uid, namespace, name) in bound {
        if cached.contains(&uid.to_string()) || ctx.forgotten_namespaces().contains(&namespace) {
            continue;
        }
        // Not cached may be not yet cached: only the API server's answer counts.
        let now = Api::<FlowRun>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&name)
            .await?;
        if now.is_none_or(|run| run.uid().as_deref() != Some(&uid.to_string()))
            && launcher::forget_flowrun(&ctx.pool, uid, &namespace, &name).await?
        {
            tracing::info!(%namespace, run = %name, "its FlowRun was deleted unseen: its run is forgotten");
        }
    }
    Ok(())
}
