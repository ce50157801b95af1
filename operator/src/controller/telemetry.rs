//! The operator's HTTP endpoints: `/livez` (the process serves), `/readyz` (it can reach the
//! database), `/metrics` (Prometheus text format), and the read API under `/api/v1` (see `api`);
//! and the spans of finished runs, exported over OTLP when the operator traces.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Context;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    namespace: String,
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    namespace: String,
    flow: String,
    /// `in` (prompt) or `out` (completion).
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    stage: String,
    category: String,
}

pub struct Metrics {
    registry: Registry,
    runs: Family<PhaseLabel, Gauge>,
    pub launches: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    /// From a run becoming runnable (an event, a timer, a finished child) to its pod's creation.
    pub resume_latency: Histogram,
    /// How long one FlowRun reconcile takes (its calls to the API server and the database).
    pub reconcile_duration: Histogram,
    spend: Family<FlowLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    tokens: Family<TokenLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let runs = Family::<PhaseLabel, Gauge>::default();
        registry.register("runs", "Runs by phase", runs.clone());
        let launches = Counter::default();
        registry.register("pod_launches", "Flow pods created", launches.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried, by controller (kind), stage and category",
            reconcile_errors.clone(),
        );
        let resume_latency = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "resume_latency_seconds",
            "From a run becoming runnable to its pod being created",
            resume_latency.clone(),
        );
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "flowrun_reconcile_duration_seconds",
            "How long a FlowRun reconcile takes",
            reconcile_duration.clone(),
        );
        let spend = Family::<FlowLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "spend_usd",
            "US dollars recorded by steps, by namespace and flow (counted as each execution ends)",
            spend.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Model tokens recorded by steps, by namespace, flow and direction (in, out)",
            tokens.clone(),
        );
        Metrics {
            spend,
            tokens,
            registry,
            runs,
            launches,
            reconcile_errors,
            resume_latency,
            reconcile_duration,
        }
    }
}

impl Metrics {
    /// What one execution's steps recorded, counted once when it ends.
    pub fn spent(&self, usage: &cairn_engine::read::Usage) {
        let (namespace, flow) = (usage.namespace.clone(), usage.flow.clone());
        if usage.usd > 0.0 {
            let labels = FlowLabels {
                namespace: namespace.clone(),
                flow: flow.clone(),
            };
            self.spend.get_or_create(&labels).inc_by(usage.usd);
        }
        for (direction, count) in [("in", usage.tokens_in), ("out", usage.tokens_out)] {
            if count > 0 {
                let labels = TokenLabels {
                    namespace: namespace.clone(),
                    flow: flow.clone(),
                    direction: direction.into(),
                };
                self.tokens.get_or_create(&labels).inc_by(count as u64);
            }
        }
    }

    pub fn reconcile_failed(&self, controller: &str, stage: &str, category: &str) {
        let labels = ErrorLabels {
            controller: controller.to_owned(),
            stage: stage.to_owned(),
            category: category.to_owned(),
        };
        self.reconcile_errors.get_or_create(&labels).inc();
    }

    pub fn observe_resume(&self, waited: Duration) {
        self.resume_latency.observe(waited.as_secs_f64());
    }
}

/// Exports the spans of runs as they finish (see `cairn_engine::traces`), when this operator
/// traces: the engine keeps which runs are done, so a restart or a backend that was down
/// loses none.
pub async fn export_traces(ctx: Arc<Context>) {
    let Some(exporter) = ctx.traces.clone() else {
        return;
    };
    let namespaces = ctx.config.namespaces();
    let mut failing = false;
    loop {
        let exported =
            cairn_engine::traces::export_finished(&ctx.pool, &exporter, namespaces.as_deref(), 100)
                .await;
        let pause = match exported {
            Ok(100) => Duration::ZERO,
            // Nothing to send proves nothing about the endpoint.
            Ok(0) => Duration::from_secs(2),
            Ok(_) => {
                failing = false;
                Duration::from_secs(2)
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %format!("{e:#}"), "cannot export the spans of finished runs; trying again");
                }
                failing = true;
                Duration::from_secs(30)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

pub async fn serve(listen: std::net::SocketAddr, ctx: Arc<Context>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving /livez, /readyz and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn readyz(State(ctx): State<Arc<Context>>) -> (StatusCode, String) {
    match sqlx::query("SELECT 1").execute(&ctx.pool).await {
        Ok(_) => (StatusCode::OK, "ok".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}"),
        ),
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> (StatusCode, String) {
    // Run counts come from the engine at scrape time: the database is the truth, and it keeps
    // the operator's memory flat whatever the number of runs.
    match cairn_engine::read::count_by_phase(&ctx.pool).await {
        Ok(counts) => {
            ctx.metrics.runs.clear();
            for (phase, count) in counts {
                ctx.metrics
                    .runs
                    .get_or_create(&PhaseLabel { phase })
                    .set(count);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count runs for /metrics"),
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &ctx.metrics.registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
