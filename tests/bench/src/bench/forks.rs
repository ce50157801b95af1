//! Figure 10 (issue 17): making a fork of a run of 1,000 checkpointed steps, next to its
//! floor, a plain `INSERT ... SELECT` copying the same 1,000 rows in one statement on the same
//! Postgres. Both from the benchmark's process over one connection; each sample is one
//! statement, committed.

use std::time::Instant;

use cairn_engine::{launcher, runner};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::report::Latency;

/// A finished run of `steps` checkpoints, each a small JSON object.
async fn source_run(pool: &PgPool, steps: usize) -> anyhow::Result<Uuid> {
    let attempt = crate::local::started_run(pool, json!({ "steps": steps })).await?;
    let mut conn = pool.acquire().await?;
    for i in 0..steps {
        let key = if i == 0 {
            "s".to_owned()
        } else {
            format!("s#{}", i + 1)
        };
        let value = json!({ "step": i, "text": "a checkpoint of a few dozen bytes" });
        let step = runner::CompletedStep {
            key: &key,
            result: &value,
            // No made-up duration: a step's start is its commit minus its duration, and a fork
            // copies the steps that completed before its fork point's start.
            duration_ms: 0,
            tries: 1,
            usage: runner::StepUsage {
                usd: Some(0.001),
                ..Default::default()
            },
        };
        runner::complete_step(&mut conn, &attempt, &step).await?;
    }
    runner::complete_run(&mut conn, &attempt, &json!(steps)).await?;
    Ok(attempt.run_id)
}

/// `samples` forks of a `steps`-step run from its last step, and as many raw copies.
pub async fn fork_creation(
    pool: &PgPool,
    steps: usize,
    samples: usize,
) -> anyhow::Result<(Latency, Latency)> {
    let source = source_run(pool, steps).await?;
    let last = format!("s#{steps}");
    // With the steps table's primary key: its maintenance is part of copying rows there.
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_step_copies (LIKE cairn.steps INCLUDING ALL)")
        .execute(pool)
        .await?;
    let (mut forks, mut copies) = (Vec::new(), Vec::new());
    let none = json!({});
    let mut conn = pool.acquire().await?;
    for _ in 0..samples {
        let name = format!("fork-{}", Uuid::new_v4().simple());
        let fork = launcher::Fork {
            name: &name,
            input: None,
            max_attempts: 1,
            retry_backoff_ms: 0,
            created_at: None,
            flowrun_uid: None,
            source,
            from_step: &last,
            outputs: &none,
            answers: &none,
        };
        let started = Instant::now();
        let (_, created, reused) = launcher::fork_run(&mut conn, &fork).await?;
        forks.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            created && reused as usize == steps - 1,
            "fork reused {reused} steps"
        );

        let copy = Uuid::new_v4();
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO bench_step_copies SELECT $2, key, kind, result, attempt, tries, \
             started_at, completed_at, usd, tokens_in, tokens_out, model, usage_meta, origin \
             FROM cairn.steps WHERE run_id = $1 AND key <> $3",
        )
        .bind(source)
        .bind(copy)
        .bind(&last)
        .execute(&mut *conn)
        .await?;
        copies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    sqlx::query("DROP TABLE bench_step_copies")
        .execute(pool)
        .await?;
    Ok((
        Latency::of(
            "copy (floor)",
            &format!(
                "`INSERT … SELECT` of the same {} rows into a table like cairn.steps",
                steps - 1
            ),
            copies,
        ),
        Latency::of(
            "Cairn",
            &format!(
                "`cairn.fork_run` from the last of {steps} steps: the run made, {} checkpoints reused",
                steps - 1
            ),
            forks,
        ),
    ))
}
