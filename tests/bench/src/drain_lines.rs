//! The lines figure 8's flow (`drain` in `flows.rs`) prints and the benchmark reads in its pods'
//! logs (`bench/recovery.rs`).

/// The long step has started: the benchmark deletes the pod then.
pub const WORK_STARTED: &str = "drain: work started";
/// The long step's work is done: its effect, counted over every attempt.
pub const WORK_DONE: &str = "drain: work done";
