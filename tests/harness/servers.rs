//! What the tests' own servers (the S3 server, the OpenTelemetry Collector) have in common: a
//! binary built once into ~/.cache/cairn by `tests/install-deps.sh`, a free loopback port, and
//! a start that returns once the server listens.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// `$<env>`, else `~/.cache/cairn/<path>` (what `tests/install-deps.sh test` builds); `what`
/// names it in the message when it is missing.
pub(crate) fn cached_binary(env: &str, path: &str, what: &str) -> PathBuf {
    let binary = match std::env::var_os(env) {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
                .expect("neither XDG_CACHE_HOME nor HOME is set");
            cache.join("cairn").join(path)
        }
    };
    assert!(
        binary.is_file(),
        "{} is missing: these tests need {what}; run `tests/install-deps.sh test` (builds it \
         once, into ~/.cache/cairn), or point {env} at one",
        binary.display()
    );
    binary
}

/// A port nothing listens on now (the server binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("cannot find a free port")
        .port()
}

/// Returns once `child` listens on 127.0.0.1:`port`; panics with its `log` if it exits
/// instead, or does not listen within the tests' patience.
pub(crate) fn wait_until_listening(child: &mut Child, port: u16, log: &Path, what: &str) {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let started = Instant::now();
    let output = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) instead of listening on {addr}: {}",
                output()
            );
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what} does not listen on {addr} after {PATIENCE:?}: {}",
            output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
