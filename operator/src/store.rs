//! Connecting to the engine's database, applying migrations, and the read queries behind
//! `cairn dev runs`, `cairn dev inspect` and the read API.

use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::lifecycle::{Phase, RunView};
use crate::localdb::LocalPostgres;

/// The engine's migrations. Their bookkeeping table lives in the `cairn` schema too: with the
/// default search path (`"$user", public`) a database user named `cairn` would otherwise see
/// a different `_sqlx_migrations` before and after the first migration creates the schema.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../sql/migrations");
    migrator.dangerous_set_table_name("cairn._sqlx_migrations");
    migrator.create_schema("cairn");
    migrator
}

/// The database URL: `CAIRN_DATABASE_URL`, else the private Postgres (started if needed).
pub fn database_url() -> anyhow::Result<String> {
    match std::env::var("CAIRN_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => LocalPostgres::new(LocalPostgres::default_root(), 5432)?.ensure_running(),
    }
}

/// Hides the password of a URL for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable database URL>".into(),
    }
}

/// The URL flow processes use: `owner_url` with the database's runner login (created on first
/// use; see migration 0004), which can only call the `cairn_runner` functions, for its own run.
pub async fn runner_url(pool: &PgPool, owner_url: &str) -> anyhow::Result<String> {
    let login = sqlx::query!(
        r#"SELECT login AS "login!", password AS "password!" FROM cairn.ensure_runner_login()"#
    )
    .fetch_one(pool)
    .await
    .context(
        "cannot create the runner's database login (the owner needs CREATEROLE once); \
         or create a login in role cairn_runner and pass its URL as CAIRN_RUNNER_DATABASE_URL",
    )?;
    let mut url = url::Url::parse(owner_url)
        .with_context(|| format!("not a valid database URL: {}", redact(owner_url)))?;
    url.set_username(&login.login)
        .and_then(|()| url.set_password(Some(&login.password)))
        .map_err(|()| anyhow::anyhow!("cannot put a login into {}", redact(owner_url)))?;
    Ok(url.to_string())
}

/// Connects a small pool and applies pending migrations (under sqlx's advisory lock, so
/// concurrent starts are safe). A database that is down gives one clear error, quickly.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    connect_with_pool_size(url, 4).await
}

/// [`connect`] with a larger pool, for the operator's concurrent reconciles.
pub async fn connect_with_pool_size(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().with_context(|| {
        format!(
            "CAIRN_DATABASE_URL is not a valid Postgres URL: {}",
            redact(url)
        )
    })?;
    // One direct connection first: a pool would retry until its timeout and then report only
    // "timed out", hiding the cause (refused, unknown host, bad password).
    let probe = PgConnection::connect_with(&options).await.map_err(|e| {
        anyhow!(
            "cannot connect to the database at {}: {e}\n\
             Is Postgres running and reachable? Set CAIRN_DATABASE_URL, or unset it to use Cairn's private Postgres.",
            redact(url)
        )
    })?;
    probe.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    migrator()
        .run(&pool)
        .await
        .context("cannot apply Cairn's database migrations")?;
    Ok(pool)
}

/// Whether an error means the database is unreachable or restarting (worth waiting out), as
/// opposed to a mistake.
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let sqlx_error = cause.downcast_ref::<sqlx::Error>().or(
            match cause.downcast_ref::<cairn::engine::EngineError>() {
                Some(cairn::engine::EngineError::Database(e)) => Some(e),
                _ => None,
            },
        );
        match sqlx_error {
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Protocol(_),
            ) => true,
            // Class 08: connection exceptions; 57: operator intervention (shutdown, restart).
            Some(e) => e
                .as_database_error()
                .and_then(|db| db.code())
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
            None => false,
        }
    })
}

/// A run as the supervisors and the CLI see it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub namespace: String,
    pub name: String,
    pub flow: String,
    pub parent_id: Option<Uuid>,
    pub phase: Phase,
    pub attempt: i32,
    pub crashes: i32,
    pub max_attempts: i32,
    pub retry_backoff_ms: i64,
    pub wake_at: Option<DateTime<Utc>>,
    pub waiting_for: Option<Value>,
    pub cancel_requested: bool,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// Last change of state (or of the wait).
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: i64,
    pub usd: f64,
}

impl RunRecord {
    pub fn view(&self) -> RunView {
        RunView {
            phase: self.phase,
            attempt: self.attempt,
            crashes: self.crashes,
            max_attempts: self.max_attempts,
            retry_backoff: Duration::from_millis(self.retry_backoff_ms.max(0) as u64),
        }
    }

    pub fn error_message(&self) -> Option<&str> {
        self.error.as_ref()?.get("message")?.as_str()
    }
}

macro_rules! select_runs {
    ($filter:tt $(, $arg:expr)*) => {
        sqlx::query!(
            r#"SELECT r.id, r.namespace, r.name, r.flow, r.parent_id, r.state, r.attempt, r.crashes,
                      r.max_attempts, r.retry_backoff_ms, r.wake_at, r.waiting_for, r.cancel_requested,
                      r.result, r.error, r.created_at, r.updated_at, r.finished_at,
                      (SELECT count(*) FROM cairn.steps s WHERE s.run_id = r.id) AS "steps!",
                      (SELECT coalesce(sum(s.usd), 0)::float8 FROM cairn.steps s WHERE s.run_id = r.id) AS "usd!"
               FROM cairn.runs r "# + $filter
            $(, $arg)*
        )
    };
}

macro_rules! to_record {
    ($row:expr) => {{
        let row = $row;
        RunRecord {
            phase: row.state.parse().map_err(|e: String| anyhow!(e))?,
            id: row.id,
            namespace: row.namespace,
            name: row.name,
            flow: row.flow,
            parent_id: row.parent_id,
            attempt: row.attempt,
            crashes: row.crashes,
            max_attempts: row.max_attempts,
            retry_backoff_ms: row.retry_backoff_ms,
            wake_at: row.wake_at,
            waiting_for: row.waiting_for,
            cancel_requested: row.cancel_requested,
            result: row.result,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
            finished_at: row.finished_at,
            steps: row.steps,
            usd: row.usd,
        }
    }};
}

/// Every run of the tree rooted at `root` (the root, its children, theirs...).
pub async fn tree(pool: &PgPool, root: Uuid) -> anyhow::Result<Vec<RunRecord>> {
    let rows = select_runs!("WHERE r.root_id = $1 ORDER BY r.created_at, r.name", root)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(|row| Ok(to_record!(row))).collect()
}

pub async fn list(pool: &PgPool, namespace: Option<&str>) -> anyhow::Result<Vec<RunRecord>> {
    let rows = select_runs!(
        "WHERE ($1::text IS NULL OR r.namespace = $1) ORDER BY r.created_at, r.name",
        namespace
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(|row| Ok(to_record!(row))).collect()
}

/// A run by name (in a namespace) or by id.
pub async fn find(pool: &PgPool, namespace: &str, name_or_id: &str) -> anyhow::Result<RunRecord> {
    let id = name_or_id.parse::<Uuid>().ok();
    let row = select_runs!(
        "WHERE (r.namespace = $1 AND r.name = $2) OR r.id = $3",
        namespace,
        name_or_id,
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        NotFound(format!(
            "no run named \"{name_or_id}\" in namespace \"{namespace}\" (see `cairn dev runs`)"
        ))
    })?;
    Ok(to_record!(row))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(String);

/// One step of a run for `cairn dev inspect` and the read API: a checkpoint (`completed`), or
/// the wait, sleep or join the run is blocked on (`waiting`).
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub key: String,
    pub kind: String,
    pub status: String,
    /// The attempt that completed it.
    pub attempt: Option<i32>,
    pub tries: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    pub usd: Option<f64>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub model: Option<String>,
}

pub async fn steps(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Vec<StepRecord>> {
    let rows = sqlx::query_as!(
        StepRecord,
        r#"SELECT key AS "key!", kind AS "kind!", status AS "status!", attempt, tries,
                  started_at AS "started_at!", duration_ms AS "duration_ms!",
                  usd, tokens_in, tokens_out, model
           FROM (SELECT key, kind, 'completed' AS status, attempt, tries, started_at,
                        (extract(epoch FROM completed_at - started_at) * 1000)::float8 AS duration_ms,
                        usd::float8 AS usd, tokens_in, tokens_out, model
                 FROM cairn.steps WHERE run_id = $1
                 UNION ALL
                 SELECT w.step_key, CASE w.kind WHEN 'event' THEN 'wait' WHEN 'children' THEN 'join' ELSE w.kind END,
                        'waiting', NULL, NULL, w.created_at,
                        (extract(epoch FROM now() - w.created_at) * 1000)::float8,
                        NULL, NULL, NULL, NULL
                 FROM cairn.waits w
                 WHERE w.run_id = $1
                   AND NOT EXISTS (SELECT 1 FROM cairn.steps s WHERE s.run_id = w.run_id AND s.key = w.step_key)
                ) all_steps
           ORDER BY started_at, key"#,
        run_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// One launched process, for `cairn dev inspect` and the read API.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

pub async fn attempts(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Vec<AttemptRecord>> {
    Ok(sqlx::query_as!(
        AttemptRecord,
        "SELECT attempt, started_at, ended_at, outcome, detail FROM cairn.attempts WHERE run_id = $1 ORDER BY attempt",
        run_id
    )
    .fetch_all(pool)
    .await?)
}

/// Token and dollar totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub steps: i64,
    pub usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

pub async fn totals(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Totals> {
    Ok(sqlx::query_as!(
        Totals,
        r#"SELECT count(*) AS "steps!", coalesce(sum(usd), 0)::float8 AS "usd!",
                  coalesce(sum(tokens_in), 0)::int8 AS "tokens_in!",
                  coalesce(sum(tokens_out), 0)::int8 AS "tokens_out!"
           FROM cairn.steps WHERE run_id = $1"#,
        run_id
    )
    .fetch_one(pool)
    .await?)
}

/// A child run, as the operator mirrors it into a FlowRun.
#[derive(Debug, Clone)]
pub struct ChildRecord {
    pub name: String,
    pub flow: String,
    pub input: Value,
}

pub async fn children(pool: &PgPool, parent: Uuid) -> anyhow::Result<Vec<ChildRecord>> {
    Ok(sqlx::query_as!(
        ChildRecord,
        "SELECT name, flow, input FROM cairn.runs WHERE parent_id = $1 ORDER BY created_at, name",
        parent
    )
    .fetch_all(pool)
    .await?)
}

/// Deletes a run with everything it owns (children, steps, attempts, waits).
pub async fn delete_run(pool: &PgPool, run_id: Uuid) -> anyhow::Result<()> {
    sqlx::query!("DELETE FROM cairn.runs WHERE id = $1", run_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// How many runs are in each phase (the engine's spelling).
pub async fn count_by_phase(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT state, count(*) AS "count!" FROM cairn.runs GROUP BY state ORDER BY state"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}
