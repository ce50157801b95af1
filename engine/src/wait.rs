//! What a parked run waits for, parsed once from the engine's `runs.waiting_for` (written only
//! by the SQL: `cairn.await_event`, `cairn.join_children`, `cairn.sleep`, `cairn.record_crash`,
//! `cairn.park_over_budget`).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// What a parked run waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// An event, by name; `deadline` when the wait times out.
    Event {
        event: String,
        question: Option<String>,
        /// The JSON schema the payload must satisfy.
        schema: Option<Value>,
        deadline: Option<DateTime<Utc>>,
    },
    /// Child runs being joined, and how many of them are unfinished.
    Children {
        children: Option<i64>,
        unfinished: Option<i64>,
    },
    /// A durable sleep, until `until`.
    Sleep { until: Option<DateTime<Utc>> },
    /// The backoff after a crash (`reason`), until `until`.
    Retry {
        reason: Option<String>,
        until: Option<DateTime<Utc>>,
    },
    /// A spend budget passed: run `run`'s tree spent `spent` of its `limit` (US dollars), and
    /// waits for that budget to be raised.
    Budget {
        run: String,
        spent: f64,
        limit: f64,
        question: Option<String>,
    },
}

impl Wait {
    /// Parses the engine's `waiting_for`; `wake_at` is the run's wake time (when a sleep or a
    /// crash backoff ends). `None` for anything that is not a wait.
    pub fn from_engine(waiting_for: &Value, wake_at: Option<DateTime<Utc>>) -> Option<Wait> {
        let text = |key: &str| {
            waiting_for
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let time = |key: &str| {
            waiting_for
                .get(key)
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let number = |key: &str| waiting_for.get(key).and_then(Value::as_i64);
        if let Some(budget) = waiting_for.get("budget") {
            let usd = |key: &str| budget.get(key).and_then(Value::as_f64).unwrap_or_default();
            Some(Wait::Budget {
                run: budget
                    .get("run")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                spent: usd("spent"),
                limit: usd("limit"),
                question: text("question"),
            })
        } else if let Some(event) = text("event") {
            Some(Wait::Event {
                event,
                question: text("question"),
                schema: waiting_for.get("schema").cloned(),
                deadline: time("deadline"),
            })
        } else if waiting_for.get("unfinished").is_some() {
            Some(Wait::Children {
                children: number("children"),
                unfinished: number("unfinished"),
            })
        } else if waiting_for.get("retry_after").is_some() {
            Some(Wait::Retry {
                reason: text("retry_after"),
                until: wake_at,
            })
        } else if waiting_for.get("until").is_some() || waiting_for.get("sleep").is_some() {
            Some(Wait::Sleep {
                until: time("until").or(wake_at),
            })
        } else {
            None
        }
    }

    /// `event`, `children`, `sleep` or `retry`.
    pub fn kind(&self) -> &'static str {
        match self {
            Wait::Event { .. } => "event",
            Wait::Children { .. } => "children",
            Wait::Sleep { .. } => "sleep",
            Wait::Retry { .. } => "retry",
            Wait::Budget { .. } => "budget",
        }
    }

    /// The event waited for, if this is an event wait.
    pub fn event(&self) -> Option<&str> {
        match self {
            Wait::Event { event, .. } => Some(event),
            _ => None,
        }
    }

    /// In words, for tables: `event approve-x`, `2 of 3 child run(s)`, `timer ...`.
    pub fn summary(&self) -> String {
        match self {
            Wait::Event { event, .. } => format!("event {event}"),
            Wait::Children {
                children,
                unfinished,
            } => match (unfinished, children) {
                (Some(u), Some(c)) => format!("{u} of {c} child run(s)"),
                (Some(u), None) => format!("{u} child run(s)"),
                _ => "child runs".into(),
            },
            Wait::Sleep { until: Some(until) } => {
                format!("timer {}", until.format("%Y-%m-%d %H:%M:%SZ"))
            }
            Wait::Sleep { until: None } => "timer".into(),
            Wait::Retry { .. } => "retry backoff".into(),
            Wait::Budget { run, limit, .. } => format!("budget of {run} (${limit:.2}) raised"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn each_shape_the_engine_writes_is_parsed() {
        let wake = Some(at("2026-01-02T03:04:05Z"));
        let event = json!({ "event": "approve-x", "question": "Ship?", "schema": { "type": "boolean" },
                            "deadline": "2026-01-01T00:00:00+00:00" });
        assert_eq!(
            Wait::from_engine(&event, None),
            Some(Wait::Event {
                event: "approve-x".into(),
                question: Some("Ship?".into()),
                schema: Some(json!({ "type": "boolean" })),
                deadline: Some(at("2026-01-01T00:00:00Z")),
            })
        );
        let children = json!({ "children": 3, "unfinished": 2 });
        let children = Wait::from_engine(&children, None).unwrap();
        assert_eq!(children.summary(), "2 of 3 child run(s)");
        let sleep = json!({ "sleep": "nap", "until": "2026-01-02T03:04:05+00:00" });
        assert_eq!(
            Wait::from_engine(&sleep, None),
            Some(Wait::Sleep {
                until: Some(at("2026-01-02T03:04:05Z"))
            })
        );
        let retry = Wait::from_engine(&json!({ "retry_after": "OOM" }), wake).unwrap();
        assert_eq!(
            retry,
            Wait::Retry {
                reason: Some("OOM".into()),
                until: wake
            }
        );
        assert_eq!(retry.kind(), "retry");
        let budget =
            json!({ "budget": { "run": "r", "spent": 1.25, "limit": 1 }, "question": "More?" });
        let budget = Wait::from_engine(&budget, None).unwrap();
        assert_eq!(
            budget,
            Wait::Budget {
                run: "r".into(),
                spent: 1.25,
                limit: 1.0,
                question: Some("More?".into())
            }
        );
        assert_eq!(budget.summary(), "budget of r ($1.00) raised");
        assert_eq!(Wait::from_engine(&json!({}), wake), None);
    }
}
