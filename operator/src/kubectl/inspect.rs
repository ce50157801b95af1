//! `kubectl cairn inspect`: a run's FlowRun status with what the database knows (steps,
//! attempts, costs, children), read through the operator's read API, and its pods. Without the
//! read API it shows the status alone and says why the rest is missing.

use cairn_crds::{FlowRun, LABEL_ATTEMPT, LABEL_RUN};
use cairn_engine::read_api::RunDetail;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;

use super::client::{Kube, kube_error};
use super::logic;
use super::program;
use super::read_api::{ReadApi, ReadApiError};
use super::render::{self, Answer, Header, Inspect, KubeView, WaitLines};

impl Kube {
    /// `inspect`: the FlowRun's status with the read API's detail (steps, attempts, costs).
    pub async fn inspect(&self, name: &str) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let detail = async {
            let api = self.read_api();
            api.run(&self.namespace, name)
                .await
                .map_err(|e| explain_missing_detail(e, &api))
        };
        let (pods, detail) = tokio::join!(self.pods_of(&run), detail);
        let pods = pods.unwrap_or_default();
        if self.json {
            return self.print_json(&inspect_json(&run, &pods, &detail));
        }
        let status = run.status.clone().unwrap_or_default();
        let view = KubeView {
            pod: status.pod.clone(),
            image_digest: status.image_digest.clone(),
            condition: status.conditions.first().map(|c| c.message.clone()),
            pods: pods.iter().map(|(a, p)| (*a, p.name_any())).collect(),
        };
        let answer = |answer: Answer<'_>| approve_hint(&run, answer);
        let (header, detail, missing) = match &detail {
            Ok(detail) => (Header::of_detail(detail), Some(detail), None),
            Err(why) => (header_of(&run), None, Some(why)),
        };
        let inspect = Inspect {
            header,
            detail,
            kube: Some(&view),
            answer: Some(&answer),
        };
        print!(
            "{}",
            render::inspect_text(&inspect, &self.ui, chrono::Utc::now())
        );
        if let Some(why) = missing {
            eprintln!("\nwarning: steps, attempts and costs are not shown: {why}");
        }
        Ok(())
    }

    /// `inspect -o json`: the FlowRun, its pods, and the read API's detail (or why it is missing).
    pub async fn inspect_value(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let run = self.get_run(name).await?;
        let api = self.read_api();
        let detail = api
            .run(&self.namespace, name)
            .await
            .map_err(|e| explain_missing_detail(e, &api));
        let pods = self.pods_of(&run).await.unwrap_or_default();
        Ok(inspect_json(&run, &pods, &detail))
    }

    /// The engine's detail of a run this caller may read (the FlowRun is read first, so that
    /// RBAC and a missing run say so in kubectl's words).
    pub async fn run_detail(&self, name: &str) -> anyhow::Result<RunDetail> {
        self.get_run(name).await?;
        let api = self.read_api();
        api.run(&self.namespace, name)
            .await
            .map_err(|e| anyhow::anyhow!(explain_missing_detail(e, &api)))
    }

    /// `inspect --step KEY`: one step with its whole value (never a sensitive one's).
    pub async fn inspect_step(&self, name: &str, key: &str) -> anyhow::Result<()> {
        let api = self.read_api();
        let step = api
            .step(&self.namespace, name, key)
            .await
            .map_err(|e| match e {
                ReadApiError::NotFound(message) => super::input(message),
                other => anyhow::anyhow!(explain_missing_detail(other, &api)),
            })?;
        if self.json {
            return self.print_json(&step);
        }
        print!("{}", render::step_text(&step, &self.ui));
        Ok(())
    }

    /// The run's pods by attempt (deleted ones are missing).
    pub(super) async fn pods_of(&self, run: &FlowRun) -> anyhow::Result<Vec<(i32, Pod)>> {
        let Some(run_id) = run.status.as_ref().and_then(|s| s.run_id.clone()) else {
            return Ok(vec![]);
        };
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("{LABEL_RUN}={run_id}")))
            .await
            .map_err(|e| kube_error(e, "list pods"))?
            .items;
        let mut pods: Vec<(i32, Pod)> = pods
            .into_iter()
            .filter_map(|p| {
                let attempt = p.labels().get(LABEL_ATTEMPT)?.parse().ok()?;
                Some((attempt, p))
            })
            .collect();
        pods.sort_by_key(|(attempt, _)| *attempt);
        Ok(pods)
    }
}

fn inspect_json(
    run: &FlowRun,
    pods: &[(i32, Pod)],
    detail: &Result<RunDetail, String>,
) -> serde_json::Value {
    let (detail, error) = match detail {
        Ok(d) => (Some(d), None),
        Err(e) => (None, Some(e)),
    };
    json!({
        "flowRun": run,
        "pods": pods.iter().map(|(a, p)| json!({ "attempt": a, "pod": p.name_any() })).collect::<Vec<_>>(),
        "detail": detail,
        "detailError": error,
    })
}

/// What a FlowRun's status says of its run, for `inspect` without the engine's detail.
fn header_of(run: &FlowRun) -> Header {
    let status = run.status.clone().unwrap_or_default();
    let waiting = logic::waiting_summary(&status);
    let wait = status.waiting_for.as_ref();
    let cost = status.cost_usd.as_deref().and_then(|c| c.parse().ok());
    Header {
        name: run.name_any(),
        namespace: run.namespace().unwrap_or_default(),
        id: status
            .run_id
            .clone()
            .unwrap_or_else(|| "not registered yet".into()),
        flow: logic::flow_of(run),
        parent: run.parent_name().map(str::to_owned),
        fork: run
            .spec
            .fork_of
            .as_ref()
            .map(|fork| format!("from {} at step {}", fork.run, fork.step)),
        phase: status.phase,
        budget: status
            .budget_usd
            .as_deref()
            .and_then(|b| b.parse().ok())
            .map(|limit| (limit, cost.unwrap_or(0.0))),
        progress: format!(
            "execution {}, crashes {}, {} steps, {}",
            status.attempt.unwrap_or(0),
            status.crashes.unwrap_or(0),
            status.steps_completed.unwrap_or(0),
            render::money(cost.unwrap_or(0.0))
        ),
        created: run.metadata.creation_timestamp.as_ref().map(logic::to_utc),
        finished: status.finished_at.as_ref().map(logic::to_utc),
        waiting: (!waiting.is_empty()).then_some(waiting),
        wait: WaitLines {
            question: wait.and_then(|w| w.question.clone()),
            schema: wait.and_then(|w| w.schema.clone()),
            deadline: wait.and_then(|w| w.deadline.as_ref()).map(logic::to_utc),
            until: None,
            crash: None,
            event: wait.and_then(|w| w.event.clone()),
            budget: wait.and_then(|w| w.budget.as_ref()).map(|b| {
                let usd = |text: &str| text.parse().unwrap_or(0.0);
                (b.run.clone(), usd(&b.spent_usd), usd(&b.limit_usd))
            }),
        },
        result: status.result.clone(),
        error: status.error.clone(),
    }
}

/// How to answer a run's wait from here.
fn approve_hint(run: &FlowRun, answer: Answer<'_>) -> String {
    let name = run.name_any();
    let event = match answer {
        Answer::Event(event) => event,
        Answer::Budget { run, spent } => {
            return format!(
                "{} approve {run} --budget <USD above {}>",
                program(),
                render::money(spent)
            );
        }
    };
    if event == format!("approve-{name}") {
        format!("{} approve {name} --data <JSON, default true>", program())
    } else {
        format!(
            "{} approve {name} --data <JSON>  (event {event})",
            program()
        )
    }
}

/// Why `inspect` shows no detail, and what to do about it.
fn explain_missing_detail(error: ReadApiError, api: &ReadApi) -> String {
    match error {
        ReadApiError::NotFound(message) => format!(
            "{} does not know this run: {message} (the operator may not have registered it yet, or may not manage this namespace)",
            api.location
        ),
        ReadApiError::Unreachable(message) | ReadApiError::Failed(message) => message,
    }
}
