//! Cairn's side of figures 1–3 and the physical floors, on the benchmark's private Postgres.
//!
//! - The floor of a step: a single-row INSERT (a checkpoint-shaped row) committed on its own,
//!   over the same kind of connection (sqlx, Unix socket) the SDK uses.
//! - Cairn's steps run through the real SDK: `Runner::execute`, the run loop a flow process
//!   runs, in this process, one database connection per run as in a flow process.
//! - Resume runs the real `cairn dev run` (the local supervisor) as a process, launching the
//!   `bench-flows` binary; this process emits each event once the run waits for it.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use cairn::{Ctx, Exit, Runner, RunnerEnv};
use cairn_engine::{launcher, runner};
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::report::{Latency, Rate};

/// Per-step samples (ms) of the recorded run, and the (first start, last end, steps) of every run.
static SAMPLES: Mutex<Vec<f64>> = Mutex::new(Vec::new());
/// The floor's samples, taken interleaved with the recorded run's steps, and its connection.
static RAW_SAMPLES: Mutex<Vec<f64>> = Mutex::new(Vec::new());
static RAW_CONN: tokio::sync::Mutex<Option<PgConnection>> = tokio::sync::Mutex::const_new(None);
static SPANS: Mutex<Vec<(Instant, Instant, u64)>> = Mutex::new(Vec::new());

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

#[derive(Deserialize)]
struct Steps {
    n: u64,
    record: bool,
}

/// The flow under test: `n` trivial steps, each timed around `ctx.step(..).await`. When
/// recording, each step is preceded by the floor: a raw INSERT + COMMIT on a connection of its
/// own, timed too, so both are sampled at the same moments whatever else the machine does.
async fn steps(ctx: Ctx, input: Steps) -> anyhow::Result<u64> {
    let mut samples = Vec::with_capacity(if input.record { input.n as usize } else { 0 });
    let mut raw_samples = Vec::with_capacity(samples.capacity());
    // Only the recorded run takes the floor's connection (the parallel runs must not wait).
    let mut raw = match input.record {
        true => Some(RAW_CONN.lock().await),
        false => None,
    };
    let first = Instant::now();
    for i in 0..input.n {
        if let Some(conn) = raw.as_mut().and_then(|guard| guard.as_mut()) {
            let started = Instant::now();
            insert_raw(conn, ctx.run_id(), i).await?;
            raw_samples.push(ms(started.elapsed()));
        }
        let started = Instant::now();
        let _: u64 = ctx.step("s", || async move { Ok(i) }).await?;
        if input.record {
            samples.push(ms(started.elapsed()));
        }
    }
    let last = Instant::now();
    SPANS.lock().unwrap().push((first, last, input.n));
    SAMPLES.lock().unwrap().extend(samples);
    RAW_SAMPLES.lock().unwrap().extend(raw_samples);
    Ok(input.n)
}

pub const RAW_TABLE: &str = "CREATE TABLE IF NOT EXISTS public.bench_raw (
    run_id uuid NOT NULL, key text NOT NULL, result jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, key))";

async fn insert_raw(conn: &mut PgConnection, run: Uuid, i: u64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO public.bench_raw (run_id, key, result) VALUES ($1, $2, $3)")
        .bind(run)
        .bind(format!("s#{i}"))
        .bind(json!(i))
        .execute(conn)
        .await?;
    Ok(())
}

/// The floor at a concurrency: `conns` connections doing `per_conn` INSERT + COMMITs each.
pub async fn raw_parallel(url: &str, conns: usize, per_conn: u64) -> anyhow::Result<Rate> {
    parallel_inserts(url, conns, per_conn, false).await
}

/// The same INSERT + COMMITs into the engine's own checkpoint table (`cairn.steps`, its
/// columns and index), without the engine's function: what the row itself costs.
pub async fn steps_table_parallel(url: &str, conns: usize, per_conn: u64) -> anyhow::Result<Rate> {
    parallel_inserts(url, conns, per_conn, true).await
}

async fn parallel_inserts(
    url: &str,
    conns: usize,
    per_conn: u64,
    steps_table: bool,
) -> anyhow::Result<Rate> {
    let mut connections = Vec::new();
    for _ in 0..conns {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query(RAW_TABLE).execute(&mut conn).await?;
        connections.push(conn);
    }
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let run = Uuid::new_v4();
                let first = Instant::now();
                for i in 0..per_conn {
                    if steps_table {
                        sqlx::query(
                            "INSERT INTO cairn.steps (run_id, key, kind, result, attempt, tries, started_at)
                             VALUES ($1, $2, 'step', $3, 1, 1, now())",
                        )
                        .bind(run)
                        .bind(format!("s#{i}"))
                        .bind(json!(i))
                        .execute(&mut conn)
                        .await?;
                    } else {
                        insert_raw(&mut conn, run, i).await?;
                    }
                }
                anyhow::Ok((first, Instant::now()))
            })
        })
        .collect();
    let mut spans = Vec::new();
    for task in tasks {
        spans.push(task.await??);
    }
    let seconds = span_seconds(spans.iter().map(|(a, b)| (*a, *b)));
    let (system, how) = if steps_table {
        (
            "INSERT+COMMIT into cairn.steps",
            format!(
                "{conns} connections × {per_conn}, sqlx, the engine's table without its function"
            ),
        )
    } else {
        (
            "raw INSERT+COMMIT (floor)",
            format!("{conns} connections × {per_conn}, sqlx"),
        )
    };
    Ok(Rate::of(system, &how, conns as u64 * per_conn, seconds))
}

fn span_seconds(spans: impl Iterator<Item = (Instant, Instant)>) -> f64 {
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for (a, b) in spans {
        first = Some(first.map_or(a, |f| f.min(a)));
        last = Some(last.map_or(b, |l| l.max(b)));
    }
    (last.expect("spans") - first.expect("spans")).as_secs_f64()
}

fn runner() -> Runner {
    Runner::new().flow("steps", steps)
}

/// A new run of the `steps` flow, claimed for attempt 1, ready for `Runner::execute`.
async fn claimed_run(
    pool: &PgPool,
    url: &str,
    input: serde_json::Value,
) -> anyhow::Result<RunnerEnv> {
    Ok(RunnerEnv {
        database_url: url.to_owned(),
        attempt: started_run(pool, input).await?,
        inline_sleep_max: Duration::ZERO,
        pooler: Default::default(),
        stop_grace: Duration::ZERO,
        call_timeout: Duration::from_millis(cairn_engine::protocol::DEFAULT_CALL_TIMEOUT_MS),
        step_keys: None,
        artifacts: None,
        traces: None,
    })
}

/// A new run of the `steps` flow in namespace `bench`, and its first attempt, claimed.
pub async fn started_run(
    pool: &PgPool,
    input: serde_json::Value,
) -> anyhow::Result<runner::Attempt> {
    let name = format!("bench-{}", Uuid::new_v4().simple());
    let mut conn = pool.acquire().await?;
    let request = launcher::NewRun {
        namespace: "bench",
        name: &name,
        flow: "steps",
        input: &input,
        max_attempts: 1,
        retry_backoff_ms: 0,
        created_at: None,
        flowrun_uid: None,
        concurrency: None,
    };
    let (run_id, _) = launcher::create_run(&mut conn, &request).await?;
    launcher::start_attempt(&mut conn, run_id)
        .await?
        .context("run not pending")
}

/// Figure 1 for Cairn: one run of `n` trivial steps through the SDK, each preceded by the
/// floor (a raw INSERT + COMMIT on another connection of the same kind). Returns the per-step
/// and the floor's samples (ms).
pub async fn cairn_steps(pool: &PgPool, url: &str, n: u64) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    SAMPLES.lock().unwrap().clear();
    RAW_SAMPLES.lock().unwrap().clear();
    let mut conn = PgConnection::connect(url).await?;
    sqlx::query(RAW_TABLE).execute(&mut conn).await?;
    *RAW_CONN.lock().await = Some(conn);
    let env = claimed_run(pool, url, json!({ "n": n, "record": true })).await?;
    let exit = runner().execute(&env).await;
    if let Some(conn) = RAW_CONN.lock().await.take() {
        conn.close().await?;
    }
    anyhow::ensure!(exit == Exit::Completed, "the benchmark run ended {exit:?}");
    Ok((
        std::mem::take(&mut *SAMPLES.lock().unwrap()),
        std::mem::take(&mut *RAW_SAMPLES.lock().unwrap()),
    ))
}

/// Figure 2 for Cairn: `runs` runs of `per_run` steps at once, each with its own connection as
/// a flow process has. Steps/s over the span from the first step's start to the last's end.
pub async fn cairn_parallel(
    pool: &PgPool,
    url: &str,
    runs: usize,
    per_run: u64,
) -> anyhow::Result<Rate> {
    SPANS.lock().unwrap().clear();
    let mut envs = Vec::new();
    for _ in 0..runs {
        envs.push(claimed_run(pool, url, json!({ "n": per_run, "record": false })).await?);
    }
    let runner = std::sync::Arc::new(runner());
    let tasks: Vec<_> = envs
        .into_iter()
        .map(|env| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.execute(&env).await })
        })
        .collect();
    for task in tasks {
        let exit = task.await?;
        anyhow::ensure!(exit == Exit::Completed, "a benchmark run ended {exit:?}");
    }
    let spans = std::mem::take(&mut *SPANS.lock().unwrap());
    let seconds = span_seconds(spans.iter().map(|(a, b, _)| (*a, *b)));
    Ok(Rate::of(
        "Cairn",
        &format!("{runs} runs × {per_run} steps, SDK run loop, a connection each"),
        spans.iter().map(|s| s.2).sum(),
        seconds,
    ))
}

/// The engine alone at the same concurrency: `runs` connections calling `cairn.complete_step`
/// (what `ctx.step` sends) `per_run` times each, without the SDK around it.
pub async fn engine_parallel(
    pool: &PgPool,
    url: &str,
    runs: usize,
    per_run: u64,
) -> anyhow::Result<Rate> {
    let mut work = Vec::new();
    for _ in 0..runs {
        let env = claimed_run(pool, url, json!({ "n": per_run, "record": false })).await?;
        work.push((env, PgConnection::connect(url).await?));
    }
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(env, mut conn)| {
            tokio::spawn(async move {
                let first = Instant::now();
                for i in 0..per_run {
                    let key = if i == 0 {
                        "s".to_owned()
                    } else {
                        format!("s#{}", i + 1)
                    };
                    let value = json!(i);
                    let step = runner::CompletedStep {
                        key: &key,
                        result: &value,
                        duration_ms: 0,
                        tries: 1,
                        usage: runner::StepUsage::default(),
                    };
                    runner::complete_step(&mut conn, &env.attempt, &step).await?;
                }
                anyhow::Ok((first, Instant::now()))
            })
        })
        .collect();
    let mut spans = Vec::new();
    for task in tasks {
        spans.push(task.await??);
    }
    Ok(Rate::of(
        "Cairn engine alone",
        &format!("{runs} connections × {per_run} `cairn.complete_step` calls, no SDK"),
        runs as u64 * per_run,
        span_seconds(spans.into_iter()),
    ))
}

/// The floor of a push wake-up on Postgres: a NOTIFY committed on one connection until a
/// LISTENing connection receives it.
pub async fn notify_floor(url: &str, count: usize, settle: Duration) -> anyhow::Result<Vec<f64>> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen("cairn_bench_floor").await?;
    let mut conn = PgConnection::connect(url).await?;
    let mut samples = Vec::new();
    for i in 0..count {
        tokio::time::sleep(settle).await;
        let started = Instant::now();
        sqlx::query("SELECT pg_notify('cairn_bench_floor', $1)")
            .bind(i.to_string())
            .execute(&mut conn)
            .await?;
        let note = listener.recv().await?;
        samples.push(ms(started.elapsed()));
        anyhow::ensure!(note.payload() == i.to_string(), "unexpected notification");
    }
    Ok(samples)
}

/// Resume latencies (ms): in all, and split at the moment the new process started.
#[derive(Default)]
pub struct ResumeSamples {
    pub total: Vec<f64>,
    /// Emit → the relaunched process runs its first line (supervisor or operator, and launch).
    pub to_process: Vec<f64>,
    /// The process's first line → the flow's line after the wait (connect, load, replay).
    pub in_process: Vec<f64>,
}

/// Figure 3 for Cairn: `cairn dev run` supervises a `resume` run of `bench-flows` that waits
/// for `count` events in turn; each is emitted `settle` after the run is parked waiting for it
/// (its process then exits), and the sample is the time from the emit until the relaunched
/// process ran the line after the wait (recorded by the flow itself, see flows.rs).
pub async fn cairn_resume(
    pool: &PgPool,
    url: &str,
    bin_dir: &Path,
    log: &Path,
    count: u32,
    settle: Duration,
) -> anyhow::Result<ResumeSamples> {
    let name = format!("resume-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let prefix = format!("{name}-e");
    let input = json!({ "prefix": prefix, "count": count }).to_string();
    let log_file = std::fs::File::create(log)?;
    let mut dev = tokio::process::Command::new(bin_dir.join("cairn"))
        .args(["dev", "run"])
        .arg(bin_dir.join("bench-flows"))
        .args(["--flow", "resume", "--name", &name, "--input", &input])
        .env("CAIRN_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `cairn dev run`")?;

    let mut samples = ResumeSamples::default();
    for i in 0..count {
        let event = format!("{prefix}{i}");
        let run_id = wait_until(&mut dev, log, &format!("the run to wait for {event}"), || async {
            let row: Option<(Uuid, String, Option<String>)> = sqlx::query_as(
                "SELECT id, state, waiting_for->>'event' FROM cairn.runs WHERE namespace = 'default' AND name = $1",
            )
            .bind(&name)
            .fetch_optional(pool)
            .await?;
            Ok(row.and_then(|(id, state, waiting)| {
                (state == "waiting" && waiting.as_deref() == Some(event.as_str())).then_some(id)
            }))
        })
        .await?;
        tokio::time::sleep(settle).await;
        let emitted = unix_ms();
        let mut conn = pool.acquire().await?;
        launcher::emit(&mut conn, "default", &event, &json!(i)).await?;
        drop(conn);
        let key = if i == 0 {
            "resumed".to_owned()
        } else {
            format!("resumed#{}", i + 1)
        };
        let (at, started) =
            wait_until(
                &mut dev,
                log,
                &format!("the run to resume after {event}"),
                || async {
                    let value: Option<serde_json::Value> = sqlx::query_scalar(
                        "SELECT result FROM cairn.steps WHERE run_id = $1 AND key = $2",
                    )
                    .bind(run_id)
                    .bind(&key)
                    .fetch_optional(pool)
                    .await?;
                    Ok(value
                        .and_then(|v| Some((v["at"].as_f64()?, v["process_started_at"].as_f64()?))))
                },
            )
            .await?;
        samples.total.push(at - emitted);
        samples.to_process.push(started - emitted);
        samples.in_process.push(at - started);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), dev.wait()).await??;
    if !status.success() {
        bail!("`cairn dev run` ended with {status}; see {}", log.display());
    }
    Ok(samples)
}

/// Polls `probe` every 2 ms until it yields a value; fails if `cairn dev` exits first or after
/// a minute.
async fn wait_until<T, F, Fut>(
    dev: &mut tokio::process::Child,
    log: &Path,
    what: &str,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if let Some(status) = dev.try_wait()? {
            bail!(
                "`cairn dev run` exited ({status}) before {what}; see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The figure-1 baseline row.
pub fn raw_latency(samples: Vec<f64>) -> Latency {
    Latency::of(
        "raw INSERT+COMMIT (floor)",
        "sqlx over the same socket as the SDK; one before each of Cairn's steps, same run",
        samples,
    )
}
