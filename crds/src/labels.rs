//! Every label, annotation and finalizer Cairn puts on Kubernetes objects, in one place: they
//! are a contract between the operator, `kubectl cairn`, the chart and anyone selecting Cairn's
//! objects with `kubectl -l`, so a key is written once here and referred to everywhere else.
//! Renaming one strands the objects an earlier release labelled: keep the values stable.

/// On flow pods and attempt token Secrets: the engine's id of the run.
pub const LABEL_RUN: &str = "cairn.dev/run";
/// On flow pods: the attempt number the pod runs.
pub const LABEL_ATTEMPT: &str = "cairn.dev/attempt";
/// On child FlowRuns: the parent FlowRun's name as a label value ([`parent_label`]: names
/// longer than a label's 63 characters are shortened with a hash). Select children with
/// [`parent_selector`]; read the full name from [`ANNOTATION_PARENT`].
pub const LABEL_PARENT: &str = "cairn.dev/parent";
/// On child FlowRuns: the parent FlowRun's full name (children made before this annotation
/// have only [`LABEL_PARENT`], which then holds the full name: see `FlowRun::parent_name`).
pub const ANNOTATION_PARENT: &str = "cairn.dev/parent";
/// On child FlowRuns: the Flow whose volumes, mounts, pod labels and pod annotations the
/// child's pods take (a child has no `spec.flowRef`: it runs its parent's pinned image). The
/// child's own Flow where there is one, else the Flow its parent's pods took them from. Set by
/// the operator when it creates the child; read through `FlowRun::pod_settings_flow`.
pub const ANNOTATION_POD_SETTINGS_FLOW: &str = "cairn.dev/pod-settings-flow";
/// The standard label naming who manages an object (values below).
pub const LABEL_MANAGED: &str = "app.kubernetes.io/managed-by";
/// [`LABEL_MANAGED`] on what the operator creates (flow pods, token Secrets): its watches
/// select on it.
pub const MANAGED_BY_OPERATOR: &str = "cairn";
/// [`LABEL_MANAGED`] on the FlowEvents `kubectl cairn approve` and `emit` create.
pub const MANAGED_BY_KUBECTL: &str = "kubectl-cairn";

/// Set this annotation on a failed FlowRun to a new value to retry it from its last checkpoint.
pub const RETRY_ANNOTATION: &str = "cairn.dev/retry";

/// On a FlowSchedule: set it to a new value to start a run now, once per value
/// (`kubectl cairn schedule trigger`).
pub const TRIGGER_ANNOTATION: &str = "cairn.dev/trigger";
/// On a FlowSchedule's FlowRuns: the schedule's name as a label value (shortened with a hash
/// past 63 characters, like [`LABEL_PARENT`]).
pub const LABEL_SCHEDULE: &str = "cairn.dev/schedule";
/// On a FlowSchedule's FlowRuns: the slot they were started for (RFC 3339), or `manual`.
pub const ANNOTATION_SCHEDULED_TIME: &str = "cairn.dev/scheduled-time";

/// The finalizer older operators put on FlowRuns (to delete the run's rows first). The
/// operator removes it: a finalizer can outlive its rights to remove it when a namespace is
/// deleted, and the namespace then never goes.
pub const FINALIZER: &str = "cairn.dev/cleanup";

/// The [`LABEL_PARENT`] value of the children of FlowRun `parent`.
pub fn parent_label(parent: &str) -> String {
    cairn_engine::names::label_value(parent)
}

/// A label selector for the children of FlowRun `parent`.
pub fn parent_selector(parent: &str) -> String {
    format!("{LABEL_PARENT}={}", parent_label(parent))
}
