//! `Ctx`: what a flow uses to make its work durable.
//!
//! Every durable operation has a key: its name plus an occurrence number when the name repeats
//! (`plan`, `plan#2`). Keys are assigned when the operation is created, in program order, so a
//! replay that calls the same operations in the same order finds the same checkpoints.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use backon::Retryable;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

mod artifacts;
mod builders;
mod trace;

pub use artifacts::{Artifact, ArtifactContent};
pub use builders::{PendingStep, RetryPolicy, Step, StepStart, Wait, WaitWithTimeout};

use crate::conn::{RunnerConn, engine_call};
use crate::error::{Interrupted, StepFailed, is_permanent, permanent};
use crate::usage::{STEP_USAGE, Usage, UsageCell};
use cairn_engine::EngineError;
use cairn_engine::checkpoint::{self, StepKeys};
use cairn_engine::runner::{self as engine, Parked, SleepOutcome};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The handle a flow receives. Cheap to clone; all clones share one run and one connection.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<Inner>,
}

struct Inner {
    attempt: engine::Attempt,
    namespace: String,
    run_name: String,
    conn: tokio::sync::Mutex<RunnerConn>,
    checkpoints: serde_json::Map<String, Value>,
    occurrences: Mutex<HashMap<String, u32>>,
    stopped: Mutex<Option<Interrupted>>,
    /// The process was told to stop: the next step boundary ends the attempt.
    stop_requested: AtomicBool,
    replayed: AtomicU32,
    executed: AtomicU32,
    inline_sleep_max: Duration,
    step_keys: Option<StepKeys>,
    artifacts: artifacts::Store,
    traces: Option<trace::StepTraces>,
}

/// A child run started with [`Ctx::spawn`]; join it for its result of type `O`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildRun<O> {
    pub run_id: Uuid,
    pub name: String,
    #[serde(skip)]
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for ChildRun<O> {
    fn clone(&self) -> Self {
        ChildRun {
            run_id: self.run_id,
            name: self.name.clone(),
            _output: PhantomData,
        }
    }
}

impl Ctx {
    pub(crate) fn new(
        attempt: engine::Attempt,
        run: engine::LoadedRun,
        conn: RunnerConn,
        inline_sleep_max: Duration,
        step_keys: Option<StepKeys>,
        artifacts: Option<Result<cairn_engine::artifacts::ArtifactSettings, String>>,
        traces: Option<Result<cairn_engine::traces::AttemptTracing, String>>,
    ) -> Self {
        let traces = trace::StepTraces::new(attempt.run_id, traces);
        Ctx {
            inner: Arc::new(Inner {
                attempt,
                namespace: run.namespace,
                run_name: run.name,
                conn: tokio::sync::Mutex::new(conn),
                checkpoints: run.steps,
                occurrences: Mutex::default(),
                stopped: Mutex::default(),
                stop_requested: AtomicBool::new(false),
                replayed: AtomicU32::new(0),
                executed: AtomicU32::new(0),
                inline_sleep_max,
                step_keys,
                artifacts: artifacts::open_store(artifacts),
                traces,
            }),
        }
    }

    pub fn run_id(&self) -> Uuid {
        self.inner.attempt.run_id
    }

    pub fn run_name(&self) -> &str {
        &self.inner.run_name
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// This process's attempt number (1 for the first launch).
    pub fn attempt(&self) -> i32 {
        self.inner.attempt.number
    }

    /// Steps answered from checkpoints and steps executed, so far in this attempt.
    pub fn step_counts(&self) -> (u32, u32) {
        (
            self.inner.replayed.load(Ordering::Relaxed),
            self.inner.executed.load(Ordering::Relaxed),
        )
    }

    pub(crate) async fn connection(&self) -> tokio::sync::MutexGuard<'_, RunnerConn> {
        self.inner.conn.lock().await
    }

    pub(crate) fn interruption(&self) -> Option<Interrupted> {
        *lock(&self.inner.stopped)
    }

    /// Asks the flow to stop at its next step boundary (the step in flight may finish and
    /// checkpoint); the runner then gives the run back.
    pub(crate) fn request_stop(&self) {
        self.inner.stop_requested.store(true, Ordering::Relaxed);
    }

    // ---- steps ---------------------------------------------------------------------------

    /// A durable step: runs `f` (retrying per policy) unless an earlier attempt completed it,
    /// in which case its checkpointed value is returned without running anything.
    ///
    /// ```ignore
    /// let plan: Plan = ctx.step("plan", || async { llm.plan(&topic).await }).await?;
    /// ```
    pub fn step<T, F, Fut>(&self, name: &str, f: F) -> Step<'_, F>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>> + Send,
        T: Serialize + DeserializeOwned + Send,
    {
        Step {
            ctx: self,
            key: self.next_key(name).0,
            retry: RetryPolicy::default(),
            sensitive: false,
            f,
        }
    }

    /// The first half of a step, for code that cannot pass a closure (before/after hooks):
    /// either the checkpointed value, or a [`PendingStep`] to complete once the work is done.
    pub async fn begin_step<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> anyhow::Result<StepStart<'_, T>> {
        self.begin(self.next_key(name).0).await
    }

    async fn begin<T: DeserializeOwned>(&self, key: String) -> anyhow::Result<StepStart<'_, T>> {
        self.check_stopped()?;
        if let Some(value) = self.replay::<T>(&key).await? {
            return Ok(StepStart::Replayed(value));
        }
        Ok(StepStart::Run(PendingStep {
            ctx: self,
            key,
            started: Instant::now(),
            sensitive: false,
        }))
    }

    async fn run_step<T, F, Fut>(
        &self,
        key: String,
        retry: RetryPolicy,
        sensitive: bool,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>> + Send,
        T: Serialize + DeserializeOwned + Send,
    {
        let pending = match self.begin(key).await? {
            StepStart::Replayed(value) => return Ok(value),
            StepStart::Run(pending) => pending,
        };
        let usage = UsageCell::default();
        let tries = AtomicU32::new(0);
        let attempt_once = || {
            tries.fetch_add(1, Ordering::Relaxed);
            f()
        };
        let outcome = STEP_USAGE
            .scope(
                usage.clone(),
                attempt_once
                    .retry(retry.backoff())
                    .when(|err| !is_permanent(err))
                    .notify(|err, delay| {
                        tracing::warn!(step = %pending.key, error = %format!("{err:#}"), ?delay, "step failed; retrying");
                    }),
            )
            .await;
        let tries = tries.load(Ordering::Relaxed);
        if let (Err(err), Some(traces)) = (&outcome, &self.inner.traces) {
            let usage = lock(&usage).take().map(Usage::into_engine);
            traces
                .step(trace::StepSpan {
                    key: &pending.key,
                    took: pending.started.elapsed(),
                    tries,
                    usage: usage.as_ref(),
                    error: Some(format!("{err:#}")),
                })
                .await;
        }
        let value = outcome.context(StepFailed {
            key: pending.key.clone(),
            tries,
        })?;
        let usage = lock(&usage).take();
        let result = self.to_checkpoint(&pending.key, &value, sensitive)?;
        let result = self.offload(&pending.key, result).await?;
        self.complete(&pending.key, result, pending.started, tries, usage)
            .await?;
        Ok(value)
    }

    async fn complete(
        &self,
        key: &str,
        result: Value,
        started: Instant,
        tries: u32,
        usage: Option<Usage>,
    ) -> anyhow::Result<()> {
        // Not a boundary: a step that finished after a stop request is still checkpointed.
        if let Some(why) = self.interruption() {
            return Err(why.into());
        }
        let step = engine::CompletedStep {
            key,
            result: &result,
            duration_ms: started.elapsed().as_millis() as i64,
            tries: tries as i32,
            usage: usage.unwrap_or_default().into_engine(),
        };
        let cancelled = {
            let mut conn = self.inner.conn.lock().await;
            engine_call!(*conn, |conn| engine::complete_step(
                conn,
                &self.inner.attempt,
                &step
            ))
        }
        .map_err(|e| self.engine_error(e))?;
        self.inner.executed.fetch_add(1, Ordering::Relaxed);
        if let Some(traces) = &self.inner.traces {
            traces
                .step(trace::StepSpan {
                    key,
                    took: started.elapsed(),
                    tries,
                    usage: Some(&step.usage),
                    error: None,
                })
                .await;
        }
        if cancelled {
            return Err(self.stop(Interrupted::Cancelled));
        }
        Ok(())
    }

    // ---- events --------------------------------------------------------------------------

    /// Waits for the event `name` (in this run's namespace) and returns its payload as `T`.
    /// The payload must match `T`'s JSON schema, which is checked when the event is emitted.
    /// While it waits the run is suspended and this process exits.
    pub fn wait_for_event<T: DeserializeOwned + JsonSchema>(&self, name: &str) -> Wait<'_, T> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).ok();
        Wait {
            ctx: self,
            key: self.next_key(&format!("event:{name}")).0,
            event: name.to_owned(),
            question: None,
            schema,
            timeout: None,
            include_earlier: false,
            _payload: PhantomData,
        }
    }

    async fn wait_event<T: DeserializeOwned>(
        &self,
        wait: &Wait<'_, T>,
    ) -> anyhow::Result<Option<T>> {
        self.check_stopped()?;
        let payload = match self.inner.checkpoints.get(&wait.key) {
            Some(stored) => {
                self.inner.replayed.fetch_add(1, Ordering::Relaxed);
                stored.get("event").cloned()
            }
            None => {
                let request = engine::EventWait {
                    key: &wait.key,
                    event: &wait.event,
                    timeout_ms: wait.timeout.map(|d| d.as_millis() as i64),
                    question: wait.question.as_deref(),
                    schema: wait.schema.as_ref(),
                    include_earlier: wait.include_earlier,
                };
                let outcome = {
                    let mut conn = self.inner.conn.lock().await;
                    engine_call!(*conn, |conn| engine::await_event(
                        conn,
                        &self.inner.attempt,
                        &request
                    ))
                }
                .map_err(|e| self.engine_error(e))?;
                match outcome {
                    Parked::Ready(payload) => {
                        // An event emitted before anyone waited was not checked against this schema.
                        if let (Some(schema), Some(payload)) = (&wait.schema, &payload) {
                            engine::check_payload(schema, payload).map_err(|problems| {
                                permanent(anyhow!(
                                    "event \"{}\" was emitted before this wait with a payload that does not match its schema: {problems}",
                                    wait.event
                                ))
                            })?;
                        }
                        payload
                    }
                    Parked::Suspended => return Err(self.stop(Interrupted::Suspended)),
                    Parked::Cancelled => return Err(self.acknowledge_cancel().await),
                }
            }
        };
        payload
            .map(|payload| decode(payload, &format!("the payload of event \"{}\"", wait.event)))
            .transpose()
    }

    /// Emits an event in this run's namespace. Checkpointed: a replay does not emit again.
    pub async fn emit<T: Serialize>(&self, name: &str, payload: &T) -> anyhow::Result<()> {
        let key = self.next_key(&format!("emit:{name}")).0;
        self.check_stopped()?;
        if self.inner.checkpoints.contains_key(&key) {
            self.inner.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let payload = serde_json::to_value(payload)?;
        let outcome = {
            let mut conn = self.inner.conn.lock().await;
            engine_call!(*conn, |conn| engine::emit(
                conn,
                &self.inner.attempt,
                &key,
                name,
                &payload
            ))
        };
        outcome.map_err(|e| self.engine_error(e))?;
        Ok(())
    }

    // ---- sleep ---------------------------------------------------------------------------

    /// Sleeps durably. Short sleeps stay in-process; longer ones suspend the run and the
    /// process exits until the wake time (by the database clock).
    pub async fn sleep(&self, name: &str, duration: Duration) -> anyhow::Result<()> {
        self.sleep_inner(name, None, duration.as_millis() as i64)
            .await
    }

    /// Sleeps durably until a point in time.
    pub async fn sleep_until(
        &self,
        name: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        self.sleep_inner(name, Some(until), 0).await
    }

    async fn sleep_inner(
        &self,
        name: &str,
        until: Option<chrono::DateTime<chrono::Utc>>,
        duration_ms: i64,
    ) -> anyhow::Result<()> {
        let key = self.next_key(&format!("sleep:{name}")).0;
        self.check_stopped()?;
        if self.inner.checkpoints.contains_key(&key) {
            self.inner.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let inline_max = self.inner.inline_sleep_max.as_millis() as i64;
        loop {
            let outcome = {
                let mut conn = self.inner.conn.lock().await;
                engine_call!(*conn, |conn| engine::sleep(
                    conn,
                    &self.inner.attempt,
                    &key,
                    until,
                    duration_ms,
                    inline_max,
                ))
            }
            .map_err(|e| self.engine_error(e))?;
            match outcome {
                SleepOutcome::Done => return Ok(()),
                SleepOutcome::Inline(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                SleepOutcome::Suspended => return Err(self.stop(Interrupted::Suspended)),
                SleepOutcome::Cancelled => return Err(self.acknowledge_cancel().await),
            }
        }
    }

    // ---- child flows ---------------------------------------------------------------------

    /// Starts a child run of `flow` (checkpointed: a replay gets the same child). The child is
    /// named `<this run>-<flow>-<n>` (this run's part shortened with a hash when the whole would
    /// pass the 253 characters of a FlowRun name) and runs in its own process.
    pub async fn spawn<O, I: Serialize>(
        &self,
        flow: &str,
        input: &I,
    ) -> anyhow::Result<ChildRun<O>> {
        let (key, occurrence) = self.next_key(&format!("spawn:{flow}"));
        self.check_stopped()?;
        if let Some(child) = self.replay::<ChildRun<O>>(&key).await? {
            return Ok(child);
        }
        let name = cairn_engine::names::child_run_name(self.run_name(), flow, occurrence);
        let input = serde_json::to_value(input)?;
        let run_id = {
            let mut conn = self.inner.conn.lock().await;
            engine_call!(*conn, |conn| engine::spawn_child(
                conn,
                &self.inner.attempt,
                &key,
                &name,
                flow,
                &input
            ))
        }
        .map_err(|e| self.engine_error(e))?;
        self.inner.executed.fetch_add(1, Ordering::Relaxed);
        Ok(ChildRun {
            run_id,
            name,
            _output: PhantomData,
        })
    }

    /// Waits for one child and returns its result; fails if the child failed or was cancelled.
    pub async fn join<O: DeserializeOwned>(&self, child: &ChildRun<O>) -> anyhow::Result<O> {
        let mut results = self.join_all(std::slice::from_ref(child)).await?;
        Ok(results.remove(0))
    }

    /// Waits until every child has finished (the run suspends meanwhile) and returns their
    /// results in order; fails naming the first child that did not succeed.
    pub async fn join_all<O: DeserializeOwned>(
        &self,
        children: &[ChildRun<O>],
    ) -> anyhow::Result<Vec<O>> {
        let key = self.next_key("join").0;
        self.check_stopped()?;
        let outcomes = match self.inner.checkpoints.get(&key) {
            Some(stored) => {
                self.inner.replayed.fetch_add(1, Ordering::Relaxed);
                stored.clone()
            }
            None => {
                let ids: Vec<Uuid> = children.iter().map(|c| c.run_id).collect();
                let outcome = {
                    let mut conn = self.inner.conn.lock().await;
                    engine_call!(*conn, |conn| engine::join_children(
                        conn,
                        &self.inner.attempt,
                        &key,
                        &ids
                    ))
                }
                .map_err(|e| self.engine_error(e))?;
                match outcome {
                    Parked::Ready(outcomes) => outcomes,
                    Parked::Suspended => return Err(self.stop(Interrupted::Suspended)),
                    Parked::Cancelled => return Err(self.acknowledge_cancel().await),
                }
            }
        };
        #[derive(Deserialize)]
        struct Outcome {
            name: String,
            state: String,
            result: Option<Value>,
            error: Option<Value>,
        }
        let outcomes: Vec<Outcome> = decode(outcomes, "the stored join outcome")?;
        outcomes
            .into_iter()
            .map(|child| {
                if child.state != "succeeded" {
                    let why = child
                        .error
                        .as_ref()
                        .and_then(|e| e.get("message"))
                        .and_then(Value::as_str)
                        .unwrap_or("no error recorded");
                    return Err(permanent(anyhow!(
                        "child run \"{}\" {}: {why}",
                        child.name,
                        child.state
                    )));
                }
                decode(
                    child.result.unwrap_or(Value::Null),
                    &format!("the result of child run \"{}\"", child.name),
                )
            })
            .collect()
    }

    // ---- plumbing ------------------------------------------------------------------------

    /// The key for the next occurrence of `name`, and that occurrence's number (from 1).
    fn next_key(&self, name: &str) -> (String, u32) {
        let mut occurrences = lock(&self.inner.occurrences);
        let n = occurrences.entry(name.to_owned()).or_insert(0);
        *n += 1;
        let key = if *n == 1 {
            name.to_owned()
        } else {
            format!("{name}#{n}")
        };
        (key, *n)
    }

    async fn replay<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let Some(stored) = self.inner.checkpoints.get(key) else {
            return Ok(None);
        };
        self.inner.replayed.fetch_add(1, Ordering::Relaxed);
        let stored = &self.fetch_offloaded(key, stored).await?;
        let value = checkpoint::value_of(key, stored.clone(), self.inner.step_keys.as_ref())
            .map_err(|why| {
                permanent(anyhow!(
                    "the checkpoint of step \"{key}\" cannot be read: {why}"
                ))
            })?;
        let decoded = decode(value, &format!("the checkpoint of \"{key}\""));
        if checkpoint::is_sealed(stored) && decoded.is_err() {
            // Serde's message quotes the value: a sensitive one must not reach the run's error.
            return Err(permanent(anyhow!(
                "the checkpoint of sensitive step \"{key}\" does not match the type {}",
                std::any::type_name::<T>()
            )));
        }
        decoded.map(Some)
    }

    /// A step's value as its checkpoint stores it: sealed with the namespace's step key when
    /// the step is sensitive.
    fn to_checkpoint<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        sensitive: bool,
    ) -> anyhow::Result<Value> {
        let value = serde_json::to_value(value).map_err(|e| {
            permanent(anyhow!(
                "the result of step \"{key}\" cannot be stored as JSON: {e}"
            ))
        })?;
        if !sensitive {
            return Ok(checkpoint::plain(value));
        }
        let keys = self.inner.step_keys.as_ref().ok_or_else(|| {
            permanent(anyhow!(
                "step \"{key}\" is sensitive, but this process has no step keys to seal its value ({} is not set); \
                 launch it with `cairn dev` or the Cairn operator, which set it",
                cairn_engine::protocol::env::STEP_KEYS
            ))
        })?;
        Ok(keys.seal(key, &value))
    }

    /// At a step boundary (a step, wait, sleep, join or emit begins): whether to go on.
    fn check_stopped(&self) -> anyhow::Result<()> {
        match self.interruption() {
            Some(why) => Err(why.into()),
            None if self.inner.stop_requested.load(Ordering::Relaxed) => {
                Err(self.stop(Interrupted::Stopping))
            }
            None => Ok(()),
        }
    }

    fn stop(&self, why: Interrupted) -> anyhow::Error {
        lock(&self.inner.stopped).get_or_insert(why);
        why.into()
    }

    fn engine_error(&self, err: EngineError) -> anyhow::Error {
        match err {
            EngineError::Fenced(_) => self.stop(Interrupted::Superseded),
            EngineError::Database(e) => {
                tracing::error!(error = %e, "lost the database in the middle of the run");
                self.stop(Interrupted::Unavailable)
            }
            other => permanent(other),
        }
    }

    async fn acknowledge_cancel(&self) -> anyhow::Error {
        let acknowledged = {
            let mut conn = self.inner.conn.lock().await;
            engine_call!(*conn, |conn| engine::acknowledge_cancel(
                conn,
                &self.inner.attempt
            ))
        };
        match acknowledged {
            Ok(()) => self.stop(Interrupted::Cancelled),
            Err(e) => self.engine_error(e),
        }
    }
}

/// Deserializes with the path of the first mismatch in the message.
pub(crate) fn decode<T: DeserializeOwned>(value: Value, what: &str) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." {
            String::new()
        } else {
            format!(" at {at}")
        };
        permanent(anyhow!(
            "{what} does not match the type {}{at}: {}",
            std::any::type_name::<T>(),
            e.inner()
        ))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
