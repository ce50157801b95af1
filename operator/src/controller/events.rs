//! Kubernetes Events about the objects the operator watches. kube-runtime's `Recorder` names an
//! Event `<object name>.<nanoseconds in hex>`, which is no valid object name for objects named
//! with more than about 236 characters (a FlowRun's name may have 253): the API server refuses
//! those Events. They are created here under a shortened name instead (as client-go does since
//! Kubernetes 1.33); all others go through the Recorder, which also folds repeats into a series.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The longest object name (Kubernetes' limit for most kinds).
const MAX_NAME: usize = 253;

pub struct Events {
    client: Client,
    reporter: Reporter,
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Events {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Events {
            client,
            reporter,
            recorder,
        }
    }

    /// Publishes `event` about the object `regarding` refers to.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let name = regarding.name.as_deref().unwrap_or_default();
        let suffix = suffix(now);
        if name.len() + suffix.len() <= MAX_NAME {
            return self.recorder.publish(event, regarding).await;
        }
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let instance = self.reporter.instance.as_ref();
        let created = K8sEvent {
            metadata: ObjectMeta {
                name: Some(event_name(name, &suffix)),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(instance.unwrap_or(&self.reporter.controller).clone()),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &created)
            .await
            .map(drop)
    }
}

/// What follows the object's name in its Event's name: the moment in nanoseconds, in hex.
fn suffix(now: Timestamp) -> String {
    format!(".{:x}", now.as_nanosecond())
}

/// The name of an Event about object `name`: its name, shortened with a hash of the whole
/// where needed so that `suffix` fits (the Event's `regarding` keeps the whole name).
fn event_name(name: &str, suffix: &str) -> String {
    let fitted = cairn_engine::names::fit(name, MAX_NAME - suffix.len());
    format!("{fitted}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_about_an_object_named_with_253_characters_has_a_valid_name() {
        let suffix = suffix(Timestamp::now());
        let long = format!("{}-{}", "a".repeat(200), "b".repeat(52));
        let name = event_name(&long, &suffix);
        assert!(name.len() <= MAX_NAME, "{} characters", name.len());
        assert!(name.starts_with(&"a".repeat(200)), "{name}");
        assert!(name.ends_with(&suffix));
        // Names differing only at their end get distinct Events.
        let other = event_name(&format!("{}-{}", "a".repeat(200), "c".repeat(52)), &suffix);
        assert_ne!(name, other);
        // A name that fits is kept whole, as the Recorder would name it.
        assert_eq!(event_name("run-1", &suffix), format!("run-1{suffix}"));
    }
}
