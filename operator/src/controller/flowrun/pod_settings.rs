//! Part of stage "resolve" (pure): the pod settings a run's Flow and ResourceProfile give its
//! pods (volumes, mounts, labels, annotations), merged and checked against what Cairn keeps for
//! itself. The CRD already refuses volume kinds the restricted Pod Security Standard forbids;
//! what needs the two objects together, or Cairn's own names, is checked here.

use std::collections::BTreeMap;

use cairn_crds::{FlowSpec, ResourceProfileSpec};
use k8s_openapi::api::core::v1::{Volume, VolumeMount};

use super::resolve::Invalid;
use crate::controller::pod::{RESERVED_MOUNT_PATHS, RESERVED_VOLUMES};

/// Label and annotation keys under this prefix are Cairn's (`cairn.dev/run`, ...).
const RESERVED_KEY_PREFIX: &str = "cairn.dev/";

/// What a Flow and its profile add to the flow's pods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSettings {
    pub volumes: Vec<Volume>,
    pub volume_mounts: Vec<VolumeMount>,
    /// The profile's, then the Flow's over them.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The settings of a run's pods: `flow` is its Flow (`None` for an inline FlowRun), `profile`
/// its ResourceProfile, each with its name for messages.
pub fn pod_settings(
    flow: Option<(&str, &FlowSpec)>,
    profile: Option<(&str, &ResourceProfileSpec)>,
) -> Result<PodSettings, Invalid> {
    let mut settings = PodSettings::default();
    if let Some((name, profile)) = profile {
        settings
            .lay_over(&profile.pod_labels, &profile.pod_annotations)
            .map_err(|what| Invalid::profile(name, what))?;
    }
    if let Some((name, flow)) = flow {
        let invalid = |what| Invalid::flow(name, what);
        check_volumes(&flow.volumes, &flow.volume_mounts).map_err(invalid)?;
        settings
            .lay_over(&flow.pod_labels, &flow.pod_annotations)
            .map_err(invalid)?;
        settings.volumes = flow.volumes.clone();
        settings.volume_mounts = flow.volume_mounts.clone();
    }
    Ok(settings)
}

impl PodSettings {
    /// Lays labels and annotations over those already there, unless one takes a key of Cairn's.
    fn lay_over(
        &mut self,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        check_keys("podLabels", labels)?;
        check_keys("podAnnotations", annotations)?;
        self.labels.extend(labels.clone());
        self.annotations.extend(annotations.clone());
        Ok(())
    }
}

fn check_keys(field: &str, map: &BTreeMap<String, String>) -> Result<(), String> {
    match map.keys().find(|k| k.starts_with(RESERVED_KEY_PREFIX)) {
        Some(key) => Err(format!(
            "{field} key \"{key}\" is under {RESERVED_KEY_PREFIX}, which Cairn keeps for its own; use another prefix"
        )),
        None => Ok(()),
    }
}

fn check_volumes(volumes: &[Volume], mounts: &[VolumeMount]) -> Result<(), String> {
    for (i, volume) in volumes.iter().enumerate() {
        if RESERVED_VOLUMES.contains(&volume.name.as_str()) {
            return Err(format!(
                "volumes[{i}] is named \"{}\", a name Cairn keeps for its own volumes ({}); rename it",
                volume.name,
                RESERVED_VOLUMES.join(", ")
            ));
        }
        if volumes[..i].iter().any(|v| v.name == volume.name) {
            return Err(format!(
                "volumes[{i}]: the name \"{}\" is used twice",
                volume.name
            ));
        }
    }
    for (i, mount) in mounts.iter().enumerate() {
        if !volumes.iter().any(|v| v.name == mount.name) {
            return Err(format!(
                "volumeMounts[{i}] names volume \"{}\", which spec.volumes does not declare",
                mount.name
            ));
        }
        let path = mount.mount_path.trim_end_matches('/');
        if let Some(reserved) = RESERVED_MOUNT_PATHS.iter().find(|p| **p == path) {
            return Err(format!(
                "volumeMounts[{i}] mounts at {reserved}, where Cairn mounts its own; pick another path"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMapVolumeSource;

    fn config_map(name: &str) -> Volume {
        Volume {
            name: name.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "settings".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_flows_labels_and_annotations_go_over_the_profiles() {
        let profile = ResourceProfileSpec {
            pod_labels: map(&[("team", "infra"), ("tier", "batch")]),
            pod_annotations: map(&[("cost-center", "42")]),
            ..Default::default()
        };
        let flow = FlowSpec {
            pod_labels: map(&[("tier", "agents")]),
            pod_annotations: map(&[("owner", "research")]),
            volumes: vec![config_map("cfg")],
            volume_mounts: vec![mount("cfg", "/etc/agent")],
            ..Default::default()
        };
        let settings = pod_settings(Some(("f", &flow)), Some(("p", &profile))).unwrap();
        assert_eq!(
            settings.labels,
            map(&[("team", "infra"), ("tier", "agents")])
        );
        assert_eq!(
            settings.annotations,
            map(&[("cost-center", "42"), ("owner", "research")])
        );
        assert_eq!(settings.volumes, flow.volumes);
        assert_eq!(settings.volume_mounts, flow.volume_mounts);
        // An inline FlowRun: the profile's only.
        let inline = pod_settings(None, Some(("p", &profile))).unwrap();
        assert_eq!(inline.labels, profile.pod_labels);
        assert!(inline.volumes.is_empty());
    }

    #[test]
    fn what_cairn_keeps_for_itself_is_refused_saying_what_to_change() {
        let refused = |flow: FlowSpec| pod_settings(Some(("f", &flow)), None).unwrap_err();
        let error = refused(FlowSpec {
            volumes: vec![config_map("tmp")],
            ..Default::default()
        });
        assert_eq!(error.reason, "InvalidFlow");
        assert!(
            error
                .message
                .starts_with("Flow \"f\": volumes[0] is named \"tmp\""),
            "{}",
            error.message
        );
        let error = refused(FlowSpec {
            volumes: vec![config_map("cfg")],
            volume_mounts: vec![mount("cfg", "/tmp/")],
            ..Default::default()
        });
        assert!(
            error.message.contains("mounts at /tmp"),
            "{}",
            error.message
        );
        let error = refused(FlowSpec {
            volume_mounts: vec![mount("nowhere", "/data")],
            ..Default::default()
        });
        assert!(
            error
                .message
                .contains("volumeMounts[0] names volume \"nowhere\""),
            "{}",
            error.message
        );
        let error = refused(FlowSpec {
            volumes: vec![config_map("cfg"), config_map("cfg")],
            ..Default::default()
        });
        assert!(error.message.contains("used twice"), "{}", error.message);
        let error = refused(FlowSpec {
            pod_labels: map(&[("cairn.dev/run", "x")]),
            ..Default::default()
        });
        assert!(
            error.message.contains("podLabels key \"cairn.dev/run\""),
            "{}",
            error.message
        );
        let profile = ResourceProfileSpec {
            pod_annotations: map(&[("cairn.dev/parent", "x")]),
            ..Default::default()
        };
        let error = pod_settings(None, Some(("p", &profile))).unwrap_err();
        assert_eq!(error.reason, "InvalidProfile");
        assert!(
            error
                .message
                .starts_with("ResourceProfile \"p\": podAnnotations"),
            "{}",
            error.message
        );
    }
}
