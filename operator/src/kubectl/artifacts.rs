//! `kubectl cairn artifacts RUN [get NAME]`: a run's objects in the artifact store, listed and
//! downloaded through the operator's read API (so users need no credentials of the store, and
//! RBAC's `get flowruns` decides, as for the rest of a run).

use std::io::Write as _;
use std::path::Path;

use cairn_engine::read_api::ArtifactList;
use clap::{Args, Subcommand};

use super::client::Kube;
use super::read_api::ReadApiError;
use super::render;

/// `artifacts RUN [get NAME [--file FILE]]` (also `cairn dev artifacts`).
#[derive(Debug, Args)]
pub struct ArtifactsArgs {
    /// The run (the FlowRun's name).
    pub run: String,
    #[command(subcommand)]
    pub action: Option<ArtifactAction>,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactAction {
    /// Download one artifact (by the name the list shows, or its step's key).
    Get {
        name: String,
        /// Write it to this file (default: standard output).
        #[arg(long, short = 'f', default_value = "-")]
        file: std::path::PathBuf,
    },
}

impl Kube {
    /// `artifacts RUN`: the list.
    pub async fn artifacts(&self, run: &str) -> anyhow::Result<()> {
        let list = self.artifact_list(run).await?;
        if self.json {
            return self.print_json(&list);
        }
        print!("{}", render::artifacts_table(&list.items, &self.ui));
        Ok(())
    }

    /// `artifacts RUN get NAME`: one object's bytes, to `file`.
    pub async fn artifact_get(&self, run: &str, name: &str, file: &Path) -> anyhow::Result<()> {
        let bytes = self.artifact_bytes(run, name).await?;
        write_out(name, &bytes, file)
    }

    /// A run's artifacts, through the read API.
    pub(crate) async fn artifact_list(&self, run: &str) -> anyhow::Result<ArtifactList> {
        self.read_api()
            .artifacts(&self.namespace, run)
            .await
            .map_err(mistake_or_failure)
    }

    /// One artifact's bytes, through the read API.
    pub(crate) async fn artifact_bytes(&self, run: &str, name: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = self
            .read_api()
            .artifact(&self.namespace, run, name)
            .await
            .map_err(mistake_or_failure)?;
        Ok(bytes.to_vec())
    }
}

/// Writes a downloaded artifact to `file` (`-`: standard output), saying where it went.
pub(crate) fn write_out(name: &str, bytes: &[u8], file: &Path) -> anyhow::Result<()> {
    if file == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()?;
    } else {
        std::fs::write(file, bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        eprintln!("wrote {name} ({} bytes) to {}", bytes.len(), file.display());
    }
    Ok(())
}

fn mistake_or_failure(e: ReadApiError) -> anyhow::Error {
    match e {
        ReadApiError::NotFound(message) => super::input(message),
        other => anyhow::anyhow!(other),
    }
}
