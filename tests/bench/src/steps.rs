//! `make bench-steps`: what a durable step costs, next to the physical floor measured in the
//! same run — a single-row INSERT + COMMIT over the same kind of connection to the same Postgres.
//!
//! Each step goes through the real SDK path (`Runner::execute` → `Ctx::step` → one call of
//! `cairn.complete_step`). Samples alternate between the two in rounds so drift (autovacuum,
//! page cache, the other core) hits both alike. Uses CAIRN_DATABASE_URL when set, else a
//! private Postgres in a temporary directory (Unix socket, default durability settings).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn::{Ctx, Exit, Runner, RunnerEnv, engine};
use cairn_operator::localdb::LocalPostgres;
use sqlx::{Connection, PgConnection};

const ROUNDS: usize = 4;
const PER_ROUND: usize = 750;
const WARMUP: usize = 200;

static STEP_SAMPLES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

async fn trivial_steps(ctx: Ctx, steps: usize) -> anyhow::Result<usize> {
    for i in 0..steps {
        let started = Instant::now();
        let _: usize = ctx.step("s", || async move { Ok(i) }).await?;
        STEP_SAMPLES.lock().unwrap().push(started.elapsed());
    }
    Ok(steps)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let private = match std::env::var("CAIRN_DATABASE_URL") {
        Ok(_) => None,
        Err(_) => {
            let root = std::env::temp_dir().join(format!("cairn-bench-{}", std::process::id()));
            std::fs::create_dir_all(&root)?;
            std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            Some(LocalPostgres::new(&root, 5499)?)
        }
    };
    let url = match &private {
        Some(pg) => pg.ensure_running()?,
        None => std::env::var("CAIRN_DATABASE_URL")?,
    };
    let outcome = bench(&url).await;
    if let Some(pg) = &private {
        pg.stop()?;
    }
    outcome
}

async fn bench(url: &str) -> anyhow::Result<()> {
    let pool = cairn_operator::store::connect(url).await?;
    let mut conn = PgConnection::connect(url).await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut conn)
        .await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut conn)
        .await?;
    let kind = if url.contains("host=/") {
        "Unix socket"
    } else {
        "TCP"
    };
    println!(
        "bench-steps: {} durable steps, {} engine calls and {} raw INSERT+COMMIT, PostgreSQL {version} over a {kind}, fsync={fsync}, synchronous_commit={sync}",
        ROUNDS * PER_ROUND,
        ROUNDS * PER_ROUND,
        ROUNDS * PER_ROUND
    );
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS public.bench_raw_inserts (
             run_id uuid NOT NULL, key text NOT NULL, result jsonb NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, key))",
    )
    .execute(&mut conn)
    .await?;

    let runner = Runner::new().flow("steps", trivial_steps);
    raw_inserts(&mut conn, WARMUP).await?;
    run_steps(&pool, &runner, url, WARMUP).await?;
    STEP_SAMPLES.lock().unwrap().clear();

    engine_calls(&pool, &mut conn, WARMUP).await?;

    let (mut raw, mut calls) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw.extend(raw_inserts(&mut conn, PER_ROUND).await?);
        calls.extend(engine_calls(&pool, &mut conn, PER_ROUND).await?);
        run_steps(&pool, &runner, url, PER_ROUND).await?;
    }
    let steps = std::mem::take(&mut *STEP_SAMPLES.lock().unwrap());

    let step_stats = Stats::of(steps);
    let call_stats = Stats::of(calls);
    let raw_stats = Stats::of(raw);
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>8}",
        "", "p50", "p99", "mean", "p50 ×raw"
    );
    for (name, s) in [
        ("raw INSERT+COMMIT", &raw_stats),
        ("complete_step call", &call_stats),
        ("SDK step (per-step)", &step_stats),
    ] {
        println!(
            "{name:<22} {:>7.3} ms {:>7.3} ms {:>7.3} ms {:>8.2}",
            s.p50,
            s.p99,
            s.mean,
            s.p50 / raw_stats.p50
        );
    }
    println!(
        "per-step p50 {:.3} ms | raw insert p50 {:.3} ms | ratio {:.2}",
        step_stats.p50,
        raw_stats.p50,
        step_stats.p50 / raw_stats.p50
    );
    Ok(())
}

/// The floor: one row, one commit, per iteration.
async fn raw_inserts(conn: &mut PgConnection, n: usize) -> anyhow::Result<Vec<Duration>> {
    let run_id = uuid::Uuid::new_v4();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO public.bench_raw_inserts (run_id, key, result) VALUES ($1, $2, $3)",
        )
        .bind(run_id)
        .bind(format!("s#{i}"))
        .bind(serde_json::json!(i))
        .execute(&mut *conn)
        .await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// The engine alone: `cairn.complete_step` called directly, without the SDK around it.
async fn engine_calls(
    pool: &sqlx::PgPool,
    conn: &mut PgConnection,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (run_id, attempt) = started_run(pool, "engine", 0).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("s#{i}");
        let result = serde_json::json!(i);
        let step = engine::CompletedStep {
            key: &key,
            result: &result,
            duration_ms: 0,
            tries: 1,
            usage: engine::StepUsage::default(),
        };
        let started = Instant::now();
        engine::complete_step(conn, run_id, attempt, &step).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// A new run, claimed for attempt 1: `(run id, attempt)`.
async fn started_run(
    pool: &sqlx::PgPool,
    flow: &str,
    input: usize,
) -> anyhow::Result<(uuid::Uuid, i32)> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let input = serde_json::json!(input);
    let mut conn = pool.acquire().await?;
    let request = engine::NewRun {
        namespace: "bench",
        name: &name,
        flow,
        input: &input,
        max_attempts: 1,
        retry_backoff_ms: 0,
    };
    let (run_id, _) = engine::create_run(&mut conn, &request).await?;
    let attempt = engine::start_attempt(&mut conn, run_id)
        .await?
        .context("run not pending")?;
    Ok((run_id, attempt))
}

/// One run of `n` trivial steps through the SDK.
async fn run_steps(
    pool: &sqlx::PgPool,
    runner: &Runner,
    url: &str,
    n: usize,
) -> anyhow::Result<()> {
    let (run_id, attempt) = started_run(pool, "steps", n).await?;
    let env = RunnerEnv {
        database_url: url.to_owned(),
        run_id,
        attempt,
        inline_sleep_max: Duration::ZERO,
    };
    let exit = runner.execute(&env).await;
    anyhow::ensure!(exit == Exit::Completed, "benchmark run ended {exit:?}");
    Ok(())
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| ms(samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]);
        Stats {
            p50: at(0.50),
            p99: at(0.99),
            mean: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
        }
    }
}
