//! The Kubernetes operator: FlowRuns become engine runs executed in pods (one per attempt,
//! pinned to one image digest), FlowEvents become engine events. It reacts to watches and to
//! the engine's NOTIFY messages — never polls — and decides with the same `lifecycle` module
//! as `cairn dev`.

pub mod api;
mod children;
pub mod error;
mod flowevent;
pub mod flowrun;
mod history;
pub mod pod;
pub mod runner_db;
mod startup;
mod telemetry;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{
    Flow, FlowEvent, FlowRun, FlowRunStatus, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_RUN,
    MANAGED_BY_OPERATOR, ResourceProfile,
};
use cairn_engine::{launcher as engine, runner::Attempt};
use futures::channel::mpsc::UnboundedSender;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

pub const FIELD_MANAGER: &str = "cairn-operator";

/// How the operator runs flows (the `cairn operator` flags; each can also be set by environment,
/// which is how the Helm chart configures it).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The database URL flow pods use: a login in role `cairn_runner`, as pods reach the
    /// database. Default: the operator's own address with the login it creates for them.
    /// Handed to pods through a Secret, never inline.
    #[arg(long, env = "CAIRN_RUNNER_DATABASE_URL", hide_env_values = true)]
    pub runner_database_url: Option<String>,
    /// `transaction` when that URL is a PgBouncer (or another pooler) in transaction mode:
    /// flow processes then run each engine call in a transaction of its own. `none`: direct.
    #[arg(long, env = "CAIRN_RUNNER_POOLER", default_value = "none")]
    pub runner_pooler: cairn::Pooler,
    /// Name of the per-namespace Secret the operator keeps the runner's database URL in.
    #[arg(long, env = "CAIRN_RUNNER_SECRET", default_value = "cairn-runner-db")]
    pub runner_secret: String,
    /// Service account for flow pods whose Flow names none. The operator creates it (without
    /// an API token) in each namespace it launches pods in.
    #[arg(long, env = "CAIRN_FLOW_SERVICE_ACCOUNT")]
    pub flow_service_account: Option<String>,
    /// Namespaces whose FlowRuns and FlowEvents this operator manages, comma-separated
    /// (default: all namespaces).
    #[arg(long, env = "CAIRN_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Namespace of the Lease that elects the one active replica (in a pod: its own namespace).
    #[arg(long, env = "CAIRN_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of that Lease; operators sharing it never act at the same time.
    #[arg(long, env = "CAIRN_LEASE_NAME", default_value = "cairn-operator")]
    pub lease_name: String,
    /// Flow pods running at once, in all. Each holds a database connection: keep this well
    /// under the database's max_connections (or put PgBouncer in front of it).
    #[arg(long, env = "CAIRN_MAX_RUNNING", default_value_t = 50)]
    pub max_running: i32,
    /// Flow pods running at once in any one namespace (0: only the global cap applies).
    #[arg(long, env = "CAIRN_MAX_RUNNING_PER_NAMESPACE", default_value_t = 0)]
    pub max_running_per_namespace: i32,
    /// FlowRuns reconciled at once (per watched namespace). Bounds the operator's memory and
    /// its load on the API server and the database when thousands of FlowRuns change together
    /// (one event waking them all, a burst of creates); the others queue, each at most once.
    #[arg(long, env = "CAIRN_RECONCILE_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub reconcile_concurrency: u16,
    /// Delete a FlowRun (and its runs in the database) this many seconds after it finished,
    /// unless it or its Flow says otherwise (`ttlSecondsAfterFinished`). 0 keeps them.
    #[arg(
        long,
        env = "CAIRN_DEFAULT_TTL_SECONDS_AFTER_FINISHED",
        default_value_t = 0
    )]
    pub default_ttl_seconds_after_finished: u32,
    /// Finished flow pods kept per run (the newest; the current attempt's is always kept), for
    /// `kubectl logs`. Older ones are deleted as new ones finish, like a Job's history.
    #[arg(long, env = "CAIRN_FINISHED_PODS_KEPT", default_value_t = 5)]
    pub finished_pods_kept: u16,
    /// Events (FlowEvents' and flows' emits) are deleted from the database this long after
    /// they were emitted, unless a run still waits on one (e.g. `30d`; `0s` keeps them).
    #[arg(long, env = "CAIRN_EVENT_RETENTION", default_value = "30d",
          value_parser = humantime::parse_duration)]
    pub event_retention: Duration,
    /// `apply`: apply the engine's pending migrations at start (one replica migrates under a
    /// lock, others wait). `verify`: only check that the schema is migrated, when a separate
    /// step does it (`cairn migrate`, the Helm chart's pre-upgrade Job).
    #[arg(long, env = "CAIRN_MIGRATIONS", default_value = "apply")]
    pub migrations: cairn_engine::schema::Migrations,
    /// Address of /livez, /readyz, /metrics and the read API.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
}

impl Config {
    /// The caps as the engine takes them (`None`: no cap).
    pub fn budget(&self) -> (Option<i32>, Option<i32>) {
        let cap = |n: i32| (n > 0).then_some(n);
        (cap(self.max_running), cap(self.max_running_per_namespace))
    }

    /// The operator's default time-to-live of finished FlowRuns (`None`: kept).
    pub fn default_ttl_after_finished(&self) -> Option<Duration> {
        (self.default_ttl_seconds_after_finished > 0)
            .then(|| Duration::from_secs(self.default_ttl_seconds_after_finished.into()))
    }

    /// The namespaces to watch; `None` means all.
    pub fn namespaces(&self) -> Option<Vec<String>> {
        let named: Vec<String> = self
            .watch_namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        (!named.is_empty()).then_some(named)
    }
}

pub struct Context {
    pub client: Client,
    pub pool: PgPool,
    pub config: Config,
    /// `config.runner_database_url`, or the operator's own address with the runner login, as
    /// pods use it (with the CA it names).
    runner_db: runner_db::RunnerDb,
    /// Runs refused a launch by the running budget, oldest first; woken as slots free.
    pub waiting_for_slot: std::sync::Mutex<VecDeque<ObjectRef<FlowRun>>>,
    /// When each namespace last had its flow pods' Secret (and service account) applied.
    prepared_namespaces: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// The statuses this operator wrote in the last few seconds.
    pub written_status: WrittenStatuses,
    pub metrics: telemetry::Metrics,
    recorder: Recorder,
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
    ) -> Self {
        let recorder = Recorder::new(
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
            config,
            metrics: telemetry::Metrics::default(),
            recorder,
            waiting_for_slot: Default::default(),
            prepared_namespaces: Default::default(),
            written_status: Default::default(),
            failures: Default::default(),
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
        Api::<Secret>::namespaced(self.client.clone(), &run.namespace().unwrap_or_default())
            .create(&PostParams::default(), &secret)
            .await?;
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
        let mut data = json!({ pod::DB_SECRET_KEY: self.runner_db.url });
        if let Some(ca) = &self.runner_db.ca {
            data[runner_db::CA_KEY] = json!(ca);
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
    let ctx = Arc::new(Context::new(client.clone(), pool, config, runner_db));
    let mut endpoints = tokio::spawn(telemetry::serve(ctx.config.listen, ctx.clone()));

    let identity = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "cairn".into()),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let lease = LeaseManagerBuilder::new(client, &ctx.config.lease_name)
        .with_namespace(&ctx.config.lease_namespace)
        .with_identity(&identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
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
            }
        }
        other => other.map(|_| ()),
    };
    // Closing the channel releases the Lease, so a standby takes over at once.
    drop(leading);
    if let Err(e) = lease_task.await {
        tracing::warn!(error = %e, "could not release the Lease");
    }
    outcome
}

/// How long a held Lease lasts without renewal, and the slack for clock skew.
const LEASE_SECONDS: u64 = 15;
const LEASE_GRACE_SECONDS: u64 = 5;

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
    tokio::spawn(forward_notifications(ctx.clone(), wakers, timers.clone()));
    tokio::spawn(wake_timers(ctx.pool.clone(), timers));
    tokio::spawn(history::expire_events(ctx.clone()));
    futures::future::join_all(controllers).await;
}

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
    .applied_objects()
    // Only what asks for work: the spec (generation), the retry annotation and a deletion.
    // The operator's own writes trigger nothing here: its status patches, and the finalizer
    // it adds in the reconcile that goes on to act (the pods' changes are watched below).
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
    // Flows and ResourceProfiles, read by every reconcile, come from watch caches too.
    let (flows_cache, flows_writer) = reflector::store();
    let flows = watcher(scoped::<Flow>(client, &scope), watcher::Config::default())
        .default_backoff()
        .modify(|flow| flow.managed_fields_mut().clear())
        .reflect(flows_writer);
    let (profiles_cache, profiles_writer) = reflector::store();
    let profiles = watcher(
        Api::<ResourceProfile>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|profile| profile.managed_fields_mut().clear())
    .reflect(profiles_writer);
    let caches =
        futures::stream::select(flows.map(|_| ()), profiles.map(|_| ())).for_each(|_| async {});
    let config = controller::Config::default().concurrency(ctx.config.reconcile_concurrency);
    let flowrun_scope = Arc::new(flowrun::Scope {
        ctx: ctx.clone(),
        pods: pods_cache,
        flows: flows_cache,
        profiles: profiles_cache,
    });
    let flowruns = Controller::for_stream(flowruns_watch, flowruns_cache)
        .owns_stream(pods)
        .with_config(config.clone())
        .reconcile_on(wake)
        .shutdown_on_signal()
        .run(
            flowrun::reconcile,
            |run, error, scope| error_policy(run, error, scope.ctx.clone()),
            flowrun_scope,
        )
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
    let flowevents = Controller::for_stream(flowevents_watch, flowevents_cache)
        .with_config(config)
        .shutdown_on_signal()
        .run(flowevent::reconcile, error_policy, ctx.clone())
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "flowevent reconcile");
            }
        });
    tracing::info!(
        namespace = scope.as_deref().unwrap_or("(all)"),
        "controllers started"
    );
    // The caches' watches never end by themselves: they stop with the controllers.
    futures::future::select(
        std::pin::pin!(futures::future::join(flowruns, flowevents)),
        std::pin::pin!(caches),
    )
    .await;
}

/// The status each FlowRun (by uid) was last given, for a few seconds. Right after a status
/// write, the watch cache still shows the one before: a reconcile in between (a pod's change,
/// the engine's notification) must neither write the same status again, nor restart its
/// conditions' transition times, nor compute its patch from the older one. The cache has the
/// last word once it shows the written status, or after a few seconds.
#[derive(Default)]
pub struct WrittenStatuses(std::sync::Mutex<HashMap<String, (std::time::Instant, FlowRunStatus)>>);

impl WrittenStatuses {
    /// How long a written status outranks the watch cache's (which normally shows it within
    /// milliseconds).
    const MEMORY: Duration = Duration::from_secs(10);

    /// The status `run` has on the API server as far as this operator knows.
    pub fn seen(&self, run: &FlowRun) -> Option<FlowRunStatus> {
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let uid = run.metadata.uid.as_deref().unwrap_or_default();
        match written.get(uid) {
            Some((at, status))
                if at.elapsed() < Self::MEMORY && run.status.as_ref() != Some(status) =>
            {
                Some(status.clone())
            }
            Some(_) => {
                written.remove(uid);
                run.status.clone()
            }
            None => run.status.clone(),
        }
    }

    pub fn wrote(&self, run: &FlowRun, status: &FlowRunStatus) {
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() >= 1024 {
            written.retain(|_, (at, _)| at.elapsed() < Self::MEMORY);
        }
        let uid = run.metadata.uid.clone().unwrap_or_default();
        written.insert(uid, (std::time::Instant::now(), status.clone()));
    }
}

/// A failed reconcile: counted by controller, stage and category, told once per streak as a
/// Warning Event (reason: the category), and looked at again after a growing delay.
fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let category = error.category();
    let stage = error.stage().map_or("reconcile", error::Stage::as_str);
    let key = ObjectRef::from_obj(object.as_ref()).erase().to_string();
    let (delay, news) = ctx.failures.failed(&key, category);
    ctx.metrics
        .reconcile_failed(&K::kind(&()), stage, category.as_str());
    tracing::warn!(object = %key, %stage, category = category.as_str(), error = %error, retry_in = ?delay, "reconcile failed");
    if news {
        let reference = object.object_ref(&());
        let note = format!(
            "{error}; trying again in {}",
            humantime::format_duration(delay)
        );
        tokio::spawn(async move {
            ctx.publish_to(&reference, EventType::Warning, category.as_str(), &note)
                .await;
        });
    }
    Action::requeue(delay)
}

/// The end of a reconcile that succeeded: the object's failure streak (if any) is over.
fn succeeded<K: Resource<DynamicType = ()>>(ctx: &Context, object: &K) {
    ctx.failures
        .succeeded(&ObjectRef::from_obj(object).erase().to_string());
}

/// Turns the engine's `cairn_runs` notifications into reconciles of the FlowRuns concerned (by
/// the controller of their namespace). Also tells the timer task when a run parks with a timer,
/// and when a run stops running, wakes the runs waiting longest for its slot.
async fn forward_notifications(
    ctx: Arc<Context>,
    wakers: HashMap<Option<String>, UnboundedSender<ObjectRef<FlowRun>>>,
    timers: Arc<Notify>,
) {
    #[derive(Deserialize)]
    struct Changed {
        namespace: String,
        name: String,
        state: String,
        from: Option<String>,
    }
    let wake = |run: ObjectRef<FlowRun>| {
        let scope = run.namespace.clone();
        if let Some(waker) = wakers.get(&scope).or_else(|| wakers.get(&None)) {
            let _ = waker.unbounded_send(run);
        }
    };
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&ctx.pool).await?;
            listener.listen("cairn_runs").await?;
            // Anything may have changed while not listening.
            timers.notify_one();
            loop {
                let notification = listener.recv().await?;
                let Ok(changed) = serde_json::from_str::<Changed>(notification.payload()) else {
                    continue;
                };
                if matches!(changed.state.as_str(), "sleeping" | "retrying" | "waiting") {
                    timers.notify_one();
                }
                if changed.from.as_deref() == Some("running") {
                    let chosen = next_for_slot(
                        &ctx.waiting_for_slot
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()),
                        &changed.namespace,
                    );
                    chosen.into_iter().for_each(wake);
                }
                if !made_by_a_reconcile(changed.from.as_deref(), &changed.state) {
                    wake(ObjectRef::new(&changed.name).within(&changed.namespace));
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = listening.await {
            tracing::warn!(error = %e, "lost the engine's notifications; reconnecting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Changes the operator makes in a reconcile of that very FlowRun (registering its run, starting
/// an attempt for the pod it creates) need no further look at it: waking it again would only
/// repeat the reconcile, one more for every run in a burst of thousands.
fn made_by_a_reconcile(from: Option<&str>, state: &str) -> bool {
    from.is_none() || state == "running"
}

/// Who gets a freed slot a look: the two runs waiting longest, and the one waiting longest in
/// the namespace where the slot freed (it may be held back by its namespace's cap). They leave
/// the queue when they launch.
fn next_for_slot(queue: &VecDeque<ObjectRef<FlowRun>>, namespace: &str) -> Vec<ObjectRef<FlowRun>> {
    let mut chosen: Vec<ObjectRef<FlowRun>> = queue.iter().take(2).cloned().collect();
    if let Some(local) = queue
        .iter()
        .find(|run| run.namespace.as_deref() == Some(namespace))
        && !chosen.contains(local)
    {
        chosen.push(local.clone());
    }
    chosen
}

/// The engine's timers (sleeps, retry backoffs, wait deadlines): one task sleeps until the
/// next one is due, by the database clock, and makes due runs runnable; the engine's NOTIFY
/// then brings their reconciles. New timers cut the sleep short through `poke`.
async fn wake_timers(pool: PgPool, poke: Arc<Notify>) {
    loop {
        let next = async {
            let mut conn = pool.acquire().await?;
            engine::wake_due(&mut conn).await?;
            engine::next_wake_ms(&mut conn).await
        }
        .await;
        let pause = match next {
            Ok(Some(ms)) => Duration::from_millis(ms.max(0) as u64),
            // Nothing scheduled: only a poke (or the hourly safety check) wakes this task.
            Ok(None) => Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the engine's timers; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = poke.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(runs: &[(&str, &str)]) -> VecDeque<ObjectRef<FlowRun>> {
        runs.iter()
            .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
            .collect()
    }

    fn names(chosen: Vec<ObjectRef<FlowRun>>) -> Vec<String> {
        chosen.into_iter().map(|run| run.name).collect()
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_runs_and_the_oldest_of_its_namespace() {
        let queue = queued(&[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
        ]);
        // The two oldest overall, plus b's oldest (a namespace cap may hold a's back).
        assert_eq!(names(next_for_slot(&queue, "b")), ["a1", "a2", "b1"]);
        // Its namespace's oldest is already among them: no one twice.
        assert_eq!(names(next_for_slot(&queue, "a")), ["a1", "a2"]);
        assert!(next_for_slot(&VecDeque::new(), "a").is_empty());
    }

    #[test]
    fn a_status_just_written_outranks_the_cache_until_the_cache_shows_it() {
        let run = |uid: &str, phase: Option<&str>| {
            let mut run = FlowRun::new(
                "r",
                serde_json::from_value(json!({ "image": "i", "flow": "f" })).unwrap(),
            );
            run.metadata.uid = Some(uid.into());
            run.status = phase.map(|p| FlowRunStatus {
                phase: Some(serde_json::from_value(json!(p)).unwrap()),
                ..Default::default()
            });
            run
        };
        let written = WrittenStatuses::default();
        let running = run("u1", Some("Running")).status.unwrap();
        written.wrote(&run("u1", None), &running);
        // The cache trails: what was written counts.
        assert_eq!(
            written.seen(&run("u1", Some("Pending"))),
            Some(running.clone())
        );
        assert_eq!(written.seen(&run("u1", None)), Some(running.clone()));
        // Another FlowRun (or the same name created again) has its own.
        assert_eq!(written.seen(&run("u2", None)), None);
        // Once the cache shows it, the cache has the last word again.
        assert_eq!(written.seen(&run("u1", Some("Running"))), Some(running));
        let later = run("u1", Some("Succeeded"));
        assert_eq!(written.seen(&later), later.status);
    }
}
