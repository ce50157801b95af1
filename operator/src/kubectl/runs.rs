//! `kubectl cairn runs`: the namespace's FlowRuns (or every namespace's), children under their
//! parents. It needs only the FlowRuns, not the operator. And starting a run (`cairn mcp`).

use cairn_crds::{Budget, Flow, FlowRun, FlowRunSpec};
use kube::Api;
use kube::api::{ListParams, PostParams};
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
        let runs = self.matching_runs(all_namespaces, phases, flow).await?;
        if self.json {
            return self.print_json(&runs_json(&runs));
        }
        let rows: Vec<render::RunRow> = runs.iter().map(logic::row_of).collect();
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

impl Kube {
    /// FlowRuns of the namespace (or all), of some phases (or any) and of one flow (or any).
    pub async fn matching_runs(
        &self,
        all_namespaces: bool,
        phases: &[Phase],
        flow: Option<&str>,
    ) -> anyhow::Result<Vec<FlowRun>> {
        let api: Api<FlowRun> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.runs()
        };
        let mut runs = api
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error(e, "list FlowRuns"))?
            .items;
        runs.retain(|r| {
            (phases.is_empty() || logic::phase(r).is_some_and(|p| phases.contains(&p)))
                && flow.is_none_or(|f| logic::flow_of(r) == f)
        });
        Ok(runs)
    }

    /// `matching_runs` as the runs table's rows.
    pub async fn matching_rows(
        &self,
        all_namespaces: bool,
        phases: &[Phase],
        flow: Option<&str>,
    ) -> anyhow::Result<Vec<render::RunRow>> {
        let runs = self.matching_runs(all_namespaces, phases, flow).await?;
        Ok(runs.iter().map(logic::row_of).collect())
    }
}

/// `runs -o json`: the runs as agents read them.
pub fn runs_json(runs: &[FlowRun]) -> Value {
    let items: Vec<Value> = runs
        .iter()
        .map(|run| run_json(run, &logic::row_of(run)))
        .collect();
    json!({ "runs": items })
}

/// One run as agents read it.
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

impl Kube {
    /// Starts a run of Flow `flow` with `input`: a FlowRun named `name` (or `<flow>-<random>`).
    /// The name is the run's idempotency key: the same name with the same flow and input is
    /// the run already started; with other ones, a mistake.
    pub async fn start(
        &self,
        flow: &str,
        input: Value,
        name: Option<&str>,
        budget: Option<&str>,
    ) -> anyhow::Result<(FlowRun, bool)> {
        let budget = budget
            .map(|usd| super::budget::parse_budget(usd).map(|(_, text)| Budget { usd: text }))
            .transpose()?;
        let flows: Api<Flow> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Ok(None) = flows.get_opt(flow).await {
            return Err(super::input(format!(
                "no Flow {flow} in namespace {} (`kubectl get flows -n {}` lists them)",
                self.namespace, self.namespace
            )));
        }
        let name = name.map(str::to_owned).unwrap_or_else(|| {
            format!("{flow}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        });
        let spec = FlowRunSpec {
            flow_ref: Some(flow.to_owned()),
            input: Some(input.clone()),
            budget,
            ..Default::default()
        };
        let run = FlowRun::new(&name, spec);
        match self.runs().create(&PostParams::default(), &run).await {
            Ok(created) => {
                self.say(format!("{name}: started (Flow {flow}, input {input})"));
                Ok((created, true))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = self.get_run(&name).await?;
                let same = existing.spec.flow_ref.as_deref() == Some(flow)
                    && existing.spec.input.clone().unwrap_or(Value::Null) == input;
                if !same {
                    return Err(super::input(format!(
                        "a FlowRun named {name} exists already with another flow or input: \
                         give the run another name"
                    )));
                }
                self.say(format!(
                    "{name}: already started with this flow and input ({})",
                    logic::describe(&existing)
                ));
                Ok((existing, false))
            }
            Err(e) => Err(kube_error(e, "create FlowRuns")),
        }
    }
}
