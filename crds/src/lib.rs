//! Cairn's custom resources (API group `cairn.dev`, version `v1alpha1`):
//!
//! - [`FlowRun`] — one execution of a flow; the operator runs it in pods, one per attempt.
//! - [`Flow`] — a reusable template (image, flow name, defaults, concurrency limits) that
//!   FlowRuns refer to.
//! - [`FlowEvent`] — delivers a named event; creating one is governed by Kubernetes RBAC, so
//!   who may approve a run is decided by who may create FlowEvents.
//! - [`ResourceProfile`] — cluster-wide pod resources and placement for flows.
//! - [`FlowSchedule`] — FlowRuns of a Flow on a cron schedule.
//!
//! Status stays small: history (steps, attempts, costs) lives in Postgres.

// kube's `printcolumn(name = .., type_ = ..)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod concurrency;
pub mod labels;
pub mod schedule;

pub use concurrency::Concurrency;
pub use labels::*;
pub use schedule::{ConcurrencyPolicy, FlowSchedule, FlowScheduleSpec, FlowScheduleStatus};

/// The phase of a run is the engine's (one type for the engine's record, the CLI and the status).
pub use cairn_engine::Phase;

pub const GROUP: &str = "cairn.dev";
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Cairn object.
pub const API_VERSION: &str = "cairn.dev/v1alpha1";

/// Any JSON value, kept as is by the API server.
pub(crate) fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Crash retries of a whole run (a step's own retries are set in code).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Crashed attempts (crash, OOM kill, eviction, deleted pod) before the run fails. Default 3.
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<i32>,
    /// Delay before the first relaunch; doubles per crash, capped at 5 minutes. Default 10.
    #[schemars(range(min = 0, max = 3600))]
    pub backoff_seconds: Option<i32>,
}

/// What a run may spend, its children included.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// US dollars, as a decimal (`"5"`, `"2.50"`). Past it, the run that spent parks at its
    /// next step boundary until the budget is raised (`kubectl cairn approve RUN --budget`,
    /// or by editing this field); a budget below what was already spent is refused.
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub usd: String,
}

impl Budget {
    /// The amount; the CRD's pattern makes it a decimal.
    pub fn usd(&self) -> Option<f64> {
        self.usd.parse().ok()
    }
}

/// One execution of a flow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "FlowRun",
    namespaced,
    shortname = "fr",
    category = "cairn",
    status = "FlowRunStatus",
    doc = "One execution of a flow, run by the Cairn operator in pods pinned to one image digest.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Steps",
        type_ = "integer",
        json_path = ".status.stepsCompleted"
    ),
    printcolumn(
        name = "Waiting For",
        type_ = "string",
        json_path = ".status.waitingFor.event"
    ),
    printcolumn(name = "Execution", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(name = "Crashes", type_ = "integer", json_path = ".status.crashes"),
    printcolumn(name = "Cost", type_ = "string", json_path = ".status.costUsd"),
    printcolumn(name = "Budget", type_ = "string", json_path = ".status.budgetUsd"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.flowRef) != (has(self.image) || has(self.flow))")
    .message("set either spec.flowRef (a Flow in this namespace) or spec.image and spec.flow"))]
#[x_kube(validation = Rule::new("has(self.flowRef) || (has(self.image) && has(self.flow))")
    .message("an inline flow needs both spec.image and spec.flow"))]
#[x_kube(validation = Rule::new("has(self.forkOf) == has(oldSelf.forkOf)")
    .message("spec.forkOf is immutable: a run is a fork from its creation, or never"))]
#[serde(rename_all = "camelCase")]
pub struct FlowRunSpec {
    /// A Flow in this namespace to run.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.flowRef is immutable"))]
    pub flow_ref: Option<String>,
    /// Container image of the flow binary (inline alternative to flowRef). The first pod pins
    /// its digest; every later pod of this run uses that digest.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.image is immutable"))]
    pub image: Option<String>,
    /// The flow's name inside the image (inline alternative to flowRef).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.flow is immutable"))]
    pub flow: Option<String>,
    /// The flow's input (JSON).
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    // A child FlowRun (made by the operator) gets its parent's resolved profile, service
    // account, image pull secrets and env in the next four fields, except where its own Flow
    // sets them (the rule is `controller::children::child_settings`).
    /// A ResourceProfile name (overrides the Flow's default). Child runs get their parent's,
    /// unless their own Flow names one.
    pub profile: Option<String>,
    /// Extra environment for this run's pods (added to the Flow's). Child runs get their
    /// parent's, their own Flow's variables replacing those of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Service account of this run's pods (overrides the Flow's). Flow pods get no API token
    /// whatever the account: it brings its image pull secrets. Child runs get their parent's,
    /// unless their own Flow names one.
    pub service_account_name: Option<String>,
    /// Secrets to pull the image with, in this namespace (replace the Flow's when set). Child
    /// runs get their parent's, unless their own Flow lists some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Crash retries (overrides the Flow's).
    pub retry: Option<RetryPolicy>,
    /// Fail the run if it has not finished this many seconds after it was created.
    #[schemars(range(min = 1))]
    pub deadline_seconds: Option<i64>,
    /// Delete the FlowRun (and its database rows) this long after it finished; 0 keeps it.
    /// Overrides the Flow's, which overrides the operator's default (the chart's
    /// `flowRuns.ttlSecondsAfterFinished`).
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Set to true to cancel the run: a parked run ends at once, a running one at its next
    /// step boundary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// What the run may spend, its children included (overrides the Flow's). Raise it to let
    /// a run parked at its budget go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Make this run a fork of another (`kubectl cairn fork`): it starts from that run's
    /// checkpoints completed before `step`, reused without being paid again, and runs `step`
    /// and what follows. The source run is not changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.forkOf is immutable"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_of: Option<ForkOf>,
}

/// The run a fork starts from, and what it changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkOf {
    /// The source FlowRun, in this namespace.
    pub run: String,
    /// The step (its key, as `inspect` shows it: `draft`, `llm#2`) run again, with all after it.
    pub step: String,
    /// Other values for steps before `step`, by key: the fork replays these instead.
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    /// Events sent to the fork alone, by name, answering its waits for them when reached.
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<Value>,
}

impl FlowRun {
    /// A child run's parent FlowRun: the annotation, else the label (children made before the
    /// annotation existed, whose parents' names all fit a label).
    pub fn parent_name(&self) -> Option<&str> {
        let meta = &self.metadata;
        let annotation = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_PARENT));
        annotation
            .or_else(|| meta.labels.as_ref()?.get(LABEL_PARENT))
            .map(String::as_str)
    }

    /// The Flow this run's pods take their volumes, mounts, labels and annotations from: its
    /// `spec.flowRef`, or for a child run the Flow its parent chose for it.
    pub fn pod_settings_flow(&self) -> Option<&str> {
        let chosen = || {
            let annotations = self.metadata.annotations.as_ref()?;
            annotations.get(ANNOTATION_POD_SETTINGS_FLOW)
        };
        self.spec
            .flow_ref
            .as_ref()
            .or_else(chosen)
            .map(String::as_str)
    }
}

/// What a waiting run waits for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingFor {
    /// The event name (deliver it with a FlowEvent of that name).
    pub event: Option<String>,
    /// The question for whoever answers.
    pub question: Option<String>,
    /// JSON schema the event payload must satisfy.
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// When the wait times out.
    pub deadline: Option<Time>,
    /// Unfinished child runs being joined.
    pub children: Option<i32>,
    /// A spend budget was passed: raise it to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetWait>,
}

/// The budget a parked run waits to see raised.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetWait {
    /// The run (FlowRun) whose budget was passed: this one, or a parent.
    pub run: String,
    /// What that run's tree has spent, and its budget, in US dollars.
    pub spent_usd: String,
    pub limit_usd: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunStatus {
    pub phase: Option<Phase>,
    /// The run's id in the engine's database.
    pub run_id: Option<String>,
    /// Current execution (one pod each): every launch counts, after a wait as after a crash.
    pub attempt: Option<i32>,
    /// How many executions crashed (the retry policy's `maxAttempts` allows that many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashes: Option<i32>,
    /// The current or last pod.
    pub pod: Option<String>,
    /// The image digest every pod of this run uses (`repo@sha256:…`).
    pub image_digest: Option<String>,
    pub waiting_for: Option<WaitingFor>,
    /// When a sleeping or retrying run wakes up.
    pub wake_at: Option<Time>,
    pub steps_completed: Option<i64>,
    /// The result, when small (see the database for large ones).
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    pub error: Option<String>,
    /// Total cost recorded by the run's steps and its children's, in US dollars.
    pub cost_usd: Option<String>,
    /// The budget the run's tree is held to, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<String>,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    /// The value of the `cairn.dev/retry` annotation last acted on: setting that annotation to
    /// a new value retries a failed run from its last checkpoint (`kubectl cairn retry`).
    pub retried: Option<String>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A reusable flow template.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "Flow",
    namespaced,
    category = "cairn",
    doc = "A flow FlowRuns can refer to: its image, its name inside the image, and defaults.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Flow", type_ = "string", json_path = ".spec.flow"),
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.profile"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FlowSpec {
    /// Container image of the flow binary.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The flow's name inside the image.
    #[schemars(length(min = 1))]
    pub flow: String,
    /// Default ResourceProfile.
    pub profile: Option<String>,
    /// Extra environment for the flow's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Service account of the flow's pods (default: the chart's flow account, which has no
    /// Kubernetes API rights).
    pub service_account_name: Option<String>,
    /// Secrets to pull the image with, in this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub retry: Option<RetryPolicy>,
    /// Default for its FlowRuns: delete a FlowRun this long after it finished; 0 keeps it.
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Default for its FlowRuns: what a run may spend, its children included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Volumes of the flow's pods (at most 32), of the kinds the restricted Pod Security
    /// Standard admits: configMap, secret, emptyDir, projected, downwardAPI,
    /// persistentVolumeClaim, ephemeral, csi. `tmp` and `db-ca` are Cairn's own.
    #[x_kube(validation = Rule::new(
        "self.all(v, has(v.configMap) || has(v.secret) || has(v.emptyDir) || has(v.projected) || has(v.downwardAPI) || has(v.persistentVolumeClaim) || has(v.ephemeral) || has(v.csi))"
    ).message("a flow volume must be a configMap, secret, emptyDir, projected, downwardAPI, persistentVolumeClaim, ephemeral or csi volume: flow pods run under the restricted Pod Security Standard"))]
    #[schemars(length(max = 32))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Where the flow's container mounts them (at most 32; each names one of `volumes`; not
    /// at /tmp, which is Cairn's writable scratch space).
    #[schemars(length(max = 32))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Labels of the flow's pods, over the profile's (keys under `cairn.dev/` are Cairn's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations of the flow's pods, over the profile's (keys under `cairn.dev/` are Cairn's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// How many of its runs may be under way at once, in all and per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// Delivers a named event to the runs waiting for it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "FlowEvent",
    namespaced,
    shortname = "fe",
    category = "cairn",
    status = "FlowEventStatus",
    doc = "A named event with a JSON payload. Creating one delivers it (once; events are write-once).",
    printcolumn(name = "Event", type_ = "string", json_path = ".spec.event"),
    printcolumn(name = "Delivered", type_ = "string", json_path = ".status.delivered"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a FlowEvent is immutable: events are write-once"))]
#[serde(rename_all = "camelCase")]
pub struct FlowEventSpec {
    /// The event name, e.g. `approve-<run name>`.
    #[schemars(length(min = 1, max = 253))]
    pub event: String,
    /// The payload (JSON); checked against the schema of the waits for this event.
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The one FlowRun this event is for (`kubectl cairn approve` sets it). It reaches that
    /// FlowRun only, never a later one created under the same name; it is refused if the
    /// FlowRun is gone. Without it, the event is for the runs of the namespace that exist when
    /// it is created (README, "Events").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_run: Option<FlowRunRef>,
}

/// A FlowRun by name and uid: the uid tells it from a later FlowRun given the same name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct FlowRunRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub uid: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowEventStatus {
    pub delivered: Option<bool>,
    pub delivered_at: Option<Time>,
    /// Runs this delivery woke.
    pub woken: Option<i32>,
    /// Why it was refused (payload failing a wait's schema, conflict with an earlier event).
    pub message: Option<String>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A ResourceProfile's `resources`, bounded so that the API server can cost the rules that
/// check every amount: at most 12 resources each in requests and limits (cpu, memory,
/// ephemeral-storage, a GPU and hugepages fit many times). The API server refuses rules it
/// estimates too costly, and the estimate grows with this bound: 16 is already too many.
fn bounded_resources(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Option<ResourceRequirements>>();
    for map in ["requests", "limits"] {
        let pointer = format!("/properties/{map}");
        let map = schema.pointer_mut(&pointer).and_then(Value::as_object_mut);
        map.expect("ResourceRequirements has requests and limits maps")
            .insert("maxProperties".into(), 12.into());
    }
    schema
}

/// A CEL rule on a ResourceProfile spec: every amount of `resources.<map>` is a quantity.
/// (A macro, because the attributes that use it need literals.)
macro_rules! quantities_rule {
    ($map:literal) => {
        concat!(
            "!has(self.resources) || !has(self.resources.",
            $map,
            ") || self.resources.",
            $map,
            ".all(r, isQuantity(string(self.resources.",
            $map,
            "[r])))"
        )
    };
}

/// Its message, naming the first resource whose amount is not a quantity. (Echoing the
/// amount too would make the API server estimate the message too costly.)
macro_rules! quantities_message {
    ($map:literal) => {
        concat!(
            "'resources.",
            $map,
            ".' + self.resources.",
            $map,
            ".filter(r, !isQuantity(string(self.resources.",
            $map,
            "[r])))[0]",
            " + ' is not a quantity (such as 250m, 2 or 512Mi)'"
        )
    };
}

/// Resources and placement for flow pods.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "ResourceProfile",
    shortname = "rp",
    category = "cairn",
    doc = "Requests, limits and placement applied to the pods of flows that choose this profile.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// What a pod would refuse is refused here, at `kubectl apply`, instead of failing runs later.
// The operator checks the same again (`check_profile`): rules apply to objects written after
// they were added, so a profile stored under an older CRD can still hold what they refuse.
#[x_kube(validation = Rule::new(quantities_rule!("requests"))
    .message(Message::Expression(quantities_message!("requests").into()))
    .field_path(".resources.requests"))]
#[x_kube(validation = Rule::new(quantities_rule!("limits"))
    .message(Message::Expression(quantities_message!("limits").into()))
    .field_path(".resources.limits"))]
#[serde(rename_all = "camelCase")]
pub struct ResourceProfileSpec {
    #[schemars(schema_with = "bounded_resources")]
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the flow pods (at most 64).
    // The bound lets the API server cost the rules that check each one.
    #[x_kube(validation = Rule::new(
        "self.all(t, !has(t.effect) || t.effect in ['NoSchedule', 'PreferNoSchedule', 'NoExecute', ''])"
    ).message("a toleration's effect must be NoSchedule, PreferNoSchedule or NoExecute"))]
    #[x_kube(validation = Rule::new(
        "self.all(t, !has(t.operator) || t.operator in ['Exists', 'Equal', ''])"
    ).message("a toleration's operator must be Exists or Equal"))]
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    pub runtime_class_name: Option<String>,
    pub priority_class_name: Option<String>,
    /// Affinity of the flow pods (node, pod and anti-affinity), as in a pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Labels of the flow pods (a Flow's own replace these where keys are the same; keys under
    /// `cairn.dev/` are Cairn's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations of the flow pods (a Flow's own replace these where keys are the same; keys
    /// under `cairn.dev/` are Cairn's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// The namespaces whose runs may use this profile; absent: every namespace; empty: none. A
    /// run elsewhere is refused before it starts, with reason ProfileNotAllowed.
    // Names, not a namespace selector: matching labels would need the operator to read
    // Namespaces, a cluster-wide right it does not have when it watches given namespaces.
    #[schemars(length(max = 1024))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

/// Every CRD, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        FlowRun::crd(),
        Flow::crd(),
        FlowEvent::crd(),
        ResourceProfile::crd(),
        FlowSchedule::crd(),
    ]
}

/// The CRDs as one multi-document YAML file (what `crdgen` prints and `crds/generated/` holds).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD serializes to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed YAML is what `kubectl apply` and the chart install; it must match the types.
    #[test]
    fn committed_crd_yaml_matches_the_types() {
        let committed = include_str!("../generated/crds.yaml");
        assert!(
            committed == crds_yaml(),
            "crds/generated/crds.yaml is stale: run `cargo run -p cairn-crds --bin crdgen > crds/generated/crds.yaml`"
        );
        // Helm reads only files inside the chart: it carries a copy.
        let in_chart = include_str!("../../charts/cairn/files/crds.yaml");
        assert!(
            in_chart == committed,
            "charts/cairn/files/crds.yaml differs: run `cp crds/generated/crds.yaml charts/cairn/files/crds.yaml`"
        );
    }

    #[test]
    fn json_fields_are_optional() {
        let flowrun = serde_json::to_value(FlowRun::crd()).unwrap();
        let spec =
            &flowrun["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let required = spec["required"].as_array().cloned().unwrap_or_default();
        assert!(
            !required.contains(&"input".into()),
            "spec.input must be optional: {required:?}"
        );
    }

    /// The API server refuses a CRD whose rules it cannot bound the cost of (checked against a
    /// real API server with `kubectl apply --dry-run=server`): keep the bounds with the rules.
    #[test]
    fn profile_rules_come_with_the_bounds_that_make_them_affordable() {
        let profile = serde_json::to_value(ResourceProfile::crd()).unwrap();
        let spec =
            &profile["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules = spec["x-kubernetes-validations"].to_string();
        assert!(rules.contains("isQuantity"), "{rules}");
        let resources = &spec["properties"]["resources"]["properties"];
        assert_eq!(resources["requests"]["maxProperties"], 12);
        assert_eq!(resources["limits"]["maxProperties"], 12);
        let tolerations = &spec["properties"]["tolerations"];
        assert_eq!(tolerations["maxItems"], 64);
        assert_eq!(
            tolerations["x-kubernetes-validations"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert!(
            !spec["required"].to_string().contains("resources"),
            "resources stays optional"
        );
    }

    #[test]
    fn json_fields_keep_unknown_fields_and_status_is_a_subresource() {
        let yaml = crds_yaml();
        assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
        let flowrun = serde_json::to_value(FlowRun::crd()).unwrap();
        let version = &flowrun["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        assert_eq!(flowrun["spec"]["names"]["shortNames"][0], "fr");
    }
}
