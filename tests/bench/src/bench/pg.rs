//! The benchmark's private Postgres: a fresh cluster in a temporary directory, reachable over a
//! Unix socket and over TCP on 127.0.0.1 (a free port), with the durable defaults every system
//! under test gets alike: fsync, synchronous_commit and full_page_writes on.

use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub struct Postgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    /// (uid, gid) of `postgres` when we are root (Postgres refuses to run as root).
    run_as: Option<(u32, u32)>,
}

/// The settings the benchmark starts the server with (recorded in the report).
pub const SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("max_connections", "200"),
];

impl Postgres {
    pub fn start() -> anyhow::Result<Postgres> {
        let root = std::env::temp_dir().join(format!("cairn-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let run_as = if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .context("running as root and there is no `postgres` user to run Postgres as")?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let pg = Postgres {
            bin: bin_dir()?,
            port: free_port()?,
            root,
            run_as,
        };
        for dir in [pg.root.clone(), pg.data_dir(), pg.socket_dir()] {
            std::fs::create_dir_all(&dir)?;
            if let Some((uid, gid)) = pg.run_as {
                chown(&dir, Some(uid), Some(gid))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let out = pg
            .command("initdb")
            .args(["--auth=trust", "--encoding=UTF8", "--no-instructions"])
            .args(["-U", "cairn", "-D"])
            .arg(pg.data_dir())
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            pg.port,
            pg.socket_dir().display()
        );
        for (name, value) in SETTINGS {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let status = pg
            .command("pg_ctl")
            .args(["start", "--wait", "--timeout=60", "--silent", "-D"])
            .arg(pg.data_dir())
            .arg("-l")
            .arg(pg.log_file())
            .args(["-o", &options])
            .status()?;
        if !status.success() {
            bail!(
                "the benchmark's Postgres did not start; see {}",
                pg.log_file().display()
            );
        }
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL over the Unix socket, understood by sqlx and libpq (psycopg) alike.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://cairn@localhost:{}/{database}?host={}",
            self.port,
            self.socket_dir().display()
        )
    }

    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url("postgres"),
            ])
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .output()?;
        if !out.status.success() {
            bail!(
                "CREATE DATABASE {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// CPU seconds the server has used so far: the postmaster, its live children (backends,
    /// WAL writer, checkpointer...) and the children it has reaped.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(postmaster) = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
        else {
            return f64::NAN;
        };
        let mut ticks = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = proc_stat(pid) {
                if pid == postmaster {
                    ticks += stat.utime + stat.stime + stat.cutime + stat.cstime;
                } else if stat.ppid == postmaster {
                    ticks += stat.utime + stat.stime;
                }
            }
        }
        ticks as f64 / clock_ticks()
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.root).env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "--wait", "--silent", "-m", "fast", "-D"])
            .arg(self.data_dir())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The newest installed Postgres server binaries.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| dir.join("initdb").is_file())
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.pop() {
        return Ok(dir);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .context("no Postgres under /usr/lib/postgresql and no pg_config")?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    anyhow::ensure!(
        dir.join("initdb").is_file(),
        "no Postgres server binaries found (apt-get install postgresql)"
    );
    Ok(dir)
}

pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
}

/// Fields of /proc/<pid>/stat (see proc(5)).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        ppid: num(1)? as u32,
        utime: num(11)?,
        stime: num(12)?,
        cutime: num(13)?,
        cstime: num(14)?,
    })
}

pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// CPU seconds this process has used so far (all its threads).
pub fn own_cpu_seconds() -> f64 {
    proc_stat(std::process::id()).map_or(f64::NAN, |s| (s.utime + s.stime) as f64 / clock_ticks())
}
