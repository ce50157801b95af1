//! The `cairn` command line as the CLI tests drive it: against a test's database, its flows
//! logging their effects, stdout and stderr captured.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{EffectLog, NS, PATIENCE, TestDb, cairn_cli};

/// `cairn <args>` against the test's database, its flows logging to `log`.
pub fn cairn(db: &TestDb, log: &EffectLog, args: &[&str]) -> Command {
    let mut command = Command::new(cairn_cli());
    command
        .args(args)
        .env("CAIRN_DATABASE_URL", &db.url)
        // Its binary store (and anything else it keeps) in the test's own directory.
        .env("CAIRN_HOME", db.dir.join("cairn-home"))
        .env("CAIRN_TEST_LOG", &log.path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub async fn finish(child: Child) -> Output {
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("cairn did not exit within {PATIENCE:?}"))
        .expect("wait for cairn")
}

pub async fn run(mut command: Command) -> Output {
    finish(command.spawn().expect("cannot start cairn")).await
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The last stdout line, as JSON.
pub fn last_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "cairn printed nothing on stdout; stderr:\n{}",
            stderr(output)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last stdout line {line:?}: {e}"))
}

/// The id of the run named `name` in namespace `ns`, once it exists.
pub async fn run_id_in(db: &TestDb, ns: &str, name: &str) -> uuid::Uuid {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(run) = cairn_engine::read::find(&db.pool, ns, name).await {
            return run.id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {ns}/{name} was not created within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The id of the run named `name`, once it exists.
pub async fn run_id(db: &TestDb, name: &str) -> uuid::Uuid {
    run_id_in(db, NS, name).await
}

/// `cairn dev wait RUN -n NS <until...>` once the run exists, which must succeed.
pub async fn dev_wait(db: &TestDb, log: &EffectLog, ns: &str, name: &str, until: &[&str]) {
    run_id_in(db, ns, name).await;
    let mut args = vec!["dev", "wait", name, "-n", ns, "--timeout", "60s"];
    args.extend(until);
    let waited = run(cairn(db, log, &args)).await;
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
}

/// `cairn dev wait RUN --for waiting --event EVENT`, which must succeed.
pub async fn wait_waiting(db: &TestDb, log: &EffectLog, name: &str, event: &str) {
    dev_wait(db, log, NS, name, &["--for", "waiting", "--event", event]).await;
}

/// The local server `cairn mcp --dev` or `cairn dev dashboard` starts: stopped when the test
/// ends, whatever happened.
pub struct DevServer {
    url: String,
    home: PathBuf,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(cairn_cli())
            .args(["dev", "down", "--timeout", "5s"])
            .env("CAIRN_DATABASE_URL", &self.url)
            .env("CAIRN_HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn dev_server(db: &TestDb) -> DevServer {
    DevServer {
        url: db.url.clone(),
        home: db.dir.join("cairn-home"),
    }
}
