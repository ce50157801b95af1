//! A real S3-compatible server for the artifact tests: s3s-fs (an S3 API over a directory,
//! built from crates.io by `tests/install-deps.sh test`), listening on 127.0.0.1 only. It can
//! be stopped and started again on the same port and data, so that a test can take the store
//! away from a flow in the middle of a step.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn_engine::artifacts::ArtifactSettings;

use crate::servers::{cached_binary, free_port, wait_until_listening};

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
        // The pinned s3s-fs (`tests/install-deps.sh`).
        let binary = cached_binary(
            "CAIRN_S3S_FS",
            "s3s-fs-0.14.1/bin/s3s-fs",
            "s3s-fs, an S3 server",
        );
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
        let child = self.child.as_mut().expect("started");
        wait_until_listening(child, self.port, &self.log, "the S3 server");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
