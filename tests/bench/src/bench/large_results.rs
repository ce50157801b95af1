//! Figure 11 (issue 17): the cost of a step whose result is 1 MB, kept in its checkpoint row
//! (inline) against kept in an S3 server (offloaded: the object written, then a reference
//! checkpointed), next to the floor of the inline case, a raw INSERT + COMMIT of the same 1 MB
//! JSON row. Steps run through the real SDK (`Runner::execute`) in this process; the S3 server
//! is a real s3s-fs on loopback. Each step's result differs (no write is skipped by digest).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn::{Ctx, Exit, Runner, RunnerEnv};
use cairn_engine::artifacts::ArtifactSettings;
use cairn_engine::traces::AttemptTracing;
use cairn_tests::s3::S3Server;
use serde::Deserialize;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::report::Latency;

static SAMPLES: Mutex<Vec<f64>> = Mutex::new(Vec::new());

#[derive(Deserialize)]
struct Large {
    steps: usize,
    bytes: usize,
}

/// `bytes` of text, different for each `i`.
fn text(i: usize, bytes: usize) -> String {
    let mut text = format!("step {i} ");
    text.extend(std::iter::repeat_n('x', bytes.saturating_sub(text.len())));
    text
}

/// `steps` steps each returning `bytes` of text, each timed around `ctx.step(..).await`.
async fn large(ctx: Ctx, input: Large) -> anyhow::Result<usize> {
    let mut samples = Vec::with_capacity(input.steps);
    for i in 0..input.steps {
        let value = text(i, input.bytes);
        let started = Instant::now();
        let _: String = ctx
            .step("large", move || {
                let value = value.clone();
                async move { Ok(value) }
            })
            .await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    SAMPLES.lock().unwrap().extend(samples);
    Ok(input.steps)
}

/// `steps` steps of `bytes` each through the SDK's run loop, with `artifacts` and `traces`;
/// their times in milliseconds (also figure 12's).
pub(crate) async fn run_once(
    pool: &PgPool,
    url: &str,
    artifacts: Option<ArtifactSettings>,
    traces: Option<AttemptTracing>,
    steps: usize,
    bytes: usize,
) -> anyhow::Result<Vec<f64>> {
    SAMPLES.lock().unwrap().clear();
    let env = RunnerEnv {
        database_url: url.to_owned(),
        attempt: crate::local::started_run(pool, json!({ "steps": steps, "bytes": bytes })).await?,
        inline_sleep_max: Duration::ZERO,
        pooler: Default::default(),
        stop_grace: Duration::ZERO,
        call_timeout: Duration::from_millis(cairn_engine::protocol::DEFAULT_CALL_TIMEOUT_MS),
        step_keys: None,
        artifacts: artifacts.map(Ok),
        traces: traces.map(Ok),
    };
    // The run is of flow `steps` (`local::started_run`): this runner serves it with `large`.
    let exit = Runner::new().flow("steps", large).execute(&env).await;
    anyhow::ensure!(exit == Exit::Completed, "the benchmark run ended {exit:?}");
    Ok(std::mem::take(&mut *SAMPLES.lock().unwrap()))
}

/// The floor, inline and offloaded, `steps` samples each (in that order).
pub async fn one_megabyte_results(
    pool: &PgPool,
    url: &str,
    dir: &std::path::Path,
    steps: usize,
) -> anyhow::Result<Vec<Latency>> {
    const BYTES: usize = 1 << 20;
    let mut conn = PgConnection::connect(url).await?;
    sqlx::query(crate::local::RAW_TABLE)
        .execute(&mut conn)
        .await?;
    let run = uuid::Uuid::new_v4();
    let mut floor = Vec::with_capacity(steps);
    for i in 0..steps {
        let value = json!(text(i, BYTES));
        let started = Instant::now();
        sqlx::query("INSERT INTO public.bench_raw (run_id, key, result) VALUES ($1, $2, $3)")
            .bind(run)
            .bind(format!("large#{i}"))
            .bind(&value)
            .execute(&mut conn)
            .await?;
        floor.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    conn.close().await?;
    let inline = run_once(pool, url, None, None, steps, BYTES).await?;
    let s3 = S3Server::start(&dir.join("s3"));
    let offloaded = run_once(pool, url, Some(s3.settings("bench")), None, steps, BYTES).await?;
    Ok(vec![
        Latency::of(
            "raw INSERT+COMMIT of a 1 MB row (floor)",
            "sqlx, one connection",
            floor,
        ),
        Latency::of(
            "Cairn step, 1 MB result inline",
            "SDK run loop, checkpoint row holds the value",
            inline,
        ),
        Latency::of(
            "Cairn step, 1 MB result offloaded",
            "SDK run loop, object to s3s-fs on loopback, reference checkpointed",
            offloaded,
        ),
    ])
}
