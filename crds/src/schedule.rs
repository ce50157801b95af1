//! [`FlowSchedule`]: FlowRuns on a cron schedule, as a CronJob makes Jobs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Budget, any_json};

/// Starts a FlowRun of a Flow on a cron schedule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "FlowSchedule",
    namespaced,
    shortname = "fs",
    category = "cairn",
    status = "FlowScheduleStatus",
    doc = "FlowRuns of a Flow on a cron schedule, one per slot (named by the slot's time, so never started twice).",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.timeZone"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCount"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FlowScheduleSpec {
    /// When: 5 cron fields (minute hour day-of-month month day-of-week), 6 with seconds first,
    /// or @hourly, @daily, @weekly, @monthly, @yearly.
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// The IANA time zone the schedule is read in (default UTC), e.g. `Europe/Berlin`.
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// What each slot starts.
    pub template: FlowRunTemplate,
    /// What a slot does while runs of earlier slots are under way: `Allow` (start anyway, the
    /// default), `Forbid` (skip it: it does not start later) or `Replace` (cancel them, then
    /// start).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A slot not started within this many seconds of its time is missed (say, the operator was
    /// down); none: no limit.
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// After a gap (the operator down), how many of the latest passed slots start (default 1;
    /// at most 100).
    #[schemars(range(min = 1, max = 100))]
    pub catch_up: Option<i32>,
    /// Each slot starts up to this many seconds late (a fixed delay per slot, from a hash),
    /// spreading schedules that share a time.
    #[schemars(range(min = 0, max = 86400))]
    pub jitter_seconds: Option<i32>,
    /// No new runs while true; slots passed meanwhile are not caught up.
    #[serde(default)]
    pub suspend: bool,
    /// Finished FlowRuns kept, newest first (defaults 3 and 1); older ones are deleted.
    #[schemars(range(min = 0, max = 1000))]
    pub successful_runs_history_limit: Option<i32>,
    #[schemars(range(min = 0, max = 1000))]
    pub failed_runs_history_limit: Option<i32>,
}

/// The FlowRun a slot starts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunTemplate {
    /// Labels and annotations for the FlowRuns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    pub spec: FlowRunTemplateSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// What the FlowRuns of a schedule are: a FlowRun's spec, of a Flow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunTemplateSpec {
    /// A Flow in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub flow_ref: String,
    /// The runs' input (JSON).
    #[schemars(schema_with = "any_json")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// A ResourceProfile other than the Flow's.
    pub profile: Option<String>,
    /// What each run may spend (its Flow's otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Each run must finish within this many seconds of its creation.
    #[schemars(range(min = 1))]
    pub deadline_seconds: Option<i64>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ConcurrencyPolicy {
    #[default]
    Allow,
    Forbid,
    Replace,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowScheduleStatus {
    /// The last slot started (its nominal time).
    pub last_schedule_time: Option<Time>,
    /// The next slot.
    pub next_schedule_time: Option<Time>,
    /// The schedule's FlowRuns under way, oldest first (at most 20 named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    pub active_count: Option<i32>,
    /// The last `cairn.dev/trigger` annotation value acted on (`kubectl cairn schedule trigger`).
    pub last_trigger: Option<String>,
    /// When the schedule was last seen suspended: slots before it are not caught up.
    pub suspended_at: Option<Time>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
