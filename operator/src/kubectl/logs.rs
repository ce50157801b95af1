//! `kubectl cairn logs`: every attempt's pod in order, a header each, the last one followed
//! with `-f`. Pods are the only place logs live: a deleted pod's are gone, and that is said.

use std::time::Duration;

use anyhow::bail;
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::LogParams;
use serde_json::json;

use super::client::Kube;
use super::{input, logic, program};

impl Kube {
    /// `logs`: every attempt's pod in order, a header each; `follow` streams the last one.
    pub async fn logs(&self, name: &str, attempt: Option<i32>, follow: bool) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        if run
            .status
            .as_ref()
            .and_then(|s| s.run_id.as_ref())
            .is_none()
        {
            bail!(
                "{name} has no pods yet: the operator has not registered it ({})",
                logic::describe(&run)
            );
        }
        let mut pods = self.pods_of(&run).await?;
        if let Some(wanted) = attempt {
            pods.retain(|(a, _)| *a == wanted);
            if pods.is_empty() {
                return Err(input(format!(
                    "{name} has no pod for attempt {wanted} (attempts with pods: see `{} inspect {name}`)",
                    program()
                )));
            }
        }
        if pods.is_empty() {
            bail!(
                "{name} has no pods (it is {}); pods are deleted with their FlowRun, and pods that never started are removed",
                logic::describe(&run)
            );
        }
        let last = pods.len() - 1;
        for (i, (attempt, pod)) in pods.iter().enumerate() {
            let pod_name = pod.name_any();
            self.say(self.ui.bold(&format!(
                "── attempt {attempt} · pod {pod_name} · {} ──",
                pod_state(pod)
            )));
            if follow && i == last {
                self.follow_pod(*attempt, &pod_name).await?;
                continue;
            }
            let params = LogParams {
                container: Some("flow".into()),
                ..Default::default()
            };
            match self.pods().logs(&pod_name, &params).await {
                Ok(text) => {
                    for line in text.lines() {
                        self.log_line(*attempt, &pod_name, line);
                    }
                }
                Err(e) => self.log_gap(*attempt, &pod_name, &e),
            }
        }
        Ok(())
    }

    fn log_line(&self, attempt: i32, pod: &str, line: &str) {
        if self.json {
            self.out(json!({ "attempt": attempt, "pod": pod, "line": line }).to_string());
        } else {
            self.out(line);
        }
    }

    fn log_gap(&self, attempt: i32, pod: &str, e: &kube::Error) {
        let why = match e {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        if self.json {
            self.out(json!({ "attempt": attempt, "pod": pod, "error": why }).to_string());
        } else {
            self.out(self.ui.dim(&format!("(no logs: {why})")));
        }
    }

    async fn follow_pod(&self, attempt: i32, pod: &str) -> anyhow::Result<()> {
        // Logs exist once the container started (or ended).
        self.watch_until(
            self.pods(),
            pod,
            Duration::from_secs(600),
            "start",
            pod_state,
            |p: Option<&Pod>| {
                let Some(p) = p else {
                    bail!("pod {pod} was deleted");
                };
                let started = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.state
                                .as_ref()
                                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                        })
                    });
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                Ok((started || matches!(phase, Some("Succeeded" | "Failed"))).then_some(()))
            },
        )
        .await?;
        let params = LogParams {
            container: Some("flow".into()),
            follow: true,
            ..Default::default()
        };
        let stream = match self.pods().log_stream(pod, &params).await {
            Ok(stream) => stream,
            Err(e) => {
                self.log_gap(attempt, pod, &e);
                return Ok(());
            }
        };
        let mut lines = stream.lines();
        while let Some(line) = lines.try_next().await? {
            self.log_line(attempt, pod, &line);
        }
        Ok(())
    }
}

/// "Succeeded (exit 0)", "Running", "Pending (ContainerCreating)".
fn pod_state(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into());
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref());
    if let Some(done) = container.and_then(|s| s.terminated.as_ref()) {
        let reason = done
            .reason
            .as_deref()
            .filter(|r| *r != "Completed" && *r != "Error")
            .map(|r| format!(", {r}"))
            .unwrap_or_default();
        return format!("{phase} (exit {}{reason})", done.exit_code);
    }
    if let Some(reason) = container
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
    {
        return format!("{phase} ({reason})");
    }
    phase
}
