//! Flow pods, built and read without I/O: the pod for one attempt of a run, and what a pod's
//! status says about that attempt's process.

use std::collections::BTreeMap;

use cairn_crds::{
    FlowRun, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_RUN, MANAGED_BY_OPERATOR, ResourceProfileSpec,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, KeyToPath, LocalObjectReference, Pod,
    PodSecurityContext, PodSpec, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use crate::lifecycle::{Process, ProcessExit};
use cairn_engine::names;

/// The key, in the per-namespace runner Secret, holding the database URL flow pods use.
pub const DB_SECRET_KEY: &str = "database-url";
/// Key of the attempt's token in the run's token Secret.
pub const TOKEN_SECRET_KEY: &str = "token";

/// The Secret holding the token of one attempt of a run.
pub fn token_secret_name(run_id: &str, attempt: i32) -> String {
    format!("cairn-token-{run_id}-a{attempt}")
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
}

pub fn build_pod(spec: &FlowPod<'_>) -> Pod {
    let run_name = spec.run.meta().name.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        (LABEL_RUN.to_owned(), names::label_value(spec.run_id)),
        (LABEL_ATTEMPT.to_owned(), spec.attempt.to_string()),
        (LABEL_MANAGED.to_owned(), MANAGED_BY_OPERATOR.to_owned()),
    ]);
    let mut env = vec![
        secret_env(cairn::env::DATABASE_URL, spec.db_secret, DB_SECRET_KEY),
        secret_env(
            cairn::env::TOKEN,
            &token_secret_name(spec.run_id, spec.attempt),
            TOKEN_SECRET_KEY,
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
    let profile = spec.profile.cloned().unwrap_or_default();

    Pod {
        metadata: ObjectMeta {
            // `<run>-a<attempt>`, within the 63 characters of a hostname for any run name.
            name: Some(names::pod_name(&run_name, spec.attempt)),
            namespace: spec.run.meta().namespace.clone(),
            labels: Some(labels),
            owner_references: spec.run.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
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
                volume_mounts: spec.db_ca.then(|| {
                    vec![VolumeMount {
                        name: DB_CA_VOLUME.into(),
                        mount_path: super::runner_db::CA_DIR.into(),
                        read_only: Some(true),
                        ..Default::default()
                    }]
                }),
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
            volumes: spec.db_ca.then(|| {
                vec![Volume {
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
                }]
            }),
            runtime_class_name: profile.runtime_class_name,
            priority_class_name: profile.priority_class_name,
            ..Default::default()
        }),
        status: None,
    }
}

/// The volume of the database's CA certificate (from the runner's Secret).
const DB_CA_VOLUME: &str = "db-ca";

/// Credentials reach pods as Secret references, never as literals in the pod spec.
fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
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

/// What the pods of a run say about the process of `attempt`.
pub fn process_of(pods: &[Pod], attempt: i32, now: DateTime<Utc>) -> Process {
    let Some(pod) = pods
        .iter()
        .find(|p| attempt_of(p) == Some(attempt) && p.metadata.deletion_timestamp.is_none())
    else {
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
    let created = pod.metadata.creation_timestamp.as_ref()?;
    let created = DateTime::from_timestamp(created.0.as_second(), 0)?;
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
mod tests {
    use super::*;
    use cairn_crds::FlowRunSpec;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodStatus, ResourceRequirements, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn flowrun() -> FlowRun {
        let mut run = FlowRun::new("research-1", FlowRunSpec::default());
        run.metadata.namespace = Some("team-a".into());
        run.metadata.uid = Some("0f3c".into());
        run
    }

    fn pod_spec_for(profile: Option<&ResourceProfileSpec>) -> Pod {
        pod_with_pooler(profile, cairn::Pooler::None)
    }

    fn pod_with_pooler(profile: Option<&ResourceProfileSpec>, pooler: cairn::Pooler) -> Pod {
        flow_pod(profile, pooler, false)
    }

    fn flow_pod(profile: Option<&ResourceProfileSpec>, pooler: cairn::Pooler, db_ca: bool) -> Pod {
        let run = flowrun();
        build_pod(&FlowPod {
            run: &run,
            run_id: "6b1e5a2c-0000-4000-8000-000000000001",
            attempt: 3,
            image: "localhost/agent@sha256:abc",
            flow: "research",
            profile,
            extra_env: &[],
            service_account: Some("cairn-flow"),
            image_pull_secrets: &[],
            db_secret: "cairn-runner-db",
            db_ca,
            deadline_in: None,
            pooler,
        })
    }

    fn env_value(pod: &Pod, name: &str) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn the_databases_ca_is_mounted_read_only_from_the_runner_secret_only_when_there_is_one() {
        let pod = flow_pod(None, cairn::Pooler::None, true);
        let spec = pod.spec.as_ref().unwrap();
        let volume = &spec.volumes.as_ref().unwrap()[0];
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("cairn-runner-db"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "ca.crt");
        let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only, &mount.name),
            ("/etc/cairn/db", Some(true), &volume.name)
        );
        let plain = pod_spec_for(None);
        assert!(plain.spec.as_ref().unwrap().volumes.is_none());
        assert!(
            plain.spec.as_ref().unwrap().containers[0]
                .volume_mounts
                .is_none()
        );
    }

    #[test]
    fn behind_a_transaction_pooler_the_pod_says_so_and_otherwise_says_nothing() {
        let pooled = pod_with_pooler(None, cairn::Pooler::Transaction);
        assert_eq!(
            env_value(&pooled, cairn::env::POOLER).as_deref(),
            Some("transaction")
        );
        assert_eq!(env_value(&pod_spec_for(None), cairn::env::POOLER), None);
    }

    #[test]
    fn the_pod_carries_the_runner_contract_and_no_api_rights() {
        let pod = pod_spec_for(None);
        assert_eq!(pod.metadata.name.as_deref(), Some("research-1-a3"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("team-a"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("FlowRun", Some(true))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name.as_deref(), Some("cairn-flow"));
        let container = &spec.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("localhost/agent@sha256:abc")
        );
        let env: BTreeMap<_, _> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(env["CAIRN_ATTEMPT"].value.as_deref(), Some("3"));
        assert_eq!(env["CAIRN_FLOW"].value.as_deref(), Some("research"));
        assert_eq!(
            env["CAIRN_RUN_ID"].value.as_deref(),
            Some("6b1e5a2c-0000-4000-8000-000000000001")
        );
        // Credentials are Secret references, never literals in the pod spec.
        let from_secret = |name: &str| {
            let var = env[name];
            assert_eq!(var.value, None, "{name} is a literal");
            let secret = var.value_from.as_ref().unwrap().secret_key_ref.clone();
            secret.map(|s| (s.name, s.key)).unwrap()
        };
        assert_eq!(
            from_secret("CAIRN_DATABASE_URL"),
            ("cairn-runner-db".into(), DB_SECRET_KEY.into())
        );
        assert_eq!(
            from_secret("CAIRN_TOKEN"),
            (
                "cairn-token-6b1e5a2c-0000-4000-8000-000000000001-a3".into(),
                TOKEN_SECRET_KEY.into()
            )
        );
    }

    #[test]
    fn the_pod_meets_the_restricted_pod_security_standard() {
        let spec = pod_spec_for(None).spec.unwrap();
        let pod_security = spec.security_context.unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(
            pod_security.seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        let container = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(container.allow_privilege_escalation, Some(false));
        assert_eq!(
            container.capabilities.unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
    }

    #[test]
    fn the_profile_sets_resources_and_placement() {
        let profile = ResourceProfileSpec {
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "memory".to_owned(),
                    Quantity("256Mi".into()),
                )])),
                ..Default::default()
            }),
            node_selector: BTreeMap::from([("pool".to_owned(), "agents".to_owned())]),
            tolerations: vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }],
            runtime_class_name: Some("gvisor".into()),
            priority_class_name: Some("batch".into()),
            namespaces: None,
        };
        let spec = pod_spec_for(Some(&profile)).spec.unwrap();
        assert_eq!(spec.containers[0].resources, profile.resources);
        assert_eq!(spec.node_selector, Some(profile.node_selector.clone()));
        assert_eq!(spec.tolerations, Some(profile.tolerations.clone()));
        assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
        assert_eq!(spec.priority_class_name.as_deref(), Some("batch"));
    }

    #[test]
    fn pod_names_fit_a_hostname_and_labels_a_label() {
        let mut run = flowrun();
        run.metadata.name = Some("x".repeat(253));
        let pod = build_pod(&FlowPod {
            run: &run,
            run_id: &"r".repeat(80),
            attempt: 12,
            image: "localhost/agent@sha256:abc",
            flow: "research",
            profile: None,
            extra_env: &[],
            service_account: None,
            image_pull_secrets: &[LocalObjectReference {
                name: "registry".into(),
            }],
            db_secret: "cairn-runner-db",
            db_ca: false,
            deadline_in: None,
            pooler: cairn::Pooler::None,
        });
        let name = pod.metadata.name.clone().unwrap();
        assert!(name.len() == 63 && name.ends_with("-a12"), "{name}");
        let labels = pod.metadata.labels.unwrap();
        assert!(labels.values().all(|v| v.len() <= 63), "{labels:?}");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "registry");
        assert_eq!(spec.service_account_name, None);
    }

    fn pod_with(attempt: i32, state: ContainerState, reason: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    LABEL_ATTEMPT.to_owned(),
                    attempt.to_string(),
                )])),
                ..Default::default()
            },
            status: Some(PodStatus {
                reason: reason.map(str::to_owned),
                container_statuses: Some(vec![ContainerStatus {
                    name: "flow".into(),
                    state: Some(state),
                    image_id: "localhost/agent@sha256:d1".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated(exit_code: i32, reason: Option<&str>) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: reason.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_status_becomes_a_process_state() {
        let running = ContainerState::default();
        assert_eq!(
            process_of(&[pod_with(2, running, None)], 2, Utc::now()),
            Process::Alive { attempt: 2 }
        );
        assert_eq!(process_of(&[], 2, Utc::now()), Process::Absent);
        // Only the current attempt's pod counts.
        assert_eq!(
            process_of(&[pod_with(1, terminated(75, None), None)], 2, Utc::now()),
            Process::Absent
        );
        assert_eq!(
            process_of(&[pod_with(2, terminated(75, None), None)], 2, Utc::now()),
            Process::Exited {
                attempt: 2,
                exit: ProcessExit::Code(75)
            }
        );
        assert_eq!(
            exit_of(
                &pod_with(2, terminated(137, Some("OOMKilled")), None),
                Utc::now()
            ),
            Some(ProcessExit::OutOfMemory)
        );
        assert!(matches!(
            exit_of(
                &pod_with(2, ContainerState::default(), Some("Evicted")),
                Utc::now()
            ),
            Some(ProcessExit::Evicted(_))
        ));
        let pull_failed = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ErrImagePull".into()),
                message: Some("not found".into()),
            }),
            ..Default::default()
        };
        let pull_failed = pod_with(2, pull_failed, None);
        assert_eq!(
            exit_of(&pull_failed, Utc::now()),
            Some(ProcessExit::LaunchFailed("ErrImagePull: not found".into()))
        );
        // Such a pod is removed once its crash is recorded; nothing else is.
        assert!(image_cannot_be_pulled(&pull_failed));
        assert!(!image_cannot_be_pulled(&pod_with(
            2,
            ContainerState::default(),
            None
        )));
    }

    #[test]
    fn a_container_config_error_fails_the_launch_only_after_the_kubelet_had_its_grace() {
        let config_error = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CreateContainerConfigError".into()),
                message: Some(
                    "failed to sync secret cache: timed out waiting for the condition".into(),
                ),
            }),
            ..Default::default()
        };
        let mut pod = pod_with(2, config_error, None);
        let created = Utc::now();
        pod.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                created.to_rfc3339().parse().unwrap(),
            ));
        let grace = chrono::Duration::seconds(START_GRACE_SECONDS);
        assert_eq!(exit_of(&pod, created + grace / 2), None);
        assert_eq!(
            process_of(std::slice::from_ref(&pod), 2, created + grace / 2),
            Process::Alive { attempt: 2 }
        );
        let until = start_retried_until(&pod).unwrap();
        assert!((until - created - grace).num_seconds().abs() <= 1);
        assert!(matches!(
            exit_of(&pod, created + grace + chrono::Duration::seconds(1)),
            Some(ProcessExit::LaunchFailed(why)) if why.contains("secret cache")
        ));
        // A failed launch, but the kubelet may yet start it: the pod is kept.
        assert!(!image_cannot_be_pulled(&pod));
    }

    #[test]
    fn the_digest_that_ran_pins_later_pods() {
        let pod = pod_with(1, ContainerState::default(), None);
        assert_eq!(
            pinned_image(&pod).as_deref(),
            Some("localhost/agent@sha256:d1")
        );
        let with_image_id = |id: &str| {
            let mut pod = pod.clone();
            pod.status
                .as_mut()
                .unwrap()
                .container_statuses
                .as_mut()
                .unwrap()[0]
                .image_id = id.into();
            pod
        };
        // An imported image without a repo digest: the local image id.
        assert_eq!(
            pinned_image(&with_image_id("sha256:c0ffee")).as_deref(),
            Some("sha256:c0ffee")
        );
        // Not yet known (container still being created).
        let imported = with_image_id("");
        assert_eq!(pinned_image(&imported), None);
    }
}
