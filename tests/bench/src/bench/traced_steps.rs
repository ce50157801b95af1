//! Figure 12 (issue 17): what tracing costs a step. The same small steps through the SDK's run
//! loop, untraced, then traced: each step's span sent to a real OpenTelemetry Collector on
//! loopback as the step completes (the flow process waits for it to be taken, so that a crash
//! right after the step loses no span).

use std::sync::Arc;

use cairn_engine::traces::{AttemptTracing, Exporter, TraceParent};
use cairn_tests::otelcol::Collector;
use sqlx::PgPool;

use crate::large_results::run_once;
use crate::report::Latency;

/// Untraced (the baseline), then traced: `steps` samples each.
pub async fn traced_steps(
    pool: &PgPool,
    url: &str,
    dir: &std::path::Path,
    steps: usize,
) -> anyhow::Result<Vec<Latency>> {
    const BYTES: usize = 100;
    let untraced = run_once(pool, url, None, None, steps, BYTES).await?;
    let collector = Collector::start(&dir.join("otelcol"));
    let url_of_traces = format!("{}/v1/traces", collector.endpoint());
    let traces = AttemptTracing {
        attempt: TraceParent::random(),
        exporter: Arc::new(Exporter::to_url(&url_of_traces, "bench").map_err(anyhow::Error::msg)?),
    };
    let traced = run_once(pool, url, None, Some(traces), steps, BYTES).await?;
    let sent = collector.spans().len();
    anyhow::ensure!(
        sent > 0,
        "the collector received no span of the traced steps"
    );
    Ok(vec![
        Latency::of(
            "Cairn step, untraced",
            "SDK run loop, 100-byte result",
            untraced,
        ),
        Latency::of(
            "Cairn step, traced",
            "the same, its span sent to an OpenTelemetry Collector on loopback",
            traced,
        ),
    ])
}
