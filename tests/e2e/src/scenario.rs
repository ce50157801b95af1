//! One scenario: a namespace of its own and, where it needs them, its own database and
//! operator(s); typed access to its objects, waits on conditions with timeouts, and checks that
//! say what was expected and what was seen. Its namespace, database and operators are removed
//! when it finishes, and also when it fails half-way (on drop).

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_crds::{FlowRun, FlowRunStatus, Phase};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::PgPool;

use crate::cluster::{OwnDatabase, unique_suffix};
use crate::operator::{Operator, OperatorConfig, tail};
use crate::setup::{Setup, setup};

pub struct Scenario {
    pub setup: &'static Setup,
    pub ns: String,
    pub client: Client,
    pub db: Option<OwnDatabase>,
    pool: Option<PgPool>,
    pub operators: Vec<Operator>,
    pub dir: PathBuf,
    /// Cluster-scoped objects it made (kind, name), deleted at the end.
    cluster_scoped: Vec<(String, String)>,
    passed: usize,
    failures: Vec<String>,
    cleaned: bool,
}

impl Scenario {
    /// A scenario with a namespace only (`e2e-<name>-<suffix>`).
    pub async fn new(name: &str) -> anyhow::Result<Scenario> {
        let setup = setup();
        let ns = format!("e2e-{name}-{}", unique_suffix());
        let client = setup.cluster.client().await?;
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        eprintln!("e2e: scenario {name} in namespace {ns}");
        Ok(Scenario {
            setup,
            dir: setup.scenario_dir(&ns),
            ns,
            client,
            db: None,
            pool: None,
            operators: Vec::new(),
            cluster_scoped: Vec::new(),
            passed: 0,
            failures: Vec::new(),
            cleaned: false,
        })
    }

    /// A scenario with its namespace, its database and an operator on a loopback port.
    pub async fn with_operator(name: &str) -> anyhow::Result<Scenario> {
        let mut sc = Scenario::new(name).await?;
        sc.start_operator(crate::operator::free_addr("127.0.0.1")?, &[])
            .await?;
        Ok(sc)
    }

    /// The scenario's database (made on first use; the operator migrates it).
    pub async fn database(&mut self) -> anyhow::Result<OwnDatabase> {
        if self.db.is_none() {
            let name = self.ns.replace('-', "_");
            self.db = Some(self.setup.cluster.create_database(&name).await?);
        }
        Ok(self.db.clone().expect("made above"))
    }

    /// Starts one more operator for this namespace, listening on `listen`, and waits until it
    /// has started (standing by or acting). Returns its index in `operators`.
    pub async fn start_operator(
        &mut self,
        listen: SocketAddr,
        flags: &[&str],
    ) -> anyhow::Result<usize> {
        let db = self.database().await?;
        let index = self.operators.len();
        let mut operator = Operator::spawn(&OperatorConfig {
            binary: self.setup.cairn.clone(),
            kubeconfig: self.setup.cluster.kubeconfig.clone(),
            database_url: db.url,
            namespace: self.ns.clone(),
            lease_name: "cairn-e2e".into(),
            listen,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            // Every scenario's runs are traced: tracing must never get in their way.
            env: self
                .setup
                .cluster
                .s3
                .env()
                .into_iter()
                .chain([(
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                    self.setup.cluster.otlp.endpoint.clone(),
                )])
                .collect(),
            log: self.dir.join(format!("operator-{index}.log")),
        })?;
        operator
            .wait_log("waiting to hold the Lease", Duration::from_secs(60))
            .await?;
        self.operators.push(operator);
        Ok(index)
    }

    /// A pool on the scenario's database (as the cluster's admin user).
    pub async fn pool(&mut self) -> anyhow::Result<PgPool> {
        if self.pool.is_none() {
            let url = self.database().await?.url;
            self.pool = Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&url)
                    .await?,
            );
        }
        Ok(self.pool.clone().expect("made above"))
    }

    /// One number from the scenario's database.
    pub async fn count(&mut self, sql: &str) -> anyhow::Result<i64> {
        let pool = self.pool().await?;
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&pool)
            .await?)
    }

    /// Waits until `sql` counts 0; `Err(last count)` if it still does not after `secs`.
    pub async fn until_zero(&mut self, sql: &str, secs: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let seen = self.count(sql).await.map_err(|e| format!("{e:#}"));
            if seen == Ok(0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after {secs}s `{sql}` still gives {}",
                    seen.map_or_else(|e| e, |n| n.to_string())
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates an object in the namespace from its JSON form, typed as `K`.
    pub async fn create<K>(&self, object: serde_json::Value) -> anyhow::Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let typed: K = serde_json::from_value(object)?;
        Ok(self
            .api::<K>()
            .create(&PostParams::default(), &typed)
            .await?)
    }

    /// Creates a cluster-scoped object (a ResourceProfile), deleted when the scenario ends.
    pub async fn create_cluster_scoped<K>(&mut self, object: K) -> anyhow::Result<K>
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        self.cluster_scoped
            .push((K::plural(&Default::default()).into_owned(), name));
        Ok(Api::<K>::all(self.client.clone())
            .create(&PostParams::default(), &object)
            .await?)
    }

    /// Merge-patches an object.
    pub async fn patch<K>(&self, name: &str, patch: serde_json::Value) -> anyhow::Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Ok(self
            .api::<K>()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?)
    }

    /// Waits (a watch, through `await_condition`) until object `name` exists and `cond` holds;
    /// the error says what was awaited and what the object looked like then.
    pub async fn wait_for<K>(
        &self,
        name: &str,
        what: &str,
        secs: u64,
        cond: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) -> Result<K, String>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let watched =
            watch_until(&api, name, secs, move |o: Option<&K>| o.is_some_and(&cond)).await;
        match watched {
            Ok(Some(Some(object))) => Ok(object),
            Ok(Some(None)) => Err(format!("{name} is gone, waiting for it to {what}")),
            Err(e) => Err(format!("watching {name}: {e}")),
            Ok(None) => {
                let now = api.get_opt(name).await.ok().flatten();
                let status = now.map_or("absent".into(), |o| {
                    let v = serde_json::to_value(o).unwrap_or_default();
                    v.get("status").unwrap_or(&v).to_string()
                });
                Err(format!(
                    "timed out after {secs}s waiting for {} {name} to {what}; it is now: {status}",
                    K::kind(&Default::default())
                ))
            }
        }
    }

    /// Deletes object `name` and waits until it is gone (its finalizers done).
    pub async fn delete_and_wait<K>(&self, name: &str, secs: u64) -> Result<(), String>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let uid = match api.get_opt(name).await {
            Ok(Some(o)) => o.meta().uid.clone().unwrap_or_default(),
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("reading {name}: {e}")),
        };
        api.delete(name, &kube::api::DeleteParams::default())
            .await
            .map_err(|e| format!("deleting {name}: {e}"))?;
        // Gone: absent, or another object now under the name.
        let gone = move |o: Option<&K>| o.is_none_or(|o| o.meta().uid.as_deref() != Some(&*uid));
        match watch_until(&api, name, secs, gone).await {
            Ok(Some(_)) => Ok(()),
            Err(e) => Err(format!("watching {name}: {e}")),
            Ok(None) => Err(format!("{name} was still there {secs}s after its deletion")),
        }
    }

    /// Waits until object `name` is gone (deleted by someone else: the operator, a TTL).
    pub async fn wait_gone<K>(&self, name: &str, secs: u64) -> Result<(), String>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        match watch_until(&self.api::<K>(), name, secs, |o: Option<&K>| o.is_none()).await {
            Ok(Some(_)) => Ok(()),
            Err(e) => Err(format!("watching {name}: {e}")),
            Ok(None) => Err(format!("{name} was still there after {secs}s")),
        }
    }

    /// Waits until FlowRun `name`'s status satisfies `cond`.
    pub async fn wait_run(
        &self,
        name: &str,
        what: &str,
        secs: u64,
        cond: impl Fn(&FlowRunStatus) -> bool + Send + Sync + 'static,
    ) -> Result<FlowRun, String> {
        self.wait_for::<FlowRun>(name, what, secs, move |fr| {
            fr.status.as_ref().is_some_and(&cond)
        })
        .await
    }

    /// Waits until FlowRun `name` is in `phase`.
    pub async fn wait_phase(&self, name: &str, phase: Phase, secs: u64) -> Result<FlowRun, String> {
        self.wait_run(name, &format!("be {phase:?}"), secs, move |s| {
            s.phase == Some(phase)
        })
        .await
    }

    /// Waits until FlowRun `name` waits for `event`.
    pub async fn wait_event(&self, name: &str, event: &str, secs: u64) -> Result<FlowRun, String> {
        let wanted = event.to_owned();
        self.wait_run(name, &format!("wait for event {event}"), secs, move |s| {
            s.waiting_for.as_ref().and_then(|w| w.event.as_deref()) == Some(&*wanted)
        })
        .await
    }

    /// FlowRun `name` now (`None` if absent).
    pub async fn run(&self, name: &str) -> Option<FlowRun> {
        self.api::<FlowRun>().get_opt(name).await.ok().flatten()
    }

    /// FlowRun `name`'s status now (default if absent).
    pub async fn status(&self, name: &str) -> FlowRunStatus {
        self.run(name)
            .await
            .and_then(|r| r.status)
            .unwrap_or_default()
    }

    /// A Secret's key, decoded ("" if absent).
    pub async fn secret(&self, name: &str, key: &str) -> String {
        self.api::<k8s_openapi::api::core::v1::Secret>()
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.data?.remove(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    }

    /// Pods matching a label selector.
    pub async fn pods(&self, labels: &str) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default().labels(labels))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// The names of every pod in the namespace.
    pub async fn pod_names(&self) -> Vec<String> {
        self.pods("")
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect()
    }

    /// The names of a FlowRun's pods, oldest attempt first.
    pub async fn pods_of(&self, run: &str) -> Vec<String> {
        let Some(id) = self.status(run).await.run_id else {
            return Vec::new();
        };
        let mut pods: Vec<(u32, String)> = self
            .pods(&format!("cairn.dev/run={id}"))
            .await
            .into_iter()
            .filter_map(|p| {
                let labels = p.metadata.labels.unwrap_or_default();
                let attempt = labels.get("cairn.dev/attempt")?.parse().ok()?;
                Some((attempt, p.metadata.name?))
            })
            .collect();
        pods.sort();
        pods.into_iter().map(|(_, name)| name).collect()
    }

    /// Waits until pod `name` exists and `cond` holds.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        secs: u64,
        cond: impl Fn(&Pod) -> bool + Send + Sync + 'static,
    ) -> Result<Pod, String> {
        self.wait_for::<Pod>(name, what, secs, cond).await
    }

    /// Waits until every pod of the FlowRun has ended (its container terminated): the run can be
    /// over before the kubelet reports its last pod's end, and logs are complete only after.
    pub async fn wait_pods_ended(&self, run: &str, secs: u64) -> Result<(), String> {
        for pod in self.pods_of(run).await {
            self.wait_pod(&pod, "end", secs, pod_ended).await?;
        }
        Ok(())
    }

    /// A pod's log (empty if it cannot be read).
    pub async fn log_of(&self, pod: &str) -> String {
        self.api::<Pod>()
            .logs(pod, &LogParams::default())
            .await
            .unwrap_or_default()
    }

    /// The example agent's ledger lines (`ledger\t...`) in these pods' logs.
    pub async fn ledger_of(&self, pods: &[String]) -> Vec<String> {
        let mut lines = Vec::new();
        for pod in pods {
            let log = self.log_of(pod).await;
            lines.extend(
                log.lines()
                    .filter(|l| l.starts_with("ledger\t"))
                    .map(str::to_owned),
            );
        }
        lines
    }

    /// Waits until pod `pod` exists and its log says `text`.
    pub async fn wait_pod_log(&self, pod: &str, text: &str, secs: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        self.wait_pod(pod, "be created", secs, |_| true).await?;
        while !self.log_of(pod).await.contains(text) {
            if Instant::now() > deadline {
                return Err(format!(
                    "pod {pod}'s log did not say {text:?} within {secs}s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    /// Waits until one of the FlowRun's pods' log says `text`; returns that pod.
    pub async fn wait_run_log(&self, run: &str, text: &str, secs: u64) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            for pod in self.pods_of(run).await {
                if self.log_of(&pod).await.contains(text) {
                    return Ok(pod);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no pod of {run} said {text:?} within {secs}s"));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Records a check: PASS, or FAIL with what was expected and what was seen.
    pub fn check(&mut self, name: &str, ok: bool, seen: impl Display) {
        if ok {
            println!("PASS: {name}");
            self.passed += 1;
        } else {
            self.fail(name, seen);
        }
    }

    pub fn fail(&mut self, name: &str, seen: impl Display) {
        println!("FAIL: {name}: {seen}");
        self.failures.push(format!("FAIL: {name}: {seen}"));
    }

    /// A failed check with the FlowRun's diagnostics (see `explain`).
    pub async fn fail_explained(&mut self, name: &str, seen: impl Display, run: &str) {
        let why = crate::explain::explain(self, run).await;
        self.fail(name, format!("{seen}\n{why}"));
    }

    /// Ends the scenario: cleans up, prints "N passed, M failed", and panics with every
    /// failure and the operators' last log lines if any check failed.
    pub fn finish(mut self) {
        self.clean_up();
        println!("{} passed, {} failed", self.passed, self.failures.len());
        if !self.failures.is_empty() {
            let logs: Vec<String> = self
                .operators
                .iter()
                .map(|o| {
                    format!(
                        "--- {} (last 40 lines) ---\n{}",
                        o.log.display(),
                        o.log_tail(40)
                    )
                })
                .collect();
            panic!(
                "{} of {} checks failed in namespace {}:\n{}\n{}",
                self.failures.len(),
                self.failures.len() + self.passed,
                self.ns,
                self.failures.join("\n"),
                logs.join("\n")
            );
        }
    }

    /// Removes what the scenario made. Through kubectl and psql, so that `Drop` can run it.
    fn clean_up(&mut self) {
        if std::mem::replace(&mut self.cleaned, true) {
            return;
        }
        let cluster = &self.setup.cluster;
        let ns = self.ns.as_str();
        // First, while an operator still runs their finalizers (and deletes their rows).
        if !self.operators.is_empty() {
            let _ = cluster.kubectl(&["-n", ns, "delete", "flowruns", "--all", "--timeout=60s"]);
        }
        for operator in &mut self.operators {
            operator.stop();
        }
        // Any FlowRun nobody finalized would keep the namespace Terminating.
        if let Ok(out) = cluster.kubectl(&["-n", ns, "get", "flowruns", "-o", "name"]) {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = cluster.kubectl(&[
                    "-n",
                    ns,
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        let _ = cluster.kubectl(&["delete", "namespace", ns, "--wait=false"]);
        for (kind, name) in &self.cluster_scoped {
            let _ = cluster.kubectl(&["delete", kind, name, "--wait=false"]);
        }
        if let Some(db) = &self.db
            && let Err(e) = db.drop_now()
        {
            eprintln!("e2e: {e:#}");
        }
    }

    /// The operators' log lines that mention `text`, last `n`.
    pub fn operator_lines(&self, text: &str, n: usize) -> String {
        let lines: Vec<String> = self
            .operators
            .iter()
            .flat_map(|o| {
                o.log_text()
                    .lines()
                    .filter(|l| l.contains(text))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        tail(&lines.join("\n"), n)
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// The pod's container has terminated.
pub fn pod_ended(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.terminated.is_some())
}

/// The pod's phase ("" if none yet).
pub fn pod_phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Watches object `name` until `cond` holds (for the object, or for its absence), for at most
/// `secs` seconds: `Some(the object then)`, or `None` at the deadline. A watch the API server
/// ends (410 "too old resource version", once its cache has moved on under load) starts again
/// from a fresh list within the same deadline; an error is returned only when none is left.
async fn watch_until<K>(
    api: &Api<K>,
    name: &str,
    secs: u64,
    cond: impl Fn(Option<&K>) -> bool + Send + Sync + 'static,
) -> Result<Option<Option<K>>, String>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let cond = std::sync::Arc::new(cond);
    loop {
        let cond = cond.clone();
        let watched = tokio::time::timeout_at(
            deadline,
            await_condition(api.clone(), name, move |o: Option<&K>| cond(o)),
        )
        .await;
        match watched {
            Ok(Ok(object)) => return Ok(Some(object)),
            Err(_) => return Ok(None),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Ok(Err(e)) => {
                eprintln!("e2e: watching {name} again after: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
