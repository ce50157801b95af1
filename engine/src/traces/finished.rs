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

/// Exports the spans of up to `limit` finished runs of the namespaces `only` names (none: all),
/// one request a run, and records each exported. Returns how many runs went. When none could
/// go, the endpoint is down: the error says why, and they are tried again on the next call.
/// A run whose spans the endpoint refuses while it takes others' is given up, with a warning,
/// so that it cannot hold back the runs after it.
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
    let (mut exported, mut refused) = (Vec::new(), Vec::new());
    let mut last_error = None;
    for row in rows {
        let run = FinishedRun {
            id: row.run_id,
            namespace: row.namespace,
            name: row.name,
            flow: row.flow,
            state: row.state,
            created_at: row.created_at,
            finished_at: row.finished_at,
            traceparent: row.traceparent,
            parent_traceparent: row.parent_traceparent,
            error: row.error,
            usd: row.usd,
            tokens_in: row.tokens_in,
            tokens_out: row.tokens_out,
            attempts: serde_json::from_value(row.attempts).unwrap_or_default(),
            waits: serde_json::from_value(row.waits).unwrap_or_default(),
        };
        match exporter.export(run.spans()).await {
            Ok(()) => exported.push((run.id, run.finished_at)),
            Err(why) => {
                refused.push((run.id, run.finished_at, run.name));
                last_error = Some(why);
            }
        }
    }
    let gone = exported.len();
    if gone > 0 {
        // The endpoint works: what it refused, it will refuse again.
        for (_, _, name) in &refused {
            let why = last_error.as_deref().unwrap_or_default();
            tracing::warn!(run = %name, "the OTLP endpoint refused the spans of this run; they are dropped: {why}");
        }
        exported.extend(refused.into_iter().map(|(id, finished, _)| (id, finished)));
    } else if let Some(why) = last_error {
        anyhow::bail!(why);
    }
    let (ids, finished): (Vec<Uuid>, Vec<DateTime<Utc>>) = exported.into_iter().unzip();
    sqlx::query!("SELECT cairn.traces_exported($1, $2)", &ids, &finished)
        .execute(pool)
        .await?;
    Ok(gone)
}

/// A finished run, as `cairn.traces_to_export` describes it.
struct FinishedRun {
    id: Uuid,
    namespace: String,
    name: String,
    flow: String,
    state: String,
    created_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    traceparent: String,
    parent_traceparent: Option<String>,
    error: Option<serde_json::Value>,
    usd: Option<f64>,
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
    attempts: Vec<AttemptRecord>,
    waits: Vec<WaitRecord>,
}

impl FinishedRun {
    /// The run's span, its attempts' and its waits'. None when its traceparent is unreadable.
    fn spans(&self) -> Vec<Span> {
        let Some(run) = TraceParent::parse(&self.traceparent) else {
            return Vec::new();
        };
        let parent = self
            .parent_traceparent
            .as_deref()
            .and_then(TraceParent::parse)
            .filter(|p| p.trace_id == run.trace_id)
            .map(|p| p.span_id);
        let mut attributes = vec![
            KeyValue::new("cairn.run.id", self.id.to_string()),
            KeyValue::new("cairn.run.name", self.name.clone()),
            KeyValue::new("cairn.run.phase", self.state.clone()),
            KeyValue::new("cairn.flow", self.flow.clone()),
            KeyValue::new("k8s.namespace.name", self.namespace.clone()),
        ];
        attributes.extend(usage_attributes(
            None,
            self.tokens_in,
            self.tokens_out,
            self.usd,
        ));
        let error = (self.state == "failed").then(|| {
            self.error
                .as_ref()
                .and_then(|e| e.get("message").and_then(|m| m.as_str()))
                .unwrap_or("failed")
                .to_owned()
        });
        let mut spans = vec![Span {
            name: format!("run {}", self.flow),
            context: run,
            parent,
            start: self.created_at.into(),
            end: self.finished_at.into(),
            attributes,
            error,
        }];
        for a in &self.attempts {
            let outcome = a.outcome.clone().unwrap_or_else(|| "unknown".into());
            let error = matches!(outcome.as_str(), "crashed" | "failed")
                .then(|| a.detail.clone().unwrap_or_else(|| outcome.clone()));
            spans.push(Span {
                name: format!("attempt {}", a.attempt),
                context: run.attempt(a.attempt),
                parent: Some(run.span_id),
                start: a.started_at.into(),
                end: a.ended_at.unwrap_or(self.finished_at).into(),
                attributes: vec![
                    KeyValue::new("cairn.attempt", i64::from(a.attempt)),
                    KeyValue::new("cairn.attempt.outcome", outcome),
                ],
                error,
            });
        }
        for w in &self.waits {
            // `wait event:approve`, `sleep cool-down`; a join's key names it already.
            let name = match w.key.starts_with(&w.kind) {
                true => w.key.clone(),
                false => format!("{} {}", w.kind, w.key),
            };
            spans.push(Span {
                name,
                context: run.step(&w.key),
                parent: Some(run.span_id),
                start: w.started_at.into(),
                end: w.completed_at.into(),
                attributes: vec![
                    KeyValue::new("cairn.step.key", w.key.clone()),
                    KeyValue::new("cairn.step.kind", w.kind.clone()),
                ],
                error: None,
            });
        }
        spans
    }
}
