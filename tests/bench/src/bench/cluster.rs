//! Figures 4–9 on the test cluster (`tests/cluster/up.sh`): the real operator (`cairn operator`,
//! a host process watching only the benchmark's own namespace, as the end-to-end tests run it),
//! flow pods of the `bench-flows` image, and a database of the benchmark's own on the cluster's
//! Postgres (so its runs and notifications never reach the other operators using that server).
//!
//! Order, each step setting up the next:
//! 4. resume on the cluster, interleaved with bare pods (create → process running);
//! 6. admission: N FlowRuns created at once (16 concurrent creators) until all are registered in
//!    Postgres; their pods then run until every run waits for one shared event;
//! 5. more FlowRuns, registered and parked `waiting` beforehand (see `park_runs`), up to 10,000
//!    in all; the operator's RSS and CPU with all of them present;
//! 7. one FlowEvent wakes the N runs of figure 6: time until all their pods exist, until all
//!    finished, and how many did not;
//! 8. and 9. (`recovery.rs`): flow pods deleted mid-step; the leading operator SIGKILLed, last
//!    as it replaces the operator.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use cairn_crds::{
    FlowEvent, FlowEventSpec, FlowRun, FlowRunSpec, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_RUN,
    MANAGED_BY_OPERATOR,
};
use cairn_e2e as e2e;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Container, EnvVar, Namespace, Pod, PodSpec};
use kube::api::{DeleteParams, ListParams, LogParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use sqlx::PgPool;

use crate::local::unix_ms;
use crate::pg::{clock_ticks, proc_stat};
use crate::progress;
use crate::report::{FanOut, Footprint, Latency, Rate, Results, Target};

struct Sizes {
    resumes: usize,
    /// Figure 6: FlowRuns admitted.
    admit: usize,
    /// Figure 7: runs one event wakes.
    fanout: usize,
    /// Figure 5: FlowRuns present in all.
    total: usize,
    idle: Duration,
    /// Figure 8: pods deleted mid-step; figure 9: leaders killed.
    drains: usize,
    handovers: usize,
}

pub struct Cluster {
    client: Client,
    pub(crate) ns: String,
    image: String,
    pub(crate) pool: PgPool,
    /// The operator's running budget (`--max-running`).
    max_running: usize,
    up: e2e::Cluster,
    db: e2e::cluster::OwnDatabase,
    pub(crate) operator: Option<e2e::operator::Operator>,
    pub(crate) operator_pid: u32,
    /// How the operator was started (figure 9 starts standbys the same way).
    pub(crate) operator_config: e2e::operator::OperatorConfig,
    /// Operator CPU (cores) while admitting figure 6's FlowRuns.
    admitting_cpu: Option<f64>,
    /// Figures 5 and 7's population: (FlowRuns, seconds until all had a status, operator CPU).
    populating: Option<(usize, f64, f64)>,
    /// The image's manifest digest reference, removed with the tag at the end.
    image_digest_ref: Option<String>,
}

/// Sizes asked for on the command line (`None`: the default for the mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    pub admit: Option<usize>,
    pub fanout: Option<usize>,
    pub flowruns: Option<usize>,
}

pub async fn figures(
    results: &mut Results,
    figures: &[u8],
    smoke: bool,
    asked: Asked,
    bin_dir: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    if figures.is_empty() {
        return Ok(());
    }
    let defaults = if smoke {
        Sizes {
            resumes: 3,
            admit: 20,
            fanout: 20,
            total: 100,
            idle: Duration::from_secs(5),
            drains: 3,
            handovers: 2,
        }
    } else {
        Sizes {
            resumes: 10,
            admit: 1000,
            fanout: 1000,
            total: 10_000,
            idle: Duration::from_secs(30),
            drains: 10,
            handovers: 5,
        }
    };
    let sizes = Sizes {
        admit: asked.admit.unwrap_or(defaults.admit),
        fanout: asked.fanout.unwrap_or(defaults.fanout),
        total: asked.flowruns.unwrap_or(defaults.total),
        ..defaults
    };
    results.header.push((
        "cluster sizes".into(),
        format!(
            "figure 4: {} resumes; figure 6: {} FlowRuns admitted; figure 7: {} runs woken; \
             figure 5: {} FlowRuns present; figure 8: {} drains; figure 9: {} handovers{}",
            sizes.resumes,
            sizes.admit,
            sizes.fanout,
            sizes.total,
            sizes.drains,
            sizes.handovers,
            if smoke || asked.admit.is_some() || asked.fanout.is_some() || asked.flowruns.is_some()
            {
                " (the issue asks 1,000, 1,000 and 10,000: see the command)"
            } else {
                ""
            }
        ),
    ));
    let mut cluster = match Cluster::start(bin_dir, out, max_running(&sizes)).await {
        Ok(c) => c,
        Err(e) => {
            for f in figures {
                results.not_measured.push(format!(
                    "Figure {f}: the cluster could not be set up: {e:#}"
                ));
            }
            return Ok(());
        }
    };
    results.header.push((
        "cluster (figures 4–9)".into(),
        format!(
            "the one-node test cluster (`tests/cluster/up.sh`: Kubernetes {}, containerd, on this \
             machine); `cairn operator` as a host process watching only namespace {} \
             (`--max-running {}`, see figure 7), its database `{}` on the cluster's Postgres (max_connections {}); \
             flow pods of image {}",
            cluster
                .client
                .apiserver_version()
                .await
                .map_or("?".into(), |v| v.git_version),
            cluster.ns,
            cluster.max_running,
            cluster.db.name,
            cluster.setting("max_connections").await.unwrap_or_default(),
            cluster.image
        ),
    ));
    // Ctrl-C (or SIGTERM) still cleans up the namespace, the database and the operator.
    let outcome = tokio::select! {
        done = cluster.run(results, figures, &sizes) => done,
        _ = crate::interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    progress("cluster: cleaning up (namespace, database, operator)");
    if let Err(e) = cluster.clean_up().await {
        results
            .notes
            .push(format!("Cleaning up the cluster failed: {e:#}"));
    }
    outcome
}

/// The operator's default running budget (`--max-running`).
const DEFAULT_MAX_RUNNING: usize = 50;

/// The benchmark's running budget: enough for figure 7's event to start every run it wakes at
/// once, as a user expecting such bursts would set it (each running pod holds a database
/// connection; the node runs at most 110 pods and the scheduler keeps the rest Pending).
fn max_running(sizes: &Sizes) -> usize {
    sizes.fanout.max(DEFAULT_MAX_RUNNING)
}

impl Cluster {
    async fn start(bin_dir: &Path, out: &Path, max_running: usize) -> anyhow::Result<Cluster> {
        // The end-to-end harness's: the cluster up, an image, the CRDs, a database, an operator.
        progress("cluster: tests/cluster/up.sh (builds it on first use)");
        let up = e2e::Cluster::up(&out.join("logs/cluster-up.log"))?;
        let client = up.client().await?;

        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let ns = format!("cairn-bench-{stamp}");
        let image = format!("localhost/cairn-bench-flows:{stamp}");

        progress(&format!("cluster: image {image}"));
        // The image takes the static build (make bench-tools); the operator runs on the host.
        let flows = e2e::cluster::static_bin_dir().join("bench-flows");
        let built = up.image(&image, &flows, &[])?;
        up.apply_crds()?;
        let db = up.create_database(&format!("cairn_bench_{stamp}")).await?;
        let pool =
            cairn_engine::schema::connect_with(&db.url, 4, cairn_engine::schema::Migrations::Apply)
                .await?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace(&ns))
            .await?;

        let log = out.join("logs/operator.log");
        let _ = std::fs::remove_file(&log);
        let listen = e2e::operator::free_addr("127.0.0.1")?;
        progress(&format!(
            "cluster: starting the operator for namespace {ns} (log {})",
            log.display()
        ));
        let operator_config = e2e::operator::OperatorConfig {
            binary: bin_dir.join("cairn"),
            kubeconfig: up.kubeconfig.clone(),
            database_url: db.url.clone(),
            namespace: ns.clone(),
            lease_name: "bench".into(),
            listen,
            flags: vec!["--max-running".into(), max_running.to_string()],
            env: vec![],
            log: log.clone(),
        };
        let mut operator = e2e::operator::Operator::spawn(&operator_config)?;
        let operator_pid = operator.pid().unwrap_or_default();
        operator
            .wait_log("controllers started", Duration::from_secs(120))
            .await?;
        Ok(Cluster {
            client,
            ns,
            image,
            pool,
            max_running,
            up,
            db,
            operator: Some(operator),
            operator_pid,
            operator_config,
            admitting_cpu: None,
            populating: None,
            image_digest_ref: Some(built.digest_ref()),
        })
    }

    async fn setting(&self, name: &str) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn run(
        &mut self,
        results: &mut Results,
        figures: &[u8],
        sizes: &Sizes,
    ) -> anyhow::Result<()> {
        // A figure that fails is reported as not measured, and the others still run.
        let failed = |results: &mut Results, figure: &str, e: anyhow::Error| {
            progress(&format!("figure {figure} failed: {e:#}"));
            results
                .not_measured
                .push(format!("Figure {figure}: failed in this run: {e:#}"));
        };
        if figures.contains(&4) {
            if let Err(e) = self.figure4(results, sizes.resumes).await {
                failed(results, "4", e);
            }
            crate::write_outputs(results)?;
        } else {
            results
                .not_measured
                .push("Figure 4: not asked for (`--cluster-figures`).".into());
        }
        if figures.contains(&6) {
            if let Err(e) = self.figure6(results, sizes.admit).await {
                failed(results, "6", e);
            }
            crate::write_outputs(results)?;
        }
        // 5 and 7 share one population: the runs 7 wakes, and enough others waiting for an
        // event that never comes to make `total` FlowRuns in all.
        if figures.contains(&5) || figures.contains(&7) {
            let admitted = if figures.contains(&6) { sizes.admit } else { 0 };
            let others = sizes.total.saturating_sub(admitted + sizes.fanout);
            if let Err(e) = self.populate(results, sizes.fanout, others).await {
                failed(results, "5 and 7 (setting up their FlowRuns)", e);
                return Ok(());
            }
        }
        if figures.contains(&5) {
            if let Err(e) = self.figure5(results, sizes.idle).await {
                failed(results, "5", e);
            }
            crate::write_outputs(results)?;
        }
        if figures.contains(&7) {
            if let Err(e) = self.figure7(results, sizes.fanout).await {
                failed(results, "7", e);
            }
            crate::write_outputs(results)?;
        }
        if figures.contains(&8) {
            if let Err(e) = self.figure8(results, sizes.drains).await {
                failed(results, "8", e);
            }
            crate::write_outputs(results)?;
        }
        if figures.contains(&9) {
            if let Err(e) = self.figure9(results, sizes.handovers).await {
                failed(results, "9", e);
            }
            crate::write_outputs(results)?;
        }
        for f in [5u8, 6, 7, 8, 9] {
            if !figures.contains(&f) {
                results
                    .not_measured
                    .push(format!("Figure {f}: not asked for (`--cluster-figures`)."));
            }
        }
        Ok(())
    }

    pub(crate) fn flowruns(&self) -> Api<FlowRun> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub(crate) fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub(crate) fn flowrun(
        &self,
        name: &str,
        flow: &str,
        input: serde_json::Value,
        cancel: bool,
    ) -> FlowRun {
        FlowRun::new(
            name,
            FlowRunSpec {
                image: Some(self.image.clone()),
                flow: Some(flow.into()),
                input: Some(input),
                cancel,
                ..Default::default()
            },
        )
    }

    async fn emit(
        &self,
        name: &str,
        event: &str,
        payload: serde_json::Value,
    ) -> anyhow::Result<()> {
        let fe = FlowEvent::new(
            name,
            FlowEventSpec {
                event: event.into(),
                payload: Some(payload),
                flow_run: None,
            },
        );
        Api::<FlowEvent>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &fe)
            .await?;
        Ok(())
    }

    /// Figure 4: bare pods (create → the process runs) interleaved with resumes of one flow
    /// (FlowEvent created → the resumed flow pod runs the step after its wait).
    async fn figure4(&self, results: &mut Results, count: usize) -> anyhow::Result<()> {
        progress(&format!(
            "figure 4: {count} bare pods and {count} resumes, interleaved"
        ));
        let prefix = "r-e";
        self.flowruns()
            .create(
                &PostParams::default(),
                &self.flowrun(
                    "resume",
                    "resume",
                    json!({ "prefix": prefix, "count": count }),
                    false,
                ),
            )
            .await?;
        let (mut bare, mut resumed) = (Vec::new(), Vec::new());
        let (mut to_process, mut in_process) = (Vec::new(), Vec::new());
        let (mut late_status, mut bare_lost) = (0, 0);
        for i in 0..count {
            match self.bare_pod(i).await? {
                Some(sample) => bare.push(sample),
                None => bare_lost += 1,
            }
            let event = format!("{prefix}{i}");
            let run_id = self
                .wait_db(&format!("run `resume` to wait for {event}"), Duration::from_secs(300), Duration::from_millis(5), || async {
                    let row: Option<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
                        "SELECT id, state, waiting_for->>'event' FROM cairn.runs WHERE namespace = $1 AND name = 'resume'",
                    )
                    .bind(&self.ns)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.and_then(|(id, state, waiting)| {
                        (state == "waiting" && waiting.as_deref() == Some(event.as_str())).then_some(id)
                    }))
                })
                .await?;
            // The parked attempt's pod has exited before the event comes (as it would, minutes
            // or days before a person answers).
            // (Its status can lag far behind on a loaded node: then go on after 30 s.)
            let selector = format!("{LABEL_RUN}={run_id},{LABEL_ATTEMPT}={}", i + 1);
            if !self
                .wait_pod_finished(&selector, Duration::from_secs(30))
                .await?
            {
                late_status += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let emitted = unix_ms();
            self.emit(&format!("r-e{i}"), &event, json!(i)).await?;
            let key = if i == 0 {
                "resumed".to_owned()
            } else {
                format!("resumed#{}", i + 1)
            };
            let (at, started) = self
                .wait_db(
                    &format!("run `resume` to resume after {event}"),
                    Duration::from_secs(300),
                    // One row, read often: the resume's latency is what is measured.
                    Duration::from_millis(5),
                    || async {
                        let v: Option<serde_json::Value> = sqlx::query_scalar(
                            "SELECT result FROM cairn.steps WHERE run_id = $1 AND key = $2",
                        )
                        .bind(run_id)
                        .bind(&key)
                        .fetch_optional(&self.pool)
                        .await?;
                        Ok(v.and_then(|v| {
                            Some((v["at"].as_f64()?, v["process_started_at"].as_f64()?))
                        }))
                    },
                )
                .await?;
            resumed.push(at - emitted);
            to_process.push(started - emitted);
            in_process.push(at - started);
        }
        results.fig4 = vec![
            Latency::of(
                "bare pod (floor)",
                "pod created through the API → its process runs (same image, same node)",
                bare,
            ),
            Latency::of(
                "Cairn",
                "FlowEvent created → operator → new flow pod → replay → the step after the wait runs",
                resumed,
            ),
            Latency::of(
                "Cairn, part 1",
                "FlowEvent created → the new pod's process runs its first line",
                to_process,
            ),
            Latency::of(
                "Cairn, part 2",
                "the pod process's first line → the step after the wait (connect, load, replay)",
                in_process,
            ),
        ];
        if late_status + bare_lost > 0 {
            results.notes.push(format!(
                "Figure 4: {late_status} time(s) the parked pod's status did not show it finished \
                 within 30 s (the event was emitted anyway), and {bare_lost} bare pod(s) did not \
                 run within 2 minutes (left out): the kubelet's status updates and secret reads \
                 were being refused by the node authorizer meanwhile (see the summary)."
            ));
        }
        Ok(())
    }

    /// One bare pod: create it, wait until it ran, and read when its process started (`None`
    /// when it did not run within two minutes).
    async fn bare_pod(&self, i: usize) -> anyhow::Result<Option<f64>> {
        let name = format!("bare-{i}");
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                containers: vec![Container {
                    name: "bare".into(),
                    image: Some(self.image.clone()),
                    image_pull_policy: Some("IfNotPresent".into()),
                    env: Some(vec![EnvVar {
                        name: "BENCH_PRINT_START".into(),
                        value: Some("1".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = unix_ms();
        self.pods().create(&PostParams::default(), &pod).await?;
        // The status can lag (see figure 4's note); the log is what counts.
        self.wait_pod_finished(&format!("metadata.name={name}"), Duration::from_secs(120))
            .await?;
        let logs = self
            .pods()
            .logs(&name, &LogParams::default())
            .await
            .unwrap_or_default();
        let started: Option<f64> = logs.split_whitespace().nth(1).and_then(|t| t.parse().ok());
        let _ = self.pods().delete(&name, &DeleteParams::default()).await;
        Ok(started.map(|started| started - created))
    }

    /// Waits until the pod selected (by labels, or `metadata.name=` as a field) has finished;
    /// `false` if it has not within `patience`.
    pub(crate) async fn wait_pod_finished(
        &self,
        selector: &str,
        patience: Duration,
    ) -> anyhow::Result<bool> {
        let params = match selector.strip_prefix("metadata.name=") {
            Some(_) => ListParams::default().fields(selector),
            None => ListParams::default().labels(selector),
        };
        let deadline = Instant::now() + patience;
        loop {
            let pods = self.pods().list(&params).await?.items;
            let phase = pods.first().and_then(|p| p.status.as_ref()?.phase.clone());
            match phase.as_deref() {
                Some("Succeeded") => return Ok(true),
                Some("Failed") => bail!("pod {selector} failed"),
                _ => {}
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Probes the database every `every` until `probe` gives a value.
    pub(crate) async fn wait_db<T, F, Fut>(
        &self,
        what: &str,
        patience: Duration,
        every: Duration,
        mut probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(v) = probe().await? {
                return Ok(v);
            }
            if let Some(Some(status)) = self.operator_exit() {
                bail!("the operator exited ({status}) while waiting for {what}");
            }
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(every).await;
        }
    }

    /// `Some` once the operator process has exited (a zombie until reaped counts as exited).
    fn operator_exit(&self) -> Option<Option<std::process::ExitStatus>> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.operator_pid)).ok();
        let state = stat
            .as_deref()
            .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().chars().next()));
        match state {
            Some(Some('Z' | 'X')) | None => Some(None),
            _ => None,
        }
    }

    /// Creates FlowRuns `<prefix><i>` of `wait-once` in `namespace` for i in 0..n, 16 at a time.
    async fn create_flowruns(
        &self,
        namespace: &str,
        prefix: &str,
        n: usize,
        event: &str,
        cancel: bool,
    ) -> anyhow::Result<()> {
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), namespace);
        futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                let run = self.flowrun(
                    &format!("{prefix}{i}"),
                    "wait-once",
                    json!({ "event": event }),
                    cancel,
                );
                async move { api.create(&PostParams::default(), &run).await }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    async fn count_runs(&self, prefix: &str, state: Option<&str>) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM cairn.runs WHERE namespace = $1 AND starts_with(name, $2)
             AND ($3::text IS NULL OR state = $3)",
        )
        .bind(&self.ns)
        .bind(prefix)
        .bind(state)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The API server's request counters (`apiserver_request_total`) for the kinds the
    /// operator writes, keyed "VERB resource[/subresource]".
    async fn api_requests(&self) -> anyhow::Result<HashMap<String, f64>> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.client.request_text(request).await?;
        let mut counts = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |key: &str| {
                labels
                    .split("\",")
                    .find_map(|pair| pair.strip_prefix(&format!("{key}=\"")))
                    .map(|v| v.trim_end_matches('"'))
                    .unwrap_or_default()
            };
            let resource = label("resource");
            if !matches!(resource, "flowruns" | "pods" | "secrets" | "events") {
                continue;
            }
            let key = match label("subresource") {
                "" => format!("{} {resource}", label("verb")),
                sub => format!("{} {resource}/{sub}", label("verb")),
            };
            *counts.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
        }
        Ok(counts)
    }

    fn operator_cpu_seconds(&self) -> f64 {
        proc_stat(self.operator_pid)
            .map_or(f64::NAN, |s| (s.utime + s.stime) as f64 / clock_ticks())
    }

    /// The operator's (VmRSS, VmHWM) in MB.
    fn operator_rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.operator_pid))
            .unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
    }

    /// Figure 6: `n` FlowRuns created as fast as 16 concurrent clients can, until all are
    /// registered in Postgres. They ask to be cancelled (`spec.cancel`), so the operator
    /// registers each, cancels it at once and starts no pod: admission is what is measured, not
    /// the node's pod throughput (see figure 7 for that). The floor: the same creates in a
    /// namespace no operator watches, just before (the API server's own rate for FlowRuns).
    async fn figure6(&mut self, results: &mut Results, n: usize) -> anyhow::Result<()> {
        progress(&format!(
            "figure 6: {n} FlowRuns created with no operator watching (the floor)"
        ));
        let unwatched = format!("{}-floor", self.ns);
        let namespaces = Api::<Namespace>::all(self.client.clone());
        namespaces
            .create(&PostParams::default(), &namespace(&unwatched))
            .await?;
        let started = Instant::now();
        let floor = self
            .create_flowruns(&unwatched, "f-", n, "admitted", true)
            .await;
        let floor_seconds = started.elapsed().as_secs_f64();
        // Nothing holds these FlowRuns (no finalizer). The namespace is gone before Cairn's
        // turn: deleting its FlowRuns meanwhile would take the API server from the operator.
        let _ = namespaces
            .delete(&unwatched, &DeleteParams::background())
            .await;
        floor?;
        let gone_by = Instant::now() + Duration::from_secs(300);
        while namespaces.get_opt(&unwatched).await?.is_some() && Instant::now() < gone_by {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        progress(&format!("figure 6: admitting {n} FlowRuns"));
        let requests = self.api_requests().await?;
        let cpu0 = self.operator_cpu_seconds();
        let started = Instant::now();
        self.create_flowruns(&self.ns, "a-", n, "admitted", true)
            .await?;
        let created = started.elapsed();
        self.wait_db(
            "every FlowRun to be registered",
            Duration::from_secs(900),
            // Counting thousands of rows 200 times a second would take Postgres from the
            // operator; a tenth of a second is a percent of this figure.
            Duration::from_millis(100),
            || async { Ok((self.count_runs("a-", None).await? >= n as i64).then_some(())) },
        )
        .await?;
        let registered = started.elapsed();
        let cpu = (self.operator_cpu_seconds() - cpu0) / registered.as_secs_f64();
        results.notes.push(format!(
            "Figure 6: API server requests per FlowRun admitted, the creates included: {}.",
            requests_per(&requests, &self.api_requests().await?, n)
        ));
        self.admitting_cpu = Some(cpu);
        results.fig6 = vec![
            Rate::of(
                "API server alone (floor)",
                &format!(
                    "{n} FlowRuns created by 16 concurrent API clients in a namespace no \
                     operator watches"
                ),
                n as u64,
                floor_seconds,
            ),
            Rate::of(
                "Cairn operator",
                &format!(
                    "{n} FlowRuns (with `spec.cancel`, so no pods) created the same way (they \
                     took {:.1} s, {:.0}/s) until all are runs in Postgres; operator CPU \
                     meanwhile {:.0}% of a core",
                    created.as_secs_f64(),
                    n as f64 / created.as_secs_f64(),
                    cpu * 100.0
                ),
                n as u64,
                registered.as_secs_f64(),
            ),
        ];
        progress(&format!(
            "figure 6: {n} registered in {:.1} s (the floor: {n} created in {floor_seconds:.1} s)",
            registered.as_secs_f64()
        ));
        Ok(())
    }
}

/// "VERB resource 1.2, ..." per item, the largest first: what changed between two readings of
/// `api_requests` (what counts for less than one in twenty items is left out).
fn requests_per(before: &HashMap<String, f64>, after: &HashMap<String, f64>, n: usize) -> String {
    let mut rows: Vec<(f64, &String)> = after
        .iter()
        .map(|(key, count)| ((count - before.get(key).unwrap_or(&0.0)) / n as f64, key))
        .filter(|(per, _)| *per >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let rows: Vec<String> = rows
        .iter()
        .map(|(per, key)| format!("{key} {per:.2}"))
        .collect();
    rows.join(", ")
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl Cluster {
    /// Registers `n` runs of `wait-once` named `<prefix><i>` in Postgres, already parked
    /// `waiting` for `event` (as if each had run a pod to its wait), so that the FlowRuns
    /// created for them next find their runs waiting: thousands of waiting runs without
    /// thousands of pod starts first.
    async fn park_runs(&self, prefix: &str, n: usize, event: &str) -> anyhow::Result<()> {
        sqlx::query(
            r#"WITH ids AS (SELECT gen_random_uuid() AS id, i FROM generate_series(0, $2 - 1) i),
               r AS (
                 INSERT INTO cairn.runs (id, namespace, name, flow, input, root_id, state, attempt,
                                         waiting_for)
                 SELECT id, $1, $3 || i, 'wait-once', jsonb_build_object('event', $4::text), id,
                        'waiting', 1, jsonb_build_object('event', $4::text)
                 FROM ids RETURNING id),
               a AS (
                 INSERT INTO cairn.attempts (run_id, attempt, ended_at, outcome, detail)
                 SELECT id, 1, now(), 'suspended', 'waiting' FROM r)
               INSERT INTO cairn.waits (run_id, step_key, kind, namespace, event_name)
               SELECT id, 'event:' || $4, 'event', $1, $4 FROM r"#,
        )
        .bind(&self.ns)
        .bind(n as i32)
        .bind(prefix)
        .bind(event)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// FlowRuns in the namespace by phase (listed in pages).
    pub(crate) async fn phases(&self) -> anyhow::Result<HashMap<String, usize>> {
        let mut counts = HashMap::new();
        let mut params = ListParams::default().limit(500);
        loop {
            let page = self.flowruns().list(&params).await?;
            for run in &page.items {
                let phase = run
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or("-".to_owned(), |p| p.to_string());
                *counts.entry(phase).or_default() += 1;
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(counts),
            }
        }
    }

    /// The population of figures 5 and 7: `fanout` runs waiting for `go` (`w-<i>`) and
    /// `others` waiting for `never` (`p-<i>`), parked in Postgres beforehand (see `park_runs`),
    /// then their FlowRuns, until the operator has given every FlowRun a status.
    async fn populate(
        &mut self,
        results: &mut Results,
        fanout: usize,
        others: usize,
    ) -> anyhow::Result<()> {
        progress(&format!(
            "figures 5 and 7: {} FlowRuns whose runs wait already ({fanout} for `go`, {others} for `never`)",
            fanout + others
        ));
        self.park_runs("w-", fanout, "go").await?;
        self.park_runs("p-", others, "never").await?;
        let cpu0 = self.operator_cpu_seconds();
        let started = Instant::now();
        self.create_flowruns(&self.ns, "w-", fanout, "go", false)
            .await?;
        self.create_flowruns(&self.ns, "p-", others, "never", false)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let phases = self.phases().await?;
            let unseen = phases.get("-").copied().unwrap_or(0);
            if unseen == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{unseen} FlowRuns still without a status after 30 minutes"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        self.populating = Some((
            fanout + others,
            seconds,
            (self.operator_cpu_seconds() - cpu0) / seconds,
        ));
        results.notes.push(format!(
            "Figures 5 and 7: {} of the FlowRuns had their runs registered and parked `waiting` in \
             Postgres before the FlowRuns were created (a SQL insert standing in for that many \
             pods each running to its wait: on this machine those pod starts alone would take \
             hours); the operator then found them waiting and gave every FlowRun its status in \
             {seconds:.0} s.",
            fanout + others
        ));
        Ok(())
    }

    /// Figure 5: the operator's memory and CPU with every FlowRun present.
    async fn figure5(&mut self, results: &mut Results, idle: Duration) -> anyhow::Result<()> {
        let phases = self.phases().await?;
        let total: usize = phases.values().sum();
        progress(&format!(
            "figure 5: {total} FlowRuns present; measuring the operator idle for {} s",
            idle.as_secs()
        ));
        let cpu0 = self.operator_cpu_seconds();
        let t0 = Instant::now();
        tokio::time::sleep(idle).await;
        let cpu_idle = (self.operator_cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
        let (rss, peak) = self.operator_rss();
        results.fig5 = Some(Footprint {
            flowruns: total,
            waiting: phases.get("Waiting").copied().unwrap_or(0),
            rss_mb: rss,
            rss_peak_mb: peak,
            cpu_idle,
            cpu_admitting: self.populating.map_or(f64::NAN, |p| p.2),
            idle_seconds: idle.as_secs_f64(),
        });
        results.notes.push(format!(
            "Figure 5: the FlowRuns by phase: {}. \"CPU while admitting them\" is the operator's \
             CPU from the first create of the parked runs' FlowRuns until every FlowRun had a \
             status{}.",
            {
                let mut p: Vec<_> = phases.iter().map(|(k, v)| format!("{v} {k}")).collect();
                p.sort();
                p.join(", ")
            },
            self.admitting_cpu
                .map(|c| format!(
                    " (during figure 6's admission: {:.0}% of a core)",
                    c * 100.0
                ))
                .unwrap_or_default()
        ));
        Ok(())
    }

    /// Figure 7: one FlowEvent wakes the `n` runs waiting for `go`.
    async fn figure7(&self, results: &mut Results, n: usize) -> anyhow::Result<()> {
        progress(&format!("figure 7: one event waking {n} waiting runs"));
        let pods = self.pods();
        let config =
            watcher::Config::default().labels(&format!("{LABEL_MANAGED}={MANAGED_BY_OPERATOR}"));
        let mut events = watcher::watcher(pods, config).boxed();
        // The pods that exist already (earlier attempts) are not counted.
        while let Some(event) = events.try_next().await? {
            if matches!(event, watcher::Event::InitDone) {
                break;
            }
        }
        let requests = self.api_requests().await?;
        let started = Instant::now();
        self.emit("go", "go", json!(1)).await?;
        let mut created: HashSet<String> = HashSet::new();
        let mut running: HashSet<String> = HashSet::new();
        let (mut max_running, mut all_created, mut all_finished) = (0, None, None);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // Long enough for the node's pod throughput; what is not done by then counts as lost.
        let deadline = started + Duration::from_secs(2700);
        let mut report = Instant::now();
        while all_finished.is_none() && Instant::now() < deadline {
            tokio::select! {
                event = events.try_next() => {
                    let Some(event) = event? else { break };
                    if let watcher::Event::Apply(pod) = event {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let attempt = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ATTEMPT)).cloned();
                        if attempt.as_deref() == Some("2") && created.insert(name.clone())
                            && created.len() == n {
                            all_created = Some(started.elapsed());
                        }
                        // Active: created and not finished (Pending or Running).
                        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                            running.remove(&name);
                        } else {
                            running.insert(name);
                            max_running = max_running.max(running.len());
                        }
                    }
                }
                _ = tick.tick() => {
                    let done = self.count_runs("w-", Some("succeeded")).await?;
                    if done >= n as i64 {
                        all_finished = Some(started.elapsed());
                    }
                    if report.elapsed() > Duration::from_secs(30) {
                        report = Instant::now();
                        progress(&format!(
                            "figure 7: after {:.0} s, {} pods created, {} active, {done} runs finished",
                            started.elapsed().as_secs_f64(),
                            created.len(),
                            running.len()
                        ));
                    }
                }
            }
        }
        let finished = self.count_runs("w-", Some("succeeded")).await? as usize;
        results.notes.push(format!(
            "Figure 7: API server requests per run woken, from the event until all finished \
             (the kubelet's included): {}.",
            requests_per(&requests, &self.api_requests().await?, n)
        ));
        results.fig7 = Some(FanOut {
            runs: n,
            pods_created_s: all_created.map_or(f64::NAN, |d| d.as_secs_f64()),
            pods_created: created.len(),
            waited_s: started.elapsed().as_secs_f64(),
            all_finished_s: all_finished.map_or(f64::NAN, |d| d.as_secs_f64()),
            finished,
            lost: n - finished,
            max_running_pods: max_running,
        });
        results.notes.push(format!(
            "Figure 7: times from the FlowEvent's creation; a pod counts as created when the \
             benchmark's watch sees it. The operator's running budget is {} (`--max-running`; \
             its default is {DEFAULT_MAX_RUNNING}, and with it the pods are created as earlier \
             ones finish). The node runs at most 110 pods: the scheduler keeps the others Pending \
             until earlier ones finish, so \"every run finished\" is bounded by the node's pod \
             throughput.",
            self.max_running
        ));
        Ok(())
    }

    async fn clean_up(&mut self) -> anyhow::Result<()> {
        // The operator first: its database goes with the namespace, so the benchmark removes
        // the FlowRuns' finalizers itself (one patch each) rather than have the operator clean
        // up thousands of runs one reconcile at a time on a shared API server.
        if let Some(mut operator) = self.operator.take() {
            operator.stop();
        }
        let namespaces = Api::<Namespace>::all(self.client.clone());
        let _ = namespaces
            .delete(&self.ns, &DeleteParams::background())
            .await;
        let deadline = Instant::now() + Duration::from_secs(900);
        while namespaces.get_opt(&self.ns).await?.is_some() && Instant::now() < deadline {
            self.remove_finalizers().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.pool.close().await;
        // The database and the runner login the operator created for it.
        self.db.drop_now()?;
        let refs: Vec<String> = std::iter::once(self.image.clone())
            .chain(self.image_digest_ref.clone())
            .collect();
        self.up.remove_images(&refs);
        Ok(())
    }

    async fn remove_finalizers(&self) -> anyhow::Result<()> {
        let patch = kube::api::Patch::Merge(json!({ "metadata": { "finalizers": null } }));
        let names: Vec<String> = self
            .flowruns()
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect();
        futures::stream::iter(names)
            .map(|name| {
                let api = self.flowruns();
                let patch = patch.clone();
                async move {
                    let _ = api
                        .patch_metadata(&name, &kube::api::PatchParams::default(), &patch)
                        .await;
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        Ok(())
    }
}

pub fn targets(results: &Results, targets: &mut Vec<Target>) {
    if let [bare, cairn, ..] = results.fig4.as_slice() {
        targets.push(Target {
            figure: 4,
            target: "cluster resume p50 ≤ bare pod start p50 + 200 ms".into(),
            measured: format!(
                "{:.0} ms vs {:.0} ms + 200 ms = {:.0} ms",
                cairn.p50,
                bare.p50,
                bare.p50 + 200.0
            ),
            met: cairn.p50 <= bare.p50 + 200.0,
        });
    }
    if let Some(f) = &results.fig5 {
        targets.push(Target {
            figure: 5,
            target: format!("operator RSS ≤ 60 MB at {} FlowRuns", f.flowruns),
            measured: format!("{:.1} MB (peak {:.1} MB)", f.rss_mb, f.rss_peak_mb),
            met: f.rss_mb <= 60.0,
        });
    }
    if let [floor, cairn, ..] = results.fig6.as_slice() {
        targets.push(Target {
            figure: 6,
            target: "admission ≥ 200 FlowRuns/s".into(),
            measured: format!(
                "{:.0} FlowRuns/s (the API server alone: {:.0}/s)",
                cairn.per_second, floor.per_second
            ),
            met: cairn.per_second >= 200.0,
        });
    }
    if let Some(f) = &results.fig7 {
        targets.push(Target {
            figure: 7,
            target: format!("{} pods created ≤ 20 s after the event", f.runs),
            measured: if f.pods_created == f.runs {
                format!("{:.1} s ({} lost)", f.pods_created_s, f.lost)
            } else {
                format!(
                    "{} of {} pods created after {:.0} s ({} lost)",
                    f.pods_created, f.runs, f.waited_s, f.lost
                )
            },
            met: f.pods_created_s <= 20.0 && f.lost == 0,
        });
    }
    crate::recovery::targets(results, targets);
}
