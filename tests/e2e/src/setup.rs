//! What every scenario of a test process shares, made once (the first scenario to ask waits for
//! it, the others reuse it): the cluster up, the CRDs applied, the release binaries copied aside
//! and the example agent's image imported.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, ensure};

use crate::cluster::{Cluster, Image};

/// The example agent's image the scenarios run (a tag of the harness's own: the scripts that
/// other people run on the same cluster use other tags).
pub const AGENT_IMAGE: &str = "localhost/cairn-agent:e2e";
/// The test flows' image (tests/flows), for what the example agent does not do.
pub const FLOWS_IMAGE: &str = "localhost/cairn-test-flows:e2e";

pub struct Setup {
    pub cluster: Cluster,
    /// This test process's directory: operator logs, the binaries' copies.
    pub dir: PathBuf,
    /// A copy of the static cairn: a build running meanwhile cannot change it under a test.
    pub cairn: PathBuf,
    /// A directory holding that copy as `kubectl-cairn` (the kubectl plugin), to put on PATH.
    pub plugin_dir: PathBuf,
    /// The static example agent (the image's binary).
    pub agent: PathBuf,
    pub image: Image,
    pub flows_image: Image,
}

/// The shared setup; panics, saying why, when it cannot be made.
pub fn setup() -> &'static Setup {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    match SETUP.get_or_init(|| make().map_err(|e| format!("{e:#}"))) {
        Ok(s) => s,
        Err(e) => panic!("the end-to-end setup failed: {e}"),
    }
}

fn make() -> anyhow::Result<Setup> {
    let repo = crate::cluster::repo_root().canonicalize()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let runs = target.join("e2e");
    forget_old_binaries(&runs);
    let dir = runs.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin"))?;
    eprintln!("e2e: logs in {}", dir.display());

    let release = crate::cluster::static_bin_dir();
    let built = |name: &str| -> anyhow::Result<PathBuf> {
        let path = release.join(name);
        ensure!(
            path.is_file(),
            "{} is missing: build it first with `make static-bins` (make test-cluster does)",
            path.display()
        );
        Ok(path)
    };
    let cairn = dir.join("bin/cairn");
    std::fs::copy(built("cairn")?, &cairn).context("copying the static cairn")?;
    let plugin_dir = dir.join("plugin");
    std::fs::create_dir_all(&plugin_dir)?;
    // The same file under the plugin's name (a link: the binary is large).
    std::fs::hard_link(&cairn, plugin_dir.join("kubectl-cairn"))?;
    let agent = built("agent")?;

    let cluster = Cluster::up(&dir.join("cluster-up.log"))?;
    cluster.apply_crds()?;
    let image = cluster.image(AGENT_IMAGE, &agent, &[])?;
    let flows_image = cluster.image(FLOWS_IMAGE, &built("test-flows")?, &[])?;
    Ok(Setup {
        cluster,
        dir,
        cairn,
        plugin_dir,
        agent,
        image,
        flows_image,
    })
}

/// Removes the binaries copied by earlier test processes that have ended (their logs stay): each
/// copy is large, and the disk is shared with the cluster, whose kubelet removes images under
/// disk pressure.
fn forget_old_binaries(runs: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("run-") else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path().join("bin"));
            let _ = std::fs::remove_dir_all(entry.path().join("plugin"));
        }
    }
}

impl Setup {
    /// PATH with `kubectl-cairn` (this build's) and the cluster's tools first.
    pub fn plugin_path(&self) -> String {
        format!("{}:{}", self.plugin_dir.display(), self.cluster.path)
    }

    /// A file of the repository.
    pub fn repo_file(&self, path: &str) -> PathBuf {
        self.cluster.repo.join(path)
    }

    /// A scenario's own directory for its logs.
    pub fn scenario_dir(&self, ns: &str) -> PathBuf {
        let dir = self.dir.join(ns);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }
}
