//! Stage "resolve" (pure): a FlowRun with the Flow and ResourceProfile it names, looked up by
//! the "dereference" stage, becomes what to run — image, flow, profile, environment, service
//! account, image pull secrets, retry policy and time to live, with defaults applied — or the
//! reason it cannot run as written. The FlowRun's own settings override its Flow's.

use std::time::Duration;

use cairn_crds::{Flow, FlowRunSpec, FlowSpec, ResourceProfile, ResourceProfileSpec};
use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference};

use super::pod_settings::{PodSettings, pod_settings};
use crate::expr::Expression;

/// A FlowRun with its Flow and profile looked up and defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub image: String,
    pub flow: String,
    /// The ResourceProfile's name, with its spec.
    pub profile_name: Option<String>,
    pub profile: Option<ResourceProfileSpec>,
    pub env: Vec<EnvVar>,
    /// `None`: the operator's default flow account.
    pub service_account: Option<String>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub max_attempts: i32,
    pub retry_backoff: Duration,
    /// How long the FlowRun stays after it finished, if the FlowRun or its Flow says
    /// (`Some(0)`: for ever); `None` leaves it to the operator's default.
    pub ttl_after_finished: Option<Duration>,
    /// Volumes, mounts, labels and annotations from the Flow and the profile.
    pub pod: PodSettings,
    /// The Flow `pod` took its volumes and labels from: the run's own, or its parent's choice.
    pub pod_settings_flow: Option<String>,
    /// What the run's tree may spend (US dollars): the FlowRun's budget, else its Flow's.
    pub budget_usd: Option<f64>,
    /// The run's place in its Flow's concurrency limits, if the Flow has some.
    pub concurrency: Option<RunConcurrency>,
}

/// A run's Flow (its concurrency group), the key its input gives, and the Flow's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConcurrency {
    pub group: String,
    pub key: Option<String>,
    /// Why the key cannot be computed: a new run does not start; one the engine has already
    /// keeps the key it was given (a Flow's key edited later must not stop runs under way).
    pub key_error: Option<Invalid>,
    pub max: Option<i32>,
    pub max_per_key: Option<i32>,
}

/// Why a FlowRun cannot run as written; the message says what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    /// ResourceProfile `name` is wrong: `what`.
    pub fn profile(name: &str, what: String) -> Invalid {
        Invalid {
            reason: "InvalidProfile",
            message: format!("ResourceProfile \"{name}\": {what}"),
        }
    }

    /// Flow `name` is wrong: `what`.
    pub fn flow(name: &str, what: String) -> Invalid {
        Invalid {
            reason: "InvalidFlow",
            message: format!("Flow \"{name}\": {what}"),
        }
    }
}

/// Resolves a FlowRun against its Flow and ResourceProfile (looked up by the caller).
/// `pod_settings_flow` names the Flow its pods take their settings from
/// (`FlowRun::pod_settings_flow`: its flowRef, or the Flow a child run was given), and `flow`
/// is that Flow where it exists.
pub fn resolve(
    spec: &FlowRunSpec,
    pod_settings_flow: Option<&str>,
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
        (Some(_), found) => found.map(|p| p.spec.clone()),
        // A profile looked up for another reason is not this run's.
        (None, _) => None,
    };
    if let (Some(name), Some(profile)) = (profile_name, &profile) {
        check_profile(name, profile)?;
        check_profile_allows(name, profile, namespace)?;
    }
    let settings_flow = match (pod_settings_flow, flow) {
        (Some(name), Some(flow)) => Some((name, &flow.spec)),
        // A child run whose chosen Flow is gone (a run with a flowRef is refused above).
        (Some(name), None) => {
            return Err(Invalid {
                reason: "FlowNotFound",
                message: format!(
                    "Flow \"{name}\" (whose volumes and pod settings this child run takes) not found in namespace \"{namespace}\"; create it again, or delete the run"
                ),
            });
        }
        (None, _) => None,
    };
    let pod = pod_settings(
        settings_flow,
        profile_name.map(String::as_str).zip(profile.as_ref()),
    )?;
    let retry = spec
        .retry
        .clone()
        .or_else(|| template.and_then(|t| t.retry.clone()))
        .unwrap_or_default();
    let image_pull_secrets = match spec.image_pull_secrets.is_empty() {
        true => template
            .map(|t| t.image_pull_secrets.clone())
            .unwrap_or_default(),
        false => spec.image_pull_secrets.clone(),
    };
    Ok(Resolved {
        image,
        flow: flow_name,
        profile_name: profile_name.cloned(),
        profile,
        env: template
            .map(|t| t.env.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.env.iter().cloned())
            .collect(),
        service_account: spec
            .service_account_name
            .clone()
            .or_else(|| template.and_then(|t| t.service_account_name.clone())),
        image_pull_secrets,
        max_attempts: retry.max_attempts.unwrap_or(3).max(1),
        retry_backoff: Duration::from_secs(retry.backoff_seconds.unwrap_or(10).max(0) as u64),
        ttl_after_finished: spec
            .ttl_seconds_after_finished
            .or(template.and_then(|t| t.ttl_seconds_after_finished))
            .map(|seconds| Duration::from_secs(seconds.max(0) as u64)),
        pod,
        pod_settings_flow: settings_flow.map(|(name, _)| name.to_owned()),
        budget_usd: spec
            .budget
            .as_ref()
            .or(template.and_then(|t| t.budget.as_ref()))
            .and_then(|b| b.usd()),
        concurrency: match (&spec.flow_ref, template) {
            (Some(name), Some(flow)) => run_concurrency(name, flow, spec),
            _ => None,
        },
    })
}

/// The limits of Flow `name` that the run is held to, with its key from its input.
fn run_concurrency(name: &str, flow: &FlowSpec, spec: &FlowRunSpec) -> Option<RunConcurrency> {
    let limits = flow.concurrency.as_ref()?;
    let key = limits.key.as_ref().map(|source| {
        let input = spec.input.clone().unwrap_or(serde_json::Value::Null);
        Expression::compile(source)
            .and_then(|expression| expression.eval_key(&[("input", &input)]))
            .map_err(|why| Invalid {
                reason: "InvalidConcurrencyKey",
                message: format!(
                    "Flow \"{name}\": the run's concurrency key (spec.concurrency.key) cannot be computed from its input: {why}; fix the input, or the Flow's key"
                ),
            })
    });
    Some(RunConcurrency {
        group: name.to_owned(),
        key: key.clone().and_then(Result::ok),
        key_error: key.and_then(Result::err),
        max: limits.max,
        max_per_key: limits.max_per_key,
    })
}

/// A profile restricted to some namespaces (`spec.namespaces`) serves only their runs.
fn check_profile_allows(
    name: &str,
    profile: &ResourceProfileSpec,
    namespace: &str,
) -> Result<(), Invalid> {
    match &profile.namespaces {
        Some(allowed) if !allowed.iter().any(|n| n == namespace) => Err(Invalid {
            reason: "ProfileNotAllowed",
            message: format!(
                "ResourceProfile \"{name}\" may not be used in namespace \"{namespace}\" (its \
                 spec.namespaces: [{}]); choose another profile, or ask a cluster admin to add \
                 \"{namespace}\" to it",
                allowed.join(", ")
            ),
        }),
        _ => Ok(()),
    }
}

/// What a pod would refuse in a ResourceProfile. The CRD's CEL rules refuse it at `kubectl
/// apply`, but only for profiles written since those rules exist: one stored before still
/// gives the run a condition naming the profile and the fix, instead of a crash at launch.
fn check_profile(name: &str, profile: &ResourceProfileSpec) -> Result<(), Invalid> {
    let invalid = |what: String| Invalid::profile(name, what);
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
    fn a_flow_reference_takes_image_flow_and_defaults_from_the_flow() {
        let resolved =
            resolve(&by_ref(None), Some("agent"), "ns", Some(&flow(None)), None).unwrap();
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
            resolve(spec, spec.flow_ref.as_deref(), "ns", Some(flow), None)
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
        let resolved =
            resolve(&spec, spec.flow_ref.as_deref(), "ns", Some(&template), None).unwrap();
        let names: Vec<&str> = resolved.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
    }

    #[test]
    fn the_runs_service_account_and_pull_secrets_override_the_flows() {
        let secret = |name: &str| LocalObjectReference { name: name.into() };
        let mut template = flow(Some("small"));
        template.spec.service_account_name = Some("flow-account".into());
        template.spec.image_pull_secrets = vec![secret("flow-registry")];
        let small = ResourceProfile::new("small", Default::default());
        let resolved = resolve(
            &by_ref(None),
            Some("agent"),
            "ns",
            Some(&template),
            Some(&small),
        )
        .unwrap();
        assert_eq!(resolved.profile_name.as_deref(), Some("small"));
        assert_eq!(resolved.service_account.as_deref(), Some("flow-account"));
        assert_eq!(resolved.image_pull_secrets, [secret("flow-registry")]);
        let mut own = by_ref(None);
        own.service_account_name = Some("run-account".into());
        own.image_pull_secrets = vec![secret("run-registry")];
        let resolved = resolve(
            &own,
            own.flow_ref.as_deref(),
            "ns",
            Some(&template),
            Some(&small),
        )
        .unwrap();
        assert_eq!(resolved.service_account.as_deref(), Some("run-account"));
        assert_eq!(resolved.image_pull_secrets, [secret("run-registry")]);
        // Neither sets one: the operator's default account applies.
        let resolved =
            resolve(&by_ref(None), Some("agent"), "ns", Some(&flow(None)), None).unwrap();
        assert_eq!(resolved.service_account, None);
    }

    #[test]
    fn an_inline_spec_needs_image_and_flow() {
        let inline = FlowRunSpec {
            image: Some("img:1".into()),
            flow: Some("f".into()),
            ..Default::default()
        };
        let resolved = resolve(&inline, inline.flow_ref.as_deref(), "ns", None, None).unwrap();
        assert_eq!(
            (resolved.max_attempts, resolved.retry_backoff),
            (3, Duration::from_secs(10))
        );
        let half = FlowRunSpec {
            image: Some("img:1".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&half, half.flow_ref.as_deref(), "ns", None, None)
                .unwrap_err()
                .reason,
            "InvalidSpec"
        );
    }

    #[test]
    fn a_child_run_takes_its_pod_settings_from_the_flow_it_was_given() {
        let child = FlowRunSpec {
            image: Some("localhost/agent@sha256:abc".into()),
            flow: Some("summarize".into()),
            ..Default::default()
        };
        let mut parents = flow(Some("small"));
        parents.spec.volumes = serde_json::from_value(serde_json::json!(
            [{ "name": "prompts", "configMap": { "name": "prompts" } }]
        ))
        .unwrap();
        let gpu = ResourceProfile::new(
            "small",
            serde_json::from_value(serde_json::json!({ "namespaces": [] })).unwrap(),
        );
        let resolved = resolve(&child, Some("agent"), "ns", Some(&parents), Some(&gpu)).unwrap();
        assert_eq!(resolved.pod.volumes, parents.spec.volumes);
        assert_eq!(resolved.pod_settings_flow.as_deref(), Some("agent"));
        // Only the pod settings: image, flow and profile stay the child's own (a profile that
        // would refuse this namespace is not taken up).
        assert_eq!(resolved.flow, "summarize");
        assert_eq!((resolved.profile_name, resolved.profile), (None, None));
        let gone = resolve(&child, Some("agent"), "ns", None, None).unwrap_err();
        assert_eq!(gone.reason, "FlowNotFound");
        assert!(
            gone.message.contains("\"agent\" (whose volumes"),
            "{}",
            gone.message
        );
    }

    #[test]
    fn missing_references_say_what_to_fix() {
        let missing_flow = resolve(&by_ref(None), Some("agent"), "team-a", None, None).unwrap_err();
        assert_eq!(missing_flow.reason, "FlowNotFound");
        assert!(
            missing_flow.message.contains("\"agent\"") && missing_flow.message.contains("team-a")
        );
        let missing_profile = resolve(
            &by_ref(Some("huge")),
            Some("agent"),
            "ns",
            Some(&flow(None)),
            None,
        )
        .unwrap_err();
        assert_eq!(missing_profile.reason, "ProfileNotFound");
        // The Flow's default profile is looked up too.
        let default_missing = resolve(
            &by_ref(None),
            Some("agent"),
            "ns",
            Some(&flow(Some("small"))),
            None,
        )
        .unwrap_err();
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
        assert!(
            resolve(
                &spec,
                spec.flow_ref.as_deref(),
                "ns",
                Some(&flow(None)),
                Some(&good)
            )
            .is_ok()
        );
        let lots = profile("lots", "NoSchedule");
        let bad = resolve(
            &spec,
            spec.flow_ref.as_deref(),
            "ns",
            Some(&flow(None)),
            Some(&lots),
        )
        .unwrap_err();
        assert_eq!(bad.reason, "InvalidProfile");
        assert!(
            bad.message.contains("resources.requests.cpu is \"lots\""),
            "{}",
            bad.message
        );
        let sometimes = profile("1", "Sometimes");
        let bad = resolve(
            &spec,
            spec.flow_ref.as_deref(),
            "ns",
            Some(&flow(None)),
            Some(&sometimes),
        )
        .unwrap_err();
        assert!(
            bad.message.contains("effect \"Sometimes\""),
            "{}",
            bad.message
        );
    }

    #[test]
    fn a_profile_restricted_to_namespaces_serves_only_theirs() {
        let restricted = |namespaces: Option<Vec<&str>>| {
            ResourceProfile::new(
                "gpu",
                ResourceProfileSpec {
                    namespaces: namespaces.map(|n| n.into_iter().map(str::to_owned).collect()),
                    ..Default::default()
                },
            )
        };
        let spec = by_ref(Some("gpu"));
        let run_in = |ns: &str, profile: &ResourceProfile| {
            resolve(
                &spec,
                spec.flow_ref.as_deref(),
                ns,
                Some(&flow(None)),
                Some(profile),
            )
        };
        assert!(
            run_in("team-a", &restricted(None)).is_ok(),
            "absent: every namespace"
        );
        let ml = restricted(Some(vec!["ml", "research"]));
        assert!(run_in("research", &ml).is_ok());
        let refused = run_in("team-a", &ml).unwrap_err();
        assert_eq!(refused.reason, "ProfileNotAllowed");
        assert!(
            refused.message.contains("\"gpu\"")
                && refused.message.contains("\"team-a\"")
                && refused.message.contains("[ml, research]"),
            "{}",
            refused.message
        );
        let none = restricted(Some(vec![]));
        assert_eq!(
            run_in("ml", &none).unwrap_err().reason,
            "ProfileNotAllowed",
            "empty: no namespace"
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
