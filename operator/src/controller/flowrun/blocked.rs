//! Runs refused for want of another object: a FlowRun whose Flow or ResourceProfile is missing,
//! or whose profile does not serve its namespace, is reconciled again as soon as a Flow or a
//! ResourceProfile is written (the controller watches both), instead of at its next periodic
//! look a minute later. Pure: which runs, from the cached FlowRuns and their Ready reason.

use std::sync::Arc;

use cairn_crds::{Flow, FlowRun};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

/// The reasons (resolve.rs) a Flow being written can lift: its own absence, and a profile the
/// Flow names (fixing the Flow's `profile` is a way out too).
const ON_FLOW: &[&str] = &[
    "FlowNotFound",
    "ProfileNotFound",
    "ProfileNotAllowed",
    "InvalidProfile",
    "InvalidConcurrencyKey",
    "ConcurrencyLimit",
];
/// The reasons a ResourceProfile being written can lift.
const ON_PROFILE: &[&str] = &["ProfileNotFound", "ProfileNotAllowed", "InvalidProfile"];

/// The Ready condition's reason of a run that could not start as written.
fn refused_for(run: &FlowRun) -> Option<&str> {
    let status = run.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (ready.status == "False").then_some(ready.reason.as_str())
}

/// The runs of `flow`'s namespace that name it and were refused for a reason it can lift.
pub fn waiting_for_flow(runs: &[Arc<FlowRun>], flow: &Flow) -> Vec<ObjectRef<FlowRun>> {
    let (namespace, name) = (flow.namespace(), flow.name_any());
    runs.iter()
        .filter(|run| run.namespace() == namespace)
        .filter(|run| run.pod_settings_flow() == Some(name.as_str()))
        .filter(|run| refused_for(run).is_some_and(|reason| ON_FLOW.contains(&reason)))
        .map(|run| ObjectRef::from_obj(run.as_ref()))
        .collect()
}

/// The runs, in any namespace, refused for a reason a ResourceProfile (any: a run may get its
/// profile's name from its Flow) can lift. Such runs are few (each shows a condition until
/// fixed), and a reconcile of one that is still refused costs a lookup.
pub fn waiting_for_a_profile(runs: &[Arc<FlowRun>]) -> Vec<ObjectRef<FlowRun>> {
    runs.iter()
        .filter(|run| refused_for(run).is_some_and(|reason| ON_PROFILE.contains(&reason)))
        .map(|run| ObjectRef::from_obj(run.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::{FlowRunSpec, FlowRunStatus, FlowSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn run(
        namespace: &str,
        name: &str,
        flow_ref: &str,
        ready: Option<(&str, &str)>,
    ) -> Arc<FlowRun> {
        let mut run = FlowRun::new(
            name,
            FlowRunSpec {
                flow_ref: Some(flow_ref.into()),
                ..Default::default()
            },
        );
        run.metadata.namespace = Some(namespace.into());
        run.status = ready.map(|(status, reason)| FlowRunStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        });
        Arc::new(run)
    }

    fn names(refs: Vec<ObjectRef<FlowRun>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_flow_written_wakes_the_runs_refused_for_want_of_it() {
        let runs = [
            run(
                "a",
                "missing-flow",
                "agent",
                Some(("False", "FlowNotFound")),
            ),
            run(
                "a",
                "missing-profile",
                "agent",
                Some(("False", "ProfileNotFound")),
            ),
            run("a", "running", "agent", Some(("False", "Running"))),
            run("a", "other-flow", "other", Some(("False", "FlowNotFound"))),
            run(
                "b",
                "other-namespace",
                "agent",
                Some(("False", "FlowNotFound")),
            ),
            run("a", "new", "agent", None),
        ];
        let mut flow = Flow::new("agent", FlowSpec::default());
        flow.metadata.namespace = Some("a".into());
        assert_eq!(
            names(waiting_for_flow(&runs, &flow)),
            ["missing-flow", "missing-profile"]
        );
    }

    #[test]
    fn a_profile_written_wakes_the_runs_refused_for_a_profile_anywhere() {
        let runs = [
            run(
                "a",
                "not-allowed",
                "agent",
                Some(("False", "ProfileNotAllowed")),
            ),
            run("b", "missing", "other", Some(("False", "ProfileNotFound"))),
            run(
                "a",
                "missing-flow",
                "agent",
                Some(("False", "FlowNotFound")),
            ),
            run("a", "done", "agent", Some(("True", "Succeeded"))),
        ];
        assert_eq!(
            names(waiting_for_a_profile(&runs)),
            ["not-allowed", "missing"]
        );
    }
}
