//! The phase of a run: one type for the engine's record, the CLI and the FlowRun status.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pending → Running → (Waiting | Sleeping | Retrying)* → Succeeded | Failed | Cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub enum Phase {
    Pending,
    Running,
    Waiting,
    Sleeping,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Running,
        Phase::Waiting,
        Phase::Sleeping,
        Phase::Retrying,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }

    /// The engine's spelling (the `state` column).
    pub fn as_db(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Waiting => "waiting",
            Phase::Sleeping => "sleeping",
            Phase::Retrying => "retrying",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_db().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown phase {s:?} (expected one of: pending, running, waiting, sleeping, retrying, succeeded, failed, cancelled)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_the_database_spelling() {
        for phase in Phase::ALL {
            assert_eq!(phase.as_db().parse::<Phase>(), Ok(phase));
        }
        assert!("bogus".parse::<Phase>().is_err());
    }
}
