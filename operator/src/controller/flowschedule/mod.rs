//! The FlowSchedule controller (the leader's): starts the FlowRuns of due slots, as a CronJob
//! starts Jobs. Stages: parse the schedule (a bad one is a condition, not a crash loop), read
//! the schedule's runs from the FlowRun cache, plan (pure), act (cancel for Replace, create,
//! trim the history), write the status, and look again at the next slot.

mod plan;

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{
    ANNOTATION_SCHEDULED_TIME, FlowRun, FlowSchedule, FlowScheduleStatus, LABEL_SCHEDULE, Phase,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::error::{AtStage, Stage};
use super::{Context, Error};
use crate::schedule::Schedule;
use plan::{Plan, Start};

/// Names of runs under way listed in the status, at most.
const ACTIVE_LISTED: usize = 20;

pub struct Scope {
    pub ctx: Arc<Context>,
    pub flowruns: Store<FlowRun>,
}

pub async fn reconcile(fs: Arc<FlowSchedule>, scope: Arc<Scope>) -> Result<Action, Error> {
    let ctx = scope.ctx.as_ref();
    let schedule = match Schedule::parse(&fs.spec.schedule, fs.spec.time_zone.as_deref()) {
        Ok(schedule) => schedule,
        Err(invalid) => {
            let mut status = fs.status.clone().unwrap_or_default();
            status.next_schedule_time = None;
            set_ready(&mut status, &fs, false, invalid.reason, &invalid.message);
            if fs.status.as_ref() != Some(&status) {
                ctx.warn(fs.as_ref(), invalid.reason, &invalid.message)
                    .await;
            }
            write_status(ctx, &fs, status)
                .await
                .at(Stage::PatchStatus)?;
            return Ok(Action::await_change());
        }
    };
    let (active, finished) = runs_of(&fs, &scope.flowruns);
    let now = Timestamp::now();
    let newest_started = active
        .iter()
        .chain(&finished)
        .filter_map(|run| {
            run.annotations()
                .get(ANNOTATION_SCHEDULED_TIME)?
                .parse()
                .ok()
        })
        .max();
    let mut plan = plan::plan(&fs, &schedule, &names(&active), newest_started, now);
    // Those cancelled by an earlier slot are on their way out already.
    plan.cancel.retain(|name| {
        !active
            .iter()
            .any(|r| &r.name_any() == name && r.spec.cancel)
    });
    act(ctx, &fs, &plan).await.at(Stage::Act)?;
    trim_history(ctx, &fs, finished).await.at(Stage::Act)?;

    let mut status = fs.status.clone().unwrap_or_default();
    let mut active = names(&active);
    active.extend(plan.start.iter().map(|s| s.name.clone()));
    active.retain(|name| !plan.cancel.contains(name));
    status.active_count = Some(active.len() as i32);
    active.truncate(ACTIVE_LISTED);
    status.active = active;
    status.last_schedule_time = plan.last_schedule_time.map(Time);
    status.next_schedule_time = plan
        .next_schedule_time
        .filter(|_| !fs.spec.suspend)
        .map(Time);
    status.last_trigger = plan.last_trigger.clone();
    status.suspended_at = plan.suspended_at.map(Time);
    let (reason, message) = match fs.spec.suspend {
        true => ("Suspended", "suspended: no runs start".to_owned()),
        false => (
            "Scheduled",
            format!("next run at {}", describe(plan.next_schedule_time)),
        ),
    };
    set_ready(&mut status, &fs, true, reason, &message);
    write_status(ctx, &fs, status)
        .await
        .at(Stage::PatchStatus)?;
    Ok(match plan.look_again {
        Some(at) => Action::requeue(until(now, at)),
        None => Action::await_change(),
    })
}

pub fn on_error(fs: Arc<FlowSchedule>, error: &Error, scope: Arc<Scope>) -> Action {
    super::failed(fs.as_ref(), error, scope.ctx.clone()).0
}

/// The schedule's FlowRuns (those it owns): those under way, oldest first, and the finished
/// ones.
fn runs_of(fs: &FlowSchedule, cache: &Store<FlowRun>) -> (Vec<Arc<FlowRun>>, Vec<Arc<FlowRun>>) {
    let uid = fs.uid();
    let namespace = fs.namespace();
    let mut mine: Vec<Arc<FlowRun>> = cache
        .state()
        .into_iter()
        .filter(|run| run.namespace() == namespace)
        .filter(|run| {
            run.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();
    mine.sort_by_key(|run| (run.creation_timestamp(), run.name_any()));
    let (finished, active): (Vec<_>, Vec<_>) = mine.into_iter().partition(|run| {
        let phase = run.status.as_ref().and_then(|s| s.phase);
        phase.is_some_and(|p| p.is_terminal())
    });
    (active, finished)
}

fn names(runs: &[Arc<FlowRun>]) -> Vec<String> {
    runs.iter().map(|run| run.name_any()).collect()
}

async fn act(ctx: &Context, fs: &FlowSchedule, plan: &Plan) -> Result<(), kube::Error> {
    let namespace = fs.namespace().unwrap_or_default();
    let runs: Api<FlowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in &plan.cancel {
        let cancel = json!({ "spec": { "cancel": true } });
        match runs
            .patch(name, &PatchParams::default(), &Patch::Merge(&cancel))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => other.map(|_| ())?,
        }
        ctx.event(
            fs,
            "Replaced",
            &format!("cancelled {name} for the next slot"),
        )
        .await;
    }
    for start in &plan.start {
        let run = flowrun(fs, start);
        match runs.create(&PostParams::default(), &run).await {
            Ok(_) => {
                let note = match start.slot {
                    Some(slot) => format!("started {} for the slot of {slot}", start.name),
                    None => format!("started {} by hand", start.name),
                };
                ctx.event(fs, "Started", &note).await;
            }
            // Made before a restart or by the previous leader: the name is the slot's lock.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    if plan.skipped > 0 {
        let note = format!(
            "{} slot(s) skipped: runs under way and concurrencyPolicy {:?}",
            plan.skipped, fs.spec.concurrency_policy
        );
        ctx.event(fs, "Skipped", &note).await;
    }
    if plan.missed > 0 {
        let note = format!(
            "{}{} slot(s) passed without a run (the operator was down, or the schedule suspended); \
             spec.catchUp and spec.startingDeadlineSeconds decide how many start late",
            if plan.missed >= 1000 {
                "more than "
            } else {
                ""
            },
            plan.missed
        );
        ctx.warn(fs, "MissedSchedule", &note).await;
    }
    Ok(())
}

/// The FlowRun of a slot: the template's, owned by the schedule (deleting the schedule deletes
/// its runs), labelled with it.
fn flowrun(fs: &FlowSchedule, start: &Start) -> FlowRun {
    let template = &fs.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(
        LABEL_SCHEDULE.into(),
        cairn_engine::names::label_value(&fs.name_any()),
    );
    let mut annotations = meta.annotations;
    annotations.insert(
        ANNOTATION_SCHEDULED_TIME.into(),
        start
            .slot
            .map_or("manual".to_owned(), |slot| slot.to_string()),
    );
    let owner = fs.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    serde_json::from_value(json!({
        "apiVersion": cairn_crds::API_VERSION,
        "kind": "FlowRun",
        "metadata": {
            "name": start.name,
            "namespace": fs.namespace(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owner,
        },
        "spec": {
            "flowRef": template.spec.flow_ref,
            "input": template.spec.input,
            "profile": template.spec.profile,
            "budget": template.spec.budget,
            "deadlineSeconds": template.spec.deadline_seconds,
        },
    }))
    .expect("a FlowRun from its parts")
}

/// Deletes the oldest finished runs past the history limits (3 succeeded, 1 failed).
async fn trim_history(
    ctx: &Context,
    fs: &FlowSchedule,
    finished: Vec<Arc<FlowRun>>,
) -> Result<(), kube::Error> {
    let keep_succeeded = fs.spec.successful_runs_history_limit.unwrap_or(3).max(0) as usize;
    let keep_failed = fs.spec.failed_runs_history_limit.unwrap_or(1).max(0) as usize;
    let (succeeded, failed): (Vec<_>, Vec<_>) = finished
        .into_iter()
        .partition(|run| run.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded));
    let runs: Api<FlowRun> =
        Api::namespaced(ctx.client.clone(), &fs.namespace().unwrap_or_default());
    for (list, keep) in [(succeeded, keep_succeeded), (failed, keep_failed)] {
        let excess = list.len().saturating_sub(keep);
        for run in &list[..excess] {
            match runs.delete(&run.name_any(), &Default::default()).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                other => other.map(|_| ())?,
            }
        }
    }
    Ok(())
}

fn set_ready(
    status: &mut FlowScheduleStatus,
    fs: &FlowSchedule,
    ok: bool,
    reason: &str,
    message: &str,
) {
    let generation = fs.meta().generation;
    status.observed_generation = generation;
    let same = status
        .conditions
        .first()
        .is_some_and(|c| c.reason == reason && c.message == message && (c.status == "True") == ok);
    if same {
        return;
    }
    status.conditions = vec![Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: generation,
    }];
}

async fn write_status(
    ctx: &Context,
    fs: &FlowSchedule,
    status: FlowScheduleStatus,
) -> Result<(), kube::Error> {
    if fs.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<FlowSchedule> =
        Api::namespaced(ctx.client.clone(), &fs.namespace().unwrap_or_default());
    super::flowrun::patch::patch_changes(&api, &fs.name_any(), &fs.status, &status).await
}

fn describe(at: Option<Timestamp>) -> String {
    at.map_or("never (the expression matches no time)".to_owned(), |t| {
        t.to_string()
    })
}

/// How long from `now` to `at`, at least 100 ms (a look scheduled for a passed time is due).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default();
    wait.max(Duration::from_millis(100))
}
