//! The integration tests' harness: one real Postgres per test binary (started from the
//! installed binaries, stopped and removed when the binary exits), a fresh migrated database
//! per test, a side-effect log the test flows append to, and helpers to drive runs through the
//! in-process `cairn dev` supervisor.

pub mod browser;
pub mod cli;
pub mod example_trace;
pub mod fake_api;
pub mod otelcol;
pub mod payloads;
pub mod relay;
pub mod s3;
mod servers;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use cairn_engine::artifacts::ArtifactSettings;
use cairn_engine::checkpoint::StepKeys;
use cairn_engine::launcher::{self, NewRun};
use cairn_engine::read::{self, RunRecord};
use cairn_operator::lifecycle::Phase;
use cairn_operator::localdb::LocalPostgres;
use cairn_operator::supervisor::{self, Launcher};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The namespace every test run lives in (each test has its own database anyway).
pub const NS: &str = "default";

/// Generous upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(60);

struct Server {
    root: PathBuf,
    port: u16,
    socket_dir: PathBuf,
}

impl Server {
    fn url(&self, database: &str) -> String {
        format!(
            "postgres://cairn@localhost:{}/{database}?host={}",
            self.port,
            self.socket_dir.display()
        )
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The test binary's Postgres, started on first use.
fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let pid = std::process::id();
        // Under /tmp so the `postgres` user (the server runs as it when we are root) can reach it.
        let root = std::env::temp_dir().join(format!("cairn-tests-{pid}"));
        let _ = std::fs::remove_dir_all(&root);
        // The port only names the socket file; unique per test binary all the same.
        let port = 20_000 + (pid % 40_000) as u16;
        let pg = LocalPostgres::new(&root, port).expect("cannot set up the test Postgres");
        let url = pg.ensure_running().unwrap_or_else(|e| {
            panic!(
                "cannot start the test Postgres under {}: {e:#}",
                root.display()
            )
        });
        reap_when_done(&root);
        // Durability against a crash of the machine is not what these tests are about; many
        // tests run at once, each with its flow processes holding a connection.
        run_blocking(async move {
            let mut conn = PgConnection::connect(&url).await?;
            for sql in [
                "ALTER SYSTEM SET fsync = off",
                "ALTER SYSTEM SET synchronous_commit = off",
                "ALTER SYSTEM SET full_page_writes = off",
                "ALTER SYSTEM SET max_connections = 400",
            ] {
                sqlx::query(sql).execute(&mut conn).await?;
            }
            anyhow::Ok(())
        })
        .expect("cannot tune the test Postgres");
        // max_connections needs a restart.
        pg.stop().expect("cannot restart the test Postgres");
        pg.ensure_running()
            .expect("cannot restart the test Postgres");
        Server {
            socket_dir: pg.socket_dir(),
            root,
            port,
        }
    })
}

/// Restarts this test binary's Postgres (a fast shutdown: every connection is cut), `down` apart.
/// Only for a test binary whose tests all expect it (see tests/restart.rs).
pub fn restart_postgres(down: Duration) {
    let server = server();
    let pg = LocalPostgres::new(&server.root, server.port).expect("the test Postgres");
    pg.stop().expect("cannot stop the test Postgres");
    std::thread::sleep(down);
    pg.ensure_running()
        .expect("cannot start the test Postgres again");
}

/// Runs a future to completion on a private runtime on another thread (usable from anywhere,
/// including from inside a test's runtime).
fn run_blocking<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(future)
    })
    .join()
    .expect("the helper thread panicked")
}

/// Stops the server and removes its directory once this test binary has exited: a detached
/// watcher (its own process group, so Ctrl-C on the tests does not stop it) polls our pid.
pub(crate) fn reap_when_done(root: &Path) {
    use std::os::unix::process::CommandExt;
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        postmaster=$(head -n 1 "$2/postgres/postmaster.pid" 2>/dev/null)
        if [ -n "$postmaster" ]; then
            kill -INT "$postmaster" 2>/dev/null
            while kill -0 "$postmaster" 2>/dev/null; do sleep 0.2; done
        fi
        rm -rf "$2"
    "#;
    let spawned = Command::new("sh")
        .args(["-c", script, "cairn-test-reaper"])
        .arg(std::process::id().to_string())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("harness: cannot start the reaper of the test Postgres: {e}");
    }
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub pool: PgPool,
    /// The owner's URL (what the supervisor and the tests use).
    pub url: String,
    /// The runner login's URL (what flow processes get), once migrated.
    pub runner_url: String,
    pub name: String,
    /// A directory for this test's files (side-effect logs...).
    pub dir: PathBuf,
    /// The master step keys its launchers give flow processes (their namespace's).
    pub step_keys: StepKeys,
    /// The artifact store its launchers give flow processes: a directory of its own unless
    /// a test points it elsewhere (an S3 server).
    pub artifacts: ArtifactSettings,
}

impl TestDb {
    /// A database migrated by this test binary's engine version.
    pub async fn new() -> TestDb {
        let mut db = Self::unmigrated().await;
        cairn_engine::schema::connect(&db.url)
            .await
            .expect("cannot connect to and migrate the test database");
        db.runner_url = launcher::runner_url(&db.pool, &db.url)
            .await
            .expect("cannot create the runner login");
        db
    }

    /// An empty database, for tests of the `cairn` binary: it applies its own migrations, as it
    /// does for a user (and a binary built from other sources than these tests would otherwise
    /// refuse the database: "migration 1 was previously applied but has been modified").
    pub async fn unmigrated() -> TestDb {
        let server = tokio::task::spawn_blocking(server)
            .await
            .expect("the test Postgres failed to start");
        let name = format!("t_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server.url("cairn"))
            .await
            .expect("cannot connect to the test Postgres");
        // `name` is ours: t_ followed by hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let url = server.url(&name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("cannot connect to the test database");
        let dir = server.root.join("files").join(&name);
        std::fs::create_dir_all(&dir).expect("test directory");
        let artifacts =
            ArtifactSettings::new(format!("file://{}", dir.join("artifacts").display()));
        TestDb {
            pool,
            runner_url: url.clone(),
            url,
            name,
            dir,
            step_keys: StepKeys::generate(),
            artifacts,
        }
    }

    /// The database's schema as `pg_dump --schema-only` prints it (privileges included: the
    /// runner role's grants are part of the engine), without the migrator's bookkeeping table
    /// and pg_dump's per-run `\restrict` keys, so two databases built alike dump alike.
    pub fn dump_schema(&self) -> String {
        let server = server();
        let pg = LocalPostgres::new(&server.root, server.port).expect("the test Postgres");
        let output = Command::new(pg.bin_dir().join("pg_dump"))
            .args([
                "--schema-only",
                "--exclude-table=cairn._sqlx_migrations",
                "--dbname",
            ])
            .arg(&self.url)
            .output()
            .expect("cannot run pg_dump");
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    pub async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
        self.pool.acquire().await.expect("database connection")
    }

    /// Creates a run (3 attempts, 100 ms crash backoff) and returns its id.
    pub async fn create_run(&self, name: &str, flow: &str, input: Value) -> Uuid {
        self.create_run_with(name, flow, input, 3, 100).await
    }

    pub async fn create_run_with(
        &self,
        name: &str,
        flow: &str,
        input: Value,
        max_attempts: i32,
        retry_backoff_ms: i64,
    ) -> Uuid {
        let (id, created) = launcher::create_run(
            &mut *self.conn().await,
            &NewRun {
                namespace: NS,
                name,
                flow,
                input: &input,
                max_attempts,
                retry_backoff_ms,
                created_at: None,
                flowrun_uid: None,
                concurrency: None,
            },
        )
        .await
        .expect("create_run");
        assert!(created, "run {name} existed already");
        id
    }

    pub async fn run(&self, id: Uuid) -> RunRecord {
        read::find(&self.pool, NS, &id.to_string())
            .await
            .expect("find run")
    }

    /// Polls until the run is in `phase` (fails the test after [`PATIENCE`]).
    pub async fn wait_for_phase(&self, id: Uuid, phase: Phase) -> RunRecord {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let run = self.run(id).await;
            if run.phase == phase {
                return run;
            }
            assert!(
                !run.phase.is_terminal(),
                "run {} finished as {} while the test waited for {phase}: {:?}",
                run.name,
                run.phase,
                run.error
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {} still {} after {PATIENCE:?}; the test waited for {phase}",
                run.name,
                run.phase
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn steps(&self, id: Uuid) -> Vec<cairn_engine::read_api::Step> {
        read::steps(&self.pool, id).await.expect("steps")
    }

    pub async fn attempts(&self, id: Uuid) -> Vec<cairn_engine::read_api::Attempt> {
        read::attempts(&self.pool, id).await.expect("attempts")
    }

    /// A checkpointed step's stored result, if any.
    pub async fn checkpoint(&self, id: Uuid, key: &str) -> Option<Value> {
        sqlx::query_scalar("SELECT result FROM cairn.steps WHERE run_id = $1 AND key = $2")
            .bind(id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .expect("read checkpoint")
    }

    /// How many wait rows (event, sleep, children) the run has.
    pub async fn waits(&self, id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM cairn.waits WHERE run_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("count waits")
    }

    /// A side-effect log in this test's directory.
    pub fn log(&self, name: &str) -> EffectLog {
        EffectLog {
            path: self.dir.join(format!("{name}.log")),
        }
    }

    /// How the supervisor launches the test flows, with their side effects going to `log`.
    pub fn launcher(&self, flows: &str, log: &EffectLog, env: &[(&str, &str)]) -> Launcher {
        let mut vars = vec![
            (
                "CAIRN_TEST_LOG".to_owned(),
                log.path.to_string_lossy().into_owned(),
            ),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Launcher {
            binary: PathBuf::from(flows),
            database_url: self.runner_url.clone(),
            env: vars,
            max_parallel: 8,
            logs: self.dir.join("logs"),
            step_keys: self.step_keys.clone(),
            artifacts: Some(self.artifacts.clone()),
            traces: None,
        }
    }

    /// Supervises the run until it is finished (fails the test after [`PATIENCE`]).
    pub async fn supervise(&self, launcher: &Launcher, root: Uuid) -> RunRecord {
        tokio::time::timeout(PATIENCE, supervisor::supervise(&self.pool, launcher, root))
            .await
            .unwrap_or_else(|_| panic!("run {root} did not finish within {PATIENCE:?}"))
            .expect("supervise")
    }

    /// Supervises the run in the background (so the test can emit, cancel or kill meanwhile).
    pub fn supervise_in_background(
        &self,
        launcher: &Launcher,
        root: Uuid,
    ) -> tokio::task::JoinHandle<RunRecord> {
        let (pool, launcher) = (self.pool.clone(), launcher.clone());
        tokio::spawn(async move {
            tokio::time::timeout(PATIENCE, supervisor::supervise(&pool, &launcher, root))
                .await
                .unwrap_or_else(|_| panic!("run {root} did not finish within {PATIENCE:?}"))
                .expect("supervise")
        })
    }
}

/// One side effect recorded by a test flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub run: String,
    pub what: String,
    pub attempt: i32,
    pub pid: u32,
}

/// The file the test flows append their side effects to (`CAIRN_TEST_LOG`).
#[derive(Debug, Clone)]
pub struct EffectLog {
    pub path: PathBuf,
}

impl EffectLog {
    pub fn effects(&self) -> Vec<Effect> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("cannot read {}: {e}", self.path.display()),
        };
        // Only complete lines: a flow may be writing one right now.
        text.split_inclusive('\n')
            .filter_map(|line| line.strip_suffix('\n'))
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(fields.len(), 4, "malformed effect line {line:?}");
                Effect {
                    run: fields[0].to_owned(),
                    what: fields[1].to_owned(),
                    attempt: fields[2].parse().expect("attempt"),
                    pid: fields[3].parse().expect("pid"),
                }
            })
            .collect()
    }

    /// What happened, in order, as `what@attempt` (for assertions and messages).
    pub fn summary(&self) -> Vec<String> {
        self.effects()
            .iter()
            .map(|e| format!("{}@{}", e.what, e.attempt))
            .collect()
    }

    /// How many times `what` happened.
    pub fn count(&self, what: &str) -> usize {
        self.effects().iter().filter(|e| e.what == what).count()
    }

    /// Waits until `what` has happened, and returns its first occurrence.
    pub async fn wait_for(&self, what: &str) -> Effect {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(effect) = self.effects().into_iter().find(|e| e.what == what) {
                return effect;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen within {PATIENCE:?}; the log has {:?}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` effects satisfy `pred`.
    pub async fn wait_for_count(&self, n: usize, pred: impl Fn(&Effect) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.effects().iter().filter(|e| pred(e)).count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} matching effects within {PATIENCE:?}; the log has {:?}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends SIGKILL to a process (a flow process the test wants dead right now).
pub fn sigkill(pid: u32) {
    send_signal(pid, "KILL");
}

/// Sends SIGTERM to a process (what a node drain or a deleted pod sends).
pub fn sigterm(pid: u32) {
    send_signal(pid, "TERM");
}

/// SIGINT, as a terminal's Ctrl-C sends it.
pub fn sigint(pid: u32) {
    send_signal(pid, "INT");
}

fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The `cairn` binary of this workspace: `target/<profile>/cairn`, next to the `deps` directory
/// holding this test binary.
pub fn cairn_cli() -> PathBuf {
    built_binary("cairn")
}

/// The interpreter of the official MCP Python SDK, the client of the `cairn mcp` tests
/// (`tests/install-deps.sh test` installs it; `CAIRN_MCP_PYTHON` may name another).
pub fn mcp_python() -> PathBuf {
    servers::cached_binary(
        "CAIRN_MCP_PYTHON",
        "mcp-client-2.3.0/bin/python",
        "the official MCP Python SDK",
    )
}

pub use servers::free_port;

/// A binary of the workspace (`cairn`, the example's `agent`), built beside the tests.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary outside target/<profile>/deps");
    let binary = profile_dir.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, which `make test` does)",
        binary.display()
    );
    binary
}

/// A PgBouncer in transaction mode in front of this test binary's Postgres, for one database,
/// with `pool_size` server connections; stopped when dropped. Needs `pgbouncer` installed
/// (`apt-get install pgbouncer`; `.ci/run` does it).
pub struct PgBouncer {
    process: std::process::Child,
    /// `db.runner_url`, through the pooler.
    pub runner_url: String,
}

impl PgBouncer {
    pub fn start(db: &TestDb, pool_size: u32) -> PgBouncer {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is not installed: apt-get install pgbouncer");
        let server = server();
        let runner: url::Url = db.runner_url.parse().expect("the runner URL");
        let (user, password) = (runner.username(), runner.password().unwrap_or_default());
        // Its own directory, open to the `postgres` user PgBouncer runs as when we are root.
        let dir = db.dir.join("pgbouncer");
        std::fs::create_dir_all(&dir).expect("pgbouncer directory");
        let port = server.port + 1;
        let config = format!(
            "[databases]\n{name} = host={socket} port={pg_port} dbname={name}\n\
             [pgbouncer]\nlisten_addr =\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
             auth_type = plain\nauth_file = {dir}/users.txt\npool_mode = transaction\n\
             default_pool_size = {pool_size}\nmax_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {dir}/pgbouncer.log\n",
            name = db.name,
            socket = server.socket_dir.display(),
            pg_port = server.port,
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        std::fs::write(
            dir.join("users.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )
        .expect("users.txt");
        let mut command = Command::new(binary);
        // PgBouncer refuses to run as root: as root, it runs as `postgres` (like the server).
        if nix::unistd::geteuid().is_root() {
            let postgres = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("no `postgres` user to run pgbouncer as");
            for path in ["", "pgbouncer.ini", "users.txt"] {
                std::os::unix::fs::chown(dir.join(path), Some(postgres.uid.as_raw()), None)
                    .expect("chown the pgbouncer directory");
            }
            command.args(["-u", "postgres"]);
        }
        let process = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start pgbouncer");
        let socket = dir.join(format!(".s.PGSQL.{port}"));
        let started = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < PATIENCE,
                "pgbouncer did not start: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let runner_url = format!(
            "postgres://{user}:{password}@localhost:{port}/{}?host={}",
            db.name,
            dir.display()
        );
        PgBouncer {
            process,
            runner_url,
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// An HTTP answer: the status, the head (status line and headers) and the body.
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` over plain HTTP/1.1 (what the operator's endpoints speak); `None` while nothing
/// listens on `addr` or the answer is not HTTP.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<HttpAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some(HttpAnswer {
        status: head.split_whitespace().nth(1)?.parse().ok()?,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}
