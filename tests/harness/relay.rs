//! A relay in front of the test Postgres (its Unix socket) that can go silent: `freeze` stops
//! it passing bytes either way while every connection stays open, as a network that drops
//! packets does (no reset, no answer); `thaw` lets them through again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

use crate::TestDb;

pub struct Relay {
    /// `db.runner_url` through the relay.
    pub url: String,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay for the runner login of `db`: the same URL with the relay's socket directory.
    pub fn start(db: &TestDb) -> Relay {
        let (server_dir, port) = socket_of(&db.runner_url);
        let dir = db.dir.join("relay");
        std::fs::create_dir_all(&dir).expect("relay directory");
        let socket = |d: &PathBuf| d.join(format!(".s.PGSQL.{port}"));
        let listener = UnixListener::bind(socket(&dir)).expect("relay socket");
        let upstream = socket(&PathBuf::from(&server_dir));
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = UnixStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, flag.clone()));
                tokio::spawn(pump(server_read, client_write, flag.clone()));
            }
        });
        let url = db.runner_url.replace(
            &format!("host={server_dir}"),
            &format!("host={}", dir.display()),
        );
        Relay { url, frozen, task }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The socket directory (`host=`) and port of a Unix-socket Postgres URL.
fn socket_of(url: &str) -> (String, String) {
    let parsed = url::Url::parse(url).expect("a database URL");
    let dir = parsed
        .query_pairs()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.into_owned())
        .expect("a Unix-socket URL (host=)");
    let port = parsed.port().unwrap_or(5432).to_string();
    (dir, port)
}

/// Copies one direction, holding everything back while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    let held = || async {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    loop {
        held().await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        held().await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
