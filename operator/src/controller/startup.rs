//! Opening the engine's database when the operator starts. Until the database is reachable
//! and its schema applied (or, with `--migrations verify`, found migrated), the operator stays
//! up but not ready: `/readyz` answers 503 with the reason, the log has the database's error,
//! a Warning Event on the operator's pod says it once per distinct reason, and it tries again
//! with backoff. A database that is down or a migration that fails is a condition to fix, not
//! a crash loop; a failed migration left the previous schema as it was (each is a transaction).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use sqlx::PgPool;

use super::Config;

const FIRST_RETRY: Duration = Duration::from_secs(2);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// The engine's pool once usable, or `None` when a shutdown signal came first.
pub async fn open_engine(
    database_url: &str,
    config: &Config,
    recorder: &Recorder,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<PgPool>> {
    let not_ready = Arc::new(Mutex::new("connecting to the database".to_owned()));
    let stand_in = tokio::spawn(serve_not_ready(config.listen, not_ready.clone()));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut delay = FIRST_RETRY;
    let mut reported: Option<String> = None;
    let opened = loop {
        match cairn_engine::schema::connect_with(database_url, 16, config.migrations).await {
            Ok(pool) => break Some(pool),
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(error = %reason, retry_in = ?delay, "the engine's database is not usable yet; not ready");
                *not_ready.lock().unwrap_or_else(|e| e.into_inner()) = reason.clone();
                if reported.as_deref() != Some(&reason) {
                    warn_on_own_pod(recorder, config, &reason).await;
                    reported = Some(reason);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => break None,
                }
                delay = (delay * 2).min(LAST_RETRY);
            }
        }
    };
    // The stand-in gives the port back to the real endpoints.
    stand_in.abort();
    let _ = stand_in.await;
    if opened.is_some() && reported.is_some() {
        tracing::info!("the engine's database is usable now");
    }
    Ok(opened)
}

/// `/livez` and a `/readyz` that says why the operator is not ready.
async fn serve_not_ready(listen: std::net::SocketAddr, reason: Arc<Mutex<String>>) {
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(not_ready))
        .with_state(reason);
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            let _ = axum::serve(listener, app).await;
        }
        Err(e) => tracing::warn!(%listen, error = %e, "cannot serve /readyz while not ready"),
    }
}

async fn not_ready(State(reason): State<Arc<Mutex<String>>>) -> (StatusCode, String) {
    let reason = reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {reason}"),
    )
}

/// A Warning Event on the operator's own pod (in a cluster only: outside one there is no pod).
async fn warn_on_own_pod(recorder: &Recorder, config: &Config, reason: &str) {
    let (Ok(_), Ok(pod)) = (
        std::env::var("KUBERNETES_SERVICE_HOST"),
        std::env::var("HOSTNAME"),
    ) else {
        return;
    };
    let own_pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod),
        namespace: Some(config.lease_namespace.clone()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "DatabaseNotReady".into(),
        note: Some(reason.chars().take(1000).collect()),
        action: "OpenDatabase".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &own_pod).await {
        tracing::warn!(error = %e, "could not publish a Kubernetes event");
    }
}
