//! The flow process's one database connection, direct or through a pooler.
//!
//! Behind a pooler in transaction mode (PgBouncer's `pool_mode = transaction`), a server
//! connection belongs to the client only while a transaction is open. sqlx's extended protocol
//! sends a statement's Parse and its Bind in two round trips, each ending in Sync, so between
//! them the pooler may hand the client another server, one that never saw the statement. In
//! pooled mode every engine call therefore runs in a transaction of its own, with no statement
//! cache (a cached statement would be looked for on another server later). The server is held for one
//! engine call, never while the flow waits on an LLM.

use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

/// How the flow process reaches Postgres (`CAIRN_DATABASE_POOLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// Straight to Postgres, or through a pooler in session mode: statements are prepared once.
    #[default]
    None,
    /// Through a pooler in transaction mode: one transaction per engine call.
    Transaction,
}

impl Pooler {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Transaction => "transaction",
        }
    }
}

impl FromStr for Pooler {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "none" | "session" => Ok(Pooler::None),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(format!(
                "unknown pooler mode {other:?}: use \"transaction\" behind PgBouncer's pool_mode = transaction, or \"none\""
            )),
        }
    }
}

pub(crate) struct RunnerConn {
    pub(crate) conn: PgConnection,
    pub(crate) pooled: bool,
    /// The longest one engine call may take (`CAIRN_DATABASE_CALL_TIMEOUT_MS`): past it the
    /// database counts as unreachable and the attempt ends as crashed, to be relaunched. Engine
    /// calls take milliseconds; without a bound a silent network (no reset, no answer) would
    /// stall the run until the kernel gives up on the connection, many minutes later.
    pub(crate) call_timeout: Duration,
}

/// The error an engine call (or a connect) that outlived its bound ends with: the database
/// counts as unreachable.
pub(crate) fn timed_out(bound: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from the database within {bound:?} (CAIRN_DATABASE_CALL_TIMEOUT_MS)"),
    ))
}

impl RunnerConn {
    /// Connects, retrying refused connections with backoff (Postgres restarting, or at its
    /// connection limit) for about half a minute before giving up.
    pub(crate) async fn connect(
        url: &str,
        pooler: Pooler,
        call_timeout: Duration,
    ) -> Result<RunnerConn, sqlx::Error> {
        let pooled = pooler == Pooler::Transaction;
        let mut options = PgConnectOptions::from_str(url)?;
        if pooled {
            options = options.statement_cache_capacity(0);
        }
        // Each try is bounded too: a silent network would hold a connect forever.
        let connect_once = || async {
            tokio::time::timeout(call_timeout, options.connect())
                .await
                .unwrap_or_else(|_| Err(timed_out(call_timeout)))
        };
        let conn = connect_once
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(8)
                    .with_jitter(),
            )
            .when(|e| !matches!(e, sqlx::Error::Configuration(_)))
            .notify(
                |e, delay| tracing::warn!(error = %e, ?delay, "database not reachable yet; retrying"),
            )
            .await?;
        Ok(RunnerConn {
            conn,
            pooled,
            call_timeout,
        })
    }
}

/// How a pooled engine call begins. sqlx names the statements it prepares (`sqlx_s_1`, ...)
/// per client connection, and a statement outlives a failed transaction, so a server
/// connection can hold another client's statement under the name this one is about to use:
/// each transaction first drops whatever its server connection holds (one round trip with the
/// BEGIN; PgBouncer keeps the server for the whole transaction).
pub(crate) const BEGIN_POOLED: &str = "BEGIN; DEALLOCATE ALL";

/// `engine_call!(runner_conn, |conn| engine::f(conn, ...))`: one engine call on the flow
/// process's connection (a `RunnerConn`), in a transaction of its own when pooled.
macro_rules! engine_call {
    ($runner_conn:expr, |$conn:ident| $call:expr) => {{
        let runner_conn: &mut $crate::conn::RunnerConn = &mut $runner_conn;
        let bound = runner_conn.call_timeout;
        let call = async {
            if runner_conn.pooled {
                let mut tx =
                    sqlx::Connection::begin_with(&mut runner_conn.conn, $crate::conn::BEGIN_POOLED)
                        .await?;
                let $conn: &mut sqlx::PgConnection = &mut tx;
                let value = $call.await?;
                tx.commit().await?;
                Ok::<_, cairn_engine::EngineError>(value)
            } else {
                let $conn: &mut sqlx::PgConnection = &mut runner_conn.conn;
                $call.await
            }
        };
        match tokio::time::timeout(bound, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(cairn_engine::EngineError::Database(
                $crate::conn::timed_out(bound),
            )),
        }
    }};
}
pub(crate) use engine_call;
