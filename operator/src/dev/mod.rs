//! `cairn dev`: the local loop, straight on a Postgres (`CAIRN_DATABASE_URL`, or a private
//! one this command starts), no cluster. The arguments are parsed in `cli`; the commands are
//! here, one file per group: `run` (start and supervise a run), `runs` (list and inspect),
//! `steer` (emit, cancel, wait) and `db` (the private Postgres, garbage collection).

pub mod artifacts;
pub mod db;
pub mod keys;
pub mod logs;
pub mod run;
pub mod runs;
pub mod server;
pub mod steer;
pub mod store;

use anyhow::anyhow;
use cairn_engine::{EngineError, schema};
use sqlx::PgPool;

/// The database, migrated.
pub(crate) async fn open() -> anyhow::Result<PgPool> {
    Ok(open_with_url().await?.1)
}

/// The database (`CAIRN_DATABASE_URL` or the private Postgres), migrated, and its URL.
async fn open_with_url() -> anyhow::Result<(String, PgPool)> {
    let url = tokio::task::spawn_blocking(crate::localdb::database_url).await??;
    let pool = schema::connect(&url).await?;
    Ok((url, pool))
}

/// `cairn mcp --dev` and `cairn dev dashboard`: the local database, with a server up to carry
/// runs on (one is started in the background if none is: `cairn dev down` stops it).
pub async fn surface_backend(
    binary: Option<std::path::PathBuf>,
    namespace: Option<String>,
) -> anyhow::Result<crate::surface::Backend> {
    let pool = open().await?;
    if server::find(&pool).await?.is_none() {
        // `cairn dev up` says what it did on stdout: the MCP channel, or the console's URL line.
        let status = tokio::process::Command::new(std::env::current_exe()?)
            .args(["dev", "up"])
            // Its flow processes get its environment: not the MCP server's token.
            .env_remove(crate::surface::mcp::TOKEN_ENV)
            .stdin(std::process::Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .await?;
        anyhow::ensure!(
            status.success(),
            "cannot start the cairn dev server ({status})"
        );
    }
    Ok(crate::surface::Backend::Dev {
        pool,
        binary,
        namespace: namespace.unwrap_or_else(|| "default".into()),
    })
}

/// Where spans go, when the environment sets `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`: every
/// run is then one trace (`cairn_engine::traces`). A setting that cannot work turns traces
/// off, saying why.
fn traces() -> Option<std::sync::Arc<cairn_engine::traces::Exporter>> {
    match cairn_engine::traces::Exporter::from_env("cairn") {
        Ok(exporter) => exporter.map(std::sync::Arc::new),
        Err(why) => {
            eprintln!("cairn: runs are not traced: {why}");
            None
        }
    }
}

/// Turns engine errors into user-facing ones (they already say what to fix).
fn explain(err: EngineError) -> anyhow::Error {
    anyhow!(err)
}
