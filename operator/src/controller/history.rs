//! What a run leaves behind, kept small: of a run's finished pods only the newest few stay,
//! for `kubectl logs` (like a Job's history); an attempt's token Secret is deleted once the
//! attempt ended (the engine revoked the token then already); events expire after the
//! retention period. What to delete is chosen purely; `tidy` does the deleting.

use std::ops::RangeInclusive;

use cairn_crds::{FlowRun, FlowRunStatus};
use cairn_engine::Phase;
use cairn_engine::read::RunRecord;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

use super::{Context, pod};

/// Finished pods beyond the newest `keep` (by attempt), never the current attempt's.
pub fn pods_beyond_history(pods: &[Pod], current_attempt: i32, keep: usize) -> Vec<&Pod> {
    let finished = |p: &&Pod| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed"))
            && pod::attempt_of(p).is_some_and(|a| a != current_attempt)
    };
    let mut old: Vec<&Pod> = pods.iter().filter(finished).collect();
    old.sort_by_key(|p| std::cmp::Reverse(pod::attempt_of(p)));
    old.into_iter().skip(keep).collect()
}

/// The attempts that ended since the status last written (`previous`): the attempt it showed
/// running, if that one is not running now, and any started and ended in between. Usually
/// empty or one.
pub fn ended_attempts(previous: Option<&FlowRunStatus>, record: &RunRecord) -> RangeInclusive<i32> {
    let shown = previous.and_then(|s| s.attempt).unwrap_or(0);
    let shown_running = previous.and_then(|s| s.phase) == Some(Phase::Running);
    let first = if shown_running { shown } else { shown + 1 };
    let last = match record.phase {
        Phase::Running => record.attempt - 1,
        _ => record.attempt,
    };
    first.max(1)..=last
}

/// Deletes the pods `pods_beyond_history` selects and the token Secrets of the attempts
/// `ended_attempts` finds. Best effort: a pod that fails here is tried again at the next
/// change; anything left goes with the FlowRun, which owns it.
pub async fn tidy(ctx: &Context, run: &FlowRun, record: &RunRecord, pods: &[Pod]) {
    let namespace = run.namespace().unwrap_or_default();
    let keep = usize::from(ctx.config.finished_pods_kept);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for old in pods_beyond_history(pods, record.attempt, keep) {
        let name = old.name_any();
        if let Err(e) = pods_api.delete(&name, &Default::default()).await {
            tracing::warn!(pod = %name, error = %e, "cannot delete a finished pod beyond the history");
        }
    }
    let run_id = record.id.to_string();
    for attempt in ended_attempts(run.status.as_ref(), record) {
        super::flowrun::delete_token(ctx, &namespace, &run_id, attempt).await;
    }
}

/// Deletes events older than the retention (`--event-retention`) in the namespaces this
/// operator manages, hourly. Runs are not touched here: they go with their FlowRuns.
pub async fn expire_events(ctx: std::sync::Arc<Context>) {
    let retention = ctx.config.event_retention;
    if retention.is_zero() {
        return;
    }
    let namespaces: Vec<Option<String>> = match ctx.config.namespaces() {
        Some(named) => named.into_iter().map(Some).collect(),
        None => vec![None],
    };
    loop {
        let before = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or_default();
        for namespace in &namespaces {
            let collected = async {
                let mut conn = ctx.pool.acquire().await?;
                cairn_engine::launcher::gc(&mut conn, None, Some(before), namespace.as_deref())
                    .await
                    .map_err(super::Error::from)
            }
            .await;
            match collected {
                Ok(c) if c.events > 0 => tracing::info!(
                    events = c.events,
                    ?namespace,
                    "deleted events past their retention"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete old events; trying again in an hour")
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Deletes, every few minutes, the artifacts no checkpoint refers to any more (their runs
/// were deleted) from the artifact store, in the namespaces this operator manages.
pub async fn expire_artifacts(ctx: std::sync::Arc<Context>) {
    let Some(store) = ctx.artifacts.clone() else {
        return;
    };
    let namespaces = ctx.config.namespaces();
    loop {
        match cairn_engine::launcher::collect_artifacts(
            &ctx.pool,
            &store,
            namespaces.as_deref(),
            ctx.config.artifact_grace,
        )
        .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted artifacts no run refers to"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot delete unreferenced artifacts yet; trying again later")
            }
        }
        tokio::time::sleep(
            ARTIFACT_SWEEP_EVERY.min(
                ctx.config
                    .artifact_grace
                    .max(std::time::Duration::from_secs(5)),
            ),
        )
        .await;
    }
}

/// How often [`expire_artifacts`] looks (or the grace period, when shorter).
const ARTIFACT_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::LABEL_ATTEMPT;
    use serde_json::json;

    fn pod(attempt: i32, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": format!("p-a{attempt}"),
                          "labels": { LABEL_ATTEMPT: attempt.to_string() } },
            "status": { "phase": phase }
        }))
        .unwrap()
    }

    #[test]
    fn an_attempt_ends_when_the_status_showed_it_running_and_the_engine_no_longer_does() {
        use crate::controller::flowrun::fixtures::record;
        let shown = |phase: Phase, attempt: i32| FlowRunStatus {
            phase: Some(phase),
            attempt: Some(attempt),
            ..Default::default()
        };
        let ended = |previous: Option<FlowRunStatus>, phase, attempt| {
            ended_attempts(previous.as_ref(), &record(phase, attempt)).collect::<Vec<_>>()
        };
        // Launched: nothing ended.
        assert!(ended(None, Phase::Pending, 0).is_empty());
        assert!(ended(Some(shown(Phase::Pending, 0)), Phase::Running, 1).is_empty());
        // Finished, crashed or parked: the attempt shown running ended.
        assert_eq!(
            ended(Some(shown(Phase::Running, 1)), Phase::Succeeded, 1),
            [1]
        );
        assert_eq!(
            ended(Some(shown(Phase::Running, 2)), Phase::Retrying, 2),
            [2]
        );
        assert_eq!(
            ended(Some(shown(Phase::Running, 1)), Phase::Waiting, 1),
            [1]
        );
        // A relaunch after a park: the old attempt ended, the new one runs.
        assert_eq!(
            ended(Some(shown(Phase::Running, 1)), Phase::Running, 2),
            [1]
        );
        // An attempt that ran and ended between two statuses.
        assert_eq!(
            ended(Some(shown(Phase::Pending, 0)), Phase::Succeeded, 1),
            [1]
        );
        // Already handled when the status was written: nothing again.
        assert!(ended(Some(shown(Phase::Waiting, 1)), Phase::Waiting, 1).is_empty());
        assert!(ended(Some(shown(Phase::Waiting, 1)), Phase::Running, 2).is_empty());
    }

    #[test]
    fn only_the_newest_finished_pods_are_kept_and_never_the_current_one() {
        let pods = vec![
            pod(1, "Failed"),
            pod(2, "Succeeded"),
            pod(3, "Succeeded"),
            pod(4, "Running"),
            pod(5, "Succeeded"),
        ];
        let names = |selected: Vec<&Pod>| -> Vec<String> {
            selected.into_iter().map(|p| p.name_any()).collect()
        };
        assert_eq!(names(pods_beyond_history(&pods, 5, 2)), ["p-a1"]);
        assert_eq!(names(pods_beyond_history(&pods, 5, 1)), ["p-a2", "p-a1"]);
        assert!(pods_beyond_history(&pods, 5, 5).is_empty());
        // The current attempt's pod is kept even when it finished.
        assert_eq!(
            names(pods_beyond_history(&pods, 3, 0)),
            ["p-a5", "p-a2", "p-a1"]
        );
    }
}
