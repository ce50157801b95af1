//! The launchers' side of traces: a run's span context at launch, and the spans of finished
//! runs that only the engine saw whole (see the module above).

use chrono::{DateTime, Utc};
use opentelemetry::KeyValue;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Exporter, Span, TraceParent, usage_attributes};
use crate::error::{EngineResult, Result};

/// The span context of a run, made at its first launch (in its parent's trace for a child).
/// The attempt's process gets `TRACEPARENT` = `.attempt(number)` of it.
pub async fn run_trace(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<TraceParent>> {
    let stored = sqlx::query_scalar!(
        "SELECT cairn.run_traceparent($1, $2)",
        run_id,
        TraceParent::random().encode()
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(stored.as_deref().and_then(TraceParent::parse))
}

#[derive(Deserialize)]
struct AttemptRecord {
    attempt: i32,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    detail: Option<String>,
}

#[derive(Deserialize)]
struct WaitRecord {
    key: String,
    kind: String,
    started_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
}

/// Exports the spans of up to `limit` finished runs of the namespaces `only` names (none: all)
/// and records them exported. Returns how many runs. Spans that the endpoint refuses are
/// tried again on the next call.
pub async fn export_finished(
    pool: &PgPool,
    exporter: &Exporter,
    only: Option<&[String]>,
    limit: i32,
) -> anyhow::Result<usize> {
    let rows = sqlx::query!(
        r#"SELECT run_id AS "run_id!", namespace AS "namespace!", name AS "name!",
                  flow AS "flow!", state AS "state!", created_at AS "created_at!",
                  finished_at AS "finished_at!", traceparent AS "traceparent!",
                  parent_traceparent, error, usd, tokens_in, tokens_out,
                  attempts AS "attempts!", waits AS "waits!"
           FROM cairn.traces_to_export($1, $2)"#,
        only,
        limit
    )
    .fetch_all(pool)
    .await?;
    let mut spans = Vec::new();
    let mut runs = Vec::new();
    for row in rows {
        runs.push(row.run_id);
        let Some(run) = TraceParent::parse(&row.traceparent) else {
            continue;
        };
        let parent = row
            .parent_traceparent
            .as_deref()
            .and_then(TraceParent::parse)
            .filter(|p| p.trace_id == run.trace_id)
            .map(|p| p.span_id);
        let mut attributes = vec![
            KeyValue::new("cairn.run.id", row.run_id.to_string()),
            KeyValue::new("cairn.run.name", row.name.clone()),
            KeyValue::new("cairn.run.phase", row.state.clone()),
            KeyValue::new("cairn.flow", row.flow.clone()),
            KeyValue::new("k8s.namespace.name", row.namespace),
        ];
        attributes.extend(usage_attributes(
            None,
            row.tokens_in,
            row.tokens_out,
            row.usd,
        ));
        let error = (row.state == "failed").then(|| {
            row.error
                .as_ref()
                .and_then(|e| e.get("message").and_then(|m| m.as_str()))
                .unwrap_or("failed")
                .to_owned()
        });
        spans.push(Span {
            name: format!("run {}", row.flow),
            context: run,
            parent,
            start: row.created_at.into(),
            end: row.finished_at.into(),
            attributes,
            error,
        });
        let attempts: Vec<AttemptRecord> = serde_json::from_value(row.attempts)?;
        for a in attempts {
            let outcome = a.outcome.unwrap_or_else(|| "unknown".into());
            let error = matches!(outcome.as_str(), "crashed" | "failed")
                .then(|| a.detail.clone().unwrap_or_else(|| outcome.clone()));
            spans.push(Span {
                name: format!("attempt {}", a.attempt),
                context: run.attempt(a.attempt),
                parent: Some(run.span_id),
                start: a.started_at.into(),
                end: a.ended_at.unwrap_or(row.finished_at).into(),
                attributes: vec![
                    KeyValue::new("cairn.attempt", i64::from(a.attempt)),
                    KeyValue::new("cairn.attempt.outcome", outcome),
                ],
                error,
            });
        }
        let waits: Vec<WaitRecord> = serde_json::from_value(row.waits)?;
        for w in waits {
            // `wait event:approve`, `sleep cool-down`; a join's key names it already.
            let name = match w.key.starts_with(&w.kind) {
                true => w.key.clone(),
                false => format!("{} {}", w.kind, w.key),
            };
            spans.push(Span {
                name,
                context: run.child(),
                parent: Some(run.span_id),
                start: w.started_at.into(),
                end: w.completed_at.into(),
                attributes: vec![
                    KeyValue::new("cairn.step.key", w.key),
                    KeyValue::new("cairn.step.kind", w.kind),
                ],
                error: None,
            });
        }
    }
    if runs.is_empty() {
        return Ok(0);
    }
    exporter.export(spans).await.map_err(anyhow::Error::msg)?;
    sqlx::query!("SELECT cairn.traces_exported($1)", &runs)
        .execute(pool)
        .await?;
    Ok(runs.len())
}
