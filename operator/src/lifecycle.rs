//! The run lifecycle, decided in one place: given what the database says about a run and what
//! is known of its process, what happens next. Pure (no I/O), so both launchers — `cairn dev`
//! (local processes) and the operator (pods) — share it and it is tested exhaustively.

use std::fmt;
use std::time::Duration;

pub use cairn_engine::Phase;
use cairn_engine::read::RunRecord;

/// What the database says about a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub phase: Phase,
    /// The current (latest launched) attempt.
    pub attempt: i32,
    /// Crashed attempts so far.
    pub crashes: i32,
    pub max_attempts: i32,
    /// Delay before the first relaunch after a crash; doubles with each crash.
    pub retry_backoff: Duration,
}

impl RunView {
    pub fn of(record: &RunRecord) -> RunView {
        RunView {
            phase: record.phase,
            attempt: record.attempt,
            crashes: record.crashes,
            max_attempts: record.max_attempts,
            retry_backoff: Duration::from_millis(record.retry_backoff_ms.max(0) as u64),
        }
    }
}

/// How a launched process ended, as the launcher observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessExit {
    Code(i32),
    Signal(i32),
    OutOfMemory,
    Evicted(String),
    /// The process (pod) disappeared without an exit status.
    Vanished,
    /// It could not be started at all.
    LaunchFailed(String),
}

impl fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessExit::Code(code) => match cairn_engine::protocol::Exit::describe_code(*code) {
                Some(meaning) => write!(f, "exited with code {code} ({meaning})"),
                None => write!(f, "exited with code {code}"),
            },
            ProcessExit::Signal(9) => write!(f, "killed by signal 9 (SIGKILL)"),
            ProcessExit::Signal(6) => write!(f, "aborted (signal 6, SIGABRT)"),
            ProcessExit::Signal(15) => write!(f, "terminated by signal 15 (SIGTERM)"),
            ProcessExit::Signal(sig) => write!(f, "killed by signal {sig}"),
            ProcessExit::OutOfMemory => write!(f, "killed: out of memory"),
            ProcessExit::Evicted(why) => write!(f, "evicted: {why}"),
            ProcessExit::Vanished => write!(f, "the process disappeared"),
            ProcessExit::LaunchFailed(why) => write!(f, "could not be launched: {why}"),
        }
    }
}

/// What the launcher knows of the run's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// No process, and none seen ending since the last decision.
    Absent,
    Alive {
        attempt: i32,
    },
    Exited {
        attempt: i32,
        exit: ProcessExit,
    },
}

/// What the launcher must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Claim the run (start_attempt) and launch a process.
    Launch,
    /// Nothing until something changes: the process runs, or the run waits for an event,
    /// a timer or its children (a NOTIFY or a timer brings the next decision).
    Idle,
    /// The process died while the run was running: record the crash, and retry after the
    /// delay or give up (`None`).
    RecordCrash {
        attempt: i32,
        reason: String,
        retry_in: Option<Duration>,
    },
    /// The run is over; stop any process still alive.
    Finished(Phase),
}

/// The longest delay between crash retries.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

pub fn decide(run: &RunView, process: &Process) -> Next {
    if run.phase.is_terminal() {
        return Next::Finished(run.phase);
    }
    match (run.phase, process) {
        // One process per run at a time: whatever the record says, let a live one finish.
        (_, Process::Alive { .. }) => Next::Idle,
        (Phase::Pending, _) => Next::Launch,
        (Phase::Running, Process::Exited { attempt, exit }) if *attempt == run.attempt => {
            let reason = match exit {
                // A clean exit always moves the run off `running` first; if it did not, the
                // process lied or lost its last write.
                ProcessExit::Code(code @ (0 | 1)) => {
                    format!("exited with code {code} but the run was still running in the database")
                }
                other => other.to_string(),
            };
            crash(run, reason)
        }
        // Running with no process of this attempt: it was lost (launcher restarted, pod deleted).
        (Phase::Running, Process::Absent) => {
            crash(run, "the process of this attempt is gone".into())
        }
        (Phase::Running, Process::Exited { .. }) => {
            crash(run, "the process of this attempt is gone".into())
        }
        (Phase::Waiting | Phase::Sleeping | Phase::Retrying, _) => Next::Idle,
        (Phase::Succeeded | Phase::Failed | Phase::Cancelled, _) => unreachable!("handled above"),
    }
}

fn crash(run: &RunView, reason: String) -> Next {
    Next::RecordCrash {
        attempt: run.attempt,
        reason,
        retry_in: retry_delay(run),
    }
}

/// The delay before relaunching after the crash being recorded, or `None` when that crash
/// uses up the run's attempts. Doubles per crash, capped at [`MAX_RETRY_BACKOFF`].
pub fn retry_delay(run: &RunView) -> Option<Duration> {
    let crashes_now = run.crashes + 1;
    if crashes_now >= run.max_attempts {
        return None;
    }
    let factor = 2u32.saturating_pow((crashes_now - 1).clamp(0, 20) as u32);
    Some(
        run.retry_backoff
            .saturating_mul(factor)
            .min(MAX_RETRY_BACKOFF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(phase: Phase) -> RunView {
        RunView {
            phase,
            attempt: 2,
            crashes: 0,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(1),
        }
    }

    fn exited(attempt: i32, exit: ProcessExit) -> Process {
        Process::Exited { attempt, exit }
    }

    #[test]
    fn terminal_phases_finish_whatever_the_process() {
        for phase in [Phase::Succeeded, Phase::Failed, Phase::Cancelled] {
            for process in [
                Process::Absent,
                Process::Alive { attempt: 2 },
                exited(2, ProcessExit::Code(0)),
                exited(2, ProcessExit::Signal(9)),
            ] {
                assert_eq!(
                    decide(&run(phase), &process),
                    Next::Finished(phase),
                    "{phase} {process:?}"
                );
            }
        }
    }

    #[test]
    fn pending_launches_once_no_process_is_alive() {
        assert_eq!(decide(&run(Phase::Pending), &Process::Absent), Next::Launch);
        // Woken while the suspended process is still exiting: wait for it first.
        assert_eq!(
            decide(&run(Phase::Pending), &Process::Alive { attempt: 2 }),
            Next::Idle
        );
        assert_eq!(
            decide(&run(Phase::Pending), &exited(2, ProcessExit::Code(0))),
            Next::Launch
        );
    }

    #[test]
    fn parked_runs_idle_until_woken() {
        for phase in [Phase::Waiting, Phase::Sleeping, Phase::Retrying] {
            for process in [
                Process::Absent,
                exited(2, ProcessExit::Code(0)),
                Process::Alive { attempt: 2 },
            ] {
                assert_eq!(
                    decide(&run(phase), &process),
                    Next::Idle,
                    "{phase} {process:?}"
                );
            }
        }
    }

    #[test]
    fn running_with_live_process_idles() {
        assert_eq!(
            decide(&run(Phase::Running), &Process::Alive { attempt: 2 }),
            Next::Idle
        );
    }

    #[test]
    fn every_kind_of_death_while_running_is_a_crash_with_backoff() {
        for exit in [
            ProcessExit::Signal(9),
            ProcessExit::Code(101),
            ProcessExit::Code(70),
            ProcessExit::OutOfMemory,
            ProcessExit::Evicted("node pressure".into()),
            ProcessExit::Vanished,
            ProcessExit::LaunchFailed("no such file".into()),
        ] {
            let reason = exit.to_string();
            assert_eq!(
                decide(&run(Phase::Running), &exited(2, exit)),
                Next::RecordCrash {
                    attempt: 2,
                    reason,
                    retry_in: Some(Duration::from_secs(1))
                }
            );
        }
    }

    #[test]
    fn a_clean_exit_code_without_a_recorded_outcome_is_a_crash() {
        let Next::RecordCrash { reason, .. } =
            decide(&run(Phase::Running), &exited(2, ProcessExit::Code(0)))
        else {
            panic!("expected a crash");
        };
        assert!(reason.contains("still running"), "{reason}");
    }

    #[test]
    fn a_running_run_without_its_process_is_a_crash() {
        assert!(matches!(
            decide(&run(Phase::Running), &Process::Absent),
            Next::RecordCrash { attempt: 2, .. }
        ));
        // An older attempt's exit says nothing about the current one, which is gone too.
        assert!(matches!(
            decide(&run(Phase::Running), &exited(1, ProcessExit::Signal(9))),
            Next::RecordCrash { attempt: 2, .. }
        ));
    }

    #[test]
    fn backoff_doubles_and_the_limit_gives_up() {
        let mut view = run(Phase::Running);
        view.max_attempts = 5;
        let delays: Vec<_> = (0..5)
            .map(|crashes| {
                retry_delay(&RunView {
                    crashes,
                    ..view.clone()
                })
            })
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None
            ]
        );
        view.max_attempts = 1;
        assert_eq!(retry_delay(&view), None);
    }

    #[test]
    fn backoff_is_capped() {
        let view = RunView {
            crashes: 30,
            max_attempts: 100,
            retry_backoff: Duration::from_secs(10),
            ..run(Phase::Running)
        };
        assert_eq!(retry_delay(&view), Some(MAX_RETRY_BACKOFF));
    }
}
