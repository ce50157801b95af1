//! What a failed check saw, for the test's output: the FlowRun's status, its pods and how they
//! ended, the engine's row and what else runs, busy database backends, the pods' last log lines,
//! the run's Events and the operators' lines about it.

use std::fmt::Write;

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;

use crate::scenario::{Scenario, pod_phase};

pub async fn explain(sc: &mut Scenario, run: &str) -> String {
    let mut out = String::new();
    let fr = sc.run(run).await;
    let status = fr
        .as_ref()
        .and_then(|r| serde_json::to_string(&r.status).ok())
        .unwrap_or_else(|| "the FlowRun is absent".into());
    let _ = writeln!(out, "    status: {status}");
    let id = fr.and_then(|r| r.status?.run_id).unwrap_or_default();
    for pod in sc.pods(&format!("cairn.dev/run={id}")).await {
        let state = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref()?.first()?.state.clone());
        let _ = writeln!(
            out,
            "    pod {}: {} {}",
            pod.metadata.name.as_deref().unwrap_or("?"),
            pod_phase(&pod),
            serde_json::to_string(&state).unwrap_or_default()
        );
    }
    let ns = sc.ns.clone();
    let queries = [
        format!(
            "SELECT concat_ws(' ', 'engine: state', state, 'attempt', attempt, 'cancel_requested', \
             cancel_requested, 'steps', (SELECT count(*) FROM cairn.steps s WHERE s.run_id = r.id), \
             'updated', updated_at) FROM cairn.runs r WHERE namespace = '{ns}' AND name = '{}'",
            run.replace('\'', "''")
        ),
        format!(
            "SELECT 'running in the namespace: ' || coalesce(string_agg(name || ' (attempt ' || \
             attempt || ')', ', '), 'none') FROM cairn.runs WHERE namespace = '{ns}' AND state = 'running'"
        ),
        "SELECT concat_ws(' ', 'busy backend', pid, usename, state, wait_event_type, wait_event, \
         'blocked by', pg_blocking_pids(pid), 'for', now() - query_start, left(query, 70)) \
         FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' \
         AND pid <> pg_backend_pid()"
            .into(),
    ];
    match sc.pool().await {
        Ok(pool) => {
            for q in queries {
                match sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(q))
                    .fetch_all(&pool)
                    .await
                {
                    Ok(rows) => rows.iter().for_each(|r| {
                        let _ = writeln!(out, "    {r}");
                    }),
                    Err(e) => {
                        let _ = writeln!(out, "    (engine: {e})");
                    }
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "    (no database: {e:#})");
        }
    }
    for pod in sc.pods_of(run).await {
        let log = sc.log_of(&pod).await;
        for line in crate::operator::tail(&log, 6).lines() {
            let _ = writeln!(out, "    {pod}: {line}");
        }
    }
    let events = sc
        .api::<Event>()
        .list(&ListParams::default().fields(&format!("involvedObject.name={run}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for e in events.iter().rev().take(8).rev() {
        let _ = writeln!(
            out,
            "    event: {} {}: {}",
            e.type_.as_deref().unwrap_or(""),
            e.reason.as_deref().unwrap_or(""),
            e.message.as_deref().unwrap_or("")
        );
    }
    for line in sc.operator_lines(&format!("\"{run}\""), 15).lines() {
        let _ = writeln!(out, "    operator: {line}");
    }
    out
}
