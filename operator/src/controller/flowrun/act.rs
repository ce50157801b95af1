//! Stage "act" (I/O): does what "decide" said — launches the next attempt within the running
//! budget, or records the crash of the current one — and creates the FlowRuns of the children
//! the run spawned.

use cairn_crds::{Flow, FlowRun};
use cairn_engine::launcher::{self as engine, Claim, Held, Limits};
use cairn_engine::read::RunRecord;
use cairn_engine::runner::Attempt;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::PostParams;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};

use super::resolve::Resolved;
use crate::controller::pod::{self, FlowPod};
use crate::controller::{Context, Error};
use crate::lifecycle::{Next, ProcessExit, RunView};

/// What acting did that later stages need.
#[derive(Default)]
pub struct Acted {
    /// Why the run waits, when a limit (the running budget, its Flow's concurrency) held its
    /// launch back.
    pub held: Option<Held>,
    /// Whether the engine's run changed (the status must then read it again).
    pub changed: bool,
    /// The pod created for the new attempt.
    pub launched: Option<Pod>,
}

/// Children run the parent's pinned digest; until the kubelet reports it, they wait. Returns
/// false when that deferred them.
pub async fn create_children(
    ctx: &Context,
    run: &FlowRun,
    record: &RunRecord,
    pinned: Option<&str>,
    resolved: &Resolved,
    flows: &Store<Flow>,
) -> Result<bool, Error> {
    crate::controller::children::ensure_child_flowruns(ctx, run, record, pinned, resolved, flows)
        .await
}

pub async fn act(
    ctx: &Context,
    launch: Launch<'_>,
    next: Next,
    pods: &[Pod],
    seen_at: DateTime<Utc>,
) -> Result<Acted, Error> {
    match next {
        Next::Idle | Next::Finished(_) => Ok(Acted::default()),
        Next::Launch => {
            let (launched, held) = match launch.run(ctx).await? {
                Launched::Pod(pod) => (Some(*pod), None),
                Launched::Held(held) => (None, Some(held)),
                Launched::Nothing => (None, None),
            };
            Ok(Acted {
                held,
                changed: true,
                launched,
            })
        }
        Next::RecordCrash {
            attempt,
            reason,
            retry_in,
        } => {
            let (run, record) = (launch.run, launch.record);
            let namespace = run.namespace().unwrap_or_default();
            // No process ever ran for it (this operator's predecessor died between the claim
            // and the pod, or the pod went before it started): launched again, not a crash.
            // Only with no pod object of the attempt left, which would block its pod's name.
            if !pods.iter().any(|p| pod::attempt_of(p) == Some(attempt)) {
                let mut conn = ctx.pool.acquire().await?;
                if let Some(again) = engine::reissue(&mut conn, record.id, attempt).await? {
                    drop(conn);
                    ctx.prepare_namespace(&namespace).await?;
                    let launched = launch.start(ctx, again, Start::NeverStarted).await?;
                    return Ok(Acted {
                        changed: true,
                        launched: launched.pod(),
                        ..Acted::default()
                    });
                }
            }
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
            let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let image_never_pulled =
                |p: &&Pod| pod::attempt_of(p) == Some(attempt) && pod::image_cannot_be_pulled(p);
            for stuck in pods.iter().filter(image_never_pulled) {
                let _ = pods_api
                    .delete(&stuck.name_any(), &Default::default())
                    .await;
            }
            let retry_in = retry_in.map(|d| d.as_millis() as i64);
            let mut conn = ctx.pool.acquire().await?;
            engine::record_crash(&mut conn, record.id, attempt, &reason, retry_in).await?;
            ctx.warn(run, "Crashed", &format!("attempt {attempt}: {reason}"))
                .await;
            Ok(Acted {
                changed: true,
                ..Acted::default()
            })
        }
    }
}

/// What launching the next attempt needs.
pub struct Launch<'a> {
    pub run: &'a FlowRun,
    pub record: &'a RunRecord,
    pub resolved: &'a Resolved,
    pub image: &'a str,
    pub deadline: Option<DateTime<Utc>>,
}

/// What a launch came to.
enum Launched {
    Pod(Box<Pod>),
    /// A limit holds the run back (the running budget, its Flow's concurrency).
    Held(Held),
    /// Not launched: the run was not pending after all, or the pod could not be created (the
    /// attempt is settled as crashed).
    Nothing,
}

/// Which start of an attempt a launch is (the Event says so).
#[derive(Clone, Copy)]
enum Start {
    /// The run's first attempt.
    First,
    /// An attempt after a wait, a sleep or a crash.
    Next,
    /// The same attempt again: its process never started (`cairn.reissue`).
    NeverStarted,
}

impl Launched {
    fn pod(self) -> Option<Pod> {
        match self {
            Launched::Pod(pod) => Some(*pod),
            _ => None,
        }
    }
}

impl Launch<'_> {
    /// Claims the next attempt within the running budget and the Flow's concurrency limits,
    /// and creates its pod.
    async fn run(&self, ctx: &Context) -> Result<Launched, Error> {
        let (run, record) = (self.run, self.record);
        // Only launching needs the Secret pods read the database URL from.
        ctx.prepare_namespace(&run.namespace().unwrap_or_default())
            .await?;
        let (max_running, max_in_namespace) = ctx.config.budget();
        let concurrency = self.resolved.concurrency.as_ref();
        let limits = Limits {
            max_running,
            max_in_namespace,
            max_per_flow: concurrency.and_then(|c| c.max),
            max_per_key: concurrency.and_then(|c| c.max_per_key),
        };
        let mut conn = ctx.pool.acquire().await?;
        let claim = match engine::claim(&mut conn, record.id, &limits).await? {
            Claim::Started(claim) => claim,
            Claim::NotPending => return Ok(Launched::Nothing),
            Claim::Refused(held) => return Ok(Launched::Held(held)),
        };
        drop(conn);
        let start = match claim.number {
            1 => Start::First,
            _ => Start::Next,
        };
        self.start(ctx, claim, start).await
    }

    /// Hands the claimed attempt its token and creates its pod; a pod that cannot be created
    /// settles the attempt as crashed.
    async fn start(&self, ctx: &Context, claim: Attempt, start: Start) -> Result<Launched, Error> {
        let (run, record) = (self.run, self.record);
        let namespace = run.namespace().unwrap_or_default();
        let attempt = claim.number;
        let run_id = record.id.to_string();
        // The trace's settings first: a Flow's own env may override them.
        let mut env = ctx.trace_env(record.id, attempt).await;
        env.extend(self.resolved.env.iter().cloned());
        let pod = pod::build_pod(&FlowPod {
            run,
            run_id: &run_id,
            attempt,
            image: self.image,
            flow: &self.resolved.flow,
            profile: self.resolved.profile.as_ref(),
            extra_env: &env,
            service_account: self
                .resolved
                .service_account
                .as_deref()
                .or(ctx.config.flow_service_account.as_deref()),
            image_pull_secrets: &self.resolved.image_pull_secrets,
            db_secret: &ctx.config.runner_secret,
            db_ca: ctx.runner_ca(),
            pooler: ctx.config.runner_pooler,
            deadline_in: self.deadline.map(|at| (at - Utc::now()).num_seconds()),
            settings: &self.resolved.pod,
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
                    let waited = Utc::now() - record.updated_at;
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
                let mut conn = ctx.pool.acquire().await?;
                engine::record_crash(&mut conn, record.id, attempt, &reason, retry).await?;
                drop(conn);
                delete_token(ctx, &namespace, &run_id, attempt).await;
                ctx.forget_prepared(&namespace);
                ctx.warn(run, "LaunchFailed", &reason).await;
                return Ok(Launched::Nothing);
            }
        }
        let (reason, why) = match start {
            Start::First => ("Launched", ""),
            Start::Next => ("Resumed", ""),
            Start::NeverStarted => ("Relaunched", ": its process never started (not a crash)"),
        };
        let note = format!("attempt {attempt} in pod {}{why}", pod.name_any());
        ctx.event(run, reason, &note).await;
        Ok(Launched::Pod(Box::new(pod)))
    }
}

/// Deletes the token Secret of an attempt that ended (the engine revoked the token already:
/// this removes a dead credential). One already gone is fine; one that cannot be deleted
/// goes with its FlowRun, which owns it.
pub async fn delete_token(ctx: &Context, namespace: &str, run_id: &str, attempt: i32) {
    let name = pod::token_secret_name(run_id, attempt);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match secrets.delete(&name, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(secret = %name, error = %e, "cannot delete the token Secret of an ended attempt; it goes with its FlowRun")
        }
    }
}
