//! The embedded default database: a private Postgres, started from the installed binaries under
//! the user's data directory, reachable only through a Unix socket in a directory only its
//! owner can enter. Postgres refuses to run as root, so as root it runs as the `postgres` user.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use nix::unistd::{Uid, User};

/// The database (and superuser) name inside the private server.
const DB_NAME: &str = "cairn";

#[derive(Debug, Clone)]
pub struct LocalPostgres {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<User>,
    /// More server settings for `pg_ctl start` (`-c name=value ...`).
    server_options: String,
}

/// The database URL of `cairn dev` and the CLI: `CAIRN_DATABASE_URL`, else the private
/// Postgres (started if needed).
pub fn database_url() -> anyhow::Result<String> {
    match std::env::var("CAIRN_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => LocalPostgres::new(LocalPostgres::default_root(), 5432)?.ensure_running(),
    }
}

impl LocalPostgres {
    /// Where `cairn` keeps its private Postgres: `$CAIRN_HOME`, else `/var/lib/cairn` as root,
    /// else `$XDG_DATA_HOME/cairn` (`~/.local/share/cairn`).
    pub fn default_root() -> PathBuf {
        if let Some(home) = std::env::var_os("CAIRN_HOME") {
            return PathBuf::from(home);
        }
        if Uid::effective().is_root() {
            return PathBuf::from("/var/lib/cairn");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        data.join("cairn")
    }

    /// A server rooted at `root` (data, socket and log live below it). `port` only names the
    /// socket file; nothing listens on TCP.
    pub fn new(root: impl Into<PathBuf>, port: u16) -> anyhow::Result<Self> {
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name("postgres")?.ok_or_else(|| {
                anyhow!(
                    "Postgres refuses to run as root and there is no `postgres` user to run it as; \
                     create one (`useradd --system postgres`) or set CAIRN_DATABASE_URL"
                )
            })?;
            Some(user)
        } else {
            None
        };
        Ok(LocalPostgres {
            root: root.into(),
            bin_dir: find_bin_dir()?,
            port,
            run_as,
            server_options: String::new(),
        })
    }

    /// The same server started with more settings (`-c name=value ...`, after the defaults, so
    /// they win): the tests' TLS server listens on TCP with `ssl=on`.
    pub fn with_server_options(mut self, options: &str) -> Self {
        self.server_options = options.to_owned();
        self
    }

    /// The directory of the server's data (its configuration files are there).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("postgres")
    }

    /// Makes `path` (a file the server reads, such as a key) the server user's own.
    pub fn give_to_server(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.run_as {
            chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        }
        Ok(())
    }

    /// Where the Postgres binaries (initdb, pg_ctl, pg_dump...) are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Holds the socket and the server log; only the server's user may enter it.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("pgrun")
    }

    pub fn log_file(&self) -> PathBuf {
        self.socket_dir().join("postgres.log")
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://{DB_NAME}@localhost:{}/{DB_NAME}?host={}",
            self.port,
            self.socket_dir().display()
        )
    }

    /// Initialises the server on first use, starts it unless it runs, and returns its URL.
    /// Safe to call from several processes at once (they serialise on a lock file).
    pub fn ensure_running(&self) -> anyhow::Result<String> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let lock_file = fs::File::create(self.root.join(".lock"))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("cannot lock {}: {e}", self.root.display()))?;

        if !self.data_dir().join("PG_VERSION").exists() {
            self.initdb()?;
        }
        if !self.is_running()? {
            self.private_dir(&self.socket_dir())?;
            let options = format!(
                "-c listen_addresses='' -k {} -p {} {}",
                self.socket_dir().display(),
                self.port,
                self.server_options
            );
            let log = self.log_file();
            let status = self
                .pg_command("pg_ctl")
                .args(["start", "--wait", "--timeout=60", "--silent", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-o", &options])
                // stdout may be a protocol's channel (`cairn mcp --dev` on stdio).
                .stdout(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                bail!(
                    "the private Postgres did not start; see its log at {}",
                    log.display()
                );
            }
        }
        self.ensure_database()?;
        Ok(self.url())
    }

    pub fn is_running(&self) -> anyhow::Result<bool> {
        if !self.data_dir().join("PG_VERSION").exists() {
            return Ok(false);
        }
        let status = self
            .pg_command("pg_ctl")
            .args(["status", "-D"])
            .arg(self.data_dir())
            .stdout(std::process::Stdio::null())
            .status()?;
        Ok(status.success())
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        if self.is_running()? {
            self.pg_command("pg_ctl")
                .args(["stop", "--wait", "--silent", "-m", "fast", "-D"])
                .arg(self.data_dir())
                .status()?;
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        self.private_dir(&self.data_dir())?;
        // Trust is safe here: the only way in is the socket, in a directory only the server's
        // user (and root) can enter.
        let output = self
            .pg_command("initdb")
            .args([
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
                "-U",
                DB_NAME,
                "-D",
            ])
            .arg(self.data_dir())
            .output()?;
        if !output.status.success() {
            bail!(
                "initdb failed for {}: {}",
                self.data_dir().display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn ensure_database(&self) -> anyhow::Result<()> {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"),
        )?;
        if exists.trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE {DB_NAME}"))?;
        }
        Ok(())
    }

    fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let output = self
            .pg_command("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                DB_NAME,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()?;
        if !output.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A directory the server's user owns and nobody else may enter.
    fn private_dir(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some(user) = &self.run_as {
            chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.current_dir(&self.root).env_remove("PGDATA");
        if let Some(user) = &self.run_as {
            command
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .env("HOME", &user.dir);
        }
        command
    }
}

/// The newest installed Postgres: `pg_config --bindir`, else /usr/lib/postgresql/<N>/bin.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        candidates.insert(
            0,
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()),
        );
    }
    candidates
        .into_iter()
        .rev()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .ok_or_else(|| {
            anyhow!(
                "no Postgres server binaries found (looked for initdb in `pg_config --bindir` and /usr/lib/postgresql/*/bin); \
                 install them (`apt-get install postgresql`) or set CAIRN_DATABASE_URL"
            )
        })
}
