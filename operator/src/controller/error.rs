//! Why a reconcile failed, sorted for people and for metrics: the stage that failed and the
//! category of its cause. The category is the reason of the Warning Event on the object and a
//! label of `reconcile_errors`; an object that keeps failing is looked at less and less often.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use cairn_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    /// The same, from a named stage of a reconcile.
    #[error("{stage}: {source}")]
    At {
        stage: Stage,
        #[source]
        source: Box<Error>,
    },
}

/// The stages of the reconciles, as errors and metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Looking up the Flow and ResourceProfile a FlowRun names.
    Dereference,
    /// Creating the engine's run and applying cancel, retry and deadline to it.
    SyncEngine,
    /// Reading the run's pods from the API server.
    ObservePods,
    /// Launching an attempt, recording a crash, creating children's FlowRuns.
    Act,
    /// Writing the status.
    PatchStatus,
    /// Deleting a FlowRun whose time to live is over.
    Expire,
    /// Deleting the engine's run of a deleted FlowRun.
    Cleanup,
    /// Delivering a FlowEvent's event.
    Deliver,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dereference => "dereference",
            Stage::SyncEngine => "sync_engine",
            Stage::ObservePods => "observe_pods",
            Stage::Act => "act",
            Stage::PatchStatus => "patch_status",
            Stage::Expire => "expire",
            Stage::Cleanup => "cleanup",
            Stage::Deliver => "deliver",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure, for whoever must act on it: wait (unavailable), fix permissions
/// (forbidden), or read the message (the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    DatabaseUnavailable,
    DatabaseError,
    KubernetesUnavailable,
    Forbidden,
    Conflict,
    KubernetesApiError,
    InternalError,
}

impl Category {
    /// Also the Warning Event's reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::DatabaseUnavailable => "DatabaseUnavailable",
            Category::DatabaseError => "DatabaseError",
            Category::KubernetesUnavailable => "KubernetesUnavailable",
            Category::Forbidden => "Forbidden",
            Category::Conflict => "Conflict",
            Category::KubernetesApiError => "KubernetesApiError",
            Category::InternalError => "InternalError",
        }
    }
}

impl Error {
    /// The stage that failed, if the error came through one.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Error::At { stage, .. } => Some(*stage),
            _ => None,
        }
    }

    /// The category of the first cause that has one (the database's "unavailable" answer is
    /// the engine's, shared with `cairn dev`).
    pub fn category(&self) -> Category {
        if cairn_engine::error::is_unavailable(self) {
            return Category::DatabaseUnavailable;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(kube) = error.downcast_ref::<kube::Error>() {
                return match kube {
                    kube::Error::Api(status) => match status.code {
                        403 => Category::Forbidden,
                        409 => Category::Conflict,
                        429 | 500.. => Category::KubernetesUnavailable,
                        _ => Category::KubernetesApiError,
                    },
                    _ => Category::KubernetesUnavailable,
                };
            }
            if error.is::<sqlx::Error>() || error.is::<EngineError>() {
                return Category::DatabaseError;
            }
            cause = error.source();
        }
        Category::InternalError
    }
}

/// Tags a stage's failure with the stage.
pub trait AtStage<T> {
    fn at(self, stage: Stage) -> Result<T, Error>;
}

impl<T, E: Into<Error>> AtStage<T> for Result<T, E> {
    fn at(self, stage: Stage) -> Result<T, Error> {
        self.map_err(|e| Error::At {
            stage,
            source: Box::new(e.into()),
        })
    }
}

/// Failures in a row per object: the next look backs off exponentially (5 s doubling to five
/// minutes), and only the first failure of a streak (or a change of category) is worth a
/// Warning Event, so an outage does not write one Event per object per retry.
#[derive(Default)]
pub struct Backoff(std::sync::Mutex<HashMap<String, (u32, Category)>>);

impl Backoff {
    const FIRST: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);

    /// Records a failure of `object`: when to look again, and whether to tell with an Event.
    pub fn failed(&self, object: &str, category: Category) -> (Duration, bool) {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = failures.entry(object.to_owned()).or_insert((0, category));
        let news = entry.0 == 0 || entry.1 != category;
        *entry = (entry.0.saturating_add(1), category);
        (Self::delay(entry.0), news)
    }

    /// The object reconciled fine: its next failure starts a new streak.
    pub fn succeeded(&self, object: &str) {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !failures.is_empty() {
            failures.remove(object);
        }
    }

    fn delay(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        Self::FIRST.saturating_mul(1 << doublings).min(Self::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_back_off_up_to_five_minutes_and_tell_once() {
        let backoff = Backoff::default();
        let delays: Vec<(u64, bool)> = (0..8)
            .map(|_| backoff.failed("ns/run", Category::DatabaseUnavailable))
            .map(|(delay, news)| (delay.as_secs(), news))
            .collect();
        assert_eq!(
            delays,
            [
                (5, true),
                (10, false),
                (20, false),
                (40, false),
                (80, false),
                (160, false),
                (300, false),
                (300, false)
            ]
        );
        // Another cause is news; another object has its own streak.
        assert_eq!(
            backoff.failed("ns/run", Category::Forbidden),
            (Duration::from_secs(300), true)
        );
        assert_eq!(
            backoff.failed("ns/other", Category::Forbidden),
            (Duration::from_secs(5), true)
        );
        // A success ends the streak.
        backoff.succeeded("ns/run");
        assert_eq!(
            backoff.failed("ns/run", Category::Forbidden),
            (Duration::from_secs(5), true)
        );
    }

    #[test]
    fn the_category_comes_from_the_cause_through_stages() {
        let api = |code: u16| {
            Error::from(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        let at = |e: Error| Err::<(), _>(e).at(Stage::Act).unwrap_err();
        assert_eq!(at(api(403)).category(), Category::Forbidden);
        assert_eq!(at(api(409)).category(), Category::Conflict);
        assert_eq!(api(503).category(), Category::KubernetesUnavailable);
        assert_eq!(api(422).category(), Category::KubernetesApiError);
        assert_eq!(at(api(403)).stage(), Some(Stage::Act));
        assert_eq!(
            at(sqlx::Error::PoolTimedOut.into()).category(),
            Category::DatabaseUnavailable
        );
        assert_eq!(
            Error::from(sqlx::Error::RowNotFound).category(),
            Category::DatabaseError
        );
        assert_eq!(
            Error::from(EngineError::Database(sqlx::Error::PoolClosed)).category(),
            Category::DatabaseUnavailable
        );
        assert_eq!(
            Error::from(anyhow::anyhow!("odd")).category(),
            Category::InternalError
        );
    }
}
