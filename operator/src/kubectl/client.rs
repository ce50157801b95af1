//! The connection `kubectl cairn` commands share: the cluster client in one namespace, the
//! read API's client, the watch that waits for an object to get somewhere, output for people
//! or for programs (`-o json`), and Kubernetes errors said plainly.

use std::fmt::Debug;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use cairn_crds::{FlowEvent, FlowRun};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use kube::{Api, Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::logic::{self, Until, Verdict};
use super::read_api::ReadApi;
use super::render::Ui;
use super::{Target, input, program};

/// A connection to the cluster, in one namespace.
pub struct Kube {
    pub(super) client: Client,
    pub namespace: String,
    pub(super) ui: Ui,
    /// `-o json`: output for programs, nothing else on stdout.
    pub(super) json: bool,
    /// Where output goes instead of stdout, for a caller that returns it (`cairn mcp`).
    captured: Option<std::sync::Mutex<Vec<String>>>,
}

impl Kube {
    pub async fn connect(target: Target, json: bool) -> anyhow::Result<Kube> {
        let mut config = match &target.context {
            Some(context) => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                Config::from_kubeconfig(&options).await.map_err(|e| {
                    let known = Kubeconfig::read()
                        .ok()
                        .map(|k| {
                            k.contexts
                                .iter()
                                .map(|c| c.name.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .filter(|known| !known.is_empty())
                        .map(|known| format!(" (contexts: {known})"))
                        .unwrap_or_default();
                    input(format!("cannot use kube context \"{context}\": {e}{known}"))
                })?
            }
            None => Config::infer().await.map_err(|e| {
                anyhow!(
                    "no Kubernetes cluster to talk to: {e}\n  set KUBECONFIG or ~/.kube/config as for kubectl (`kubectl config current-context`), or use --context; `{} dev ...` works without a cluster",
                    program()
                )
            })?,
        };
        let namespace = target
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        if let Some(user) = target.as_user {
            config.auth_info.impersonate = Some(user);
            config.auth_info.impersonate_groups =
                (!target.as_groups.is_empty()).then_some(target.as_groups);
        }
        let cluster = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .with_context(|| format!("cannot set up a client for the cluster at {cluster}"))?;
        Ok(Kube {
            client,
            namespace,
            ui: Ui::detect(),
            json,
            captured: None,
        })
    }

    /// The same cluster in `namespace`, its output (for people, plain) kept for
    /// [`Kube::output`] instead of printed.
    pub fn capturing(&self, namespace: &str) -> Kube {
        Kube {
            client: self.client.clone(),
            namespace: namespace.to_owned(),
            ui: Ui::plain(),
            json: false,
            captured: Some(Default::default()),
        }
    }

    /// What was output so far, when capturing.
    pub fn output(&self) -> String {
        let lines = self
            .captured
            .as_ref()
            .map(|c| c.lock().expect("not poisoned").clone());
        lines.unwrap_or_default().join("\n")
    }

    pub(super) fn runs(&self) -> Api<FlowRun> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub(super) fn events(&self) -> Api<FlowEvent> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub(super) fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub(super) fn read_api(&self) -> ReadApi {
        ReadApi::new(self.client.clone())
    }

    /// The FlowRun, or an input error naming where it was looked for.
    pub(crate) async fn get_run(&self, name: &str) -> anyhow::Result<FlowRun> {
        let found = self
            .runs()
            .get_opt(name)
            .await
            .map_err(|e| kube_error(e, "read FlowRuns"))?;
        found.ok_or_else(|| {
            input(format!(
                "FlowRun \"{name}\" not found in namespace \"{}\" (see `{} runs`, or pass -n NAMESPACE)",
                self.namespace,
                program()
            ))
        })
    }

    /// A spinner on stderr when it is a terminal (and the output is not JSON for a program).
    pub(super) fn spinner(&self, message: String) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let spinner = ProgressBar::new_spinner();
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.set_message(message);
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    }

    /// Watches one object until `check` says done (`Some`), fails, or `timeout` passes.
    /// `check` gets `None` when the object does not exist (any more).
    pub(super) async fn watch_until<K, T>(
        &self,
        api: Api<K>,
        name: &str,
        timeout: Duration,
        goal: &str,
        progress: impl Fn(&K) -> String,
        mut check: impl FnMut(Option<&K>) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let spinner = self.spinner(format!("{name}: waiting to {goal}"));
        let mut stream = std::pin::pin!(watch_object(api, name).default_backoff());
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last = String::from("not seen yet");
        let mut errors = 0;
        let outcome = loop {
            tokio::select! {
                _ = &mut deadline => break Err(anyhow!(
                    "timed out after {} waiting for {name} to {goal}; it is {last}",
                    humantime::format_duration(timeout)
                )),
                next = stream.next() => match next {
                    None => break Err(anyhow!("the watch of {name} ended unexpectedly")),
                    Some(Err(e)) => {
                        errors += 1;
                        if errors >= 5 {
                            break Err(anyhow!("cannot watch {name}: {e}"));
                        }
                    }
                    Some(Ok(object)) => {
                        errors = 0;
                        if let Some(object) = &object {
                            last = progress(object);
                            spinner.set_message(format!("{name}: waiting to {goal}; now {last}"));
                        }
                        match check(object.as_ref()) {
                            Ok(Some(done)) => break Ok(done),
                            Ok(None) => {}
                            Err(e) => break Err(e),
                        }
                    }
                },
            }
        };
        spinner.finish_and_clear();
        outcome
    }

    /// Waits until the FlowRun is where `until` says (with `event`: waiting for that event).
    pub(crate) async fn wait_run(
        &self,
        name: &str,
        until: Until,
        event: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<FlowRun> {
        let goal = match event {
            Some(event) => format!("be {until} for event {event}"),
            None => format!("be {until}"),
        };
        self.watch_until(self.runs(), name, timeout, &goal, logic::describe, |run| {
            let Some(run) = run else {
                bail!("FlowRun {name} was deleted while waiting for it to {goal}");
            };
            match logic::verdict(run, until, event) {
                Verdict::Reached => Ok(Some(run.clone())),
                Verdict::NotYet => Ok(None),
                Verdict::Never(why) => Err(anyhow!(why)),
            }
        })
        .await
    }

    pub(super) fn print_json(&self, value: &impl Serialize) -> anyhow::Result<()> {
        self.out(serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// A line for people (not printed with `-o json`).
    pub(super) fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            self.out(text);
        }
    }

    /// A line of output: on stdout, or kept when capturing.
    pub(super) fn out(&self, text: impl AsRef<str>) {
        match &self.captured {
            Some(lines) => lines
                .lock()
                .expect("not poisoned")
                .push(text.as_ref().to_owned()),
            None => println!("{}", text.as_ref()),
        }
    }
}

/// Kubernetes API errors, said plainly.
pub(super) fn kube_error(error: kube::Error, action: &str) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) if status.code == 403 => anyhow!(
            "not allowed to {action}: {} (ask for RBAC rights, or check the context with `kubectl auth can-i`)",
            status.message
        ),
        kube::Error::Api(status)
            if status.code == 404
                && status
                    .message
                    .contains("could not find the requested resource") =>
        {
            anyhow!(
                "cannot {action}: this cluster does not know Cairn's resources; install the CRDs (`kubectl apply -f crds/generated/crds.yaml`, or the Helm chart)"
            )
        }
        kube::Error::Api(status) => anyhow!("cannot {action}: {}", status.message),
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow!(
            "cannot {action}: the Kubernetes API server is unreachable ({}); check `kubectl cluster-info` for this context",
            innermost(&error)
        ),
        kube::Error::Auth(_) => anyhow!(
            "cannot {action}: the credentials of this kube context do not work ({})",
            innermost(&error)
        ),
        _ => anyhow!("cannot {action}: {}", innermost(&error)),
    }
}

/// An error with its causes, `outer: inner: innermost`.
pub(super) fn innermost(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text = format!("{text}: {next_text}");
        }
        cause = next.source();
    }
    text
}
