//! The flows `make bench` runs as real flow processes (`cairn dev`) and flow pods (the cluster).
//!
//! Each records the moment its line after a wait runs as a checkpointed step whose value is
//! the wall-clock time (Unix milliseconds, fractional) taken inside the step: a replay returns
//! the stored value, so the first resume's time is what the benchmark reads back.
//!
//! With `BENCH_PRINT_START` set it prints the time its process started and exits: the bare pod
//! the cluster figures compare flow pods with.
//!
//! `drain` (figure 8) prints what its long step does, for the benchmark to read in the pod's
//! log: when to delete the pod, and how many times the step's work was done.

mod drain_lines;

use std::sync::OnceLock;

use cairn::{Ctx, Runner};
use serde::{Deserialize, Serialize};

use crate::drain_lines::{WORK_DONE, WORK_STARTED};

/// When this process started (the first line of `main`), for the benchmark's breakdown.
static STARTED: OnceLock<f64> = OnceLock::new();

/// What the step after a wait records: when it ran, and when its process started.
#[derive(Serialize, Deserialize)]
struct Resumed {
    at: f64,
    process_started_at: f64,
}

fn resumed() -> Resumed {
    Resumed {
        at: now_ms(),
        process_started_at: STARTED.get().copied().unwrap_or(f64::NAN),
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, as a float (sub-millisecond).
fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

#[derive(Deserialize)]
struct Resume {
    /// Event names are `<prefix><i>`.
    prefix: String,
    count: u32,
}

/// Waits for `count` events in turn; after each, step `resumed` (`resumed#2`...) records when
/// the flow's next line ran (and when its process started).
async fn resume(ctx: Ctx, input: Resume) -> anyhow::Result<u32> {
    for i in 0..input.count {
        let _: u64 = ctx.wait_for_event(&format!("{}{i}", input.prefix)).await?;
        let _: Resumed = ctx.step("resumed", || async { Ok(resumed()) }).await?;
    }
    Ok(input.count)
}

#[derive(Deserialize)]
struct WaitOnce {
    event: String,
}

/// Waits for one (shared) event, then records when it resumed: many runs wait on one event.
async fn wait_once(ctx: Ctx, input: WaitOnce) -> anyhow::Result<f64> {
    let _: u64 = ctx.wait_for_event(&input.event).await?;
    let resumed: Resumed = ctx.step("resumed", || async { Ok(resumed()) }).await?;
    Ok(resumed.at)
}

#[derive(Deserialize)]
struct Drain {
    /// How long the step works.
    step_ms: u64,
}

/// What the long step of `drain` records: when it ran, and in which attempt.
#[derive(Serialize, Deserialize)]
struct Worked {
    started_at: f64,
    finished_at: f64,
    attempt: i32,
}

/// What `drain`'s step after the long one records: as `resumed`, and in which attempt.
#[derive(Serialize, Deserialize)]
struct Continued {
    #[serde(flatten)]
    resumed: Resumed,
    attempt: i32,
}

/// One long step, then a step recording when its process started. A pod deleted during the
/// long step finishes it, gives the run back and exits; the next attempt replays the long step
/// and runs the second in a new process.
async fn drain(ctx: Ctx, input: Drain) -> anyhow::Result<()> {
    let attempt = ctx.attempt();
    let _: Worked = ctx
        .step("work", || async {
            let started_at = now_ms();
            println!("{WORK_STARTED}");
            tokio::time::sleep(std::time::Duration::from_millis(input.step_ms)).await;
            println!("{WORK_DONE}");
            Ok(Worked {
                started_at,
                finished_at: now_ms(),
                attempt,
            })
        })
        .await?;
    let _: Continued = ctx
        .step("continued", || async {
            Ok(Continued {
                resumed: resumed(),
                attempt,
            })
        })
        .await?;
    Ok(())
}

/// Finishes at once: admission and pod start without any wait.
async fn noop(_ctx: Ctx, _input: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    STARTED.get_or_init(now_ms);
    // A bare pod for the benchmark's reference: print when the process started, and exit.
    if std::env::var_os("BENCH_PRINT_START").is_some() {
        println!(
            "started {:.3}",
            STARTED.get().copied().unwrap_or_else(now_ms)
        );
        return;
    }
    Runner::new()
        .flow("resume", resume)
        .flow("wait-once", wait_once)
        .flow("noop", noop)
        .flow("drain", drain)
        .run()
        .await
}
