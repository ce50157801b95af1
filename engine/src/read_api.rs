//! The operator's read API on the wire: the JSON the operator serves
//! (`GET /api/v1/namespaces/{ns}/runs[/{name}]`, `cairn dev runs -o json`) and `kubectl cairn`
//! reads. Every field is a projection of the engine's records ([`crate::read`]), so the types
//! live with the engine; the HTTP handlers stay in the operator. Fields are only ever added
//! (with `Option` or a default): an older `kubectl cairn` must still read a newer operator.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Phase;

/// `GET .../runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
}

/// One run in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: Uuid,
    pub namespace: String,
    pub name: String,
    pub flow: String,
    pub phase: Phase,
    /// Executions so far: every launch counts, after a wait as after a crash.
    pub attempt: i32,
    /// Executions that crashed (absent from operators before 0.2: read as 0).
    #[serde(default)]
    pub crashes: i32,
    /// Completed steps.
    pub steps: i64,
    /// Cost recorded by its steps, in US dollars.
    pub usd: f64,
    /// Cost of its tree: its steps' and its children's, at any depth (absent from operators
    /// before 0.2), and the budget that tree is held to.
    #[serde(default)]
    pub tree_usd: Option<f64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The event it waits for, if it waits for one.
    pub waiting_for_event: Option<String>,
    /// What it waits for, in words (`event approve-x`, `2 child run(s)`, `timer ...`).
    pub waiting: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The parent run's name, for a child run.
    pub parent: Option<String>,
    pub parent_id: Option<Uuid>,
}

/// `GET .../runs/{name}`: what `cairn inspect` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunInfo,
    pub steps: Vec<Step>,
    pub attempts: Vec<Attempt>,
    pub totals: Totals,
    pub children: Vec<RunSummary>,
    /// The current wait (event, children, sleep or crash backoff), if the run is parked.
    pub wait: Option<Wait>,
}

/// A run's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: Uuid,
    pub namespace: String,
    pub name: String,
    pub flow: String,
    pub parent_id: Option<Uuid>,
    pub parent: Option<String>,
    pub phase: Phase,
    /// Executions so far (see `RunSummary`), the crashed ones, and how many crashes are allowed.
    pub attempt: i32,
    pub crashes: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub wake_at: Option<DateTime<Utc>>,
    /// The engine's description of the wait (see `wait` for the parsed form).
    pub waiting_for: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: i64,
    pub usd: f64,
    /// As in [`RunSummary`]: the tree's cost, and its budget.
    #[serde(default)]
    pub tree_usd: Option<f64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// For a fork: `{"run", "run_id", "step", "reused", "set"}`.
    #[serde(default)]
    pub fork_of: Option<Value>,
}

impl RunInfo {
    pub fn error_message(&self) -> Option<&str> {
        self.error.as_ref()?.get("message")?.as_str()
    }
}

/// A checkpointed step, the wait, sleep or join the run is blocked on, or the step whose
/// failure failed the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub key: String,
    pub kind: String,
    /// `completed`, `waiting` or `failed`.
    pub status: String,
    /// The attempt that completed it.
    pub attempt: Option<i32>,
    pub tries: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    pub usd: Option<f64>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub model: Option<String>,
    /// The start of what it returned, as JSON (at most [`PREVIEW_CHARS`] characters, then
    /// `…`). None for a sensitive step, and for a step not completed.
    #[serde(default)]
    pub preview: Option<String>,
    /// Its value is secret: stored sealed, never shown.
    #[serde(default)]
    pub sensitive: bool,
    /// Why it failed (a `failed` step).
    #[serde(default)]
    pub error: Option<String>,
    /// In a fork, a checkpoint it did not make itself: `reused` from its source, or `set` by
    /// whoever forked it. Neither was paid by this run.
    #[serde(default)]
    pub origin: Option<String>,
}

/// The longest [`Step::preview`].
pub const PREVIEW_CHARS: usize = 200;

/// `GET .../runs/{name}/steps/{key}`: one step's whole value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    pub run: String,
    pub key: String,
    pub kind: String,
    pub status: String,
    pub sensitive: bool,
    /// What it returned; None when it is sensitive, not completed, or kept in the artifact
    /// store (then `artifact` names it).
    pub output: Option<Value>,
    #[serde(default)]
    pub artifact: Option<Artifact>,
    pub error: Option<String>,
}

/// `GET .../runs/{name}/artifacts`: the objects a run keeps in the artifact store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactList {
    pub run: String,
    pub items: Vec<Artifact>,
}

/// One object of a run in the artifact store: one it stored (`ctx.artifact`), or a step's
/// result too large for its checkpoint row. `GET .../runs/{run}/artifacts/{name}` downloads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The name it was stored under (`report.pdf`, `report.pdf#2` when stored again), or the
    /// step's key for a result.
    pub name: String,
    /// The checkpoint that refers to it.
    pub step: String,
    /// `sha256:` and its SHA-256 in hex.
    pub digest: String,
    pub size: u64,
    pub content_type: String,
    /// A sensitive step's result: sealed, never served.
    pub sensitive: bool,
    pub created_at: DateTime<Utc>,
}

/// One launched process (a pod on Kubernetes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `None` while it runs.
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub steps: i64,
    /// What the run paid (reused and set steps are not counted).
    pub usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// For a fork: the checkpoints it took from its source (reused or set), and what the
    /// reused ones cost the source.
    #[serde(default)]
    pub reused_steps: i64,
    #[serde(default)]
    pub reused_usd: f64,
}

/// What a parked run waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    /// `event`, `children`, `sleep`, `retry` (the backoff after a crash) or `budget`.
    pub kind: String,
    pub event: Option<String>,
    pub question: Option<String>,
    /// The JSON schema an event's payload must satisfy.
    pub schema: Option<Value>,
    /// When an event wait times out.
    pub deadline: Option<DateTime<Utc>>,
    /// When a sleep (or a crash backoff) ends.
    pub until: Option<DateTime<Utc>>,
    /// Children being joined, and how many of them are unfinished.
    pub children: Option<i64>,
    pub unfinished: Option<i64>,
    /// Why the run is backing off (the crash).
    pub reason: Option<String>,
    /// A budget wait: the run whose budget was passed, what its tree spent and its limit (US
    /// dollars). Absent from operators before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
}

impl From<crate::Wait> for Wait {
    fn from(wait: crate::Wait) -> Wait {
        let kind = wait.kind().to_owned();
        let mut wire = Wait {
            kind,
            event: None,
            question: None,
            schema: None,
            deadline: None,
            until: None,
            children: None,
            unfinished: None,
            reason: None,
            budget_run: None,
            spent_usd: None,
            limit_usd: None,
        };
        match wait {
            crate::Wait::Event {
                event,
                question,
                schema,
                deadline,
            } => {
                wire.event = Some(event);
                (wire.question, wire.schema, wire.deadline) = (question, schema, deadline);
            }
            crate::Wait::Children {
                children,
                unfinished,
            } => (wire.children, wire.unfinished) = (children, unfinished),
            crate::Wait::Sleep { until } => wire.until = until,
            crate::Wait::Retry { reason, until } => (wire.reason, wire.until) = (reason, until),
            crate::Wait::Budget {
                run,
                spent,
                limit,
                question,
            } => {
                (wire.budget_run, wire.question) = (Some(run), question);
                (wire.spent_usd, wire.limit_usd) = (Some(spent), Some(limit));
            }
        }
        wire
    }
}

impl Wait {
    /// The engine's typed wait again (`None` for a kind this build does not know).
    pub fn to_engine(&self) -> Option<crate::Wait> {
        Some(match self.kind.as_str() {
            "event" => crate::Wait::Event {
                event: self.event.clone().unwrap_or_default(),
                question: self.question.clone(),
                schema: self.schema.clone(),
                deadline: self.deadline,
            },
            "children" => crate::Wait::Children {
                children: self.children,
                unfinished: self.unfinished,
            },
            "sleep" => crate::Wait::Sleep { until: self.until },
            "retry" => crate::Wait::Retry {
                reason: self.reason.clone(),
                until: self.until,
            },
            "budget" => crate::Wait::Budget {
                run: self.budget_run.clone().unwrap_or_default(),
                spent: self.spent_usd.unwrap_or_default(),
                limit: self.limit_usd.unwrap_or_default(),
                question: self.question.clone(),
            },
            _ => return None,
        })
    }

    /// In words, for tables: `event approve-x`, `2 of 3 child run(s)`, `timer ...`.
    pub fn summary(&self) -> String {
        self.to_engine()
            .map_or_else(|| self.kind.clone(), |wait| wait.summary())
    }
}

// ---- built from the engine's records (the launchers' side) ------------------------------------

#[cfg(feature = "launcher")]
mod from_records {
    use super::*;
    use crate::read::RunRecord;

    impl RunSummary {
        pub fn from_record(record: &RunRecord, parent: Option<String>) -> RunSummary {
            let wait = record.wait().map(Wait::from);
            RunSummary {
                id: record.id,
                namespace: record.namespace.clone(),
                name: record.name.clone(),
                flow: record.flow.clone(),
                phase: record.phase,
                attempt: record.attempt,
                crashes: record.crashes,
                steps: record.steps,
                usd: record.usd,
                tree_usd: Some(record.tree_usd),
                budget_usd: record.budget_usd,
                waiting_for_event: wait.as_ref().and_then(|w| w.event.clone()),
                waiting: wait.as_ref().map(Wait::summary),
                created_at: record.created_at,
                finished_at: record.finished_at,
                parent,
                parent_id: record.parent_id,
            }
        }
    }

    impl RunInfo {
        pub fn from_record(record: &RunRecord, parent: Option<String>) -> RunInfo {
            RunInfo {
                id: record.id,
                namespace: record.namespace.clone(),
                name: record.name.clone(),
                flow: record.flow.clone(),
                parent_id: record.parent_id,
                parent,
                phase: record.phase,
                attempt: record.attempt,
                crashes: record.crashes,
                max_attempts: record.max_attempts,
                cancel_requested: record.cancel_requested,
                wake_at: record.wake_at,
                waiting_for: record.waiting_for.clone(),
                result: record.result.clone(),
                error: record.error.clone(),
                created_at: record.created_at,
                updated_at: record.updated_at,
                finished_at: record.finished_at,
                steps: record.steps,
                usd: record.usd,
                tree_usd: Some(record.tree_usd),
                budget_usd: record.budget_usd,
                fork_of: record.fork_of.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The wire form of what the engine wrote.
    fn wire(waiting_for: &Value, wake_at: Option<DateTime<Utc>>) -> Option<Wait> {
        crate::Wait::from_engine(waiting_for, wake_at).map(Wait::from)
    }

    #[test]
    fn engine_waits_are_parsed() {
        let event = json!({
            "event": "approve-x",
            "question": "Publish?",
            "schema": { "type": "boolean" },
            "deadline": "2030-01-02T03:04:05.123456+00:00",
        });
        let wait = wire(&event, None).unwrap();
        assert_eq!(wait.kind, "event");
        assert_eq!(wait.event.as_deref(), Some("approve-x"));
        assert_eq!(wait.schema, Some(json!({ "type": "boolean" })));
        assert_eq!(
            wait.deadline.unwrap().to_rfc3339(),
            "2030-01-02T03:04:05.123456+00:00"
        );
        assert_eq!(wait.summary(), "event approve-x");
        assert_eq!(
            wait.to_engine(),
            crate::Wait::from_engine(&event, None),
            "the wire form carries the whole wait"
        );

        let join = wire(&json!({ "children": 3, "unfinished": 2 }), None).unwrap();
        assert_eq!(join.summary(), "2 of 3 child run(s)");
        let sleep = wire(
            &json!({ "sleep": "nap", "until": "2030-01-02T03:04:05+00:00" }),
            None,
        )
        .unwrap();
        assert_eq!(sleep.summary(), "timer 2030-01-02 03:04:05Z");
        let retry = wire(&json!({ "retry_after": "SIGKILL" }), None).unwrap();
        assert_eq!(
            (retry.kind.as_str(), retry.reason.as_deref()),
            ("retry", Some("SIGKILL"))
        );
        assert!(wire(&json!({}), None).is_none());
    }
}
