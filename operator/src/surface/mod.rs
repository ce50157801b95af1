//! What the surfaces for people and agents (`cairn mcp`) see and do: the reads and the steering
//! of `kubectl cairn` over the user's own kube context (so Kubernetes RBAC decides what each
//! caller sees and may do), or of `cairn dev` over the local database. Each operation returns
//! what the command would print, never printing it: the same JSON as `-o json`, the same
//! sentences, the same errors.

pub mod console;
pub mod mcp;

use std::path::PathBuf;
use std::time::Duration;

use cairn_engine::read_api::{ArtifactList, RunDetail};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::controller::api;
use crate::dev;
use crate::kubectl::fork::ForkArgs;
use crate::kubectl::render::RunRow;
use crate::kubectl::{self, Kube, Until};
use crate::lifecycle::Phase;

/// How long answering a run waits to see it resume.
const RESUME_PATIENCE: Duration = Duration::from_secs(30);

/// Where runs are: a cluster, or the local database.
pub enum Backend {
    /// Through the user's kube context.
    Kube(Kube),
    /// The local database; `cairn dev up`'s server carries runs on.
    Dev {
        pool: PgPool,
        /// The flow binary runs start on when the caller names none.
        binary: Option<PathBuf>,
        /// The namespace of calls that name none.
        namespace: String,
    },
}

/// Which runs to list.
#[derive(Debug, Default)]
pub struct Filter {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub phase: Option<Phase>,
    pub flow: Option<String>,
}

/// A run to start.
pub struct Start {
    pub namespace: String,
    pub flow: String,
    pub input: Value,
    /// The idempotency key: the same name is the same run.
    pub name: Option<String>,
    /// What the run's tree may spend (US dollars): past it, it parks until raised.
    pub budget: Option<String>,
}

impl Backend {
    /// The namespace of a call that names none: the kube context's, or `default`.
    pub fn default_namespace(&self) -> String {
        match self {
            Backend::Kube(kube) => kube.namespace.clone(),
            Backend::Dev { namespace, .. } => namespace.clone(),
        }
    }

    /// Runs, as `runs -o json` lists them.
    pub async fn list(&self, filter: &Filter) -> anyhow::Result<Value> {
        let phases: Vec<Phase> = filter.phase.into_iter().collect();
        match self {
            Backend::Kube(kube) => {
                let all = filter.namespace.is_none();
                let kube = kube.capturing(filter.namespace.as_deref().unwrap_or(&kube.namespace));
                let runs = kube
                    .matching_runs(all, &phases, filter.flow.as_deref())
                    .await?;
                Ok(kubectl::runs_json(&runs))
            }
            Backend::Dev { pool, .. } => {
                let records = cairn_engine::read::list(pool, filter.namespace.as_deref()).await?;
                let runs: Vec<_> = api::summaries(&records)
                    .into_iter()
                    .filter(|r| phases.is_empty() || phases.contains(&r.phase))
                    .filter(|r| filter.flow.as_deref().is_none_or(|f| r.flow == f))
                    .collect();
                Ok(json!({ "runs": runs }))
            }
        }
    }

    /// Runs as the runs table shows them, the same for both backends (the console's list).
    pub async fn rows(&self, filter: &Filter) -> anyhow::Result<Vec<RunRow>> {
        let phases: Vec<Phase> = filter.phase.into_iter().collect();
        match self {
            Backend::Kube(kube) => {
                let all = filter.namespace.is_none();
                let kube = kube.capturing(filter.namespace.as_deref().unwrap_or(&kube.namespace));
                kube.matching_rows(all, &phases, filter.flow.as_deref())
                    .await
            }
            Backend::Dev { pool, .. } => {
                let records = cairn_engine::read::list(pool, filter.namespace.as_deref()).await?;
                Ok(api::summaries(&records)
                    .iter()
                    .filter(|r| phases.is_empty() || phases.contains(&r.phase))
                    .filter(|r| filter.flow.as_deref().is_none_or(|f| r.flow == f))
                    .map(RunRow::from)
                    .collect())
            }
        }
    }

    /// The engine's view of a run (steps, attempts, costs, children, open wait), the same for
    /// both backends (the console's run page).
    pub async fn detail(&self, namespace: &str, run: &str) -> anyhow::Result<RunDetail> {
        match self {
            Backend::Kube(kube) => kube.capturing(namespace).run_detail(run).await,
            Backend::Dev { pool, .. } => api::detail(pool, namespace, run)
                .await
                .map_err(dev::runs::not_found_is_a_mistake),
        }
    }

    /// A run's artifacts (objects its steps stored), as `artifacts -o json`.
    pub async fn artifacts(&self, namespace: &str, run: &str) -> anyhow::Result<ArtifactList> {
        match self {
            Backend::Kube(kube) => kube.capturing(namespace).artifact_list(run).await,
            Backend::Dev { pool, .. } => api::artifacts::list(pool, namespace, run)
                .await
                .map_err(dev::runs::not_found_is_a_mistake),
        }
    }

    /// One artifact's bytes, as `artifacts RUN get NAME`.
    pub async fn artifact(
        &self,
        namespace: &str,
        run: &str,
        name: &str,
    ) -> anyhow::Result<Vec<u8>> {
        match self {
            Backend::Kube(kube) => kube.capturing(namespace).artifact_bytes(run, name).await,
            Backend::Dev { pool, .. } => {
                let store = dev::artifacts::store()?;
                let (_, bytes) = api::artifacts::fetch(pool, Some(&store), namespace, run, name)
                    .await
                    .map_err(dev::runs::not_found_is_a_mistake)?;
                Ok(bytes.to_vec())
            }
        }
    }

    /// A run with its steps, attempts, costs, children and open wait, as `inspect -o json`.
    pub async fn inspect(&self, namespace: &str, run: &str) -> anyhow::Result<Value> {
        match self {
            Backend::Kube(kube) => kube.capturing(namespace).inspect_value(run).await,
            Backend::Dev { pool, .. } => {
                let detail = api::detail(pool, namespace, run)
                    .await
                    .map_err(dev::runs::not_found_is_a_mistake)?;
                Ok(serde_json::to_value(detail)?)
            }
        }
    }

    /// Answers the event run `run` waits for, the payload checked against the wait's schema,
    /// and says whether the run resumed (so that a `wait` after it sees the next state).
    pub async fn answer(
        &self,
        namespace: &str,
        run: &str,
        payload: Value,
    ) -> anyhow::Result<String> {
        let before = self.where_is(namespace, run).await?;
        let said = self.answer_only(namespace, run, payload).await?;
        Ok(self.and_resumed(said, namespace, run, before).await)
    }

    async fn answer_only(
        &self,
        namespace: &str,
        run: &str,
        payload: Value,
    ) -> anyhow::Result<String> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(namespace);
                kube.approve(run, payload, None).await?;
                Ok(kube.output())
            }
            Backend::Dev { pool, .. } => dev::steer::answer(pool, run, &payload, namespace).await,
        }
    }

    /// Raises the spend budget run `run` is parked at (its own, or a parent's) to `usd`, and
    /// says whether the run resumed.
    pub async fn raise_budget(
        &self,
        namespace: &str,
        run: &str,
        usd: &str,
    ) -> anyhow::Result<String> {
        let before = self.where_is(namespace, run).await?;
        let said = self.raise_budget_only(namespace, run, usd).await?;
        Ok(self.and_resumed(said, namespace, run, before).await)
    }

    async fn raise_budget_only(
        &self,
        namespace: &str,
        run: &str,
        usd: &str,
    ) -> anyhow::Result<String> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(namespace);
                kube.raise_budget(run, usd, None).await?;
                Ok(kube.output())
            }
            Backend::Dev { pool, .. } => dev::steer::set_budget(pool, run, usd, namespace).await,
        }
    }

    /// Starts a run (or finds the one of that name); says what was done.
    pub async fn start(&self, start: Start) -> anyhow::Result<(String, String)> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(&start.namespace);
                let (run, _) = kube
                    .start(
                        &start.flow,
                        start.input,
                        start.name.as_deref(),
                        start.budget.as_deref(),
                    )
                    .await?;
                Ok((kube::ResourceExt::name_any(&run), kube.output()))
            }
            Backend::Dev { pool, binary, .. } => {
                // Only the binary the server was started with: a caller may not name one to run.
                let binary = binary.clone().ok_or_else(|| {
                    kubectl::input(
                        "this server has no flow binary to start runs on: start it as \
                         `cairn mcp --dev --binary PATH` (a flow binary built with the cairn SDK)",
                    )
                })?;
                let mut args =
                    dev::run::local_run(binary, &start.flow, start.name, &start.namespace);
                args.budget = start.budget;
                let submitted = dev::run::submit(pool, &args, &start.input).await?;
                let message = format!(
                    "{}: {} (flow {}); {}",
                    submitted.name,
                    if submitted.created {
                        "started"
                    } else {
                        "already started"
                    },
                    start.flow,
                    dev::steer::who_carries_on(pool).await
                );
                Ok((submitted.name, message))
            }
        }
    }

    /// Cancels a run: a parked one ends now, a running one at its next step boundary.
    pub async fn cancel(&self, namespace: &str, run: &str) -> anyhow::Result<String> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(namespace);
                kube.cancel(run, None).await?;
                Ok(kube.output())
            }
            Backend::Dev { pool, .. } => dev::steer::cancel_run(pool, run, namespace).await,
        }
    }

    /// Runs a failed run again from its last checkpoint.
    pub async fn retry(&self, namespace: &str, run: &str) -> anyhow::Result<String> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(namespace);
                kube.retry(run, None).await?;
                Ok(kube.output())
            }
            Backend::Dev { pool, .. } => {
                let (record, _, _) = dev::run::make_runnable(pool, run, namespace).await?;
                Ok(format!(
                    "{}: retrying from its last checkpoint on the binary it started with; {}",
                    record.name,
                    dev::steer::who_carries_on(pool).await
                ))
            }
        }
    }

    /// A new run from another's checkpoints (see `kubectl::fork`).
    pub async fn fork(&self, namespace: &str, args: &ForkArgs) -> anyhow::Result<String> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(namespace);
                kube.fork(args, None).await?;
                Ok(kube.output())
            }
            Backend::Dev { pool, .. } => {
                let fork = dev::run::submit_fork(pool, args, None, namespace).await?;
                Ok(format!(
                    "{}; {}",
                    fork.message,
                    dev::steer::who_carries_on(pool).await
                ))
            }
        }
    }

    /// What a run's processes printed, execution by execution (or only `attempt`).
    pub async fn logs(
        &self,
        namespace: &str,
        run: &str,
        attempt: Option<i32>,
    ) -> anyhow::Result<String> {
        match self {
            Backend::Kube(kube) => {
                let kube = kube.capturing(namespace);
                kube.logs(run, attempt, false).await?;
                Ok(kube.output())
            }
            Backend::Dev { pool, .. } => dev::logs::read_logs(pool, run, namespace, attempt).await,
        }
    }

    /// Waits up to `timeout` for the run to be where `until` says; whether it got there. A run
    /// that can never get there (it finished otherwise) is an error saying so.
    pub async fn wait(
        &self,
        namespace: &str,
        run: &str,
        until: Until,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        let waited = async {
            match self {
                Backend::Kube(kube) => {
                    let kube = kube.capturing(namespace);
                    kube.get_run(run).await?;
                    // Our own timeout decides; the watch's is only a backstop.
                    let backstop = timeout * 2 + Duration::from_secs(60);
                    kube.wait_run(run, until, None, backstop).await.map(drop)
                }
                Backend::Dev { pool, .. } => {
                    dev::steer::wait_for(pool, namespace, run, Some(until), None)
                        .await
                        .map(drop)
                }
            }
        };
        match tokio::time::timeout(timeout, waited).await {
            Ok(reached) => reached.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// A run's phase and what it waits for, as its launcher last said.
    async fn where_is(&self, namespace: &str, run: &str) -> anyhow::Result<(Option<Phase>, Value)> {
        match self {
            Backend::Kube(kube) => {
                let run = kube.capturing(namespace).get_run(run).await?;
                let status = run.status.unwrap_or_default();
                Ok((status.phase, serde_json::to_value(status.waiting_for)?))
            }
            Backend::Dev { pool, .. } => {
                let record = cairn_engine::read::find(pool, namespace, run).await?;
                let wait = record.wait().map(cairn_engine::read_api::Wait::from);
                Ok((Some(record.phase), serde_json::to_value(wait)?))
            }
        }
    }

    /// What was `said`, and whether the run, parked where it was (`before`), left there within
    /// a while: an answered wait lingers until the launcher takes the run up again. Never an
    /// error: what was asked is done by then.
    async fn and_resumed(
        &self,
        said: String,
        namespace: &str,
        run: &str,
        before: (Option<Phase>, Value),
    ) -> String {
        if before.0 != Some(Phase::Waiting) {
            return said;
        }
        let deadline = tokio::time::Instant::now() + RESUME_PATIENCE;
        loop {
            let now = match self.where_is(namespace, run).await {
                Ok(now) => now,
                Err(e) => return format!("{said}\n(cannot tell whether {run} resumed: {e:#})"),
            };
            if now != before {
                let phase = now.0.map_or("unknown".into(), |p| p.to_string());
                return format!("{said}\n{run} resumed: now {phase}");
            }
            if tokio::time::Instant::now() > deadline {
                return format!(
                    "{said}\n{run} has not resumed yet (after {}s): the answer is recorded, do not \
                     send it again; wait_run follows it",
                    RESUME_PATIENCE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
