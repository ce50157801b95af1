//! The Kubernetes operator: FlowRuns become engine runs executed in pods (one per attempt,
//! pinned to one image digest), FlowEvents become engine events. It reacts to watches and to
//! the engine's NOTIFY messages — never polls — and decides with the same `lifecycle` module
//! as `cairn dev`.

pub mod api;
mod children;
mod config;
pub mod error;
mod events;
mod flowevent;
pub mod flowrun;
mod flowschedule;
mod history;
mod janitor;
pub mod pod;
pub mod runner_db;
mod startup;
pub mod step_keys;
mod telemetry;
mod wakeups;
mod written;

pub use config::Config;
pub use written::WrittenStatuses;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{
    Flow, FlowEvent, FlowRun, FlowSchedule, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_RUN,
    LABEL_SCHEDULE, MANAGED_BY_OPERATOR, ResourceProfile,
};
use cairn_engine::artifacts::ArtifactStore;
use cairn_engine::checkpoint::StepKeys;
use cairn_engine::runner::Attempt;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{EnvVar, Pod, Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Notify;

pub const FIELD_MANAGER: &str = "cairn-operator";

pub struct Context {
    pub client: Client,
    pub pool: PgPool,
    pub config: Config,
    /// `config.runner_database_url`, or the operator's own address with the runner login, as
    /// pods use it (with the CA it names).
    runner_db: runner_db::RunnerDb,
    /// The master step keys; each namespace's runner Secret gets that namespace's.
    step_keys: StepKeys,
    /// The artifact store (`--artifacts-url`): flow pods get its settings in their runner
    /// Secret; the read API serves objects from it; retention deletes from it.
    pub artifacts: Option<ArtifactStore>,
    /// Where spans go (the operator's `OTEL_EXPORTER_OTLP_*`); none: runs are not traced.
    pub traces: Option<Arc<cairn_engine::traces::Exporter>>,
    /// Runs refused a launch by the running budget, oldest first; woken as slots free.
    pub waiting_for_slot: std::sync::Mutex<VecDeque<ObjectRef<FlowRun>>>,
    /// When each namespace last had its flow pods' Secret (and service account) applied.
    prepared_namespaces: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Watched namespaces found being deleted: their runs are forgotten, and left alone.
    forgotten_namespaces: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The statuses this operator wrote in the last few seconds.
    pub written_status: WrittenStatuses,
    pub metrics: telemetry::Metrics,
    recorder: events::Events,
    /// Objects failing reconcile after reconcile, for the backoff.
    failures: error::Backoff,
}

pub use error::Error;

impl Context {
    /// The operator's context; `runner_db` is what flow pods get in their Secret.
    pub fn new(
        client: Client,
        pool: PgPool,
        config: Config,
        runner_db: runner_db::RunnerDb,
        step_keys: StepKeys,
        artifacts: Option<ArtifactStore>,
        traces: Option<Arc<cairn_engine::traces::Exporter>>,
    ) -> Self {
        let recorder = events::Events::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        );
        Context {
            client,
            pool,
            runner_db,
            step_keys,
            artifacts,
            traces,
            config,
            metrics: telemetry::Metrics::default(),
            recorder,
            waiting_for_slot: Default::default(),
            prepared_namespaces: Default::default(),
            forgotten_namespaces: Default::default(),
            written_status: Default::default(),
            failures: Default::default(),
        }
    }

    /// The environment that puts an attempt's process into its run's trace (see
    /// `cairn_engine::traces`): none when this operator does not trace. A failure costs the
    /// attempt its spans only.
    pub async fn trace_env(&self, run_id: uuid::Uuid, attempt: i32) -> Vec<EnvVar> {
        if self.traces.is_none() {
            return Vec::new();
        }
        let traced = async {
            let mut conn = self.pool.acquire().await?;
            anyhow::Ok(cairn_engine::traces::run_trace(&mut conn, run_id).await?)
        };
        match traced.await {
            Ok(Some(run)) => pod::trace_env(&run.attempt(attempt), |name| std::env::var(name).ok()),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "cannot give the run a trace; its attempt is not traced");
                Vec::new()
            }
        }
    }

    /// Whether flow pods get the database's CA (the runner URL names one).
    pub fn runner_ca(&self) -> bool {
        self.runner_db.ca.is_some()
    }

    async fn publish(
        &self,
        object: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        self.publish_to(&object.object_ref(&()), type_, reason, note)
            .await;
    }

    async fn publish_to(
        &self,
        object: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
            tracing::warn!(error = %e, reason, "could not publish a Kubernetes event");
        }
    }

    pub async fn event(&self, object: &impl Resource<DynamicType = ()>, reason: &str, note: &str) {
        self.publish(object, EventType::Normal, reason, note).await;
    }

    pub async fn warn(&self, object: &impl Resource<DynamicType = ()>, reason: &str, note: &str) {
        self.publish(object, EventType::Warning, reason, note).await;
    }

    /// Puts a run the running budget held back at the end of the queue for a slot (once), or
    /// takes it out of the queue.
    fn forgotten_namespaces(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.forgotten_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn queue_for_slot(&self, run: &FlowRun, waiting: bool) {
        let me = ObjectRef::from_obj(run);
        let mut queue = self
            .waiting_for_slot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let queued = queue.contains(&me);
        if waiting && !queued {
            queue.push_back(me);
        } else if !waiting && queued {
            queue.retain(|other| other != &me);
        }
    }

    /// Puts the token of a run's new attempt where its pod reads it: a Secret of that attempt
    /// (created once, never updated, so the operator needs no rights on others' Secrets),
    /// owned by the FlowRun so it goes with it.
    async fn hand_token(&self, run: &FlowRun, claim: &Attempt) -> Result<(), kube::Error> {
        let name = pod::token_secret_name(&claim.run_id.to_string(), claim.number);
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "labels": {
                    LABEL_MANAGED: MANAGED_BY_OPERATOR,
                    LABEL_RUN: claim.run_id.to_string(),
                    LABEL_ATTEMPT: claim.number.to_string(),
                },
                "ownerReferences": [run.controller_owner_ref(&())],
            },
            "stringData": { pod::TOKEN_SECRET_KEY: claim.token },
        }))
        .map_err(kube::Error::SerdeError)?;
        let secrets =
            Api::<Secret>::namespaced(self.client.clone(), &run.namespace().unwrap_or_default());
        match secrets.create(&PostParams::default(), &secret).await {
            // Left by an operator that died before the pod (the attempt is reissued with a
            // new token): it takes the new one.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let apply = kube::api::PatchParams::apply(FIELD_MANAGER).force();
                secrets
                    .patch(&name, &apply, &kube::api::Patch::Apply(&secret))
                    .await?;
            }
            created => {
                created?;
            }
        }
        Ok(())
    }

    /// What flow pods of a namespace need before one launches: the Secret they read their
    /// database URL from and, when configured, their service account (with no API token).
    /// Applied once per namespace every few minutes, not at every launch: a wake-up of a
    /// thousand runs would otherwise apply the same Secret a thousand times.
    async fn prepare_namespace(&self, namespace: &str) -> Result<(), Error> {
        const FRESH_FOR: Duration = Duration::from_secs(300);
        let fresh = |prepared: &HashMap<String, std::time::Instant>| {
            prepared
                .get(namespace)
                .is_some_and(|at| at.elapsed() < FRESH_FOR)
        };
        if fresh(
            &self
                .prepared_namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        ) {
            return Ok(());
        }
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let labels = json!({ LABEL_MANAGED: MANAGED_BY_OPERATOR });
        let mut data = json!({
            pod::DB_SECRET_KEY: self.runner_db.url,
            step_keys::NAMESPACE_KEY: self.step_keys.for_namespace(namespace).encode(),
        });
        if let Some(ca) = &self.runner_db.ca {
            data[runner_db::CA_KEY] = json!(ca);
        }
        if let Some(store) = &self.artifacts {
            data[pod::ARTIFACTS_SECRET_KEY] = json!(store.settings().encode());
        }
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": self.config.runner_secret, "labels": labels },
            "stringData": data,
        });
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .patch(&self.config.runner_secret, &apply, &Patch::Apply(&secret))
            .await?;
        if let Some(account) = &self.config.flow_service_account {
            let service_account = json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": { "name": account, "labels": labels },
                "automountServiceAccountToken": false,
            });
            Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
                .patch(account, &apply, &Patch::Apply(&service_account))
                .await?;
        }
        self.prepared_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_owned(), std::time::Instant::now());
        Ok(())
    }

    /// A launch failed: the namespace's Secret or service account may be gone, so the next
    /// launch there applies them again.
    pub fn forget_prepared(&self, namespace: &str) {
        self.prepared_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(namespace);
    }
}

/// Runs the operator until SIGINT/SIGTERM. Every replica serves `/livez` and `/readyz`; only the
/// one holding the Lease acts, so two replicas (a rollout, a stray process) never both launch pods.
pub async fn run(database_url: &str, config: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let events = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    let Some(pool) =
        startup::open_engine(database_url, &config, &events, shutdown_signal()).await?
    else {
        return Ok(());
    };
    // Flow pods get the runner login (it can only call the runner's functions), never ours.
    let runner_database_url = match &config.runner_database_url {
        Some(url) => url.clone(),
        None => cairn_engine::launcher::runner_url(&pool, database_url).await?,
    };
    let runner_db = runner_db::RunnerDb::from_url(&runner_database_url)?;
    let step_keys = step_keys::load_or_create(
        client.clone(),
        &config.lease_namespace,
        &config.step_keys_secret,
    )
    .await?;
    let artifacts = config.artifact_store()?;
    // Traces are for seeing into runs: a setting that cannot work turns them off, not Cairn.
    let traces = match cairn_engine::traces::Exporter::from_env("cairn-operator") {
        Ok(exporter) => exporter.map(Arc::new),
        Err(why) => {
            tracing::warn!("runs are not traced: {why}");
            None
        }
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        pool,
        config,
        runner_db,
        step_keys,
        artifacts,
        traces,
    ));
    let mut endpoints = tokio::spawn(telemetry::serve(ctx.config.listen, ctx.clone()));
    // Every replica serves the read API (standbys too): it only reads the database.
    let mut read_api = match (&ctx.config.api_tls_cert, &ctx.config.api_tls_key) {
        (Some(cert), Some(key)) => tokio::spawn(api::serve(
            ctx.client.clone(),
            ctx.pool.clone(),
            ctx.config.watch_namespaces.clone(),
            ctx.artifacts.clone(),
            ctx.config.api_listen,
            cert.clone(),
            key.clone(),
        )),
        _ => {
            tracing::info!("no --api-tls-cert: the read API (api.cairn.dev) is not served");
            tokio::spawn(std::future::pending())
        }
    };

    let identity = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "cairn".into()),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let lease = LeaseManagerBuilder::new(client, &ctx.config.lease_name)
        .with_namespace(&ctx.config.lease_namespace)
        .with_identity(&identity)
        .with_duration(ctx.config.lease_seconds)
        .with_grace(ctx.config.lease_seconds / 2)
        .build()
        .await?;
    let (mut leading, lease_task) = lease.watch().await;
    tracing::info!(
        %identity,
        lease = %format!("{}/{}", ctx.config.lease_namespace, ctx.config.lease_name),
        "waiting to hold the Lease"
    );
    let acquired = tokio::select! {
        held = leading.wait_for(|held| *held) => held.map(|_| true).map_err(|_| anyhow::anyhow!("the Lease manager stopped")),
        _ = shutdown_signal() => Ok(false),
        served = &mut endpoints => Err(anyhow::anyhow!("the HTTP endpoints stopped: {:?}", served?.err())),
        served = &mut read_api => Err(anyhow::anyhow!("the read API stopped: {:?}", served?.err())),
    };
    let outcome = match acquired {
        Ok(true) => {
            tracing::info!(%identity, "holding the Lease: acting");
            tokio::select! {
                _ = act(ctx.clone()) => Ok(()),
                _ = leading.wait_for(|held| !*held) => Err(anyhow::anyhow!(
                    "lost the Lease; exiting so that a restart rejoins as a standby"
                )),
                served = &mut endpoints => Err(anyhow::anyhow!("the HTTP endpoints stopped: {:?}", served?.err())),
                served = &mut read_api => Err(anyhow::anyhow!("the read API stopped: {:?}", served?.err())),
            }
        }
        other => other.map(|_| ()),
    };
    // Closing the channel releases the Lease, so a standby takes over at once.
    drop(leading);
    match tokio::time::timeout(SHUTDOWN_GRACE, lease_task).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the Lease"),
        Err(_) => {
            tracing::warn!("the Lease was not released in time; a standby takes it when it expires")
        }
    }
    outcome
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        }
        _ => futures::future::pending().await,
    }
}

/// The leader's work: the controllers (one pair per watched namespace, or one for all), the
/// engine's notifications routed to them, and the engine's timers. Ends on SIGINT/SIGTERM.
async fn act(ctx: Arc<Context>) {
    let scopes: Vec<Option<String>> = match ctx.config.namespaces() {
        Some(named) => named.into_iter().map(Some).collect(),
        None => vec![None],
    };
    let timers = Arc::new(Notify::new());
    let mut wakers = HashMap::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
        wakers.insert(scope.clone(), wake_tx);
        controllers.push(run_controllers(ctx.clone(), scope, wake_rx).boxed());
    }
    tokio::spawn(wakeups::forward_notifications(
        ctx.clone(),
        wakers,
        timers.clone(),
    ));
    tokio::spawn(wakeups::wake_timers(ctx.pool.clone(), timers));
    tokio::spawn(history::expire_events(ctx.clone()));
    tokio::spawn(history::expire_artifacts(ctx.clone()));
    tokio::spawn(telemetry::export_traces(ctx.clone()));
    // The controllers stop taking work on the signal and finish the reconciles under way; a
    // reconcile stuck on an unreachable API server or database must not keep the process up
    // until the kubelet's SIGKILL. What it did so far is in the engine; the next leader
    // redoes the rest (every stage is idempotent).
    let overdue = async {
        shutdown_signal().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = futures::future::join_all(controllers) => {}
        _ = overdue => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "reconciles still running after the shutdown grace: exiting without them"
        ),
    }
}

/// How long reconciles under way may take to finish after SIGTERM (a pod's grace is 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn scoped<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

async fn run_controllers(
    ctx: Arc<Context>,
    scope: Option<String>,
    wake: futures::channel::mpsc::UnboundedReceiver<ObjectRef<FlowRun>>,
) {
    let client = &ctx.client;
    // The FlowRuns' cache keeps no managedFields (a third of a FlowRun's size, never read
    // here): the operator holds every FlowRun it manages in memory, so their size is its size.
    let (flowruns_cache, writer) = reflector::store();
    let flowruns_watch = watcher(
        scoped::<FlowRun>(client, &scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|run| {
        run.managed_fields_mut().clear();
        // `kubectl apply` keeps a copy of the whole manifest here; only our own
        // annotations are read.
        run.annotations_mut()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
    })
    .reflect(writer)
    .inspect({
        let ctx = ctx.clone();
        move |event| {
            if let Ok(watcher::Event::Delete(gone)) = event {
                let (ctx, gone) = (ctx.clone(), gone.clone());
                tokio::spawn(async move { janitor::forget_deleted(&ctx, &gone).await });
            }
        }
    })
    .applied_objects()
    // Only what asks for work: the spec (generation), the retry annotation and a deletion.
    // The operator's own writes trigger nothing here: its status patches (the pods' changes
    // are watched below).
    .predicate_filter(
        predicates::generation
            .combine(predicates::annotations)
            .combine(|run: &FlowRun| run.metadata.deletion_timestamp.as_ref().map(|_| 1)),
        Default::default(),
    );
    // Flow pods are cached for the reconciles (which read their status) without what they
    // never read: managedFields, annotations and the spec.
    let (pods_cache, pods_writer) = reflector::store();
    let pods = watcher(
        scoped::<Pod>(client, &scope),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED}={MANAGED_BY_OPERATOR}")),
    )
    .default_backoff()
    .modify(|pod| {
        pod.managed_fields_mut().clear();
        pod.annotations_mut().clear();
        pod.spec = None;
    })
    .reflect(pods_writer)
    .touched_objects();
    // Flows and ResourceProfiles, read by every reconcile, come from watch caches too; one
    // written wakes the runs refused for want of it (flowrun::blocked).
    let (flows_cache, flows_writer) = reflector::store();
    let flows = watcher(scoped::<Flow>(client, &scope), watcher::Config::default())
        .default_backoff()
        .modify(|flow| flow.managed_fields_mut().clear())
        .reflect(flows_writer)
        .applied_objects();
    let (profiles_cache, profiles_writer) = reflector::store();
    let profiles = watcher(
        Api::<ResourceProfile>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|profile| profile.managed_fields_mut().clear())
    .reflect(profiles_writer)
    .applied_objects();
    let blocked_on_flow = {
        let runs = flowruns_cache.clone();
        move |flow: Flow| flowrun::blocked::waiting_for_flow(&runs.state(), &flow)
    };
    let blocked_on_profile = {
        let runs = flowruns_cache.clone();
        move |_: ResourceProfile| flowrun::blocked::waiting_for_a_profile(&runs.state())
    };
    let config = controller::Config::default().concurrency(ctx.config.reconcile_concurrency);
    let flowrun_scope = Arc::new(flowrun::Scope {
        ctx: ctx.clone(),
        pods: pods_cache,
        flows: flows_cache,
        profiles: profiles_cache,
    });
    let schedule_scope = Arc::new(flowschedule::Scope {
        ctx: ctx.clone(),
        flowruns: flowruns_cache.clone(),
    });
    let schedules_runs = flowruns_cache.clone();
    let sweeper = tokio::spawn(janitor::sweep(
        ctx.clone(),
        scope.clone(),
        flowruns_cache.clone(),
    ));
    let flowruns = Controller::for_stream(flowruns_watch, flowruns_cache)
        .owns_stream(pods)
        .watches_stream(flows, blocked_on_flow)
        .watches_stream(profiles, blocked_on_profile)
        .with_config(config.clone())
        .reconcile_on(wake)
        .shutdown_on_signal()
        .run(flowrun::reconcile, flowrun::on_error, flowrun_scope)
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "flowrun reconcile");
            }
        });
    let (flowevents_cache, flowevents_writer) = reflector::store();
    let deleted_events = {
        let (ctx, cache) = (ctx.clone(), flowevents_cache.clone());
        move |event: &Result<watcher::Event<FlowEvent>, watcher::Error>| {
            if let Ok(watcher::Event::Delete(gone)) = event {
                let (ctx, cache, gone) = (ctx.clone(), cache.clone(), gone.clone());
                tokio::spawn(async move { flowevent::forget(&gone, &cache, &ctx).await });
            }
        }
    };
    let flowevents_watch = watcher(
        scoped::<FlowEvent>(client, &scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(flowevents_writer)
    .inspect(deleted_events)
    .applied_objects();
    let config_for_schedules = config.clone();
    let flowevents = Controller::for_stream(flowevents_watch, flowevents_cache)
        .with_config(config)
        .shutdown_on_signal()
        .run(flowevent::reconcile, error_policy, ctx.clone())
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "flowevent reconcile");
            }
        });
    // A scheduled run changing (its phase) brings its schedule's look: Forbid and the history
    // limits depend on it. Metadata only: the phases are read from the FlowRuns' cache.
    let scheduled_runs = watcher(
        scoped::<kube::core::PartialObjectMeta<FlowRun>>(client, &scope),
        watcher::Config::default().labels(LABEL_SCHEDULE),
    )
    .default_backoff()
    .touched_objects();
    let flowschedules = Controller::new(
        scoped::<FlowSchedule>(client, &scope),
        watcher::Config::default(),
    )
    .owns_stream(scheduled_runs)
    .with_config(config_for_schedules)
    .shutdown_on_signal()
    .run(
        flowschedule::reconcile,
        flowschedule::on_error,
        schedule_scope,
    )
    .for_each(|outcome| async move {
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "flowschedule reconcile");
        }
    });
    tracing::info!(
        namespace = scope.as_deref().unwrap_or("(all)"),
        "controllers started"
    );
    // Schedules decide from their runs' phases: not before the FlowRuns are all listed.
    let flowschedules = async move {
        if schedules_runs.wait_until_ready().await.is_ok() {
            flowschedules.await;
        }
    };
    futures::future::join3(flowruns, flowevents, flowschedules).await;
    sweeper.abort();
}

/// A failed reconcile: counted by controller, stage and category, told once per streak as a
/// Warning Event (reason: the category), and looked at again after a growing delay.
fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    failed(object.as_ref(), error, ctx).0
}

/// Records a failed reconcile (metrics, log, back-off) and, the first time in a failure streak,
/// a Warning Event whose reason is the error's category. Returns when to try again and, at
/// the start of a streak, what the Event said.
pub fn failed<K>(object: &K, error: &Error, ctx: Arc<Context>) -> (Action, Option<String>)
where
    K: Resource<DynamicType = ()>,
{
    let category = error.category();
    let stage = error.stage().map_or("reconcile", error::Stage::as_str);
    let key = ObjectRef::from_obj(object).erase().to_string();
    let (delay, news) = ctx.failures.failed(&key, category);
    ctx.metrics
        .reconcile_failed(&K::kind(&()), stage, category.as_str());
    tracing::warn!(object = %key, %stage, category = category.as_str(), error = %error, retry_in = ?delay, "reconcile failed");
    if !news {
        return (Action::requeue(delay), None);
    }
    let reference = object.object_ref(&());
    let note = format!(
        "{error}; trying again in {}",
        humantime::format_duration(delay)
    );
    let said = note.clone();
    tokio::spawn(async move {
        ctx.publish_to(&reference, EventType::Warning, category.as_str(), &note)
            .await;
    });
    (Action::requeue(delay), Some(said))
}

/// The end of a reconcile that succeeded: the object's failure streak (if any) is over.
fn succeeded<K: Resource<DynamicType = ()>>(ctx: &Context, object: &K) {
    ctx.failures
        .succeeded(&ObjectRef::from_obj(object).erase().to_string());
}
