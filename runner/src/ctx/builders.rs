//! The builders of a flow's durable operations: a step (its retry policy, whether it is
//! sensitive), the two halves of a step begun with `begin_step`, and a wait for an event. Each
//! is `.await`ed to run, through the `Ctx` it came from.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use backon::ExponentialBuilder;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{BoxFuture, Ctx};
use crate::usage::Usage;

/// Step-level retries: tries in-process with exponential backoff. Errors marked with
/// [`permanent`](crate::permanent) are not retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total tries, the first included (1 = no retry).
    pub max_tries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_tries: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            max_tries: 1,
            ..Default::default()
        }
    }

    pub fn exponential(max_tries: u32, initial_backoff: Duration) -> Self {
        RetryPolicy {
            max_tries: max_tries.max(1),
            initial_backoff,
            ..Default::default()
        }
    }

    pub(super) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(self.max_tries.saturating_sub(1) as usize)
            .with_jitter()
    }
}

/// Result of [`Ctx::begin_step`].
pub enum StepStart<'c, T> {
    /// Completed in an earlier attempt: here is its checkpointed value.
    Replayed(T),
    /// Not done yet: do the work, then [`PendingStep::complete`] it.
    Run(PendingStep<'c>),
}

/// A step begun with [`Ctx::begin_step`] whose result is not stored yet.
pub struct PendingStep<'c> {
    pub(super) ctx: &'c Ctx,
    pub(super) key: String,
    pub(super) started: Instant,
    pub(super) sensitive: bool,
}

impl PendingStep<'_> {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Marks the value sensitive (see [`Step::sensitive`]).
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// Checkpoints the step's value (one database round trip).
    pub async fn complete<T: Serialize>(
        self,
        value: &T,
        usage: Option<Usage>,
    ) -> anyhow::Result<()> {
        let result = self.ctx.to_checkpoint(&self.key, value, self.sensitive)?;
        let result = self.ctx.offload(&self.key, result).await?;
        self.ctx
            .complete(&self.key, result, self.started, 1, usage)
            .await
    }
}

/// A step being built; `.await` it to run. See [`Ctx::step`].
#[must_use = "a step does nothing until awaited"]
pub struct Step<'c, F> {
    pub(super) ctx: &'c Ctx,
    pub(super) key: String,
    pub(super) retry: RetryPolicy,
    pub(super) sensitive: bool,
    pub(super) f: F,
}

impl<F> Step<'_, F> {
    /// Sets the step's in-process retry policy (default: 3 tries, backoff from 1 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Marks the value secret (a credential, personal data): it is stored encrypted with the
    /// namespace's step key, opened only when this flow replays the step, and never shown by
    /// `inspect`, the read API or anything built on them.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
}

impl<'c, T, F, Fut> IntoFuture for Step<'c, F>
where
    F: FnMut() -> Fut + Send + 'c,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'c,
    T: Serialize + DeserializeOwned + Send + 'c,
{
    type Output = anyhow::Result<T>;
    type IntoFuture = BoxFuture<'c, anyhow::Result<T>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(
            self.ctx
                .run_step(self.key, self.retry, self.sensitive, self.f),
        )
    }
}

/// A wait for an event being built; `.await` it. See [`Ctx::wait_for_event`].
#[must_use = "a wait does nothing until awaited"]
pub struct Wait<'c, T> {
    pub(super) ctx: &'c Ctx,
    pub(super) key: String,
    pub(super) event: String,
    pub(super) question: Option<String>,
    pub(super) schema: Option<Value>,
    pub(super) timeout: Option<Duration>,
    pub(super) include_earlier: bool,
    pub(super) _payload: PhantomData<fn() -> T>,
}

impl<'c, T> Wait<'c, T> {
    /// A question for the people (or agents) who answer this wait; shown by `inspect`.
    pub fn question(mut self, question: impl Into<String>) -> Self {
        self.question = Some(question.into());
        self
    }

    /// Replaces the JSON schema derived from `T`.
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Also takes an event sent to the whole namespace before this run was created. By
    /// default a run waits for one sent after it was created (or one addressed to it, as
    /// `approve` does), so a run created again under a reused name is not answered by what
    /// was sent to the one before.
    pub fn include_earlier(mut self) -> Self {
        self.include_earlier = true;
        self
    }

    /// Gives up after `timeout`; the wait then yields `None`. The outcome is checkpointed, so
    /// a replay sees the same answer.
    pub fn timeout(mut self, timeout: Duration) -> WaitWithTimeout<'c, T> {
        self.timeout = Some(timeout);
        WaitWithTimeout(self)
    }
}

impl<'c, T: DeserializeOwned + Send + 'c> IntoFuture for Wait<'c, T> {
    type Output = anyhow::Result<T>;
    type IntoFuture = BoxFuture<'c, anyhow::Result<T>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let payload = self.ctx.wait_event(&self).await?;
            payload.ok_or_else(|| anyhow!("event \"{}\" wait ended without a payload", self.event))
        })
    }
}

/// A wait with a timeout: yields `Some(payload)` or `None` when the time ran out.
#[must_use = "a wait does nothing until awaited"]
pub struct WaitWithTimeout<'c, T>(pub(super) Wait<'c, T>);

impl<'c, T: DeserializeOwned + Send + 'c> IntoFuture for WaitWithTimeout<'c, T> {
    type Output = anyhow::Result<Option<T>>;
    type IntoFuture = BoxFuture<'c, anyhow::Result<Option<T>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.ctx.wait_event(&self.0).await })
    }
}
