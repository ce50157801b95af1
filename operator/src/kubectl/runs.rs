//! `kubectl cairn runs`: the namespace's FlowRuns (or every namespace's), children under their
//! parents. It needs only the FlowRuns, not the operator.

use cairn_crds::FlowRun;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use super::client::{Kube, kube_error};
use super::logic;
use super::render;
use crate::lifecycle::Phase;

impl Kube {
    /// `runs`: FlowRuns of the namespace (or all), children under their parents.
    pub async fn list(
        &self,
        all_namespaces: bool,
        phases: &[Phase],
        flow: Option<&str>,
    ) -> anyhow::Result<()> {
        let api: Api<FlowRun> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.runs()
        };
        let runs = api
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error(e, "list FlowRuns"))?
            .items;
        let runs: Vec<&FlowRun> = runs
            .iter()
            .filter(|r| phases.is_empty() || logic::phase(r).is_some_and(|p| phases.contains(&p)))
            .filter(|r| flow.is_none_or(|f| logic::flow_of(r) == f))
            .collect();
        let rows: Vec<render::RunRow> = runs.iter().map(|r| logic::row_of(r)).collect();
        if self.json {
            let items: Vec<Value> = runs
                .iter()
                .zip(&rows)
                .map(|(run, row)| run_json(run, row))
                .collect();
            return self.print_json(&json!({ "runs": items }));
        }
        if rows.is_empty() {
            let filtered = if phases.is_empty() && flow.is_none() {
                ""
            } else {
                " matching the filters"
            };
            match all_namespaces {
                true => eprintln!("No FlowRuns{filtered} in any namespace."),
                false => eprintln!("No FlowRuns{filtered} in namespace {}.", self.namespace),
            }
            return Ok(());
        }
        let table = render::runs_table(&rows, all_namespaces, &self.ui, chrono::Utc::now());
        println!("{table}");
        Ok(())
    }
}

/// `runs -o json`: one run as agents read it.
fn run_json(run: &FlowRun, row: &render::RunRow) -> Value {
    let status = run.status.clone().unwrap_or_default();
    json!({
        "namespace": row.namespace,
        "name": row.name,
        "runId": status.run_id,
        "flow": row.flow,
        "phase": status.phase,
        "attempt": status.attempt,
        "stepsCompleted": status.steps_completed,
        "costUsd": row.usd,
        "waitingFor": status.waiting_for,
        "parent": row.parent,
        "createdAt": run.metadata.creation_timestamp,
        "finishedAt": status.finished_at,
        "error": status.error,
        "retryPending": logic::retry_pending(run),
    })
}
