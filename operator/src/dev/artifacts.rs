//! The artifacts of `cairn dev`: a directory under the dev root (`<CAIRN_HOME>/artifacts`), or
//! the object store `CAIRN_ARTIFACTS_URL` names (its options from the environment, as
//! object_store reads them: `AWS_*`, `GOOGLE_*`, `AZURE_*`). `cairn dev artifacts` lists and
//! downloads a run's; `cairn dev gc` deletes those no run refers to any more.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cairn_engine::artifacts::{ArtifactSettings, ArtifactStore};
use cairn_engine::launcher;
use sqlx::PgPool;

use crate::controller::api;
use crate::kubectl::render::{self, Ui};
use crate::localdb::LocalPostgres;

/// How long an object may go unreferenced after a run recorded it before `gc` deletes it:
/// longer than any step takes from writing it to checkpointing it.
pub const GRACE: Duration = Duration::from_secs(3600);

/// The store local runs use.
pub fn settings() -> ArtifactSettings {
    match std::env::var("CAIRN_ARTIFACTS_URL") {
        Ok(url) if !url.is_empty() => ArtifactSettings::new(url).with_options_from_env(),
        _ => ArtifactSettings::new(format!(
            "file://{}",
            LocalPostgres::default_root().join("artifacts").display()
        )),
    }
}

pub(crate) fn store() -> anyhow::Result<ArtifactStore> {
    ArtifactStore::open(&settings()).map_err(anyhow::Error::msg)
}

/// `artifacts RUN`: the run's objects in the store.
pub async fn list(run: &str, namespace: &str, json: bool) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let list = api::artifacts::list(&pool, namespace, run)
        .await
        .map_err(super::runs::not_found_is_a_mistake)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render::artifacts_table(&list.items, &Ui::detect()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `artifacts RUN get NAME`: writes the object to `file` (`-`: standard output).
pub async fn get(run: &str, name: &str, namespace: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let store = store()?;
    let (artifact, bytes) = api::artifacts::fetch(&pool, Some(&store), namespace, run, name)
        .await
        .map_err(super::runs::not_found_is_a_mistake)?;
    crate::kubectl::artifacts::write_out(&artifact.name, &bytes, file)?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes the objects no checkpoint refers to any more (their runs were deleted), in every
/// namespace (or one). Returns how many went.
pub async fn collect(pool: &PgPool, namespace: Option<&str>) -> anyhow::Result<usize> {
    let only = namespace.map(|ns| vec![ns.to_owned()]);
    launcher::collect_artifacts(pool, &store()?, only.as_deref(), GRACE).await
}
