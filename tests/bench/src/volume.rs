//! `make bench-volume`: what a busy installation does to the engine's tables. A simulated week
//! of work (1,000,000 steps by default: runs of 20 steps, each emitting one event) is written by
//! 4 concurrent workers, while retention runs as the operator runs it: every simulated hour,
//! `cairn.gc` deletes the runs (with their steps) and events older than the retention window
//! (2 simulated days). Prints, at 0 (the first window), 250k, 500k and 1M steps written: the
//! live steps, the size on disk of the steps, runs and events tables (indexes and TOAST
//! included), and the per-step latency (p50, p99) of the window just before. Delete-based
//! retention keeps both flat if the size stops growing once the window is full and the p99 at
//! 1M stays near the first window's.
//!
//! Uses CAIRN_DATABASE_URL when set, else a private Postgres in a temporary directory (default
//! durability settings). The week is compressed into minutes, so autovacuum's pace is scaled
//! with it on the private Postgres (`autovacuum_naptime` 1 s instead of 1 min: about half a
//! simulated hour at 1M steps); on CAIRN_DATABASE_URL it is left as configured. `--steps N`
//! changes the size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_engine::{launcher, runner};
use cairn_operator::localdb::LocalPostgres;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;
use uuid::Uuid;

const STEPS_PER_RUN: u64 = 20;
const WORKERS: usize = 4;
const HOURS: u64 = 7 * 24;
const RETENTION_HOURS: u64 = 48;
/// The windows whose latency is reported, as fractions of the total (the first is "0").
const CHECKPOINTS: [f64; 4] = [0.0, 0.25, 0.5, 1.0];
/// The first window: the latency "at 0 steps".
const FIRST_WINDOW: u64 = 10_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut total: u64 = 1_000_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--steps" => total = args.next().context("--steps N")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?} (use --steps N)"),
        }
    }
    let dir = tempdir_for_postgres()?;
    let private = match std::env::var("CAIRN_DATABASE_URL") {
        Ok(url) if !url.is_empty() => None,
        _ => Some(LocalPostgres::new(&dir, 5497)?),
    };
    let url = match &private {
        Some(pg) => pg.ensure_running()?,
        None => std::env::var("CAIRN_DATABASE_URL")?,
    };
    if private.is_some() {
        let mut conn = PgConnection::connect(&url).await?;
        sqlx::query("ALTER SYSTEM SET autovacuum_naptime = '1s'")
            .execute(&mut conn)
            .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut conn)
            .await?;
    }
    let outcome = bench(&url, total).await;
    if let Some(pg) = &private {
        pg.stop()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn tempdir_for_postgres() -> anyhow::Result<std::path::PathBuf> {
    // Under /tmp so the `postgres` user (the server runs as it when we are root) can reach it.
    let dir = std::env::temp_dir().join(format!("cairn-bench-volume-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// What the workers share: the steps written so far and the latency of each.
struct Load {
    written: AtomicU64,
    total: u64,
    latencies: Mutex<Vec<(u64, Duration)>>,
}

async fn bench(url: &str, total: u64) -> anyhow::Result<()> {
    let pool = cairn_engine::schema::connect(url).await?;
    let mut admin = PgConnection::connect(url).await?;
    println!(
        "bench-volume: {total} steps over a simulated week ({HOURS} h), {STEPS_PER_RUN} steps and 1 event a run, \
         {WORKERS} workers; retention {RETENTION_HOURS} h, cairn.gc every simulated hour"
    );
    let naptime: String = sqlx::query_scalar("SELECT current_setting('autovacuum_naptime')")
        .fetch_one(&mut admin)
        .await?;
    println!("autovacuum_naptime {naptime}");
    let load = Arc::new(Load {
        written: AtomicU64::new(0),
        total,
        latencies: Mutex::new(Vec::with_capacity(total as usize)),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(worker(pool.clone(), url.to_owned(), load.clone())))
        .collect();

    // The simulated clock: an hour passes every total/HOURS steps; the database time at the
    // end of each hour is kept, so that gc can delete what finished RETENTION_HOURS ago.
    let per_hour = (total / HOURS).max(1);
    let mut hour_ends: Vec<DateTime<Utc>> = Vec::new();
    let mut rows = Vec::new();
    let mut next_checkpoint = 0;
    let started = Instant::now();
    let mut collected = launcher::Collected::default();
    loop {
        let written = load.written.load(Ordering::Relaxed).min(total);
        while (hour_ends.len() as u64 + 1) * per_hour <= written {
            hour_ends.push(
                sqlx::query_scalar("SELECT now()")
                    .fetch_one(&mut admin)
                    .await?,
            );
            if let Some(cutoff) = hour_ends
                .len()
                .checked_sub(RETENTION_HOURS as usize + 1)
                .map(|h| hour_ends[h])
            {
                let gc =
                    launcher::gc(&mut admin, Some(cutoff), Some(cutoff), Some("volume")).await?;
                collected.runs += gc.runs;
                collected.events += gc.events;
            }
        }
        while next_checkpoint < CHECKPOINTS.len() {
            let at = match next_checkpoint {
                0 => FIRST_WINDOW.min(total),
                i => (CHECKPOINTS[i] * total as f64) as u64,
            };
            if written < at {
                break;
            }
            rows.push(measure(&mut admin, &load, next_checkpoint, at, total).await?);
            next_checkpoint += 1;
        }
        if written >= total && next_checkpoint == CHECKPOINTS.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for worker in workers {
        worker.await??;
    }
    println!(
        "| steps written | live steps | steps table | runs table | events table | step p50 | step p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!(
        "{total} steps in {:.0} s ({:.0} steps/s); retention deleted {} runs and {} events",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64(),
        collected.runs,
        collected.events
    );
    Ok(())
}

/// One row of the table: sizes now, latency of the window that ends here.
async fn measure(
    admin: &mut PgConnection,
    load: &Load,
    index: usize,
    at: u64,
    total: u64,
) -> anyhow::Result<String> {
    let (from, label) = match index {
        0 => (0, format!("0 (first {at})")),
        i => ((CHECKPOINTS[i - 1] * total as f64) as u64, at.to_string()),
    };
    let mut window: Vec<Duration> = load
        .latencies
        .lock()
        .await
        .iter()
        .filter(|(n, _)| *n >= from && *n < at.max(from + 1))
        .map(|(_, d)| *d)
        .collect();
    window.sort();
    let q = |q: f64| {
        window
            .get(((window.len() as f64 * q) as usize).min(window.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let (live, steps, runs, events): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cairn.steps), pg_total_relation_size('cairn.steps'),
                pg_total_relation_size('cairn.runs') + pg_total_relation_size('cairn.attempts'),
                pg_total_relation_size('cairn.events')",
    )
    .fetch_one(&mut *admin)
    .await?;
    let mb = |bytes: i64| format!("{:.1} MB", bytes as f64 / 1e6);
    Ok(format!(
        "| {label} | {live} | {} | {} | {} | {:.3} ms | {:.3} ms |",
        mb(steps),
        mb(runs),
        mb(events),
        q(0.50),
        q(0.99)
    ))
}

/// Runs of STEPS_PER_RUN steps, one after another, until the total is written.
async fn worker(pool: PgPool, url: String, load: Arc<Load>) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&url).await?;
    let mut latencies = Vec::new();
    loop {
        let first = load.written.fetch_add(STEPS_PER_RUN, Ordering::Relaxed);
        if first >= load.total {
            break;
        }
        let name = format!("run-{}", Uuid::new_v4().simple());
        let mut owner = pool.acquire().await?;
        let request = launcher::NewRun {
            namespace: "volume",
            name: &name,
            flow: "agent",
            input: &json!({ "topic": "volume" }),
            max_attempts: 1,
            retry_backoff_ms: 0,
            created_at: None,
            flowrun_uid: None,
            concurrency: None,
        };
        let (run_id, _) = launcher::create_run(&mut owner, &request).await?;
        let attempt = launcher::start_attempt(&mut owner, run_id)
            .await?
            .context("run not pending")?;
        drop(owner);
        // A realistic result: a model's answer of a few hundred bytes.
        let result = json!({ "text": "x".repeat(400), "tokens": 120 });
        for i in 0..STEPS_PER_RUN {
            let key = format!("step#{i}");
            let step = runner::CompletedStep {
                key: &key,
                result: &result,
                duration_ms: 1,
                tries: 1,
                usage: runner::StepUsage::default(),
            };
            let started = Instant::now();
            runner::complete_step(&mut conn, &attempt, &step).await?;
            latencies.push((first + i, started.elapsed()));
        }
        runner::emit(
            &mut conn,
            &attempt,
            "emit",
            &format!("done-{name}"),
            &json!(true),
        )
        .await?;
        runner::complete_run(&mut conn, &attempt, &json!("done")).await?;
        if latencies.len() >= 1000 {
            load.latencies.lock().await.append(&mut latencies);
        }
    }
    load.latencies.lock().await.append(&mut latencies);
    Ok(())
}
