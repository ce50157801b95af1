//! `cairn dev db-url`, `db-stop` and `gc`: the private Postgres `cairn dev` starts when no
//! `CAIRN_DATABASE_URL` is set, and deleting what finished long ago.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use cairn_engine::{launcher as engine, schema};

use crate::localdb::LocalPostgres;

/// `db-url`: prints the private Postgres URL, starting and migrating it if needed.
pub async fn url() -> anyhow::Result<ExitCode> {
    let url = LocalPostgres::new(LocalPostgres::default_root(), 5432)?.ensure_running()?;
    schema::connect(&url).await?; // applies migrations
    println!("{url}");
    Ok(ExitCode::SUCCESS)
}

/// `db-stop`: stops the private Postgres.
pub fn stop() -> anyhow::Result<ExitCode> {
    LocalPostgres::new(LocalPostgres::default_root(), 5432)?.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// `gc`: deletes runs that finished, and events emitted, longer ago than `older_than`.
pub async fn gc(older_than: Duration, namespace: Option<&str>) -> anyhow::Result<ExitCode> {
    let before = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).map_err(|_| {
            anyhow!(
                "--older-than {} is too long",
                humantime::format_duration(older_than)
            )
        })?;
    let pool = super::open().await?;
    let collected = engine::gc(
        &mut *pool.acquire().await?,
        Some(before),
        Some(before),
        namespace,
    )
    .await?;
    let artifacts = super::artifacts::collect(&pool, namespace).await?;
    println!(
        "deleted {} finished run(s) and {} event(s) older than {}, and {artifacts} artifact(s) no run refers to",
        collected.runs,
        collected.events,
        humantime::format_duration(older_than)
    );
    Ok(ExitCode::SUCCESS)
}
