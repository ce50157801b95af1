//! `kubectl cairn cancel`, `retry` and `wait`: steering a run through its FlowRun
//! (`spec.cancel`, the retry annotation), and waiting, like `kubectl wait`, for where it gets.

use std::time::Duration;

use anyhow::bail;
use cairn_crds::RETRY_ANNOTATION;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::client::{Kube, kube_error};
use super::logic::{self, Until};
use crate::lifecycle::Phase;

impl Kube {
    /// `cancel`: sets `spec.cancel`.
    pub async fn cancel(&self, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let phase = logic::phase(&run);
        if phase.is_some_and(Phase::is_terminal) && !logic::retry_pending(&run) {
            self.say(format!(
                "{name} already finished as {}; nothing to cancel",
                self.ui.phase(phase)
            ));
            if self.json {
                self.print_json(&json!({ "run": name, "phase": phase, "cancelled": false }))?;
            }
            return Ok(());
        }
        if !run.spec.cancel {
            self.runs()
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "cancel": true } })),
                )
                .await
                .map_err(|e| kube_error(e, "patch FlowRuns"))?;
        }
        self.say(format!(
            "{name}: cancellation requested (a parked run ends now, a running one at its next step boundary)"
        ));
        let mut phase = phase;
        if let Some(timeout) = wait {
            let done = self.wait_run(name, Until::Finished, None, timeout).await?;
            phase = logic::phase(&done);
            if phase != Some(Phase::Cancelled) {
                bail!(
                    "{name} finished as {} before the cancellation took effect",
                    logic::describe(&done)
                );
            }
            self.say(format!("{name} is {}", self.ui.phase(phase)));
        }
        if self.json {
            self.print_json(&json!({ "run": name, "phase": phase, "cancelled": true }))?;
        }
        Ok(())
    }

    /// `retry`: asks the operator to re-run a failed run from its last checkpoint.
    pub async fn retry(&self, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let phase = logic::phase(&run);
        if phase != Some(Phase::Failed) {
            bail!(
                "{name} is {}; only a failed run can be retried",
                logic::describe(&run)
            );
        }
        if run.spec.cancel {
            bail!(
                "{name} has spec.cancel=true: a retried run would be cancelled at once; create a new FlowRun instead"
            );
        }
        let attempt = run.status.as_ref().and_then(|s| s.attempt);
        let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.runs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "metadata": { "annotations": { RETRY_ANNOTATION: value } } }),
                ),
            )
            .await
            .map_err(|e| kube_error(e, "patch FlowRuns"))?;
        self.say(format!(
            "{name}: retry requested ({RETRY_ANNOTATION}={value}); the operator re-runs it from its last checkpoint"
        ));
        let mut phase = phase;
        if let Some(timeout) = wait {
            let retried = self
                .watch_until(
                    self.runs(),
                    name,
                    timeout,
                    "be retried",
                    logic::describe,
                    |run| {
                        let Some(run) = run else {
                            bail!("FlowRun {name} was deleted");
                        };
                        let status = run.status.as_ref();
                        let acted =
                            status.and_then(|s| s.retried.as_deref()) == Some(value.as_str());
                        // Running again, or already past a new attempt (that may have failed too).
                        let moved = logic::phase(run) != Some(Phase::Failed)
                            || status.and_then(|s| s.attempt) > attempt;
                        Ok((acted && moved).then(|| run.clone()))
                    },
                )
                .await?;
            phase = logic::phase(&retried);
            self.say(format!(
                "{name}: retried; now {}",
                logic::describe(&retried)
            ));
        }
        if self.json {
            self.print_json(&json!({ "run": name, "retry": value, "phase": phase }))?;
        }
        Ok(())
    }

    /// `wait`: like `kubectl wait`.
    pub async fn wait(
        &self,
        name: &str,
        until: Until,
        event: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        // Like kubectl wait: the run must exist.
        self.get_run(name).await?;
        let run = self.wait_run(name, until, event, timeout).await?;
        if self.json {
            return self.print_json(&json!({
                "run": name,
                "phase": logic::phase(&run),
                "status": run.status,
            }));
        }
        println!("{name} is {}", self.ui.phase(logic::phase(&run)));
        Ok(())
    }
}
