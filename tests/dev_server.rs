//! The local server through the real command line, against a real Postgres: `cairn dev up`
//! carries runs on without a terminal (`run` only follows), survives its own SIGKILL with no
//! completed step run again, and `down` stops it.

use std::collections::HashMap;

use cairn_tests::cli::{cairn, run, stderr};
use cairn_tests::{EffectLog, TestDb};
use serde_json::json;
use tokio::process::Command;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

/// `cairn dev <args>` as the tests run it, with durable sleeps above 100 ms leaving the process
/// (for the server: its flow processes get its environment).
fn dev(db: &TestDb, log: &EffectLog, args: &[&str]) -> Command {
    let mut command = cairn(db, log, &[&["dev"], args].concat());
    command.env("CAIRN_INLINE_SLEEP_MAX_MS", "100");
    command
}

/// The pid `cairn dev status` reports, which must say the server is up.
async fn server_pid(db: &TestDb, log: &EffectLog) -> u32 {
    let status = run(dev(db, log, &["status"])).await;
    let out = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.status.code(), Some(0), "{out}{}", stderr(&status));
    out.split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"))
}

/// What the server logged, for a failing check.
fn server_log(db: &TestDb) -> String {
    let path = db.dir.join("cairn-home/server/server.log");
    std::fs::read_to_string(&path).unwrap_or_else(|e| format!("{}: {e}", path.display()))
}

/// Waits for a `cairn dev` command to exit; past the patience, fails showing the server's log.
async fn exited(db: &TestDb, child: tokio::process::Child) -> std::process::Output {
    match tokio::time::timeout(cairn_tests::PATIENCE, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for cairn"),
        Err(_) => panic!("cairn did not exit; the server's log:\n{}", server_log(db)),
    }
}

/// The server a test started: killed when the test ends, whatever happened (it runs in a
/// process group of its own, so nothing else would stop it).
struct Started(std::cell::Cell<u32>);

impl Drop for Started {
    fn drop(&mut self) {
        // Gone already when the test stopped it.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.get().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn runs_go_on_under_the_server_and_survive_its_sigkill() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let down = run(dev(&db, &log, &["status"])).await;
    assert_eq!(
        down.status.code(),
        Some(1),
        "no server yet: {}",
        stderr(&down)
    );
    let up = run(dev(&db, &log, &["up"])).await;
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    let first = server_pid(&db, &log).await;
    let started = Started(first.into());

    // A run that waits for an event, one that sleeps, one that works step after step; each
    // `cairn dev run` only submits and follows.
    let submit = |flow: &str, name: &str, input: serde_json::Value| {
        let input = input.to_string();
        let args = [
            "run", FLOWS, "--flow", flow, "--input", &input, "--name", name,
        ];
        dev(&db, &log, &args).spawn().expect("cannot start cairn")
    };
    let waits = submit("approval", "waits", json!({ "event": "go" }));
    let sleeps = submit("sleeper", "sleeps", json!({ "ms": 3000 }));
    let works = submit("looper", "works", json!({ "n": 8, "step_ms": 400 }));
    log.wait_for("tick:2").await;
    log.wait_for("step:before").await;

    cairn_tests::sigkill(first);
    let again = run(dev(&db, &log, &["up"])).await;
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    started.0.set(server_pid(&db, &log).await);
    assert_ne!(started.0.get(), first);
    let waiting = [
        "wait",
        "waits",
        "--for",
        "waiting",
        "--event",
        "go",
        "--timeout",
        "60s",
    ];
    let waiting = exited(&db, dev(&db, &log, &waiting).spawn().expect("cairn")).await;
    assert_eq!(waiting.status.code(), Some(0), "{}", stderr(&waiting));
    let approve = [
        "approve",
        "waits",
        "--data",
        r#"{"approved":true,"by":"me"}"#,
    ];
    let approved = run(dev(&db, &log, &approve)).await;
    assert_eq!(approved.status.code(), Some(0), "{}", stderr(&approved));

    for (name, follower) in [("waits", waits), ("sleeps", sleeps), ("works", works)] {
        let followed = exited(&db, follower).await;
        assert_eq!(
            followed.status.code(),
            Some(0),
            "{name}: {}",
            stderr(&followed)
        );
        assert!(
            stderr(&followed).contains("the dev server (pid"),
            "{name} was followed, not supervised: {}",
            stderr(&followed)
        );
    }
    // Every step ran; a step ran twice only if the kill caught it in flight, once at most.
    let mut ran: HashMap<String, usize> = HashMap::new();
    for effect in log.effects() {
        *ran.entry(format!("{}:{}", effect.run, effect.what))
            .or_default() += 1;
    }
    for tick in 0..8 {
        assert!(ran.contains_key(&format!("works:tick:{tick}")), "{ran:?}");
    }
    assert!(ran.values().all(|n| *n <= 2), "{ran:?}");
    assert!(ran.values().filter(|n| **n == 2).count() <= 1, "{ran:?}");
    assert!(
        ran.contains_key("sleeps:step:after") && ran.contains_key("waits:step:after"),
        "{ran:?}"
    );

    let stopped = run(dev(&db, &log, &["down"])).await;
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    let after = run(dev(&db, &log, &["status"])).await;
    assert_eq!(after.status.code(), Some(1), "{}", stderr(&after));
}

#[tokio::test]
async fn a_run_has_one_supervisor_whoever_comes_later() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let input = json!({ "n": 6, "step_ms": 300 }).to_string();
    let args = [
        "run", FLOWS, "--flow", "looper", "--input", &input, "--name", "shared",
    ];
    let first = dev(&db, &log, &args).spawn().expect("cannot start cairn");
    log.wait_for("tick:0").await;
    // The same command again, then a server: both leave the run to the first.
    let second = dev(&db, &log, &args).spawn().expect("cannot start cairn");
    let up = run(dev(&db, &log, &["up"])).await;
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    let _started = Started(server_pid(&db, &log).await.into());

    let first = exited(&db, first).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let second = exited(&db, second).await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    // It follows whoever it finds first: the first command, or the server if it was quicker.
    assert!(
        stderr(&second).contains("runs shared; following it"),
        "{}",
        stderr(&second)
    );
    let record = db.run(cairn_tests::cli::run_id(&db, "shared").await).await;
    assert_eq!(
        (record.attempt, record.crashes),
        (1, 0),
        "one execution, nobody's process taken for a crash; the server's log:\n{}",
        server_log(&db)
    );
    let ticks: Vec<String> = log.summary();
    assert_eq!(ticks.len(), 6, "each step once: {ticks:?}");
    let stopped = run(dev(&db, &log, &["down"])).await;
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
}
