//! The test cluster itself (`tests/cluster/up.sh`): bringing it up, its environment file, a kube
//! client, images imported into its containerd, the CRDs, and databases of a test's own on its
//! Postgres. Shared by the end-to-end tests and the benchmark (`tests/bench`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail, ensure};
use kube::Client;

/// The cluster's state directory (`CAIRN_CLUSTER_STATE`, as in tests/cluster/lib.sh).
pub fn state_dir() -> PathBuf {
    std::env::var_os("CAIRN_CLUSTER_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/cairn-cluster"))
}

/// The repository's root (this crate is tests/e2e).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `make static-bins` leaves the statically linked (musl) binaries that the images hold
/// (the Dockerfiles' images are FROM scratch), as tests/cluster/lib.sh's `static_bin_dir`.
pub fn static_bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target
        .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
        .join("release")
}

/// The address flow pods and the API server's service proxy reach the host at (the bridge).
pub const NODE_IP: &str = "10.88.0.1";

/// The running cluster, as `up.sh` left it: what a test needs to talk to it.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub repo: PathBuf,
    pub kubeconfig: PathBuf,
    /// The cluster's Postgres as its admin (database `cairn`): only for creating databases.
    pub admin_url: String,
    /// PATH with the cluster's kubectl, helm and ctr (and Postgres's client) first.
    pub path: String,
    /// The cluster's S3 server (s3s-fs, on the bridge gateway).
    pub s3: S3,
    /// The cluster's trace collector (OTLP over HTTP, on the bridge gateway).
    pub otlp: Otlp,
}

/// The cluster's OpenTelemetry Collector, as up.sh started it.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// What OTEL_EXPORTER_OTLP_ENDPOINT is set to, for operators on the host and flow pods.
    pub endpoint: String,
    /// Where it writes the spans it receives (`cairn_tests::otelcol::read_spans`).
    pub spans: PathBuf,
}

/// The cluster's S3-compatible server, as up.sh started it.
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    /// Where it keeps objects: `<data>/<bucket>/<key>`.
    pub data: PathBuf,
    pub access_key: String,
    pub secret_key: String,
}

impl S3 {
    /// The environment an operator reads the store's credentials from (object_store's).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Cluster {
    /// Runs `tests/cluster/up.sh` (idempotent; builds the cluster on first use), its stderr to
    /// `up_log`, and reads the environment file it leaves.
    pub fn up(up_log: &Path) -> anyhow::Result<Cluster> {
        let repo = repo_root().canonicalize()?;
        if let Some(dir) = up_log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let up = Command::new(repo.join("tests/cluster/up.sh"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(up_log)?)
            .output()?;
        ensure!(
            up.status.success(),
            "tests/cluster/up.sh failed ({}); see {}",
            up.status,
            up_log.display()
        );
        let printed = String::from_utf8_lossy(&up.stdout);
        let kubeconfig = printed.lines().last().unwrap_or_default().trim().to_owned();
        let env = |name| env_var(name);
        ensure!(
            env("KUBECONFIG")? == kubeconfig,
            "up.sh printed kubeconfig {kubeconfig:?}, its env file says {:?}",
            env("KUBECONFIG")?
        );
        Ok(Cluster {
            repo,
            kubeconfig: kubeconfig.into(),
            admin_url: env("CAIRN_CLUSTER_PG_URL")?,
            path: format!(
                "{}:/usr/lib/postgresql/15/bin:{}",
                env("CAIRN_CLUSTER_BIN")?,
                std::env::var("PATH").unwrap_or_default()
            ),
            s3: S3 {
                endpoint: env("CAIRN_CLUSTER_S3_ENDPOINT")?,
                bucket: env("CAIRN_CLUSTER_S3_BUCKET")?,
                data: env("CAIRN_CLUSTER_S3_DATA")?.into(),
                access_key: env("CAIRN_CLUSTER_S3_ACCESS_KEY")?,
                secret_key: env("CAIRN_CLUSTER_S3_SECRET_KEY")?,
            },
            otlp: Otlp {
                endpoint: env("CAIRN_CLUSTER_OTLP_ENDPOINT")?,
                spans: env("CAIRN_CLUSTER_SPANS")?.into(),
            },
        })
    }

    /// A client of the API server. Make one per tokio runtime: a client's worker task dies with
    /// the runtime that made it (each `#[tokio::test]` has its own).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(Client::try_from(config)?)
    }

    /// A command with the cluster's environment (PATH, KUBECONFIG), stdin closed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("PATH", &self.path)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null());
        command
    }

    /// `kubectl ARGS`, failing with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.command("kubectl").args(args).output()?;
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// The CRDs of this tree applied, and established.
    pub fn apply_crds(&self) -> anyhow::Result<()> {
        let crds = self.repo.join("crds/generated/crds.yaml");
        self.kubectl(&["apply", "-f", &crds.to_string_lossy()])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ])?;
        Ok(())
    }

    /// `binary` (static) as image `name` (NAME:TAG) in the cluster's containerd, built from the
    /// repository's Dockerfiles by `tests/cluster/image.sh` (`options`: `--label K=V`, another
    /// digest for the same binary). Importing under a tag that exists moves the tag.
    pub fn image(&self, name: &str, binary: &Path, options: &[&str]) -> anyhow::Result<Image> {
        let out = self
            .command(self.repo.join("tests/cluster/image.sh"))
            .arg(name)
            .arg(binary)
            .args(options)
            .output()?;
        ensure!(
            out.status.success(),
            "tests/cluster/image.sh {name} {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        let digest = printed
            .lines()
            .find_map(|l| l.strip_prefix("manifest_digest="))
            .context("image.sh printed no manifest_digest")?
            .trim()
            .to_owned();
        Ok(Image {
            name: name.to_owned(),
            manifest_digest: digest,
        })
    }

    /// Removes image references from the cluster's containerd (best effort).
    pub fn remove_images(&self, refs: &[String]) {
        let _ = self
            .command("ctr")
            .args([
                "--address",
                "/run/cairn-containerd/containerd.sock",
                "-n",
                "k8s.io",
                "images",
                "rm",
            ])
            .args(refs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A new database `name` on the cluster's Postgres, owned by the cluster's user: the
    /// cluster outlives test runs, so a test must meet neither another test's rows nor a
    /// migration that a build from other sources applied.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<OwnDatabase> {
        ensure!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name {name:?}: lowercase letters, digits and _ only"
        );
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        Ok(OwnDatabase {
            name: name.to_owned(),
            url: with_database(&self.admin_url, name)?,
            admin_url: self.admin_url.clone(),
        })
    }
}

/// An image imported into the cluster.
#[derive(Clone, Debug)]
pub struct Image {
    /// NAME:TAG
    pub name: String,
    /// sha256:...
    pub manifest_digest: String,
}

impl Image {
    /// NAME@DIGEST: the image by its digest, which pods' status imageID shows.
    pub fn digest_ref(&self) -> String {
        let repo = self.name.rsplit_once(':').map_or(&*self.name, |(r, _)| r);
        format!("{repo}@{}", self.manifest_digest)
    }
}

/// A database of a test's own on the cluster's Postgres; `drop_now` removes it.
#[derive(Clone, Debug)]
pub struct OwnDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl OwnDatabase {
    /// Drops the database and the runner login the operator made for it (see
    /// ensure_runner_login), through psql: usable from `Drop`, outside any runtime.
    pub fn drop_now(&self) -> anyhow::Result<()> {
        let login = format!("{}_runner_login", &self.name[..self.name.len().min(40)]);
        let out = Command::new("psql")
            .env(
                "PATH",
                format!(
                    "/usr/lib/postgresql/15/bin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .args([&self.admin_url, "-XqAt", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .args(["-c", &format!("DROP ROLE IF EXISTS {login}")])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "dropping database {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A variable of the cluster's env file (`$CAIRN_CLUSTER_STATE/env`), read by bash as the
/// scripts read it.
pub fn env_var(name: &str) -> anyhow::Result<String> {
    let file = state_dir().join("env");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("source '{}' && printf %s \"${name}\"", file.display()),
        ])
        .output()?;
    let value = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(!value.is_empty(), "{name} is not set by {}", file.display());
    Ok(value)
}

/// `url` with its database replaced.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// A short suffix unique to this process and call, for names other runs on the same cluster
/// must not collide with (namespaces, databases, leases).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:06x}{n:x}", (std::process::id() ^ nanos) & 0xff_ffff)
}
