//! Cost and usage of the work inside a step (LLM tokens, dollars), summed per run.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What a step consumed. Record it from inside the step's closure with [`record_usage`];
/// several records in one step (or across its retries, which were paid for too) add up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub model: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub usd: f64,
    /// Free-form details (provider, request id, ...); later keys win.
    pub meta: Option<serde_json::Value>,
}

impl Usage {
    pub fn llm(model: impl Into<String>, tokens_in: u64, tokens_out: u64, usd: f64) -> Self {
        Usage {
            model: Some(model.into()),
            tokens_in,
            tokens_out,
            usd,
            meta: None,
        }
    }

    /// As the engine stores it: zeros are "not recorded".
    pub(crate) fn into_engine(self) -> cairn_engine::runner::StepUsage {
        cairn_engine::runner::StepUsage {
            usd: (self.usd != 0.0).then_some(self.usd),
            tokens_in: (self.tokens_in != 0).then_some(self.tokens_in as i64),
            tokens_out: (self.tokens_out != 0).then_some(self.tokens_out as i64),
            model: self.model,
            meta: self.meta,
        }
    }

    fn add(&mut self, other: Usage) {
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.usd += other.usd;
        if other.model.is_some() {
            self.model = other.model;
        }
        match (&mut self.meta, other.meta) {
            (Some(serde_json::Value::Object(mine)), Some(serde_json::Value::Object(theirs))) => {
                mine.extend(theirs)
            }
            (mine, Some(theirs)) => *mine = Some(theirs),
            (_, None) => {}
        }
    }
}

pub(crate) type UsageCell = Arc<Mutex<Option<Usage>>>;

tokio::task_local! {
    pub(crate) static STEP_USAGE: UsageCell;
}

/// Records usage for the step whose closure is running. Outside a step it is dropped with a
/// warning, since nothing would store it.
pub fn record_usage(usage: Usage) {
    let recorded = STEP_USAGE.try_with(|cell| {
        let mut slot = cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert_with(Usage::default).add(usage.clone());
    });
    if recorded.is_err() {
        tracing::warn!(
            ?usage,
            "record_usage called outside a step; the usage is not stored"
        );
    }
}
