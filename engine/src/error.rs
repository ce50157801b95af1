//! The engine's errors, by the SQLSTATE its functions raise (class CN, listed at the top of
//! `sql/schema/00_tables.sql`), and the one answer to "is the database unreachable?".

/// Errors the engine reports.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The attempt was superseded; the process must stop without writing more.
    #[error("{0}")]
    Fenced(String),
    #[error("{0}")]
    EventConflict(String),
    #[error("{0}")]
    RunConflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The run is not in a state that allows the operation (e.g. retrying a run that did not fail).
    #[error("{0}")]
    WrongState(String),
    /// An emitted payload does not satisfy the schema of a wait for that event.
    #[error("{0}")]
    InvalidPayload(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl EngineError {
    pub(crate) fn from_sqlx(err: sqlx::Error) -> Self {
        let Some(db) = err.as_database_error() else {
            return EngineError::Database(err);
        };
        let hint = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|e| e.hint())
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        let message = format!("{}{hint}", db.message());
        match db.code().as_deref() {
            Some("CN001") => EngineError::Fenced(message),
            Some("CN002") => EngineError::EventConflict(message),
            Some("CN003") => EngineError::RunConflict(message),
            Some("CN004") => EngineError::NotFound(message),
            Some("CN005") => EngineError::WrongState(message),
            _ => EngineError::Database(err),
        }
    }

    /// Whether the database is unreachable or restarting (worth waiting out), as opposed to
    /// a mistake.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Database(e) if sqlx_unavailable(e))
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) trait EngineResult<T> {
    fn engine(self) -> Result<T>;
}
impl<T> EngineResult<T> for std::result::Result<T, sqlx::Error> {
    fn engine(self) -> Result<T> {
        self.map_err(EngineError::from_sqlx)
    }
}

/// Whether anything in an error's chain says the database is unreachable or restarting.
pub fn is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |cause| cause.source()).any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(sqlx_unavailable)
            || cause
                .downcast_ref::<EngineError>()
                .is_some_and(EngineError::is_unavailable)
    })
}

fn sqlx_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // Class 08: connection exceptions; 57: operator intervention (shutdown, restart).
        e => e
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
    }
}

/// Why a connection to `url` failed, in the terms of its TLS settings (libpq's `sslmode`,
/// default `prefer`) when TLS is the cause, with what to change. The URL's password is not
/// in it.
pub fn explain_connect_error(url: &str, error: &sqlx::Error) -> String {
    let mode = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(key, _)| key == "sslmode")
                .map(|(_, value)| value.into_owned())
        })
        .unwrap_or_else(|| "prefer".to_owned());
    let text = error.to_string();
    let lower = text.to_lowercase();
    let hint = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "the server's certificate is not trusted: set sslrootcert to the CA that signed it"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "the server's certificate does not name this host name: connect by a name it lists, \
         or use sslmode=verify-ca"
    } else if lower.contains("does not support tls") || lower.contains("does not support ssl") {
        "the server does not support TLS: turn ssl on in the server, or choose sslmode=prefer \
         or disable"
    } else if lower.contains("no encryption") {
        "the server takes only TLS connections: choose sslmode=require or stronger"
    } else {
        ""
    };
    match hint {
        "" => format!("(sslmode={mode}) {text}"),
        hint => format!("(sslmode={mode}) {hint} ({text})"),
    }
}
