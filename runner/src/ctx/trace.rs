//! The spans this process sends: one per step it executes, a child of its attempt's span (the
//! `TRACEPARENT` its launcher gave it), sent as the step completes so that a crash later loses
//! none. Tracing never fails a step: if the endpoint cannot take spans, the process says so
//! once and sends no more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use cairn_engine::runner::StepUsage;
use cairn_engine::traces::{AttemptTracing, KeyValue, Span, usage_attributes};

pub(crate) struct StepTraces {
    tracing: AttemptTracing,
    run_id: String,
    off: AtomicBool,
}

/// What a step span says about the step.
pub(crate) struct StepSpan<'a> {
    pub key: &'a str,
    pub took: Duration,
    pub tries: u32,
    pub usage: Option<&'a StepUsage>,
    pub error: Option<String>,
}

impl StepTraces {
    /// Traces when the launcher gave this attempt a span and the environment an endpoint
    /// (`RunnerEnv::traces`); a setting that cannot work is said once, and the run goes on.
    pub(crate) fn new(
        run_id: uuid::Uuid,
        tracing: Option<Result<AttemptTracing, String>>,
    ) -> Option<StepTraces> {
        match tracing? {
            Ok(tracing) => Some(StepTraces {
                tracing,
                run_id: run_id.to_string(),
                off: AtomicBool::new(false),
            }),
            Err(why) => {
                tracing::warn!("no spans: {why}");
                None
            }
        }
    }

    pub(crate) async fn step(&self, step: StepSpan<'_>) {
        if self.off.load(Ordering::Relaxed) {
            return;
        }
        let end = SystemTime::now();
        let usage = step.usage;
        let mut attributes = vec![
            KeyValue::new("cairn.run.id", self.run_id.clone()),
            KeyValue::new("cairn.step.key", step.key.to_owned()),
            KeyValue::new("cairn.step.tries", i64::from(step.tries)),
        ];
        attributes.extend(usage_attributes(
            usage.and_then(|u| u.model.as_deref()),
            usage.and_then(|u| u.tokens_in),
            usage.and_then(|u| u.tokens_out),
            usage.and_then(|u| u.usd),
        ));
        let span = Span {
            name: step.key.to_owned(),
            context: self.tracing.attempt.child(),
            parent: Some(self.tracing.attempt.span_id),
            start: end.checked_sub(step.took).unwrap_or(end),
            end,
            attributes,
            error: step.error,
        };
        if let Err(why) = self.tracing.exporter.export(vec![span]).await {
            self.off.store(true, Ordering::Relaxed);
            tracing::warn!("no more spans from this process: {why}");
        }
    }
}
