//! `make bench-steps`: what a durable step costs, next to the physical floor measured in the
//! same run — a single-row INSERT + COMMIT over the same kind of connection to the same Postgres.
//!
//! Every iteration takes three samples back to back, so drift (autovacuum, page cache, whatever
//! else the machine does) hits them alike:
//! - `raw`: one INSERT + COMMIT of a checkpoint-shaped row (the floor);
//! - `engine`: one call of `cairn.complete_step` (the engine alone);
//! - `step`: one `Ctx::step` through the SDK inside a real run (`Runner::execute`).
//!
//! Uses CAIRN_DATABASE_URL when set, else a private Postgres in a temporary directory (Unix
//! socket, default durability settings: fsync and synchronous_commit on).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn::{Ctx, Exit, Runner, RunnerEnv};
use cairn_engine::{launcher, runner};
use cairn_operator::localdb::LocalPostgres;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const STEPS: usize = 3000;
const WARMUP: usize = 200;

/// The samples, and the connection and run the `raw` and `engine` samples use.
struct Probe {
    conn: PgConnection,
    engine_run: runner::Attempt,
    raw: Vec<Duration>,
    engine: Vec<Duration>,
    step: Vec<Duration>,
}

static PROBE: Mutex<Option<Probe>> = Mutex::new(None);

fn take_probe() -> Probe {
    PROBE.lock().unwrap().take().expect("probe installed")
}

fn put_probe(probe: Probe) {
    *PROBE.lock().unwrap() = Some(probe);
}

/// The flow under test: `steps` trivial steps, each preceded by a raw insert and an engine call.
async fn interleaved(ctx: Ctx, steps: usize) -> anyhow::Result<usize> {
    for i in 0..steps {
        let mut probe = take_probe();
        let key = format!("s#{i}");
        let value = serde_json::json!(i);

        let started = Instant::now();
        sqlx::query(
            "INSERT INTO public.bench_raw_inserts (run_id, key, result) VALUES ($1, $2, $3)",
        )
        .bind(ctx.run_id())
        .bind(&key)
        .bind(&value)
        .execute(&mut probe.conn)
        .await?;
        probe.raw.push(started.elapsed());

        let step = runner::CompletedStep {
            key: &format!("{}/{key}", ctx.run_id()),
            result: &value,
            duration_ms: 0,
            tries: 1,
            usage: runner::StepUsage::default(),
        };
        let started = Instant::now();
        runner::complete_step(&mut probe.conn, &probe.engine_run, &step).await?;
        probe.engine.push(started.elapsed());

        let started = Instant::now();
        let _: usize = ctx.step("s", || async move { Ok(i) }).await?;
        probe.step.push(started.elapsed());
        put_probe(probe);
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
    let pool = cairn_engine::schema::connect(url).await?;
    let mut conn = PgConnection::connect(url).await?;
    let mut setting = async |name: &str| -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?)
    };
    let version = setting("server_version").await?;
    let durability = format!(
        "fsync={}, synchronous_commit={}",
        setting("fsync").await?,
        setting("synchronous_commit").await?
    );
    let kind = if url.contains("host=/") {
        "Unix socket"
    } else {
        "TCP"
    };
    println!(
        "bench-steps: {STEPS} iterations of raw INSERT+COMMIT, complete_step call and SDK step, back to back"
    );
    println!("PostgreSQL {version} over a {kind}, {durability}; one connection each, no pool");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS public.bench_raw_inserts (
             run_id uuid NOT NULL, key text NOT NULL, result jsonb NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, key))",
    )
    .execute(&mut conn)
    .await?;

    let engine_run = started_run(&pool, "engine", 0).await?;
    put_probe(Probe {
        conn,
        engine_run,
        raw: vec![],
        engine: vec![],
        step: vec![],
    });
    let runner = Runner::new().flow("interleaved", interleaved);
    run_flow(&pool, &runner, url, WARMUP).await?;
    let mut probe = take_probe();
    (probe.raw, probe.engine, probe.step) = (vec![], vec![], vec![]);
    put_probe(probe);
    run_flow(&pool, &runner, url, STEPS).await?;
    let probe = take_probe();

    let raw = Stats::of(probe.raw);
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>9}",
        "", "p50", "p99", "mean", "p50/raw"
    );
    for (name, s) in [
        ("raw INSERT+COMMIT", &raw),
        ("complete_step call", &Stats::of(probe.engine)),
        ("SDK step (per-step)", &Stats::of(probe.step.clone())),
    ] {
        println!(
            "{name:<22} {:>7.3} ms {:>7.3} ms {:>7.3} ms {:>9.2}",
            s.p50,
            s.p99,
            s.mean,
            s.p50 / raw.p50
        );
    }
    let step = Stats::of(probe.step);
    println!(
        "per-step p50 {:.3} ms | raw insert p50 {:.3} ms | ratio {:.2}",
        step.p50,
        raw.p50,
        step.p50 / raw.p50
    );
    Ok(())
}

/// A new run, claimed for attempt 1: `(run id, attempt)`.
async fn started_run(
    pool: &sqlx::PgPool,
    flow: &str,
    input: usize,
) -> anyhow::Result<runner::Attempt> {
    let name = format!("bench-{}", Uuid::new_v4().simple());
    let input = serde_json::json!(input);
    let mut conn = pool.acquire().await?;
    let request = launcher::NewRun {
        namespace: "bench",
        name: &name,
        flow,
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

/// One run of the interleaved flow with `n` steps, through the SDK's run loop.
async fn run_flow(pool: &sqlx::PgPool, runner: &Runner, url: &str, n: usize) -> anyhow::Result<()> {
    let attempt = started_run(pool, "interleaved", n).await?;
    let env = RunnerEnv {
        database_url: url.to_owned(),
        attempt,
        inline_sleep_max: Duration::ZERO,
        pooler: Default::default(),
        stop_grace: Duration::ZERO,
        call_timeout: Duration::from_millis(cairn_engine::protocol::DEFAULT_CALL_TIMEOUT_MS),
        step_keys: None,
        artifacts: None,
        traces: None,
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
