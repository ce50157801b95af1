//! FlowRun reconciliation, in the Stackable shape: fetch → resolve (pure) → act on the engine
//! and pods as `lifecycle::decide` says → write status (built purely from what was read).

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{
    FINALIZER, Flow, FlowRun, FlowRunSpec, FlowRunStatus, LABEL_RUN, RETRY_ANNOTATION,
    ResourceProfile, ResourceProfileSpec, WaitingFor,
};
use cairn_engine::launcher::{self as engine, Claim, NewRun};
use cairn_engine::{EngineError, Wait};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use super::pod::{self, FlowPod};
use super::{Context, Error};
use crate::lifecycle::{Next, Phase, ProcessExit, RunView, decide};
use cairn_engine::read::{self, RunRecord};

/// Results larger than this stay in the database only (status must stay small).
const MAX_STATUS_RESULT_BYTES: usize = 4096;

/// A FlowRun with its Flow and profile looked up and defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub image: String,
    pub flow: String,
    pub profile: Option<ResourceProfileSpec>,
    pub env: Vec<EnvVar>,
    pub service_account: Option<String>,
    pub max_attempts: i32,
    pub retry_backoff: Duration,
    /// How long the FlowRun stays after it finished, if the FlowRun or its Flow says
    /// (`Some(0)`: for ever); `None` leaves it to the operator's default.
    pub ttl_after_finished: Option<Duration>,
}

/// Why a FlowRun cannot run as written; the message says what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Resolves a FlowRun against its Flow and ResourceProfile (looked up by the caller).
pub fn resolve(
    spec: &FlowRunSpec,
    namespace: &str,
    flow: Option<&Flow>,
    profile: Option<&ResourceProfile>,
) -> Result<Resolved, Invalid> {
    let template = match (&spec.flow_ref, flow) {
        (Some(name), None) => {
            return Err(Invalid {
                reason: "FlowNotFound",
                message: format!(
                    "Flow \"{name}\" not found in namespace \"{namespace}\"; create it or fix spec.flowRef"
                ),
            });
        }
        (Some(_), Some(flow)) => Some(&flow.spec),
        (None, _) => None,
    };
    let (image, flow_name) = match (template, &spec.image, &spec.flow) {
        (Some(t), _, _) => (t.image.clone(), t.flow.clone()),
        (None, Some(image), Some(flow)) => (image.clone(), flow.clone()),
        _ => {
            return Err(Invalid {
                reason: "InvalidSpec",
                message: "set spec.flowRef, or both spec.image and spec.flow".into(),
            });
        }
    };
    let profile_name = spec
        .profile
        .as_ref()
        .or(template.and_then(|t| t.profile.as_ref()));
    let profile = match (profile_name, profile) {
        (Some(name), None) => {
            return Err(Invalid {
                reason: "ProfileNotFound",
                message: format!(
                    "ResourceProfile \"{name}\" not found; create it or fix spec.profile"
                ),
            });
        }
        (_, found) => found.map(|p| p.spec.clone()),
    };
    if let (Some(name), Some(profile)) = (profile_name, &profile) {
        check_profile(name, profile)?;
    }
    let retry = spec
        .retry
        .clone()
        .or_else(|| template.and_then(|t| t.retry.clone()))
        .unwrap_or_default();
    Ok(Resolved {
        image,
        flow: flow_name,
        profile,
        env: template
            .map(|t| t.env.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.env.iter().cloned())
            .collect(),
        service_account: template.and_then(|t| t.service_account_name.clone()),
        max_attempts: retry.max_attempts.unwrap_or(3).max(1),
        retry_backoff: Duration::from_secs(retry.backoff_seconds.unwrap_or(10).max(0) as u64),
        ttl_after_finished: spec
            .ttl_seconds_after_finished
            .or(template.and_then(|t| t.ttl_seconds_after_finished))
            .map(|seconds| Duration::from_secs(seconds.max(0) as u64)),
    })
}

/// What the API server does not check in a ResourceProfile but a pod would refuse: found here,
/// the run gets a condition naming the profile and the fix instead of crashing at launch.
fn check_profile(name: &str, profile: &ResourceProfileSpec) -> Result<(), Invalid> {
    let invalid = |what: String| Invalid {
        reason: "InvalidProfile",
        message: format!("ResourceProfile \"{name}\": {what}"),
    };
    let resources = profile.resources.as_ref();
    for (kind, amounts) in [
        ("requests", resources.and_then(|r| r.requests.as_ref())),
        ("limits", resources.and_then(|r| r.limits.as_ref())),
    ] {
        for (resource, amount) in amounts.into_iter().flatten() {
            if !is_quantity(&amount.0) {
                return Err(invalid(format!(
                    "resources.{kind}.{resource} is \"{}\", not a quantity (such as 250m, 2 or 512Mi)",
                    amount.0
                )));
            }
        }
    }
    for toleration in &profile.tolerations {
        if let Some(effect) = toleration.effect.as_deref()
            && !["NoSchedule", "PreferNoSchedule", "NoExecute", ""].contains(&effect)
        {
            return Err(invalid(format!(
                "toleration effect \"{effect}\" is not NoSchedule, PreferNoSchedule or NoExecute"
            )));
        }
        if let Some(operator) = toleration.operator.as_deref()
            && !["Exists", "Equal", ""].contains(&operator)
        {
            return Err(invalid(format!(
                "toleration operator \"{operator}\" is not Exists or Equal"
            )));
        }
    }
    Ok(())
}

/// A Kubernetes quantity: a decimal number, then a binary (Ki…Ei) or decimal (n, u, m, k…E)
/// suffix or an exponent (e3).
fn is_quantity(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(end);
    let number_ok = number.chars().any(|c| c.is_ascii_digit()) && number.matches('.').count() <= 1;
    let exponent_ok = |e: &str| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(exponent_ok);
    number_ok && suffix_ok
}

/// What one scope's FlowRun controller reconciles with: the operator's context and the watch
/// caches of that scope's flow pods and Flows, and of the ResourceProfiles.
pub struct Scope {
    pub ctx: Arc<Context>,
    pub pods: Store<Pod>,
    pub flows: Store<Flow>,
    pub profiles: Store<ResourceProfile>,
}

/// A Flow or profile from the watch cache. A miss asks the API server: one created a moment
/// before the FlowRun naming it (one `kubectl apply` of both) may not be cached yet, and a run
/// must not be told it names an unknown Flow for that.
async fn cached_or_get<K>(
    cache: &Store<K>,
    api: Api<K>,
    key: ObjectRef<K>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match cache.get(&key) {
        Some(object) => Ok(Some(K::clone(&object))),
        None => Ok(api.get_opt(&key.name).await?),
    }
}

pub async fn reconcile(run: Arc<FlowRun>, scope: Arc<Scope>) -> Result<Action, Error> {
    let ctx = &scope.ctx;
    // Statuses are built and patched from the one last written (see `WrittenStatuses`).
    let run = match ctx.written_status.seen(&run) {
        seen if seen != run.status => Arc::new(FlowRun {
            status: seen,
            ..FlowRun::clone(&run)
        }),
        _ => run,
    };
    let namespace = run.namespace().unwrap_or_default();
    // Every log line of this reconcile carries the run, its namespace and (once read) attempt.
    let span = tracing::info_span!(
        "flowrun",
        namespace = %namespace,
        run = %run.name_any(),
        attempt = tracing::field::Empty
    );
    let api: Api<FlowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let started = std::time::Instant::now();
    let adds_finalizer =
        run.meta().deletion_timestamp.is_none() && !run.finalizers().iter().any(|f| f == FINALIZER);
    let outcome = async {
        let outcome = finalizer(&api, FINALIZER, run.clone(), |event| async {
            match event {
                Finalizer::Apply(run) => apply(&run, &scope).await,
                Finalizer::Cleanup(run) => cleanup(&run, ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))?;
        // Having added the finalizer, the helper waits for the change to come back through
        // the watch: a second reconcile for every FlowRun admitted. With the finalizer in
        // place, carry straight on (the watch ignores finalizer changes: see the controller).
        match adds_finalizer {
            true => apply(&run, &scope).await,
            false => Ok(outcome),
        }
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    outcome
}

async fn apply(run: &FlowRun, scope: &Scope) -> Result<Action, Error> {
    let (ctx, pods_cache) = (scope.ctx.as_ref(), &scope.pods);
    let namespace = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let client = &ctx.client;

    // Fetch what the run refers to, then resolve it without I/O.
    let flow = match &run.spec.flow_ref {
        Some(flow_ref) => {
            cached_or_get(
                &scope.flows,
                Api::namespaced(client.clone(), &namespace),
                ObjectRef::new(flow_ref).within(&namespace),
            )
            .await?
        }
        None => None,
    };
    let profile_name = run
        .spec
        .profile
        .clone()
        .or_else(|| flow.as_ref().and_then(|f| f.spec.profile.clone()));
    let profile = match &profile_name {
        Some(p) => {
            cached_or_get(&scope.profiles, Api::all(client.clone()), ObjectRef::new(p)).await?
        }
        None => None,
    };
    let resolved = match resolve(&run.spec, &namespace, flow.as_ref(), profile.as_ref()) {
        Ok(resolved) => resolved,
        Err(invalid) => {
            // Not a crash loop: report once, look again when something changes or in a minute.
            ctx.warn(run, invalid.reason, &invalid.message).await;
            let status = invalid_status(run, &invalid);
            patch_status(ctx, run, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };

    // The engine's run, created once by (namespace, name).
    let input = run.spec.input.clone().unwrap_or(serde_json::Value::Null);
    let request = NewRun {
        namespace: &namespace,
        name: &name,
        flow: &resolved.flow,
        input: &input,
        max_attempts: resolved.max_attempts,
        retry_backoff_ms: resolved.retry_backoff.as_millis() as i64,
    };
    // Connections are taken per call and never held across another acquire: reconciles run
    // concurrently and must not starve the pool.
    let created = engine::create_run(&mut *ctx.pool.acquire().await?, &request).await;
    match created {
        // (No Kubernetes Event for this: the status says it, and an Event is one more write
        // to the API server for every FlowRun admitted.)
        Ok(_) => {}
        Err(EngineError::RunConflict(message)) => {
            let invalid = Invalid {
                reason: "RunConflict",
                message,
            };
            patch_status(ctx, run, &invalid_status(run, &invalid)).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    }
    let record = read::find(&ctx.pool, &namespace, &name).await?;
    tracing::Span::current().record("attempt", record.attempt);
    if run.spec.cancel && !record.phase.is_terminal() {
        engine::cancel_run(&mut *ctx.pool.acquire().await?, record.id).await?;
    }
    let retried = retry_if_asked(ctx, run, &record).await?;
    let deadline = run
        .spec
        .deadline_seconds
        .map(|seconds| record.created_at + chrono::Duration::seconds(seconds));
    if let (Some(at), Some(seconds)) = (deadline, run.spec.deadline_seconds)
        && at <= chrono::Utc::now()
        && !record.phase.is_terminal()
    {
        // The database clock has the last word; a running attempt is fenced off, and the
        // kubelet stops its pod (activeDeadlineSeconds).
        let state = engine::expire_run(&mut *ctx.pool.acquire().await?, record.id, seconds).await?;
        if state == Phase::Failed {
            ctx.warn(
                run,
                "DeadlineExceeded",
                &format!("the run did not finish within {seconds} seconds"),
            )
            .await;
        }
    }

    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let run_pods = ListParams::default().labels(&format!("{LABEL_RUN}={}", record.id));
    let mut pods = cached_pods(pods_cache, &namespace, &record.id.to_string());
    // Pin the digest the first pod ran; every later pod of this run uses it.
    let pinned = run
        .status
        .as_ref()
        .and_then(|s| s.image_digest.clone())
        .or_else(|| pods.iter().find_map(pod::pinned_image));

    // Children run the parent's pinned digest; until the kubelet reports it, they wait.
    let children_deferred = !super::children::ensure_child_flowruns(
        ctx,
        run,
        &record,
        pinned.as_deref(),
        &resolved.env,
    )
    .await?;

    let record = read::find(&ctx.pool, &namespace, &name).await?;
    let seen_at = chrono::Utc::now();
    let mut next = decide(
        &RunView::of(&record),
        &pod::process_of(&pods, record.attempt, seen_at),
    );
    // The cache can trail the API server: a pod created a moment ago may be missing, one
    // that started may still look stuck. Ending an attempt (and deleting a pod that seems
    // never to have started) is concluded only from the API server.
    if matches!(next, Next::RecordCrash { .. }) {
        pods = pods_api.list(&run_pods).await?.items;
        next = decide(
            &RunView::of(&record),
            &pod::process_of(&pods, record.attempt, seen_at),
        );
    }
    let mut waiting_for_slot = None;
    match next {
        Next::Idle | Next::Finished(_) => {}
        Next::Launch => {
            let launch = Launch {
                run,
                record: &record,
                resolved: &resolved,
                image: pinned.as_deref().unwrap_or(&resolved.image),
                deadline,
            };
            waiting_for_slot = launch.run(ctx).await?;
        }
        Next::RecordCrash {
            attempt,
            reason,
            retry_in,
        } => {
            let never_started = |p: &&Pod| {
                pod::attempt_of(p) == Some(attempt)
                    && matches!(pod::exit_of(p, seen_at), Some(ProcessExit::LaunchFailed(_)))
            };
            if pods.iter().any(|p| never_started(&p)) {
                ctx.forget_prepared(&namespace);
            }
            // A pod whose image cannot be pulled would go on trying: remove it. Any other is
            // kept, for `kubectl logs`, and because one the kubelet held back (a config error)
            // may yet start: its process is fenced off by the crash recorded below, or has
            // finished the run already, and its log is the only record of what it did.
            let image_never_pulled =
                |p: &&Pod| pod::attempt_of(p) == Some(attempt) && pod::image_cannot_be_pulled(p);
            for stuck in pods.iter().filter(image_never_pulled) {
                if let Some(pod_name) = &stuck.metadata.name {
                    let _ = pods_api.delete(pod_name, &Default::default()).await;
                }
            }
            let mut conn = ctx.pool.acquire().await?;
            engine::record_crash(
                &mut conn,
                record.id,
                attempt,
                &reason,
                retry_in.map(|d| d.as_millis() as i64),
            )
            .await?;
            ctx.warn(run, "Crashed", &format!("attempt {attempt}: {reason}"))
                .await;
        }
    }

    // A run the budget held back queues for a slot; any other leaves the queue.
    ctx.queue_for_slot(run, waiting_for_slot.is_some());

    // Status from what the engine now says.
    let record = read::find(&ctx.pool, &namespace, &name).await?;
    let status = build_status(
        run,
        &record,
        &pods,
        pinned,
        retried,
        waiting_for_slot.as_deref(),
    );
    patch_status(ctx, run, &status).await?;
    super::history::tidy(ctx, run, &record, &pods).await;

    // Look again at the next thing due here (timers are the engine's: see `wake_timers`).
    let now = chrono::Utc::now();
    let next = if record.phase.is_terminal() {
        let ttl = resolved
            .ttl_after_finished
            .or(ctx.config.default_ttl_after_finished())
            .filter(|ttl| !ttl.is_zero());
        match (ttl, record.finished_at) {
            (Some(ttl), Some(finished)) => {
                let expires = finished + chrono::Duration::from_std(ttl).unwrap_or_default();
                if expires <= now {
                    Api::<FlowRun>::namespaced(client.clone(), &namespace)
                        .delete(&name, &Default::default())
                        .await?;
                    return Ok(Action::await_change());
                }
                Some(expires)
            }
            _ => None,
        }
    } else {
        deadline
    };
    let soon = children_deferred.then(|| now + chrono::Duration::seconds(1));
    // A pod the kubelet is still trying to start: look again when its grace ends.
    let start_check = pods
        .iter()
        .filter(|p| pod::attempt_of(p) == Some(record.attempt))
        .filter_map(pod::start_retried_until)
        .filter(|until| *until > now)
        .min();
    // A freed slot wakes queued runs; this look is only the safety net.
    let slot_check = waiting_for_slot.map(|_| now + chrono::Duration::seconds(30));
    Ok(
        match next
            .into_iter()
            .chain(soon)
            .chain(slot_check)
            .chain(start_check)
            .min()
        {
            Some(at) => Action::requeue((at - now).to_std().unwrap_or_default()),
            None => Action::await_change(),
        },
    )
}

/// Acts on the retry annotation once per value: a failed run is made runnable again from its
/// last checkpoint; a value set on a run that has not failed is noted and ignored. Returns the
/// value acted on last, for the status.
async fn retry_if_asked(
    ctx: &Context,
    run: &FlowRun,
    record: &RunRecord,
) -> Result<Option<String>, Error> {
    let done = run.status.as_ref().and_then(|s| s.retried.clone());
    let Some(asked) = run.annotations().get(RETRY_ANNOTATION) else {
        return Ok(done);
    };
    if done.as_ref() == Some(asked) {
        return Ok(done);
    }
    if record.phase == Phase::Failed {
        engine::retry_run(&mut *ctx.pool.acquire().await?, record.id).await?;
        ctx.event(
            run,
            "Retried",
            "retrying the failed run from its last checkpoint",
        )
        .await;
    } else {
        ctx.warn(
            run,
            "RetryIgnored",
            &format!(
                "only a failed run can be retried; this one is {}",
                record.phase
            ),
        )
        .await;
    }
    Ok(Some(asked.clone()))
}

/// A run's pods in the watch cache of its scope.
fn cached_pods(cache: &Store<Pod>, namespace: &str, run_id: &str) -> Vec<Pod> {
    cache
        .state()
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.labels().get(LABEL_RUN).map(String::as_str) == Some(run_id)
        })
        .map(|p| Pod::clone(p))
        .collect()
}

/// What launching the next attempt needs.
struct Launch<'a> {
    run: &'a FlowRun,
    record: &'a RunRecord,
    resolved: &'a Resolved,
    image: &'a str,
    deadline: Option<chrono::DateTime<chrono::Utc>>,
}

impl Launch<'_> {
    /// Claims the next attempt within the running budget and creates its pod. Returns why the
    /// run must wait when the budget is used up; the run then queues for a slot.
    async fn run(&self, ctx: &Context) -> Result<Option<String>, Error> {
        let (run, record) = (self.run, self.record);
        let namespace = run.namespace().unwrap_or_default();
        // Only launching needs the Secret pods read the database URL from.
        ctx.prepare_namespace(&namespace).await?;
        let (max_running, max_in_namespace) = ctx.config.budget();
        let mut conn = ctx.pool.acquire().await?;
        let claim = match engine::claim(&mut conn, record.id, max_running, max_in_namespace).await?
        {
            Claim::Started(claim) => claim,
            Claim::NotPending => return Ok(None),
            Claim::Refused(why) => return Ok(Some(why)),
        };
        let attempt = claim.number;
        let run_id = record.id.to_string();
        let pod = pod::build_pod(&FlowPod {
            run,
            run_id: &run_id,
            attempt,
            image: self.image,
            flow: &self.resolved.flow,
            profile: self.resolved.profile.as_ref(),
            extra_env: &self.resolved.env,
            service_account: self
                .resolved
                .service_account
                .as_deref()
                .or(ctx.config.flow_service_account.as_deref()),
            db_secret: &ctx.config.runner_secret,
            pooler: ctx.config.runner_pooler,
            deadline_in: self
                .deadline
                .map(|at| (at - chrono::Utc::now()).num_seconds()),
        });
        let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        let launched = async {
            ctx.hand_token(run, &claim).await?;
            match pods_api.create(&PostParams::default(), &pod).await {
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()), // created before a restart
                created => created.map(|_| ()),
            }
        };
        match launched.await {
            Ok(()) => {
                ctx.metrics.launches.inc();
                if attempt > 1 {
                    let waited = chrono::Utc::now() - record.updated_at;
                    ctx.metrics
                        .observe_resume(waited.to_std().unwrap_or_default());
                }
            }
            // The attempt is claimed but has no pod: settle it now, with Kubernetes' reason,
            // rather than as "the process is gone" on the next look.
            Err(e) => {
                let reason = format!("could not launch the pod: {e}");
                let retry = crate::lifecycle::retry_delay(&RunView::of(record))
                    .map(|d| d.as_millis() as i64);
                engine::record_crash(&mut conn, record.id, attempt, &reason, retry).await?;
                ctx.forget_prepared(&namespace);
                ctx.warn(run, "LaunchFailed", &reason).await;
                return Ok(None);
            }
        }
        let verb = if attempt == 1 { "Launched" } else { "Resumed" };
        ctx.event(
            run,
            verb,
            &format!(
                "attempt {attempt} in pod {}",
                pod.metadata.name.unwrap_or_default()
            ),
        )
        .await;
        Ok(None)
    }
}

/// On deletion: cancel the run (clearing its waits and timers) and delete its rows.
async fn cleanup(run: &FlowRun, ctx: &Context) -> Result<Action, Error> {
    let namespace = run.namespace().unwrap_or_default();
    ctx.queue_for_slot(run, false);
    if let Ok(record) = read::find(&ctx.pool, &namespace, &run.name_any()).await {
        engine::cancel_run(&mut *ctx.pool.acquire().await?, record.id).await?;
        read::delete_run(&ctx.pool, record.id).await?;
    }
    Ok(Action::await_change())
}

fn invalid_status(run: &FlowRun, invalid: &Invalid) -> FlowRunStatus {
    let mut status = run.status.clone().unwrap_or_default();
    status.phase = Some(status.phase.unwrap_or(Phase::Pending));
    status.error = Some(invalid.message.clone());
    status.observed_generation = run.meta().generation;
    status.conditions = vec![condition(
        run,
        "Ready",
        false,
        invalid.reason,
        &invalid.message,
    )];
    status
}

/// The status the FlowRun should show, from the engine's record and the pods.
pub fn build_status(
    run: &FlowRun,
    record: &RunRecord,
    pods: &[Pod],
    pinned: Option<String>,
    retried: Option<String>,
    waiting_for_slot: Option<&str>,
) -> FlowRunStatus {
    let waiting_for = record.wait().map(|wait| match wait {
        Wait::Event {
            event,
            question,
            schema,
            deadline,
        } => WaitingFor {
            event: Some(event),
            question,
            schema,
            deadline: deadline.map(to_time),
            children: None,
        },
        Wait::Children { unfinished, .. } => WaitingFor {
            children: unfinished.map(|n| n as i32),
            ..WaitingFor::default()
        },
        Wait::Sleep { .. } | Wait::Retry { .. } => WaitingFor::default(),
    });
    let result = record.result.clone().filter(|r| {
        serde_json::to_string(r)
            .map(|s| s.len() <= MAX_STATUS_RESULT_BYTES)
            .unwrap_or(false)
    });
    let current_pod = pods
        .iter()
        .filter(|p| pod::attempt_of(p) == Some(record.attempt))
        .find_map(|p| p.metadata.name.clone());
    let (ready, reason, message) = match record.phase {
        Phase::Succeeded => (true, "Succeeded", "the flow completed".to_owned()),
        Phase::Failed => (
            false,
            "Failed",
            record.error_message().unwrap_or("failed").to_owned(),
        ),
        Phase::Cancelled => (false, "Cancelled", "the run was cancelled".to_owned()),
        Phase::Waiting => (
            false,
            "Waiting",
            "waiting; no pod runs meanwhile".to_owned(),
        ),
        Phase::Sleeping => (
            false,
            "Sleeping",
            "sleeping; no pod runs meanwhile".to_owned(),
        ),
        Phase::Retrying => (false, "Retrying", "relaunching after a crash".to_owned()),
        Phase::Running => (
            false,
            "Running",
            format!("attempt {} is running", record.attempt),
        ),
        Phase::Pending => match waiting_for_slot {
            Some(why) => (false, "WaitingForSlot", why.to_owned()),
            None => (false, "Pending", "about to launch".to_owned()),
        },
    };
    FlowRunStatus {
        phase: Some(record.phase),
        run_id: Some(record.id.to_string()),
        attempt: Some(record.attempt),
        pod: current_pod.or_else(|| run.status.as_ref().and_then(|s| s.pod.clone())),
        image_digest: pinned,
        waiting_for,
        wake_at: record.wake_at.map(to_time),
        steps_completed: Some(record.steps),
        result,
        error: record.error_message().map(str::to_owned),
        cost_usd: Some(format!("{:.6}", record.usd)),
        started_at: Some(to_time(record.created_at)),
        finished_at: record.finished_at.map(to_time),
        retried,
        observed_generation: run.meta().generation,
        conditions: vec![condition(run, "Ready", ready, reason, &message)],
    }
}

fn condition(run: &FlowRun, type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    // Keep the transition time while the condition does not change, as conditions should.
    let previous = run
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.reason == reason && c.status == if ok { "True" } else { "False" });
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: run.meta().generation,
        last_transition_time: previous
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| to_time(chrono::Utc::now())),
    }
}

fn to_time(at: chrono::DateTime<chrono::Utc>) -> Time {
    Time(at.to_rfc3339().parse().unwrap_or_else(|_| jiff_now()))
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

async fn patch_status(ctx: &Context, run: &FlowRun, status: &FlowRunStatus) -> Result<(), Error> {
    if run.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<FlowRun> =
        Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    // A merge patch of what changed since the status last seen: the API server applies it
    // for a fraction of a server-side apply's CPU, which counts when thousands of runs change
    // at once. Only this operator writes the status.
    let seen = serde_json::to_value(&run.status).map_err(kube::Error::SerdeError)?;
    let wanted = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let patch = json!({ "status": merge_patch(&seen, &wanted) });
    api.patch_status(
        &run.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    ctx.written_status.wrote(run, status);
    Ok(())
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: changed values, `null` for
/// removed keys, objects compared key by key (arrays are replaced whole).
fn merge_patch(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = serde_json::Map::new();
            for (key, old) in from {
                match to.get(key) {
                    None => {
                        patch.insert(key.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(key.clone(), merge_patch(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (key, new) in to {
                if !from.contains_key(key) {
                    patch.insert(key.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::{FlowSpec, RetryPolicy};

    fn flow(profile: Option<&str>) -> Flow {
        Flow::new(
            "agent",
            FlowSpec {
                image: "localhost/agent:dev".into(),
                flow: "research".into(),
                profile: profile.map(str::to_owned),
                retry: Some(RetryPolicy {
                    max_attempts: Some(5),
                    backoff_seconds: Some(2),
                }),
                ..Default::default()
            },
        )
    }

    fn by_ref(profile: Option<&str>) -> FlowRunSpec {
        FlowRunSpec {
            flow_ref: Some("agent".into()),
            profile: profile.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn the_status_patch_sends_what_changed_and_nulls_what_went() {
        let seen = json!({
            "phase": "Waiting",
            "attempt": 1,
            "waitingFor": { "event": "approve", "question": "ok?" },
            "conditions": [{ "type": "Ready", "reason": "Waiting" }],
        });
        let wanted = json!({
            "phase": "Running",
            "attempt": 1,
            "waitingFor": { "event": "approve" },
            "conditions": [{ "type": "Ready", "reason": "Running" }],
            "pod": "run-a2",
        });
        let patch = merge_patch(&seen, &wanted);
        assert_eq!(
            patch,
            json!({
                "phase": "Running",
                "waitingFor": { "question": null },
                "conditions": [{ "type": "Ready", "reason": "Running" }],
                "pod": "run-a2",
            })
        );
        // Applied as a merge patch (RFC 7386), it gives exactly what was wanted.
        let mut applied = seen.clone();
        json_patch::merge(&mut applied, &patch);
        assert_eq!(applied, wanted);
        // From no status at all, the whole status.
        assert_eq!(merge_patch(&serde_json::Value::Null, &wanted), wanted);
    }

    #[test]
    fn a_flow_reference_takes_image_flow_and_defaults_from_the_flow() {
        let resolved = resolve(&by_ref(None), "ns", Some(&flow(None)), None).unwrap();
        assert_eq!(
            (resolved.image.as_str(), resolved.flow.as_str()),
            ("localhost/agent:dev", "research")
        );
        assert_eq!(
            (resolved.max_attempts, resolved.retry_backoff),
            (5, Duration::from_secs(2))
        );
        assert_eq!(resolved.profile, None);
    }

    #[test]
    fn the_time_to_live_comes_from_the_run_else_from_its_flow() {
        let mut template = flow(None);
        template.spec.ttl_seconds_after_finished = Some(600);
        let ttl = |spec: &FlowRunSpec, flow: &Flow| {
            resolve(spec, "ns", Some(flow), None)
                .unwrap()
                .ttl_after_finished
        };
        assert_eq!(
            ttl(&by_ref(None), &template),
            Some(Duration::from_secs(600))
        );
        let mut keep = by_ref(None);
        keep.ttl_seconds_after_finished = Some(0);
        assert_eq!(
            ttl(&keep, &template),
            Some(Duration::ZERO),
            "0 keeps the run"
        );
        assert_eq!(
            ttl(&by_ref(None), &flow(None)),
            None,
            "the operator's default applies"
        );
    }

    #[test]
    fn the_runs_env_adds_to_the_flows() {
        let mut template = flow(None);
        template.spec.env = vec![EnvVar {
            name: "A".into(),
            value: Some("flow".into()),
            ..Default::default()
        }];
        let mut spec = by_ref(None);
        spec.env = vec![EnvVar {
            name: "B".into(),
            value: Some("run".into()),
            ..Default::default()
        }];
        let resolved = resolve(&spec, "ns", Some(&template), None).unwrap();
        let names: Vec<&str> = resolved.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
    }

    #[test]
    fn an_inline_spec_needs_image_and_flow() {
        let inline = FlowRunSpec {
            image: Some("img:1".into()),
            flow: Some("f".into()),
            ..Default::default()
        };
        let resolved = resolve(&inline, "ns", None, None).unwrap();
        assert_eq!(
            (resolved.max_attempts, resolved.retry_backoff),
            (3, Duration::from_secs(10))
        );
        let half = FlowRunSpec {
            image: Some("img:1".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&half, "ns", None, None).unwrap_err().reason,
            "InvalidSpec"
        );
    }

    #[test]
    fn missing_references_say_what_to_fix() {
        let missing_flow = resolve(&by_ref(None), "team-a", None, None).unwrap_err();
        assert_eq!(missing_flow.reason, "FlowNotFound");
        assert!(
            missing_flow.message.contains("\"agent\"") && missing_flow.message.contains("team-a")
        );
        let missing_profile =
            resolve(&by_ref(Some("huge")), "ns", Some(&flow(None)), None).unwrap_err();
        assert_eq!(missing_profile.reason, "ProfileNotFound");
        // The Flow's default profile is looked up too.
        let default_missing =
            resolve(&by_ref(None), "ns", Some(&flow(Some("small"))), None).unwrap_err();
        assert!(default_missing.message.contains("\"small\""));
    }

    #[test]
    fn a_profile_a_pod_would_refuse_is_reported_naming_the_field() {
        use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let profile = |cpu: &str, effect: &str| {
            ResourceProfile::new(
                "small",
                ResourceProfileSpec {
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_owned(), Quantity(cpu.into()))].into()),
                        ..Default::default()
                    }),
                    tolerations: vec![Toleration {
                        effect: Some(effect.into()),
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
        };
        let spec = by_ref(Some("small"));
        let good = profile("250m", "NoSchedule");
        assert!(resolve(&spec, "ns", Some(&flow(None)), Some(&good)).is_ok());
        let lots = profile("lots", "NoSchedule");
        let bad = resolve(&spec, "ns", Some(&flow(None)), Some(&lots)).unwrap_err();
        assert_eq!(bad.reason, "InvalidProfile");
        assert!(
            bad.message.contains("resources.requests.cpu is \"lots\""),
            "{}",
            bad.message
        );
        let sometimes = profile("1", "Sometimes");
        let bad = resolve(&spec, "ns", Some(&flow(None)), Some(&sometimes)).unwrap_err();
        assert!(
            bad.message.contains("effect \"Sometimes\""),
            "{}",
            bad.message
        );
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for good in [
            "1", "250m", "0.5", "1.5Gi", "512Mi", "2k", "1e3", "1E-2", "+3", ".5", "100n",
        ] {
            assert!(is_quantity(good), "{good} is a quantity");
        }
        for bad in ["lots", "", "m", "1.2.3", "5 Gi", "1e", "1KB", "Gi"] {
            assert!(!is_quantity(bad), "{bad} is not a quantity");
        }
    }
}
