//! Crashes: a flow process SIGKILLed inside a step, between steps, and in a storm of fifty kills at random points; completed steps never run again.

use std::time::Duration;

use cairn_operator::lifecycle::Phase;
use cairn_tests::{TestDb, sigkill};
use serde_json::json;

use super::*;

// ---- 1. SIGKILL -----------------------------------------------------------------------------

#[tokio::test]
async fn sigkill_inside_a_step_relaunches_and_completed_steps_run_once() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("kill-inside", "steps", json!({ "hang": "inside:b" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    let hung = log.wait_for("hang:inside:b").await;
    assert_eq!(hung.attempt, 1);
    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(["a done", "b done", "c done"])));
    assert_eq!((run.attempt, run.crashes), (2, 1));
    // `a` completed before the kill: never again. `b` never completed in attempt 1, so it ran
    // again in attempt 2 (exactly twice). `c` once.
    assert_eq!(log.count("step:a"), 1, "{:?}", log.summary());
    assert_eq!(log.count("step:b"), 2, "{:?}", log.summary());
    assert_eq!(log.count("step:c"), 1, "{:?}", log.summary());
    let steps: Vec<(String, Option<i32>)> = db
        .steps(id)
        .await
        .into_iter()
        .map(|s| (s.key, s.attempt))
        .collect();
    assert_eq!(
        steps,
        [
            ("a".into(), Some(1)),
            ("b".into(), Some(2)),
            ("c".into(), Some(2))
        ],
        "checkpoints (key, attempt)"
    );
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["crashed", "completed"]);
    let detail = attempts[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("SIGKILL"), "crash detail: {detail}");
}

#[tokio::test]
async fn sigkill_between_steps_relaunches_and_every_step_runs_once() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("kill-between", "steps", json!({ "hang": "before:b" }))
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    let hung = log.wait_for("hang:before:b").await;
    assert_eq!(hung.attempt, 1);
    assert_eq!(
        db.checkpoint(id, "a").await,
        Some(json!("a done")),
        "a is checkpointed before the kill"
    );
    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(["a done", "b done", "c done"])));
    assert_eq!((run.attempt, run.crashes), (2, 1));
    for step in ["step:a", "step:b", "step:c"] {
        assert_eq!(log.count(step), 1, "{step}: {:?}", log.summary());
    }
    let attempts: Vec<i32> = log
        .effects()
        .iter()
        .filter(|e| e.what.starts_with("step:"))
        .map(|e| e.attempt)
        .collect();
    assert_eq!(
        attempts,
        [1, 2, 2],
        "a ran in attempt 1, b and c in attempt 2"
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["crashed", "completed"]);
}

// ---- Failure: a storm of SIGKILLs ---------------------------------------------------------------

/// A small xorshift generator: random kill points, reproducible from the printed seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test]
async fn a_storm_of_fifty_sigkills_at_random_points_never_runs_a_completed_step_again() {
    const KILLS: usize = 50;
    // Enough steps that the kills cannot use them all up: an attempt completes at most a few
    // steps (10 ms each) in the 0–40 ms before its kill, and a run that finished before the last
    // kill would leave the storm waiting for an attempt that never comes.
    const STEPS: usize = 300;
    let db = TestDb::new().await;
    let log = db.log("effects");
    // Relaunch at once after every crash (no backoff), and never give up within the storm.
    let id = db
        .create_run_with(
            "storm",
            "storm",
            json!({ "steps": STEPS, "step_ms": 10 }),
            KILLS as i32 + 10,
            0,
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill storm seed {seed}");

    let mut killed_attempt = 0;
    for _ in 0..KILLS {
        // The next attempt's process has entered the flow; kill it 0–40 ms later: while it
        // replays, inside a step, or between two.
        log.wait_for_count(1, |e| e.what == "start" && e.attempt > killed_attempt)
            .await;
        let started = log
            .effects()
            .into_iter()
            .find(|e| e.what == "start" && e.attempt > killed_attempt)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(next_random(&mut seed) % 40)).await;
        sigkill(started.pid);
        killed_attempt = started.attempt;
    }
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(STEPS)));
    assert_eq!(
        run.crashes, KILLS as i32,
        "every kill landed on a live process"
    );
    // Which attempt completed each step, and every execution of each.
    let completed_in: std::collections::HashMap<String, i32> = db
        .steps(id)
        .await
        .into_iter()
        .map(|s| (s.key, s.attempt.expect("completing attempt")))
        .collect();
    assert_eq!(completed_in.len(), STEPS);
    let executions: Vec<(String, i32)> = log
        .effects()
        .into_iter()
        .filter_map(|e| Some((e.what.strip_prefix("step:")?.to_owned(), e.attempt)))
        .collect();
    for (key, attempt) in &executions {
        assert!(
            *attempt <= completed_in[key],
            "step {key} ran in attempt {attempt}, after attempt {} had completed it",
            completed_in[key]
        );
    }
    // A step runs again only when a kill interrupted it: at most once per kill.
    let reruns = executions.len() - completed_in.len();
    assert!(reruns <= KILLS, "{reruns} re-executions for {KILLS} kills");
    eprintln!(
        "{KILLS} kills: {reruns} interrupted steps ran again, 0 completed steps ran again, {} attempts",
        run.attempt
    );
}
