//! Flow pods, built and read without I/O: the pod for one attempt of a run, and what a pod's
//! status says about that attempt's process.

use cairn_crds::{
    FlowRun, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_RUN, MANAGED_BY_OPERATOR, ResourceProfileSpec,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    LocalObjectReference, Pod, PodSecurityContext, PodSpec, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::flowrun::PodSettings;
use crate::kubectl::logic::to_utc;
use crate::lifecycle::{Process, ProcessExit};
use cairn_engine::names;

/// The key, in the per-namespace runner Secret, holding the database URL flow pods use.
pub const DB_SECRET_KEY: &str = "database-url";
/// The key, in the runner Secret, holding the artifact store's settings (credentials included).
pub const ARTIFACTS_SECRET_KEY: &str = "artifacts";
/// Key of the attempt's token in the run's token Secret.
pub const TOKEN_SECRET_KEY: &str = "token";

/// The Secret holding the token of one attempt of a run.
pub fn token_secret_name(run_id: &str, attempt: i32) -> String {
    format!("cairn-token-{run_id}-a{attempt}")
}

/// The OpenTelemetry settings flow pods take from the operator's own environment: where spans
/// go, and the resource's attributes. Not `OTEL_EXPORTER_OTLP_HEADERS`: they may hold a
/// backend's credentials, which a pod spec would show to anyone who may read pods (give flow
/// pods a collector that needs none, [`FLOW_PODS_OTLP_ENDPOINT`]); nor the service name: each
/// flow names its own.
pub const FORWARDED_OTEL_ENV: [&str; 5] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// Where flow pods send spans instead of the operator's endpoint, when set (chart
/// `traces.flowPodsEndpoint`): a collector that needs no credentials, say.
pub const FLOW_PODS_OTLP_ENDPOINT: &str = "CAIRN_FLOW_PODS_OTLP_ENDPOINT";

/// The environment of an attempt traced as `attempt`'s span: `TRACEPARENT`, and the settings
/// of [`FORWARDED_OTEL_ENV`] that `operator_env` has (the endpoint being
/// [`FLOW_PODS_OTLP_ENDPOINT`] when that is set).
pub fn trace_env(
    attempt: &cairn_engine::traces::TraceParent,
    operator_env: impl Fn(&str) -> Option<String>,
) -> Vec<EnvVar> {
    let mut env = vec![plain_env(cairn::env::TRACEPARENT, &attempt.encode())];
    let pods_endpoint = operator_env(FLOW_PODS_OTLP_ENDPOINT).filter(|e| !e.trim().is_empty());
    if let Some(endpoint) = &pods_endpoint {
        env.push(plain_env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    }
    for name in FORWARDED_OTEL_ENV {
        let endpoint = name.contains("ENDPOINT");
        if endpoint && pods_endpoint.is_some() {
            continue;
        }
        if let Some(value) = operator_env(name) {
            env.push(plain_env(name, &value));
        }
    }
    env
}

/// Everything a flow pod is made of.
pub struct FlowPod<'a> {
    pub run: &'a FlowRun,
    pub run_id: &'a str,
    pub attempt: i32,
    /// The image as given, or `repo@sha256:…` once the run's digest is pinned.
    pub image: &'a str,
    pub flow: &'a str,
    pub profile: Option<&'a ResourceProfileSpec>,
    pub extra_env: &'a [EnvVar],
    pub service_account: Option<&'a str>,
    pub image_pull_secrets: &'a [LocalObjectReference],
    /// The Secret (in the run's namespace) holding the runner's database URL.
    pub db_secret: &'a str,
    /// How that URL is reached (a pooler in transaction mode, or directly).
    pub pooler: cairn::Pooler,
    /// Whether that Secret also holds the CA the URL's `sslrootcert` names (mounted at
    /// `runner_db::CA_DIR`).
    pub db_ca: bool,
    /// Seconds left before the run's deadline: the kubelet stops the pod then (keeping it,
    /// and its logs), while the engine fails the run.
    pub deadline_in: Option<i64>,
    /// The Flow's and profile's volumes, mounts, labels and annotations (checked: none of
    /// them takes a name Cairn uses).
    pub settings: &'a PodSettings,
}

pub fn build_pod(spec: &FlowPod<'_>) -> Pod {
    let run_name = spec.run.meta().name.clone().unwrap_or_default();
    let mut labels = spec.settings.labels.clone();
    labels.extend([
        (LABEL_RUN.to_owned(), names::label_value(spec.run_id)),
        (LABEL_ATTEMPT.to_owned(), spec.attempt.to_string()),
        (LABEL_MANAGED.to_owned(), MANAGED_BY_OPERATOR.to_owned()),
    ]);
    let annotations = &spec.settings.annotations;
    let mut env = vec![
        secret_env(cairn::env::DATABASE_URL, spec.db_secret, DB_SECRET_KEY),
        secret_env(
            cairn::env::TOKEN,
            &token_secret_name(spec.run_id, spec.attempt),
            TOKEN_SECRET_KEY,
        ),
        // Optional: a Secret applied by an operator from before step keys lacks it, and then
        // only a sensitive step fails (saying so), not the pod's start.
        secret_ref_env(
            cairn::env::STEP_KEYS,
            spec.db_secret,
            super::step_keys::NAMESPACE_KEY,
            true,
        ),
        // Optional: without an artifact store, results stay in Postgres.
        secret_ref_env(
            cairn::env::ARTIFACTS,
            spec.db_secret,
            ARTIFACTS_SECRET_KEY,
            true,
        ),
        plain_env(cairn::env::RUN_ID, spec.run_id),
        plain_env(cairn::env::ATTEMPT, &spec.attempt.to_string()),
        plain_env(cairn::env::FLOW, spec.flow),
        plain_env(cairn::env::LOG_FORMAT, "json"),
    ];
    if spec.pooler != cairn::Pooler::None {
        env.push(plain_env(cairn::env::POOLER, spec.pooler.as_str()));
    }
    env.extend(spec.extra_env.iter().cloned());
    let grace = termination_grace_seconds(&env);
    let profile = spec.profile.cloned().unwrap_or_default();
    let (volumes, volume_mounts) = volumes(spec, &profile);

    Pod {
        metadata: ObjectMeta {
            // `<run>-a<attempt>`, within the 63 characters of a hostname for any run name.
            name: Some(names::pod_name(&run_name, spec.attempt)),
            namespace: spec.run.meta().namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
            owner_references: spec.run.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(grace),
            active_deadline_seconds: spec.deadline_in.map(|s| s.max(1)),
            // Flow code gets no Kubernetes API rights: no token, and its own account.
            automount_service_account_token: Some(false),
            service_account_name: spec.service_account.map(str::to_owned),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.to_vec()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "flow".into(),
                image: Some(spec.image.into()),
                image_pull_policy: Some("IfNotPresent".into()),
                env: Some(env),
                resources: profile.resources,
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                volume_mounts: Some(volume_mounts),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: (!profile.node_selector.is_empty()).then_some(profile.node_selector),
            tolerations: (!profile.tolerations.is_empty()).then_some(profile.tolerations),
            affinity: profile.affinity,
            volumes: Some(volumes),
            runtime_class_name: profile.runtime_class_name,
            priority_class_name: profile.priority_class_name,
            ..Default::default()
        }),
        status: None,
    }
}

/// Seconds between SIGTERM and SIGKILL: the flow's stop grace (`CAIRN_STOP_GRACE_MS`, which a
/// Flow may set in its env; the SDK's default otherwise), in which the step in flight may
/// finish, and 10 s more to give the run back and exit.
fn termination_grace_seconds(env: &[EnvVar]) -> i64 {
    let grace_ms = env
        .iter()
        .rfind(|e| e.name == cairn::env::STOP_GRACE_MS)
        .and_then(|e| e.value.as_deref()?.parse::<u64>().ok())
        .unwrap_or(cairn_engine::protocol::DEFAULT_STOP_GRACE_MS);
    (grace_ms.div_ceil(1000) + 10).min(i64::MAX as u64) as i64
}

/// The volume of the database's CA certificate (from the runner's Secret).
const DB_CA_VOLUME: &str = "db-ca";
/// The writable scratch space at /tmp (the root filesystem is read-only).
const TMP_VOLUME: &str = "tmp";
/// Volume names and mount paths of Cairn's own, which a Flow's may not take.
pub const RESERVED_VOLUMES: [&str; 2] = [TMP_VOLUME, DB_CA_VOLUME];
pub const RESERVED_MOUNT_PATHS: [&str; 2] = ["/tmp", super::runner_db::CA_DIR];
/// /tmp's size when the profile sets no `ephemeral-storage` limit.
const DEFAULT_TMP_SIZE: &str = "1Gi";

/// The pod's volumes and the flow container's mounts: a writable /tmp, an emptyDir as large as
/// the profile's `ephemeral-storage` limit (else [`DEFAULT_TMP_SIZE`]), the database's CA
/// when the runner's URL names one, then the Flow's own.
fn volumes(spec: &FlowPod<'_>, profile: &ResourceProfileSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let tmp_size = profile
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref()?.get("ephemeral-storage").cloned())
        .unwrap_or_else(|| Quantity(DEFAULT_TMP_SIZE.into()));
    let mut volumes = vec![Volume {
        name: TMP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(tmp_size),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: TMP_VOLUME.into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if spec.db_ca {
        volumes.push(Volume {
            name: DB_CA_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(spec.db_secret.into()),
                items: Some(vec![KeyToPath {
                    key: super::runner_db::CA_KEY.into(),
                    path: super::runner_db::CA_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: DB_CA_VOLUME.into(),
            mount_path: super::runner_db::CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    volumes.extend(spec.settings.volumes.iter().cloned());
    mounts.extend(spec.settings.volume_mounts.iter().cloned());
    (volumes, mounts)
}

/// Credentials reach pods as Secret references, never as literals in the pod spec.
fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    secret_ref_env(name, secret, key, false)
}

fn secret_ref_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(optional),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The attempt a pod was launched for.
pub fn attempt_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_ATTEMPT)?
        .parse()
        .ok()
}

/// What the pods of a run say about the process of `attempt`. A pod being deleted counts
/// until its deletion time (its grace period): its process was sent SIGTERM and may finish the
/// step in flight and give the run back; past that time (a node gone silent) it is absent.
pub fn process_of(pods: &[Pod], attempt: i32, now: DateTime<Utc>) -> Process {
    let present = |p: &&Pod| {
        attempt_of(p) == Some(attempt)
            && p.metadata
                .deletion_timestamp
                .as_ref()
                .is_none_or(|t| to_utc(t) > now)
    };
    let Some(pod) = pods.iter().find(present) else {
        return Process::Absent;
    };
    match exit_of(pod, now) {
        Some(exit) => Process::Exited { attempt, exit },
        None => Process::Alive { attempt },
    }
}

/// How long a container may wait in CreateContainerConfigError or CreateContainerError before
/// its launch counts as failed. The kubelet retries both itself, and under load it reports
/// Secrets that exist as missing ("failed to sync secret cache"); a Secret that really is
/// missing still fails the attempt, this much later.
pub const START_GRACE_SECONDS: i64 = 60;

/// Until when a pod the kubelet is still trying to start keeps the benefit of the doubt
/// (see [`START_GRACE_SECONDS`]); `None` for any other pod.
pub fn start_retried_until(pod: &Pod) -> Option<DateTime<Utc>> {
    let waiting = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "flow")?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    let retried = matches!(
        waiting.reason.as_deref(),
        Some("CreateContainerConfigError" | "CreateContainerError")
    );
    let created = to_utc(pod.metadata.creation_timestamp.as_ref()?);
    retried.then(|| created + chrono::Duration::seconds(START_GRACE_SECONDS))
}

/// How a pod's process ended, or `None` while it may still run.
pub fn exit_of(pod: &Pod, now: DateTime<Utc>) -> Option<ProcessExit> {
    let status = pod.status.as_ref()?;
    if status.reason.as_deref() == Some("Evicted") {
        return Some(ProcessExit::Evicted(
            status.message.clone().unwrap_or_default(),
        ));
    }
    let container = status
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "flow")?;
    let state = container.state.as_ref()?;
    if let Some(terminated) = &state.terminated {
        if terminated.reason.as_deref() == Some("OOMKilled") {
            return Some(ProcessExit::OutOfMemory);
        }
        return Some(match terminated.signal {
            Some(signal) if signal != 0 => ProcessExit::Signal(signal),
            _ => ProcessExit::Code(terminated.exit_code),
        });
    }
    // A container that can never start is as good as a failed launch.
    let waiting = state.waiting.as_ref()?;
    let given_up = start_retried_until(pod).is_some_and(|until| until <= now);
    let why = waiting
        .message
        .as_deref()
        .unwrap_or("the container cannot start");
    match waiting.reason.as_deref() {
        Some(reason) if IMAGE_PULL_FAILURES.contains(&reason) => {
            Some(ProcessExit::LaunchFailed(format!("{reason}: {why}")))
        }
        Some(reason @ ("CreateContainerConfigError" | "CreateContainerError")) if given_up => Some(
            ProcessExit::LaunchFailed(format!("{reason} for {START_GRACE_SECONDS} s: {why}")),
        ),
        _ => None,
    }
}

/// Why the kubelet waits for an image it cannot pull: the container will never start.
const IMAGE_PULL_FAILURES: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// The flow container waits for an image the kubelet cannot pull: it will never start.
pub fn image_cannot_be_pulled(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "flow"))
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .is_some_and(|reason| IMAGE_PULL_FAILURES.contains(&reason))
}

/// The exact image the kubelet ran, as a reference later pods can use: the repo digest
/// (`repo@sha256:…`) when the image came from a registry, else the local image id
/// (`sha256:…`, what containerd reports for imported images), which it resolves by id.
pub fn pinned_image(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "flow")?;
    let image_id = status.image_id.trim_start_matches("docker-pullable://");
    (image_id.starts_with("sha256:") || image_id.contains("@sha256:")).then(|| image_id.to_owned())
}

#[cfg(test)]
mod tests;
