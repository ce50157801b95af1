//! The operator's settings: the `cairn operator` flags, each also settable by environment
//! (which is how the Helm chart configures it).

use std::time::Duration;

use cairn_engine::artifacts::{ArtifactSettings, ArtifactStore};

/// The shortest `--artifact-grace`: from a writer's last touch of an object to its checkpoint
/// takes milliseconds; this leaves room for a slow database.
pub const MIN_ARTIFACT_GRACE: Duration = Duration::from_secs(10);

/// How the operator runs flows.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The database URL flow pods use: a login in role `cairn_runner`, as pods reach the
    /// database. Default: the operator's own address with the login it creates for them.
    /// Handed to pods through a Secret, never inline.
    #[arg(long, env = "CAIRN_RUNNER_DATABASE_URL", hide_env_values = true)]
    pub runner_database_url: Option<String>,
    /// `transaction` when that URL is a PgBouncer (or another pooler) in transaction mode:
    /// flow processes then run each engine call in a transaction of its own. `none`: direct.
    #[arg(long, env = "CAIRN_RUNNER_POOLER", default_value = "none")]
    pub runner_pooler: cairn::Pooler,
    /// Name of the per-namespace Secret the operator keeps the runner's database URL in.
    #[arg(long, env = "CAIRN_RUNNER_SECRET", default_value = "cairn-runner-db")]
    pub runner_secret: String,
    /// Service account for flow pods whose Flow names none. The operator creates it (without
    /// an API token) in each namespace it launches pods in.
    #[arg(long, env = "CAIRN_FLOW_SERVICE_ACCOUNT")]
    pub flow_service_account: Option<String>,
    /// Namespaces whose FlowRuns and FlowEvents this operator manages, comma-separated
    /// (default: all namespaces).
    #[arg(long, env = "CAIRN_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Name of the Secret, in the operator's namespace (the Lease's), holding the master keys
    /// that seal sensitive steps' values; made on first start when missing.
    #[arg(
        long,
        env = "CAIRN_STEP_KEYS_SECRET",
        default_value = "cairn-step-keys"
    )]
    pub step_keys_secret: String,
    /// Where flows keep artifacts: step results larger than --artifact-offload-bytes and the
    /// objects they store (`ctx.artifact`). `s3://bucket/prefix`, `gs://..` or `az://..`; the
    /// store's credentials and options come from this process's environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`, as object_store reads them) and reach flow pods through their
    /// namespace's runner Secret. Unset: results stay in Postgres (up to 64 MiB each).
    #[arg(long, env = "CAIRN_ARTIFACTS_URL")]
    pub artifacts_url: Option<String>,
    /// Step results larger than this many bytes (as JSON) go to the artifact store.
    #[arg(long, env = "CAIRN_ARTIFACT_OFFLOAD_BYTES",
          default_value_t = cairn_engine::artifacts::DEFAULT_OFFLOAD_BYTES)]
    pub artifact_offload_bytes: u64,
    /// The largest artifact a flow may write, in bytes: a larger one fails its step.
    #[arg(long, env = "CAIRN_ARTIFACT_MAX_BYTES",
          default_value_t = cairn_engine::artifacts::DEFAULT_MAX_BYTES)]
    pub artifact_max_bytes: u64,
    /// An object no checkpoint refers to (its runs were deleted) is deleted from the store
    /// once this long has passed since a run last wrote it (at least 10s).
    #[arg(long, env = "CAIRN_ARTIFACT_GRACE", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub artifact_grace: Duration,
    /// Namespace of the Lease that elects the one active replica (in a pod: its own namespace).
    #[arg(long, env = "CAIRN_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of that Lease; operators sharing it never act at the same time.
    #[arg(long, env = "CAIRN_LEASE_NAME", default_value = "cairn-operator")]
    pub lease_name: String,
    /// How long the Lease holds without renewal: after the active replica dies, a standby acts
    /// within this (and up to a second more). The holder renews it when half is left, so an
    /// API server slower than that half costs it the Lease (it then exits and rejoins as a
    /// standby; the engine's fencing keeps runs safe meanwhile).
    #[arg(long, env = "CAIRN_LEASE_SECONDS", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_seconds: u64,
    /// Flow pods running at once, in all. Each holds a database connection: keep this well
    /// under the database's max_connections (or put PgBouncer in front of it).
    #[arg(long, env = "CAIRN_MAX_RUNNING", default_value_t = 50)]
    pub max_running: i32,
    /// Flow pods running at once in any one namespace (0: only the global cap applies).
    #[arg(long, env = "CAIRN_MAX_RUNNING_PER_NAMESPACE", default_value_t = 0)]
    pub max_running_per_namespace: i32,
    /// FlowRuns reconciled at once (per watched namespace). Bounds the operator's memory and
    /// its load on the API server and the database when thousands of FlowRuns change together
    /// (one event waking them all, a burst of creates); the others queue, each at most once.
    #[arg(long, env = "CAIRN_RECONCILE_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub reconcile_concurrency: u16,
    /// Delete a FlowRun (and its runs in the database) this many seconds after it finished,
    /// unless it or its Flow says otherwise (`ttlSecondsAfterFinished`). 0 keeps them.
    #[arg(
        long,
        env = "CAIRN_DEFAULT_TTL_SECONDS_AFTER_FINISHED",
        default_value_t = 0
    )]
    pub default_ttl_seconds_after_finished: u32,
    /// Finished flow pods kept per run (the newest; the current attempt's is always kept), for
    /// `kubectl logs`. Older ones are deleted as new ones finish, like a Job's history.
    #[arg(long, env = "CAIRN_FINISHED_PODS_KEPT", default_value_t = 5)]
    pub finished_pods_kept: u16,
    /// Events (FlowEvents' and flows' emits) are deleted from the database this long after
    /// they were emitted, unless a run still waits on one (e.g. `30d`; `0s` keeps them).
    #[arg(long, env = "CAIRN_EVENT_RETENTION", default_value = "30d",
          value_parser = humantime::parse_duration)]
    pub event_retention: Duration,
    /// `apply`: apply the engine's pending migrations at start (one replica migrates under a
    /// lock, others wait). `verify`: only check that the schema is migrated, when a separate
    /// step does it (`cairn migrate`, the Helm chart's pre-upgrade Job).
    #[arg(long, env = "CAIRN_MIGRATIONS", default_value = "apply")]
    pub migrations: cairn_engine::schema::Migrations,
    /// Address of /livez, /readyz and /metrics (plain HTTP).
    #[arg(long, env = "CAIRN_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Address of the read API (TLS, to the API server's front proxy only: the aggregated API
    /// `api.cairn.dev/v1alpha1`). Served only with --api-tls-cert and --api-tls-key.
    #[arg(long, env = "CAIRN_API_LISTEN", default_value = "0.0.0.0:8443")]
    pub api_listen: std::net::SocketAddr,
    /// The read API's serving certificate (PEM, with its chain); the APIService's caBundle
    /// must hold its CA.
    #[arg(long, env = "CAIRN_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<std::path::PathBuf>,
    /// The read API's serving key (PEM).
    #[arg(long, env = "CAIRN_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<std::path::PathBuf>,
}

impl Config {
    /// The artifact store (`None`: none configured), its settings as flow pods get them. A
    /// setting that cannot work stops the operator at start, saying why: flow pods would
    /// otherwise fail their runs one by one.
    pub fn artifact_store(&self) -> anyhow::Result<Option<ArtifactStore>> {
        let Some(url) = self.artifacts_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let problem = |why: String| anyhow::anyhow!("--artifacts-url {url}: {why}");
        if url.starts_with("file:") {
            return Err(problem(
                "a directory is local to each pod: use an object store (s3://, gs://, az://)"
                    .into(),
            ));
        }
        if self.artifact_grace < MIN_ARTIFACT_GRACE {
            return Err(problem(format!(
                "--artifact-grace must be at least {MIN_ARTIFACT_GRACE:?}: retention must never take an object a step is being checkpointed with"
            )));
        }
        let mut settings = ArtifactSettings::new(url).with_options_from_env();
        settings.offload_bytes = self.artifact_offload_bytes;
        settings.max_bytes = self.artifact_max_bytes;
        settings.check().map_err(problem)?;
        ArtifactStore::open(&settings).map(Some).map_err(problem)
    }

    /// The caps as the engine takes them (`None`: no cap).
    pub fn budget(&self) -> (Option<i32>, Option<i32>) {
        let cap = |n: i32| (n > 0).then_some(n);
        (cap(self.max_running), cap(self.max_running_per_namespace))
    }

    /// The operator's default time-to-live of finished FlowRuns (`None`: kept).
    pub fn default_ttl_after_finished(&self) -> Option<Duration> {
        (self.default_ttl_seconds_after_finished > 0)
            .then(|| Duration::from_secs(self.default_ttl_seconds_after_finished.into()))
    }

    /// The namespaces to watch; `None` means all.
    pub fn namespaces(&self) -> Option<Vec<String>> {
        let named: Vec<String> = self
            .watch_namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        (!named.is_empty()).then_some(named)
    }
}
