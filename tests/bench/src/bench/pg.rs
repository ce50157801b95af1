//! The benchmark's private Postgres: a fresh cluster in a temporary directory, reachable over a
//! Unix socket and over TCP on 127.0.0.1 (a free port), with the durable defaults every system
//! under test gets alike: fsync, synchronous_commit and full_page_writes on.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;
use cairn_operator::localdb::LocalPostgres;

/// The project's one Postgres launcher (`LocalPostgres`, as for `cairn dev` and the tests),
/// here with a TCP listener and the benchmark's settings.
pub struct Postgres {
    pg: LocalPostgres,
    root: PathBuf,
    port: u16,
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
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut options = "-c listen_addresses=127.0.0.1".to_owned();
        for (name, value) in SETTINGS {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let pg = LocalPostgres::new(&root, port)?.with_server_options(&options);
        pg.ensure_running()?;
        Ok(Postgres { pg, root, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL over the Unix socket, understood by sqlx and libpq (psycopg) alike.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://cairn@localhost:{}/{database}?host={}",
            self.port,
            self.pg.socket_dir().display()
        )
    }

    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let out = Command::new(self.bin_dir().join("psql"))
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
        let Some(postmaster) = std::fs::read_to_string(self.pg.data_dir().join("postmaster.pid"))
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
        self.pg.bin_dir()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
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
