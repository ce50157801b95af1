use super::*;
use cairn_crds::FlowRunSpec;
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, ContainerState, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PodStatus, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

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
        settings: &PodSettings::default(),
    })
}

/// Attempt 1 of `run`, without a profile, service account or pull secrets.
fn attempt_one<'a>(
    run: &'a FlowRun,
    env: &'a [EnvVar],
    settings: &'a PodSettings,
    db_ca: bool,
) -> FlowPod<'a> {
    FlowPod {
        run,
        run_id: "6b1e5a2c-0000-4000-8000-000000000001",
        attempt: 1,
        image: "localhost/agent@sha256:abc",
        flow: "research",
        profile: None,
        extra_env: env,
        service_account: None,
        image_pull_secrets: &[],
        db_secret: "cairn-runner-db",
        db_ca,
        deadline_in: None,
        pooler: cairn::Pooler::None,
        settings,
    }
}

fn env_value(pod: &Pod, name: &str) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// A volume of the pod by name, and the flow container's mount of it.
fn volume_of<'a>(pod: &'a Pod, name: &str) -> Option<(&'a Volume, &'a VolumeMount)> {
    let spec = pod.spec.as_ref()?;
    let volume = spec.volumes.as_ref()?.iter().find(|v| v.name == name)?;
    let mount = spec.containers[0]
        .volume_mounts
        .as_ref()?
        .iter()
        .find(|m| m.name == name)?;
    Some((volume, mount))
}

#[test]
fn the_databases_ca_is_mounted_read_only_from_the_runner_secret_only_when_there_is_one() {
    let pod = flow_pod(None, cairn::Pooler::None, true);
    let (volume, mount) = volume_of(&pod, "db-ca").expect("the CA's volume and mount");
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("cairn-runner-db"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "ca.crt");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/cairn/db", Some(true))
    );
    assert!(volume_of(&pod_spec_for(None), "db-ca").is_none());
}

#[test]
fn tmp_is_writable_scratch_as_large_as_the_profiles_ephemeral_storage_limit() {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let size = |pod: &Pod| {
        let (volume, mount) = volume_of(pod, "tmp").expect("a /tmp volume and mount");
        assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/tmp", None));
        volume.empty_dir.as_ref().unwrap().size_limit.clone()
    };
    assert_eq!(size(&pod_spec_for(None)), Some(Quantity("1Gi".into())));
    let profile = ResourceProfileSpec {
        resources: Some(ResourceRequirements {
            limits: Some([("ephemeral-storage".to_owned(), Quantity("5Gi".into()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        size(&pod_spec_for(Some(&profile))),
        Some(Quantity("5Gi".into()))
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
    // The artifact store's settings hold its credentials: a Secret reference too, optional
    // (a cluster without a store has no such key).
    assert_eq!(
        from_secret("CAIRN_ARTIFACTS"),
        ("cairn-runner-db".into(), ARTIFACTS_SECRET_KEY.into())
    );
    let optional = |name: &str| {
        env[name]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .optional
    };
    assert_eq!(optional("CAIRN_ARTIFACTS"), Some(true));
    assert_eq!(optional("CAIRN_DATABASE_URL"), Some(false));
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
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "zone".into(),
                            operator: "In".into(),
                            values: Some(vec!["a".into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = pod_spec_for(Some(&profile)).spec.unwrap();
    assert_eq!(spec.containers[0].resources, profile.resources);
    assert_eq!(spec.node_selector, Some(profile.node_selector.clone()));
    assert_eq!(spec.tolerations, Some(profile.tolerations.clone()));
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    assert_eq!(spec.priority_class_name.as_deref(), Some("batch"));
    assert_eq!(spec.affinity, profile.affinity);
}

#[test]
fn the_flows_volumes_labels_and_annotations_join_cairns_own() {
    let run = flowrun();
    let settings = PodSettings {
        volumes: vec![Volume {
            name: "prompts".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "agent-prompts".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        volume_mounts: vec![VolumeMount {
            name: "prompts".into(),
            mount_path: "/etc/agent".into(),
            read_only: Some(true),
            ..Default::default()
        }],
        labels: BTreeMap::from([("team".to_owned(), "research".to_owned())]),
        annotations: BTreeMap::from([("cost-center".to_owned(), "42".to_owned())]),
    };
    let pod = build_pod(&attempt_one(&run, &[], &settings, true));
    let (volume, mount) = volume_of(&pod, "prompts").expect("the Flow's volume, mounted");
    assert_eq!(volume, &settings.volumes[0]);
    assert_eq!(mount, &settings.volume_mounts[0]);
    assert!(volume_of(&pod, "tmp").is_some() && volume_of(&pod, "db-ca").is_some());
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["team"], "research");
    assert_eq!(labels[LABEL_ATTEMPT], "1", "Cairn's labels stay");
    assert_eq!(pod.metadata.annotations, Some(settings.annotations.clone()));
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
        settings: &PodSettings::default(),
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
    pod.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
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

#[test]
fn a_pod_being_deleted_counts_until_its_grace_period_ends() {
    let now = Utc::now();
    let deleting = |in_seconds: i64| {
        let mut pod = pod_with(2, ContainerState::default(), None);
        let at = k8s_openapi::jiff::Timestamp::from_second(now.timestamp() + in_seconds).unwrap();
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
        pod
    };
    // Sent SIGTERM: its process may finish its step and give the run back meanwhile.
    assert_eq!(
        process_of(&[deleting(20)], 2, now),
        Process::Alive { attempt: 2 }
    );
    // Past its deletion time (a node gone silent): as good as gone.
    assert_eq!(process_of(&[deleting(-1)], 2, now), Process::Absent);
}

#[test]
fn the_grace_period_fits_the_flows_stop_grace() {
    let grace = |pod: Pod| pod.spec.unwrap().termination_grace_period_seconds;
    assert_eq!(
        grace(pod_spec_for(None)),
        Some(30),
        "20 s by default, and 10 s to exit"
    );
    let run = flowrun();
    let env = [EnvVar {
        name: cairn::env::STOP_GRACE_MS.into(),
        value: Some("90500".into()),
        ..Default::default()
    }];
    let pod = build_pod(&attempt_one(&run, &env, &PodSettings::default(), false));
    assert_eq!(
        grace(pod),
        Some(101),
        "a Flow's own stop grace, rounded up, and 10 s"
    );
}

#[test]
fn a_traced_attempt_gets_its_span_and_where_spans_go_but_never_the_exporters_headers() {
    let run = cairn_engine::traces::TraceParent::random();
    let operator_env = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".to_owned()),
        "OTEL_EXPORTER_OTLP_HEADERS" => Some("authorization=Bearer secret".to_owned()),
        "OTEL_SERVICE_NAME" => Some("cairn-operator".to_owned()),
        _ => None,
    };
    let env = trace_env(&run.attempt(2), operator_env);
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("TRACEPARENT"),
        Some(run.attempt(2).encode()),
        "the attempt's span, derived as the exporter derives it"
    );
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://collector:4318")
    );
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_HEADERS"),
        None,
        "credentials stay out of pod specs"
    );
    assert_eq!(
        value("OTEL_SERVICE_NAME"),
        None,
        "each flow names its own service"
    );
    assert_eq!(env.len(), 2, "{env:?}");
}
