//! `kubectl cairn`: runs on Kubernetes, through the current kube context. FlowRuns and
//! FlowEvents are the interface (so Kubernetes RBAC decides who may approve, cancel or retry);
//! the operator's read API adds what the database knows (steps, attempts, costs).
//!
//! Exit codes: 0 done, 1 the operation failed (cluster or operator unreachable, a run in a state
//! that does not allow it, a wait that ended elsewhere or timed out), 2 the input was wrong
//! (unknown run, bad JSON, a payload failing the schema).

mod logic;
mod read_api;
pub mod render;

use std::fmt::Debug;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use cairn_crds::{
    FlowEvent, FlowEventSpec, FlowRun, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_PARENT, LABEL_RUN,
    MANAGED_BY_KUBECTL, RETRY_ANNOTATION,
};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::lifecycle::Phase;
pub use logic::Until;
use logic::Verdict;
use read_api::{ReadApi, ReadApiError};
use render::{KubeView, Ui};

/// A mistake in what was asked (exit code 2), as opposed to an operation that failed (1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

fn input(message: impl Into<String>) -> anyhow::Error {
    InputError(message.into()).into()
}

/// The exit code for an error of a `kubectl cairn` command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.is::<InputError>()) {
        2
    } else {
        1
    }
}

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// How the user invoked us, for hints: `kubectl cairn` (as a kubectl plugin) or `cairn`.
pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("cairn")
}

pub fn set_program(name: &'static str) {
    let _ = PROGRAM.set(name);
}

/// Where to find the cluster and the operator (the flags every command shares).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub operator_namespace: String,
    pub operator_service: String,
    pub api_url: Option<String>,
}

/// A connection to the cluster, in one namespace.
pub struct Kube {
    client: Client,
    pub namespace: String,
    target: Target,
    ui: Ui,
    json: bool,
}

impl Kube {
    pub async fn connect(target: Target, json: bool) -> anyhow::Result<Kube> {
        let config = match &target.context {
            Some(context) => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                Config::from_kubeconfig(&options).await.map_err(|e| {
                    let known = Kubeconfig::read()
                        .ok()
                        .map(|k| {
                            k.contexts
                                .iter()
                                .map(|c| c.name.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .filter(|known| !known.is_empty())
                        .map(|known| format!(" (contexts: {known})"))
                        .unwrap_or_default();
                    input(format!("cannot use kube context \"{context}\": {e}{known}"))
                })?
            }
            None => Config::infer().await.map_err(|e| {
                anyhow!(
                    "no Kubernetes cluster to talk to: {e}\n  set KUBECONFIG or ~/.kube/config as for kubectl (`kubectl config current-context`), or use --context; `{} dev ...` works without a cluster",
                    program()
                )
            })?,
        };
        let namespace = target
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let cluster = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .with_context(|| format!("cannot set up a client for the cluster at {cluster}"))?;
        Ok(Kube {
            client,
            namespace,
            target,
            ui: Ui::detect(),
            json,
        })
    }

    fn runs(&self) -> Api<FlowRun> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn events(&self) -> Api<FlowEvent> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn read_api(&self) -> anyhow::Result<ReadApi> {
        Ok(match &self.target.api_url {
            Some(url) => ReadApi::at_url(url)?,
            None => ReadApi::through_proxy(
                self.client.clone(),
                &self.target.operator_namespace,
                &self.target.operator_service,
            ),
        })
    }

    /// The FlowRun, or an input error naming where it was looked for.
    async fn get_run(&self, name: &str) -> anyhow::Result<FlowRun> {
        let found = self
            .runs()
            .get_opt(name)
            .await
            .map_err(|e| kube_error(e, "read FlowRuns"))?;
        found.ok_or_else(|| {
            input(format!(
                "FlowRun \"{name}\" not found in namespace \"{}\" (see `{} runs`, or pass -n NAMESPACE)",
                self.namespace,
                program()
            ))
        })
    }

    /// A spinner on stderr when it is a terminal (and the output is not JSON for a program).
    fn spinner(&self, message: String) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let spinner = ProgressBar::new_spinner();
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.set_message(message);
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    }

    /// Watches one object until `check` says done (`Some`), fails, or `timeout` passes.
    /// `check` gets `None` when the object does not exist (any more).
    async fn watch_until<K, T>(
        &self,
        api: Api<K>,
        name: &str,
        timeout: Duration,
        goal: &str,
        progress: impl Fn(&K) -> String,
        mut check: impl FnMut(Option<&K>) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let spinner = self.spinner(format!("{name}: waiting to {goal}"));
        let mut stream = std::pin::pin!(watch_object(api, name).default_backoff());
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last = String::from("not seen yet");
        let mut errors = 0;
        let outcome = loop {
            tokio::select! {
                _ = &mut deadline => break Err(anyhow!(
                    "timed out after {} waiting for {name} to {goal}; it is {last}",
                    humantime::format_duration(timeout)
                )),
                next = stream.next() => match next {
                    None => break Err(anyhow!("the watch of {name} ended unexpectedly")),
                    Some(Err(e)) => {
                        errors += 1;
                        if errors >= 5 {
                            break Err(anyhow!("cannot watch {name}: {e}"));
                        }
                    }
                    Some(Ok(object)) => {
                        errors = 0;
                        if let Some(object) = &object {
                            last = progress(object);
                            spinner.set_message(format!("{name}: waiting to {goal}; now {last}"));
                        }
                        match check(object.as_ref()) {
                            Ok(Some(done)) => break Ok(done),
                            Ok(None) => {}
                            Err(e) => break Err(e),
                        }
                    }
                },
            }
        };
        spinner.finish_and_clear();
        outcome
    }

    /// Waits until the FlowRun is where `until` says (with `event`: waiting for that event).
    async fn wait_run(
        &self,
        name: &str,
        until: Until,
        event: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<FlowRun> {
        let goal = match event {
            Some(event) => format!("be {until} for event {event}"),
            None => format!("be {until}"),
        };
        self.watch_until(self.runs(), name, timeout, &goal, logic::describe, |run| {
            let Some(run) = run else {
                bail!("FlowRun {name} was deleted while waiting for it to {goal}");
            };
            match logic::verdict(run, until, event) {
                Verdict::Reached => Ok(Some(run.clone())),
                Verdict::NotYet => Ok(None),
                Verdict::Never(why) => Err(anyhow!(why)),
            }
        })
        .await
    }

    fn print_json(&self, value: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// A line for people (not printed with `-o json`).
    fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }

    // ---- commands ----------------------------------------------------------------------------

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

    /// `inspect`: the FlowRun's status with the read API's detail (steps, attempts, costs).
    pub async fn inspect(&self, name: &str) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let detail = async {
            match self.read_api() {
                Ok(api) => api
                    .run(&self.namespace, name)
                    .await
                    .map_err(|e| explain_missing_detail(e, &api)),
                Err(e) => Err(format!("{e:#}")),
            }
        };
        let (pods, detail) = tokio::join!(self.pods_of(&run), detail);
        let pods = pods.unwrap_or_default();
        if self.json {
            let (detail, error) = match &detail {
                Ok(d) => (Some(d), None),
                Err(e) => (None, Some(e.clone())),
            };
            return self.print_json(&json!({
                "flowRun": run,
                "pods": pods.iter().map(|(a, p)| json!({ "attempt": a, "pod": p.name_any() })).collect::<Vec<_>>(),
                "detail": detail,
                "detailError": error,
            }));
        }
        let status = run.status.clone().unwrap_or_default();
        let view = KubeView {
            pod: status.pod.clone(),
            image_digest: status.image_digest.clone(),
            condition: status.conditions.first().map(|c| c.message.clone()),
            pods: pods.iter().map(|(a, p)| (*a, p.name_any())).collect(),
        };
        let now = chrono::Utc::now();
        let answer = |event: &str| approve_hint(&run, event);
        match detail {
            Ok(detail) => print!(
                "{}",
                render::detail_text(&detail, Some(&view), Some(&answer), &self.ui, now)
            ),
            Err(why) => {
                print!("{}", status_text(&run, &view, &self.ui, now));
                eprintln!("\nwarning: steps, attempts and costs are not shown: {why}");
            }
        }
        Ok(())
    }

    /// `approve`: answers the event the run waits for, after checking the payload.
    pub async fn approve(
        &self,
        name: &str,
        payload: Value,
        wait: Option<Duration>,
    ) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let waiting = run.status.as_ref().and_then(|s| s.waiting_for.as_ref());
        let Some(event) = waiting.and_then(|w| w.event.clone()) else {
            bail!(logic::not_waiting_for_event(&run));
        };
        let schema = waiting.and_then(|w| w.schema.as_ref());
        logic::check_payload(name, &event, schema, &payload).map_err(input)?;
        let (object, created) = self.create_event(&event, &payload).await?;
        self.say(format!(
            "{name}: {} event {event} with payload {payload} (FlowEvent {object})",
            if created {
                "approved"
            } else {
                "already approved"
            }
        ));
        let mut phase = logic::phase(&run);
        if let Some(timeout) = wait {
            self.wait_delivered(&object, timeout).await?;
            let resumed = self
                .watch_until(
                    self.runs(),
                    name,
                    timeout,
                    &format!("resume after event {event}"),
                    logic::describe,
                    |run| {
                        let Some(run) = run else {
                            bail!("FlowRun {name} was deleted");
                        };
                        let still = logic::phase(run) == Some(Phase::Waiting)
                            && run
                                .status
                                .as_ref()
                                .and_then(|s| s.waiting_for.as_ref())
                                .and_then(|w| w.event.as_deref())
                                == Some(event.as_str());
                        Ok((!still).then(|| run.clone()))
                    },
                )
                .await?;
            phase = logic::phase(&resumed);
            self.say(format!(
                "{name}: resumed; now {}",
                logic::describe(&resumed)
            ));
        }
        if self.json {
            self.print_json(&json!({
                "run": name,
                "event": event,
                "payload": payload,
                "flowEvent": object,
                "created": created,
                "phase": phase,
            }))?;
        }
        Ok(())
    }

    /// `emit`: creates a FlowEvent, after checking the payload against every run waiting for it.
    pub async fn emit(&self, event: &str, payload: Value) -> anyhow::Result<()> {
        if event.is_empty() {
            return Err(input("the event name is empty"));
        }
        let runs = self
            .runs()
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error(e, "list FlowRuns"))?
            .items;
        let mut waiting = Vec::new();
        for run in &runs {
            let wait = run.status.as_ref().and_then(|s| s.waiting_for.as_ref());
            if wait.and_then(|w| w.event.as_deref()) == Some(event) {
                logic::check_payload(
                    &run.name_any(),
                    event,
                    wait.and_then(|w| w.schema.as_ref()),
                    &payload,
                )
                .map_err(input)?;
                waiting.push(run.name_any());
            }
        }
        let (object, created) = self.create_event(event, &payload).await?;
        if self.json {
            return self.print_json(&json!({
                "event": event,
                "payload": payload,
                "flowEvent": object,
                "created": created,
                "waiting": waiting,
            }));
        }
        let verb = if created {
            "emitted"
        } else {
            "was already emitted with this payload"
        };
        let who = if waiting.is_empty() {
            "no run waits for it now (events are kept: a run that waits for it later gets it)"
                .to_owned()
        } else {
            format!("waiting for it: {}", waiting.join(", "))
        };
        println!("event {event} {verb} (FlowEvent {object}); {who}");
        Ok(())
    }

    /// Creates the FlowEvent for `event`; an identical one already there is fine (events are
    /// write-once). Returns its name and whether it was created now.
    async fn create_event(&self, event: &str, payload: &Value) -> anyhow::Result<(String, bool)> {
        let object = logic::flowevent_name(event);
        let mut flowevent = FlowEvent::new(
            &object,
            FlowEventSpec {
                event: event.to_owned(),
                payload: Some(payload.clone()),
            },
        );
        flowevent
            .labels_mut()
            .insert(LABEL_MANAGED.into(), MANAGED_BY_KUBECTL.into());
        match self
            .events()
            .create(&PostParams::default(), &flowevent)
            .await
        {
            Ok(_) => Ok((object, true)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = self
                    .events()
                    .get(&object)
                    .await
                    .map_err(|e| kube_error(e, "read FlowEvents"))?;
                let same = existing.spec.event == event
                    && existing.spec.payload.clone().unwrap_or(Value::Null) == *payload;
                if !same {
                    return Err(input(format!(
                        "FlowEvent {object} already exists with {} (events are write-once): \
                         `kubectl -n {} get flowevent {object} -o yaml` shows it",
                        if existing.spec.event == event {
                            format!(
                                "another payload, {}",
                                existing.spec.payload.clone().unwrap_or(Value::Null)
                            )
                        } else {
                            format!("event {}", existing.spec.event)
                        },
                        self.namespace
                    )));
                }
                if let Some(status) = &existing.status
                    && status.delivered == Some(false)
                {
                    bail!(
                        "FlowEvent {object} exists but was refused: {}",
                        status.message.as_deref().unwrap_or("no reason given")
                    );
                }
                Ok((object, false))
            }
            Err(e) => Err(kube_error(e, "create FlowEvents")),
        }
    }

    /// Waits for the operator to deliver a FlowEvent (or refuse it, saying why).
    async fn wait_delivered(&self, object: &str, timeout: Duration) -> anyhow::Result<()> {
        self.watch_until(
            self.events(),
            object,
            timeout,
            "be delivered",
            |e: &FlowEvent| match e.status.as_ref().and_then(|s| s.delivered) {
                Some(true) => "delivered".into(),
                Some(false) => "refused".into(),
                None => "not delivered yet".into(),
            },
            |event| {
                let Some(event) = event else {
                    bail!("FlowEvent {object} was deleted before it was delivered");
                };
                match event.status.as_ref().and_then(|s| s.delivered) {
                    Some(true) => Ok(Some(())),
                    Some(false) => bail!(
                        "the operator refused FlowEvent {object}: {}",
                        event
                            .status
                            .as_ref()
                            .and_then(|s| s.message.as_deref())
                            .unwrap_or("no reason given")
                    ),
                    None => Ok(None),
                }
            },
        )
        .await
    }

    /// `cancel`: sets `spec.cancel`.
    pub async fn cancel(&self, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let phase = logic::phase(&run);
        if phase.is_some_and(Phase::is_terminal) && !logic::retry_pending(&run) {
            self.say(format!(
                "{name} already finished as {}; nothing to cancel",
                self.ui.phase(phase)
            ));
            if self.json {
                self.print_json(&json!({ "run": name, "phase": phase, "cancelled": false }))?;
            }
            return Ok(());
        }
        if !run.spec.cancel {
            self.runs()
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "cancel": true } })),
                )
                .await
                .map_err(|e| kube_error(e, "patch FlowRuns"))?;
        }
        self.say(format!(
            "{name}: cancellation requested (a parked run ends now, a running one at its next step boundary)"
        ));
        let mut phase = phase;
        if let Some(timeout) = wait {
            let done = self.wait_run(name, Until::Finished, None, timeout).await?;
            phase = logic::phase(&done);
            if phase != Some(Phase::Cancelled) {
                bail!(
                    "{name} finished as {} before the cancellation took effect",
                    logic::describe(&done)
                );
            }
            self.say(format!("{name} is {}", self.ui.phase(phase)));
        }
        if self.json {
            self.print_json(&json!({ "run": name, "phase": phase, "cancelled": true }))?;
        }
        Ok(())
    }

    /// `retry`: asks the operator to re-run a failed run from its last checkpoint.
    pub async fn retry(&self, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let phase = logic::phase(&run);
        if phase != Some(Phase::Failed) {
            bail!(
                "{name} is {}; only a failed run can be retried",
                logic::describe(&run)
            );
        }
        if run.spec.cancel {
            bail!(
                "{name} has spec.cancel=true: a retried run would be cancelled at once; create a new FlowRun instead"
            );
        }
        let attempt = run.status.as_ref().and_then(|s| s.attempt);
        let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.runs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "metadata": { "annotations": { RETRY_ANNOTATION: value } } }),
                ),
            )
            .await
            .map_err(|e| kube_error(e, "patch FlowRuns"))?;
        self.say(format!(
            "{name}: retry requested ({RETRY_ANNOTATION}={value}); the operator re-runs it from its last checkpoint"
        ));
        let mut phase = phase;
        if let Some(timeout) = wait {
            let retried = self
                .watch_until(
                    self.runs(),
                    name,
                    timeout,
                    "be retried",
                    logic::describe,
                    |run| {
                        let Some(run) = run else {
                            bail!("FlowRun {name} was deleted");
                        };
                        let status = run.status.as_ref();
                        let acted =
                            status.and_then(|s| s.retried.as_deref()) == Some(value.as_str());
                        // Running again, or already past a new attempt (that may have failed too).
                        let moved = logic::phase(run) != Some(Phase::Failed)
                            || status.and_then(|s| s.attempt) > attempt;
                        Ok((acted && moved).then(|| run.clone()))
                    },
                )
                .await?;
            phase = logic::phase(&retried);
            self.say(format!(
                "{name}: retried; now {}",
                logic::describe(&retried)
            ));
        }
        if self.json {
            self.print_json(&json!({ "run": name, "retry": value, "phase": phase }))?;
        }
        Ok(())
    }

    /// `wait`: like `kubectl wait`.
    pub async fn wait(
        &self,
        name: &str,
        until: Until,
        event: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        // Like kubectl wait: the run must exist.
        self.get_run(name).await?;
        let run = self.wait_run(name, until, event, timeout).await?;
        if self.json {
            return self.print_json(&json!({
                "run": name,
                "phase": logic::phase(&run),
                "status": run.status,
            }));
        }
        println!("{name} is {}", self.ui.phase(logic::phase(&run)));
        Ok(())
    }

    /// The run's pods by attempt (deleted ones are missing).
    async fn pods_of(&self, run: &FlowRun) -> anyhow::Result<Vec<(i32, Pod)>> {
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

    /// `logs`: every attempt's pod in order, a header each; `follow` streams the last one.
    pub async fn logs(&self, name: &str, attempt: Option<i32>, follow: bool) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        if run
            .status
            .as_ref()
            .and_then(|s| s.run_id.as_ref())
            .is_none()
        {
            bail!(
                "{name} has no pods yet: the operator has not registered it ({})",
                logic::describe(&run)
            );
        }
        let mut pods = self.pods_of(&run).await?;
        if let Some(wanted) = attempt {
            pods.retain(|(a, _)| *a == wanted);
            if pods.is_empty() {
                return Err(input(format!(
                    "{name} has no pod for attempt {wanted} (attempts with pods: see `{} inspect {name}`)",
                    program()
                )));
            }
        }
        if pods.is_empty() {
            bail!(
                "{name} has no pods (it is {}); pods are deleted with their FlowRun, and pods that never started are removed",
                logic::describe(&run)
            );
        }
        let last = pods.len() - 1;
        for (i, (attempt, pod)) in pods.iter().enumerate() {
            let pod_name = pod.name_any();
            if !self.json {
                println!(
                    "{}",
                    self.ui.bold(&format!(
                        "── attempt {attempt} · pod {pod_name} · {} ──",
                        pod_state(pod)
                    ))
                );
            }
            if follow && i == last {
                self.follow_pod(*attempt, &pod_name).await?;
                continue;
            }
            let params = LogParams {
                container: Some("flow".into()),
                ..Default::default()
            };
            match self.pods().logs(&pod_name, &params).await {
                Ok(text) => {
                    for line in text.lines() {
                        self.log_line(*attempt, &pod_name, line);
                    }
                }
                Err(e) => self.log_gap(*attempt, &pod_name, &e),
            }
        }
        Ok(())
    }

    fn log_line(&self, attempt: i32, pod: &str, line: &str) {
        if self.json {
            println!(
                "{}",
                json!({ "attempt": attempt, "pod": pod, "line": line })
            );
        } else {
            println!("{line}");
        }
    }

    fn log_gap(&self, attempt: i32, pod: &str, e: &kube::Error) {
        let why = match e {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        if self.json {
            println!(
                "{}",
                json!({ "attempt": attempt, "pod": pod, "error": why })
            );
        } else {
            println!("{}", self.ui.dim(&format!("(no logs: {why})")));
        }
    }

    async fn follow_pod(&self, attempt: i32, pod: &str) -> anyhow::Result<()> {
        // Logs exist once the container started (or ended).
        self.watch_until(
            self.pods(),
            pod,
            Duration::from_secs(600),
            "start",
            pod_state,
            |p: Option<&Pod>| {
                let Some(p) = p else {
                    bail!("pod {pod} was deleted");
                };
                let started = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.state
                                .as_ref()
                                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                        })
                    });
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                Ok((started || matches!(phase, Some("Succeeded" | "Failed"))).then_some(()))
            },
        )
        .await?;
        let params = LogParams {
            container: Some("flow".into()),
            follow: true,
            ..Default::default()
        };
        let stream = match self.pods().log_stream(pod, &params).await {
            Ok(stream) => stream,
            Err(e) => {
                self.log_gap(attempt, pod, &e);
                return Ok(());
            }
        };
        let mut lines = stream.lines();
        while let Some(line) = lines.try_next().await? {
            self.log_line(attempt, pod, &line);
        }
        Ok(())
    }
}

/// "Succeeded (exit 0)", "Running", "Pending (ContainerCreating)".
fn pod_state(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref());
    if let Some(done) = container.and_then(|s| s.terminated.as_ref()) {
        let reason = done
            .reason
            .as_deref()
            .filter(|r| *r != "Completed" && *r != "Error")
            .map(|r| format!(", {r}"))
            .unwrap_or_default();
        return format!("{phase} (exit {}{reason})", done.exit_code);
    }
    if let Some(reason) = container
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
    {
        return format!("{phase} ({reason})");
    }
    phase
}

/// How to answer a run's event from here.
fn approve_hint(run: &FlowRun, event: &str) -> String {
    let name = run.name_any();
    if event == format!("approve-{name}") {
        format!("{} approve {name} --data <JSON, default true>", program())
    } else {
        format!(
            "{} approve {name} --data <JSON>  (event {event})",
            program()
        )
    }
}

/// `inspect` without the read API: what the FlowRun's status says.
fn status_text(
    run: &FlowRun,
    view: &KubeView,
    ui: &Ui,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use std::fmt::Write as _;
    let status = run.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(
            out,
            "{}{} {value}",
            ui.bold(&format!("{label}:")),
            " ".repeat(10usize.saturating_sub(label.len() + 1))
        );
    };
    line(
        "Run",
        format!(
            "{}  {}",
            ui.bold(&run.name_any()),
            ui.dim(&format!(
                "(namespace {}, id {})",
                run.namespace().unwrap_or_default(),
                status.run_id.as_deref().unwrap_or("not registered yet")
            ))
        ),
    );
    line("Flow", logic::flow_of(run));
    if let Some(parent) = run.labels().get(LABEL_PARENT) {
        line("Parent", parent.clone());
    }
    line(
        "Phase",
        format!(
            "{}  attempt {}, {} steps, {}",
            ui.phase(status.phase),
            status.attempt.unwrap_or(0),
            status.steps_completed.unwrap_or(0),
            status
                .cost_usd
                .as_deref()
                .and_then(|c| c.parse().ok())
                .map(render::money)
                .unwrap_or_else(|| "$0.0000".into())
        ),
    );
    if let Some(pod) = &view.pod {
        line("Pod", pod.clone());
    }
    if let Some(digest) = &view.image_digest {
        line("Image", digest.clone());
    }
    if let Some(created) = &run.metadata.creation_timestamp {
        line("Created", render::when(logic::to_utc(created), now));
    }
    if let Some(finished) = &status.finished_at {
        line("Finished", render::when(logic::to_utc(finished), now));
    }
    let waiting = logic::waiting_summary(&status);
    if !waiting.is_empty() {
        line("Waiting", waiting);
    }
    if let Some(w) = &status.waiting_for {
        if let Some(q) = &w.question {
            line("Question", q.clone());
        }
        if let Some(schema) = &w.schema {
            line("Schema", render::schema_text(schema));
        }
        if let Some(deadline) = &w.deadline {
            line("Deadline", render::when(logic::to_utc(deadline), now));
        }
        if let Some(event) = &w.event {
            line("Answer", ui.dim(&approve_hint(run, event)));
        }
    }
    if let Some(result) = &status.result {
        line("Result", render::compact_json(result));
    }
    if let Some(error) = &status.error {
        line("Error", ui.error(error));
    }
    if let Some(message) = &view.condition {
        line("Condition", message.clone());
    }
    if !view.pods.is_empty() {
        let pods: Vec<String> = view.pods.iter().map(|(a, p)| format!("#{a} {p}")).collect();
        line("Pods", pods.join(", "));
    }
    out
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

/// Kubernetes API errors, said plainly.
fn kube_error(error: kube::Error, action: &str) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) if status.code == 403 => anyhow!(
            "not allowed to {action}: {} (ask for RBAC rights, or check the context with `kubectl auth can-i`)",
            status.message
        ),
        kube::Error::Api(status)
            if status.code == 404
                && status
                    .message
                    .contains("could not find the requested resource") =>
        {
            anyhow!(
                "cannot {action}: this cluster does not know Cairn's resources; install the CRDs (`kubectl apply -f crds/generated/crds.yaml`, or the Helm chart)"
            )
        }
        kube::Error::Api(status) => anyhow!("cannot {action}: {}", status.message),
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow!(
            "cannot {action}: the Kubernetes API server is unreachable ({}); check `kubectl cluster-info` for this context",
            innermost(&error)
        ),
        kube::Error::Auth(_) => anyhow!(
            "cannot {action}: the credentials of this kube context do not work ({})",
            innermost(&error)
        ),
        _ => anyhow!("cannot {action}: {}", innermost(&error)),
    }
}

/// An error with its causes, `outer: inner: innermost`.
pub(crate) fn innermost(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text = format!("{text}: {next_text}");
        }
        cause = next.source();
    }
    text
}
