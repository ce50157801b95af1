//! `kubectl cairn schedule trigger`: a FlowSchedule's run now, whatever its schedule and its
//! concurrency policy (as `kubectl create job --from=cronjob/...`), through the trigger
//! annotation, which the operator acts on once per value. Needs `patch` on flowschedules only.

use cairn_crds::{FlowSchedule, TRIGGER_ANNOTATION};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::client::{Kube, kube_error};
use super::input;

impl Kube {
    pub async fn trigger_schedule(&self, name: &str) -> anyhow::Result<()> {
        let schedules: Api<FlowSchedule> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = schedules
            .get_opt(name)
            .await
            .map_err(|e| kube_error(e, "get FlowSchedules"))?;
        if found.is_none() {
            return Err(input(format!(
                "FlowSchedule \"{name}\" not found in namespace \"{}\" (kubectl get fs lists them)",
                self.namespace
            )));
        }
        let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let patch = json!({ "metadata": { "annotations": { TRIGGER_ANNOTATION: value } } });
        schedules
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| kube_error(e, "patch FlowSchedules"))?;
        let run = crate::schedule::run_name(name, None, &value);
        self.say(format!(
            "{name}: triggered; the operator starts FlowRun {run}"
        ));
        if self.json {
            self.print_json(&json!({ "schedule": name, "run": run }))?;
        }
        Ok(())
    }
}
