//! A real S3-compatible server for the artifact tests: s3s-fs (an S3 API over a directory,
//! built from crates.io by `tests/install-deps.sh test`), listening on 127.0.0.1 only. It can
//! be stopped and started again on the same port and data, so that a test can take the store
//! away from a flow in the middle of a step.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_engine::artifacts::ArtifactSettings;

use crate::PATIENCE;

/// The pinned s3s-fs (`tests/install-deps.sh`).
const S3S_FS: &str = "s3s-fs-0.14.1";

/// One s3s-fs process with one bucket; killed when dropped.
pub struct S3Server {
    binary: PathBuf,
    /// Its data: one directory per bucket.
    data_dir: PathBuf,
    /// Where its output goes (shown when it does not start).
    log: PathBuf,
    port: u16,
    bucket: String,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server keeping its data (and its log) under `dir`, with a bucket `cairn`.
    pub fn start(dir: &Path) -> S3Server {
        let binary = binary();
        let data_dir = dir.join("data");
        let bucket = "cairn".to_owned();
        std::fs::create_dir_all(data_dir.join(&bucket)).expect("the S3 server's data directory");
        let mut server = S3Server {
            binary,
            log: dir.join("s3s-fs.log"),
            data_dir,
            port: free_port(),
            bucket,
            access_key: "cairn-test".to_owned(),
            secret_key: format!("secret-{}", uuid::Uuid::new_v4().simple()),
            child: None,
        };
        server.start_again();
        server
    }

    /// Settings for a store under `prefix` of the bucket (what `TestDb::artifacts` takes).
    pub fn settings(&self, prefix: &str) -> ArtifactSettings {
        let mut settings = ArtifactSettings::new(format!("s3://{}/{prefix}", self.bucket));
        settings.options.extend(
            [
                ("aws_access_key_id", self.access_key.clone()),
                ("aws_secret_access_key", self.secret_key.clone()),
                ("aws_endpoint", self.endpoint()),
                ("aws_allow_http", "true".to_owned()),
                ("aws_region", "us-east-1".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        settings
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket's directory: s3s-fs keeps each object as a file under it, at its key.
    pub fn bucket_dir(&self) -> PathBuf {
        self.data_dir.join(&self.bucket)
    }

    /// Kills the server (its data stays); requests fail until [`S3Server::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on its port and data; returns once it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the S3 server is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the S3 server's log");
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key])
            .args(["--secret-key", &self.secret_key])
            .arg(&self.data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the S3 server's log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_until_listening();
    }

    fn wait_until_listening(&mut self) {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "the S3 server exited ({status}) instead of listening on {addr}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the S3 server does not listen on {addr} after {PATIENCE:?}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `$CAIRN_S3S_FS`, else the one `tests/install-deps.sh test` builds.
fn binary() -> PathBuf {
    let binary = match std::env::var_os("CAIRN_S3S_FS") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
                .expect("neither XDG_CACHE_HOME nor HOME is set");
            cache.join("cairn").join(S3S_FS).join("bin/s3s-fs")
        }
    };
    assert!(
        binary.is_file(),
        "{} is missing: the artifact tests need s3s-fs, an S3 server; run `tests/install-deps.sh test` \
         (builds it once, into ~/.cache/cairn), or point CAIRN_S3S_FS at one",
        binary.display()
    );
    binary
}

/// A port nothing listens on now (the server binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("cannot find a free port")
        .port()
}
