//! The Kubernetes operator: FlowRuns become engine runs executed in pods (one per attempt,
//! pinned to one image digest), FlowEvents become engine events. It reacts to watches and to
//! the engine's NOTIFY messages — never polls — and decides with the same `lifecycle` module
//! as `cairn dev`.

mod children;
mod flowevent;
pub mod flowrun;
pub mod pod;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use cairn::engine::EngineError;
use cairn_crds::{FlowEvent, FlowRun};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

pub const FIELD_MANAGER: &str = "cairn-operator";

/// How the operator runs flows.
#[derive(Debug, Clone)]
pub struct Config {
    /// The database URL flow pods use (as they reach the database, which may differ from the
    /// operator's own address). Handed to pods through a Secret, never inline.
    pub runner_database_url: String,
    /// Name of the per-namespace Secret holding it.
    pub runner_secret: String,
    /// Service account for flow pods whose Flow names none.
    pub flow_service_account: Option<String>,
    /// Where `/livez`, `/readyz` and `/metrics` are served.
    pub listen: std::net::SocketAddr,
}

pub struct Context {
    pub client: Client,
    pub pool: PgPool,
    pub config: Config,
    pub metrics: telemetry::Metrics,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Context {
    async fn publish(
        &self,
        object: &impl Resource<DynamicType = ()>,
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
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish a Kubernetes event");
        }
    }

    pub async fn event(&self, object: &impl Resource<DynamicType = ()>, reason: &str, note: &str) {
        self.publish(object, EventType::Normal, reason, note).await;
    }

    pub async fn warn(&self, object: &impl Resource<DynamicType = ()>, reason: &str, note: &str) {
        self.publish(object, EventType::Warning, reason, note).await;
    }

    /// The Secret flow pods of this namespace read their database URL from.
    async fn ensure_runner_secret(&self, namespace: &str) -> Result<(), Error> {
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": self.config.runner_secret, "labels": { pod::LABEL_MANAGED: "cairn" } },
            "stringData": { pod::DB_SECRET_KEY: self.config.runner_database_url },
        });
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .patch(
                &self.config.runner_secret,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(())
    }
}

/// Runs the operator until SIGINT/SIGTERM.
pub async fn run(database_url: &str, config: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let pool = crate::store::connect_with_pool_size(database_url, 16).await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    let listen = config.listen;
    let ctx = Arc::new(Context {
        client: client.clone(),
        pool: pool.clone(),
        config,
        metrics: telemetry::Metrics::default(),
        recorder,
    });
    let endpoints = tokio::spawn(telemetry::serve(listen, ctx.clone()));

    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(forward_notifications(pool, wake_tx));

    let pods = watcher::Config::default().labels(&format!("{}=cairn", pod::LABEL_MANAGED));
    let flowruns = Controller::new(
        Api::<FlowRun>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), pods)
    .reconcile_on(wake_rx)
    .shutdown_on_signal()
    .run(flowrun::reconcile, error_policy, ctx.clone())
    .for_each(|outcome| async move {
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "flowrun reconcile");
        }
    });
    let flowevents = Controller::new(Api::<FlowEvent>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(flowevent::reconcile, error_policy, ctx)
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "flowevent reconcile");
            }
        });
    tracing::info!("cairn operator started");
    tokio::select! {
        _ = async { futures::join!(flowruns, flowevents) } => Ok(()),
        served = endpoints => Err(anyhow::anyhow!("the HTTP endpoints stopped: {:?}", served?.err())),
    }
}

fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(object = %ObjectRef::from_obj(object.as_ref()), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Turns the engine's `cairn_runs` notifications into reconciles of the FlowRuns concerned.
async fn forward_notifications(
    pool: PgPool,
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<FlowRun>>,
) {
    #[derive(Deserialize)]
    struct Changed {
        namespace: String,
        name: String,
    }
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen("cairn_runs").await?;
            loop {
                let notification = listener.recv().await?;
                if let Ok(changed) = serde_json::from_str::<Changed>(notification.payload()) {
                    let _ = wake
                        .unbounded_send(ObjectRef::new(&changed.name).within(&changed.namespace));
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
