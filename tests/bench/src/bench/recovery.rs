//! Figures 8 and 9 on the test cluster (set up in `cluster.rs`): how soon work goes on after its
//! process or its operator goes away.
//!
//! 8. drain: a flow pod deleted in the middle of a step, gracefully (its grace period, as
//!    `kubectl delete pod` or a node drain does): its process finishes the step, gives the run
//!    back and exits, and the operator launches the next attempt; until that attempt's process
//!    runs, and whether the finished step's work was done again;
//! 9. leader handover: the leading operator SIGKILLed (it releases nothing), a standby for the
//!    same Lease takes over once the Lease expires; until the standby holds it, and until a
//!    FlowRun created right after the kill has its first attempt.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use cairn_crds::{FlowRun, LABEL_ATTEMPT, LABEL_RUN};
use cairn_e2e::operator::{Operator, free_addr};
use futures::stream::BoxStream;
use futures::{AsyncBufReadExt, StreamExt};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::drain_lines::{WORK_DONE, WORK_STARTED};
use crate::local::unix_ms;
use crate::progress;
use crate::report::{Drains, Latency, Results, Target};

/// How long figure 8's step works: long enough to delete its pod in the middle of it, well
/// within the SDK's stop grace (20 s), so that the step finishes rather than being abandoned.
const STEP_MS: u64 = 3000;

/// What the runner logs when SIGTERM reaches it, and an operator when it takes the Lease.
const TOLD_TO_STOP: &str = "told to stop (SIGTERM)";
const HOLDING: &str = "holding the Lease";

/// One drained run: Unix milliseconds, as the flow and the logs record them.
struct Drained {
    deleted_at: f64,
    /// When the deleted pod's process logged the SIGTERM (if its log said so).
    told_to_stop_at: Option<f64>,
    work_finished_at: f64,
    next_started_at: f64,
    /// The attempts in which the long step finished and the step after it ran.
    work_attempt: i64,
    continued_attempt: i64,
    succeeded: bool,
    /// How many times the long step's work was done, over every attempt's log.
    work_done: usize,
    /// The run's state, error and attempts, for a run that went otherwise than intended.
    history: String,
}

impl Cluster {
    /// Figure 8: `count` runs of `drain`, one after another, each pod deleted while its long
    /// step works.
    pub(crate) async fn figure8(&self, results: &mut Results, count: usize) -> anyhow::Result<()> {
        progress(&format!("figure 8: {count} flow pods deleted mid-step"));
        let (mut total, mut to_signal, mut to_step_end, mut to_next) =
            (vec![], vec![], vec![], vec![]);
        let (mut succeeded, mut work_repeated, mut problems) = (0, 0, vec![]);
        for i in 0..count {
            let d = match self.drain_once(&format!("drain-{i}")).await {
                Ok(d) => d,
                Err(e) => {
                    progress(&format!("figure 8: drain-{i}: {e:#}"));
                    problems.push(format!("drain-{i}: {e:#}"));
                    continue;
                }
            };
            succeeded += usize::from(d.succeeded);
            work_repeated += usize::from(d.work_done > 1);
            // Measured only as intended: the step finished in the deleted pod, the next
            // attempt went on after it.
            if !d.succeeded || d.work_attempt != 1 || d.continued_attempt != 2 {
                problems.push(format!(
                    "drain-{i}: the step finished in attempt {}, the next ran in attempt {} \
                     ({})",
                    d.work_attempt, d.continued_attempt, d.history
                ));
                continue;
            }
            progress(&format!(
                "figure 8, run {}/{count}: the next attempt's process ran {:.2} s after the delete",
                i + 1,
                (d.next_started_at - d.deleted_at) / 1000.0
            ));
            total.push(d.next_started_at - d.deleted_at);
            to_next.push(d.next_started_at - d.work_finished_at);
            if let Some(signalled) = d.told_to_stop_at {
                to_signal.push(signalled - d.deleted_at);
                to_step_end.push(d.work_finished_at - signalled);
            }
        }
        ensure!(
            !total.is_empty(),
            "no run was drained as intended: {}",
            problems.join("; ")
        );
        let mut latencies = vec![Latency::of(
            "Cairn",
            "pod deleted (its grace period) → its process finishes the step, gives the run back, \
             exits → operator → the next attempt's process runs",
            total,
        )];
        if !to_signal.is_empty() {
            latencies.push(Latency::of(
                "part 1",
                "the delete → SIGTERM reaches the flow process (the runner logs it)",
                to_signal,
            ));
            latencies.push(Latency::of(
                "part 2",
                &format!(
                    "SIGTERM → the step in flight finishes (the rest of its {:.0} s of work)",
                    STEP_MS as f64 / 1000.0
                ),
                to_step_end,
            ));
        }
        latencies.push(Latency::of(
            "part 3",
            "the step finished → the next attempt's process runs (give back, exit, operator, \
             new pod)",
            to_next,
        ));
        results.fig8 = Some(Drains {
            latencies,
            runs: count,
            succeeded,
            work_repeated,
        });
        results.notes.push(format!(
            "Figure 8: runs of `drain` (a {:.0} s step, then a step recording when its process \
             started), one at a time; the pod is deleted (default grace period) once its log \
             says the step started. Times are wall-clock, taken by the benchmark (the delete), \
             the flow (its steps) and the runner's log; the step's work is counted by the \
             line it prints, in every attempt's log.{}",
            STEP_MS as f64 / 1000.0,
            if problems.is_empty() {
                String::new()
            } else {
                format!(" Left out: {}.", problems.join("; "))
            }
        ));
        Ok(())
    }

    /// Creates a run of `drain` named `name`, deletes its pod once its step works, and waits
    /// for the run to finish.
    async fn drain_once(&self, name: &str) -> anyhow::Result<Drained> {
        let run = self.flowrun(name, "drain", json!({ "step_ms": STEP_MS }), false);
        self.flowruns().create(&PostParams::default(), &run).await?;
        let pod = cairn_engine::names::pod_name(name, 1);
        let mut lines = self.follow_log(&pod, Duration::from_secs(120)).await?;
        let mut first_log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !first_log
            .last()
            .is_some_and(|l: &String| l.contains(WORK_STARTED))
        {
            match timeout_at(deadline, lines.next()).await {
                Ok(Some(line)) => first_log.push(line?),
                Ok(None) => bail!("pod {pod}'s log ended before its step started"),
                Err(_) => bail!("pod {pod} did not start its step within 2 minutes"),
            }
        }
        let deleted_at = unix_ms();
        self.pods().delete(&pod, &DeleteParams::default()).await?;
        // The rest of the deleted pod's log: the stream ends when its process exits.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match timeout_at(deadline, lines.next()).await {
                Ok(Some(line)) => first_log.push(line?),
                Ok(None) => break,
                Err(_) => bail!("pod {pod}'s process still ran 2 minutes after its delete"),
            }
        }
        let (run_id, state) = self
            .wait_db(
                &format!("run {name} to finish"),
                Duration::from_secs(300),
                Duration::from_millis(100),
                || async {
                    let row: Option<(Uuid, String)> = sqlx::query_as(
                        "SELECT id, state FROM cairn.runs WHERE namespace = $1 AND name = $2
                         AND cairn.is_terminal(state)",
                    )
                    .bind(&self.ns)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row)
                },
            )
            .await?;
        let history = self.run_history(run_id).await?;
        let work = self.step_result(run_id, "work").await?;
        let continued = self.step_result(run_id, "continued").await?;
        // The other attempts' pods are kept (the operator keeps the newest few).
        let mut logs = first_log.join("\n");
        let selector = format!("{LABEL_RUN}={run_id},{LABEL_ATTEMPT}!=1");
        for other in self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await?
        {
            let other = other.metadata.name.unwrap_or_default();
            // The API server serves a log once the pod's status shows its container started,
            // and the kubelet's status updates can lag well behind the process.
            self.wait_pod_finished(&format!("metadata.name={other}"), Duration::from_secs(60))
                .await?;
            logs.push('\n');
            let log = self.pods().logs(&other, &LogParams::default()).await;
            logs.push_str(&log.with_context(|| format!("no log of pod {other} ({history})"))?);
        }
        let number = |v: &Value, key: &str| {
            v[key]
                .as_f64()
                .with_context(|| format!("no {key} in a step of {name}: {v}"))
        };
        Ok(Drained {
            deleted_at,
            told_to_stop_at: logged_at(&first_log.join("\n"), TOLD_TO_STOP),
            work_finished_at: number(&work, "finished_at")?,
            next_started_at: number(&continued, "process_started_at")?,
            work_attempt: work["attempt"].as_i64().unwrap_or(0),
            continued_attempt: continued["attempt"].as_i64().unwrap_or(0),
            succeeded: state == "succeeded",
            work_done: logs.lines().filter(|l| l.contains(WORK_DONE)).count(),
            history,
        })
    }

    /// "succeeded; attempt 1 suspended (stopped), attempt 2 completed" and the run's error.
    async fn run_history(&self, run_id: Uuid) -> anyhow::Result<String> {
        let (state, error): (String, Option<Value>) =
            sqlx::query_as("SELECT state, error FROM cairn.runs WHERE id = $1")
                .bind(run_id)
                .fetch_one(&self.pool)
                .await?;
        let attempts: Vec<(i32, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT attempt, outcome, detail FROM cairn.attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let attempts: Vec<String> = attempts
            .into_iter()
            .map(|(n, outcome, detail)| {
                format!(
                    "attempt {n} {} ({})",
                    outcome.as_deref().unwrap_or("running"),
                    detail.unwrap_or_default()
                )
            })
            .collect();
        Ok(format!(
            "{state}; {}{}",
            attempts.join(", "),
            error.map(|e| format!("; error {e}")).unwrap_or_default()
        ))
    }

    /// A checkpointed step's value.
    async fn step_result(&self, run_id: Uuid, key: &str) -> anyhow::Result<Value> {
        sqlx::query_scalar("SELECT result FROM cairn.steps WHERE run_id = $1 AND key = $2")
            .bind(run_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .with_context(|| format!("no checkpoint of step {key} of run {run_id}"))
    }

    /// The pod's log line by line from its first, followed until its process exits; waits up
    /// to `patience` for the pod to exist and its container to start.
    async fn follow_log(
        &self,
        pod: &str,
        patience: Duration,
    ) -> anyhow::Result<BoxStream<'static, std::io::Result<String>>> {
        let params = LogParams {
            follow: true,
            ..Default::default()
        };
        let deadline = Instant::now() + patience;
        loop {
            match self.pods().log_stream(pod, &params).await {
                Ok(log) => return Ok(log.lines().boxed()),
                // Not created yet, or its container not started.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e).with_context(|| format!("no log of pod {pod}")),
            }
        }
    }

    /// Figure 9: `count` handovers. Each round starts a standby, SIGKILLs the leader, creates a
    /// FlowRun, and the standby leads the next round.
    pub(crate) async fn figure9(
        &mut self,
        results: &mut Results,
        count: usize,
    ) -> anyhow::Result<()> {
        progress(&format!("figure 9: {count} leader handovers"));
        let present = self.phases().await?.values().sum::<usize>();
        let (mut holding, mut launched) = (vec![], vec![]);
        for round in 1..=count {
            let mut config = self.operator_config.clone();
            config.listen = free_addr("127.0.0.1")?;
            config.log = config.log.with_file_name(format!("operator-{round}.log"));
            let _ = std::fs::remove_file(&config.log);
            let mut standby = Operator::spawn(&config)?;
            standby
                .wait_log("waiting to hold the Lease", Duration::from_secs(120))
                .await?;
            ensure!(
                !standby.log_text().contains(HOLDING),
                "the standby took the Lease from a live leader; its log: {}",
                standby.log_tail(10)
            );
            let name = format!("handover-{round}");
            let run = self.flowrun(&name, "noop", json!({}), false);
            let killed_at = unix_ms();
            if let Some(mut leader) = self.operator.take() {
                leader.kill();
            }
            self.operator_pid = standby.pid().unwrap_or_default();
            self.operator = Some(standby);
            self.flowruns().create(&PostParams::default(), &run).await?;
            let has_attempt = |r: Option<&FlowRun>| {
                r.and_then(|r| r.status.as_ref()?.attempt)
                    .is_some_and(|a| a >= 1)
            };
            tokio::time::timeout(
                Duration::from_secs(120),
                await_condition(self.flowruns(), &name, has_attempt),
            )
            .await
            .with_context(|| format!("FlowRun {name} had no attempt 2 minutes after the kill"))??;
            launched.push(unix_ms() - killed_at);
            let new_leader = self.operator.as_mut().context("no operator")?;
            new_leader
                .wait_log(HOLDING, Duration::from_secs(60))
                .await?;
            let held_at = logged_at(&new_leader.log_text(), HOLDING)
                .context("no time on the operator's log line")?;
            holding.push(held_at - killed_at);
            progress(&format!(
                "figure 9, round {round}/{count}: the standby held the Lease {:.2} s after the \
                 kill, {name} had its first attempt after {:.2} s",
                (held_at - killed_at) / 1000.0,
                launched.last().copied().unwrap_or_default() / 1000.0
            ));
            // The new leader finishes that run before it is killed in turn.
            self.wait_db(
                &format!("run {name} to finish"),
                Duration::from_secs(300),
                Duration::from_millis(100),
                || async {
                    let done: Option<bool> = sqlx::query_scalar(
                        "SELECT true FROM cairn.runs WHERE namespace = $1 AND name = $2
                         AND cairn.is_terminal(state)",
                    )
                    .bind(&self.ns)
                    .bind(&name)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(done)
                },
            )
            .await?;
        }
        results.fig9 = vec![
            Latency::of(
                "standby holds the Lease",
                "leader SIGKILLed → the standby logs that it holds the Lease",
                holding,
            ),
            Latency::of(
                "first attempt",
                "leader SIGKILLed, a FlowRun created → its status shows attempt 1",
                launched,
            ),
        ];
        results.notes.push(format!(
            "Figure 9: each round starts a standby (`cairn operator` with the same flags and \
             Lease) and SIGKILLs the leader once the standby waits for the Lease; the standby \
             leads the next round. Both use the default `--lease-seconds` (4): the leader \
             renews every 2 s, so its Lease expires 2–4 s after the kill; the standby then \
             releases it and waits 0.1–1 s at random before taking it (kube-lease-manager). \
             {present} FlowRuns were in the namespace (a new leader lists them all as it \
             starts). Logs: `logs/operator-<round>.log`."
        ));
        Ok(())
    }
}

/// When the first line of a JSON log (the runner's, the operator's) containing `message` was
/// logged, in Unix milliseconds.
fn logged_at(log: &str, message: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let entry: Value = serde_json::from_str(line).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(entry["timestamp"].as_str()?).ok()?;
    Some(at.timestamp_micros() as f64 / 1000.0)
}

pub fn targets(results: &Results, targets: &mut Vec<Target>) {
    if let Some(d) = &results.fig8 {
        targets.push(Target {
            figure: 8,
            target: "a drained run succeeds, and its finished step's work is not done again".into(),
            measured: format!(
                "{} of {} succeeded, {} repeated a finished step",
                d.succeeded, d.runs, d.work_repeated
            ),
            met: d.succeeded == d.runs && d.work_repeated == 0,
        });
    }
    if let Some(holding) = results.fig9.first() {
        targets.push(Target {
            figure: 9,
            target: "handover ≤ 5 s after the leader's SIGKILL (every one)".into(),
            measured: format!(
                "max {:.2} s, p50 {:.2} s over {}",
                holding.max / 1000.0,
                holding.p50 / 1000.0,
                holding.n
            ),
            met: holding.max <= 5000.0,
        });
    }
}
