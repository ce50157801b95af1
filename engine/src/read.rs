//! The read queries behind `cairn dev runs`, `cairn dev inspect`, the operator's reconcile and
//! its read API: runs, their steps, attempts and costs, as the engine's tables hold them.

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::artifacts::ArtifactRef;
use crate::checkpoint;
use crate::read_api::{Artifact, Attempt, PREVIEW_CHARS, Step, StepOutput, Totals};
use crate::{Phase, Wait};

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
    /// Cost of the run's own steps, and of its tree (its children's too, at any depth).
    pub usd: f64,
    pub tree_usd: f64,
    /// What the tree may spend (US dollars), if limited.
    pub budget_usd: Option<f64>,
    /// For a fork: `{"run", "run_id", "step", "reused", "set"}` (`cairn.fork_run`).
    pub fork_of: Option<Value>,
    /// The FlowRun the run belongs to (runs the operator made).
    pub flowrun_uid: Option<Uuid>,
}

impl RunRecord {
    pub fn error_message(&self) -> Option<&str> {
        self.error.as_ref()?.get("message")?.as_str()
    }

    /// What the run waits for, if it is parked.
    pub fn wait(&self) -> Option<Wait> {
        Wait::from_engine(self.waiting_for.as_ref()?, self.wake_at)
    }
}

macro_rules! select_runs {
    ($filter:tt $(, $arg:expr)*) => {
        sqlx::query!(
            r#"SELECT r.id, r.namespace, r.name, r.flow, r.parent_id, r.state, r.attempt, r.crashes,
                      r.max_attempts, r.retry_backoff_ms, r.wake_at, r.waiting_for, r.cancel_requested,
                      r.result, r.error, r.created_at, r.updated_at, r.finished_at,
                      (SELECT count(*) FROM cairn.steps s WHERE s.run_id = r.id) AS "steps!",
                      (SELECT coalesce(sum(s.usd), 0)::float8 FROM cairn.steps s
                       WHERE s.run_id = r.id AND s.origin IS NULL) AS "usd!",
                      cairn.tree_usd(r.id)::float8 AS "tree_usd!", r.budget_usd::float8 AS budget_usd,
                      r.fork_of, r.flowrun_uid
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
            tree_usd: row.tree_usd,
            budget_usd: row.budget_usd,
            fork_of: row.fork_of,
            flowrun_uid: row.flowrun_uid,
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

/// The run's steps for `cairn dev inspect` and the read API: checkpoints (`completed`), the
/// wait, sleep or join the run is blocked on (`waiting`), and the step whose failure failed
/// the run (`failed`, named by the SDK in the run's error). Each completed step comes with a
/// preview of its value, except a sensitive one's (see [`crate::checkpoint`]).
pub async fn steps(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Vec<Step>> {
    let rows = sqlx::query!(
        r#"SELECT key AS "key!", kind AS "kind!", status AS "status!", attempt, tries,
                  started_at AS "started_at!", duration_ms AS "duration_ms!",
                  usd, tokens_in, tokens_out, model, preview, sensitive AS "sensitive!", error, origin
           FROM (SELECT key, kind, 'completed' AS status, attempt, tries, started_at,
                        (extract(epoch FROM completed_at - started_at) * 1000)::float8 AS duration_ms,
                        usd::float8 AS usd, tokens_in, tokens_out, model,
                        CASE coalesce(result->>'$cairn', '')
                            WHEN 'sealed' THEN NULL
                            WHEN 'artifact' THEN format('<artifact: %s, %s>', pg_size_pretty((result->>'size')::bigint), result->>'content_type')
                            WHEN 'value' THEN left((result->'value')::text, $2 + 1)
                            ELSE left(result::text, $2 + 1) END AS preview,
                        coalesce(result->>'$cairn' = 'sealed', false) AS sensitive,
                        NULL::text AS error, origin
                 FROM cairn.steps WHERE run_id = $1
                 UNION ALL
                 SELECT w.step_key, CASE w.kind WHEN 'event' THEN 'wait' WHEN 'children' THEN 'join' ELSE w.kind END,
                        'waiting', NULL, NULL, w.created_at,
                        (extract(epoch FROM now() - w.created_at) * 1000)::float8,
                        NULL, NULL, NULL, NULL, NULL, false, NULL, NULL
                 FROM cairn.waits w
                 WHERE w.run_id = $1
                   AND NOT EXISTS (SELECT 1 FROM cairn.steps s WHERE s.run_id = w.run_id AND s.key = w.step_key)
                 UNION ALL
                 SELECT r.error->>'step', 'step', 'failed', r.attempt, (r.error->>'tries')::int,
                        coalesce(r.finished_at, r.updated_at), 0, NULL, NULL, NULL, NULL, NULL, false,
                        r.error->>'message', NULL
                 FROM cairn.runs r
                 WHERE r.id = $1 AND r.state = 'failed' AND r.error ? 'step'
                   AND NOT EXISTS (SELECT 1 FROM cairn.steps s WHERE s.run_id = r.id AND s.key = r.error->>'step')
                ) all_steps
           ORDER BY started_at, key"#,
        run_id,
        PREVIEW_CHARS as i32
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Step {
            key: row.key,
            kind: row.kind,
            status: row.status,
            attempt: row.attempt,
            tries: row.tries,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            usd: row.usd,
            tokens_in: row.tokens_in,
            tokens_out: row.tokens_out,
            model: row.model,
            preview: row.preview.map(preview),
            sensitive: row.sensitive,
            error: row.error,
            origin: row.origin,
        })
        .collect())
}

/// A preview cut to [`PREVIEW_CHARS`] characters, marked when it was cut.
fn preview(text: String) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// One step's whole value (`inspect --step KEY`); a sensitive one's stays hidden.
pub async fn step_output(pool: &PgPool, run: &RunRecord, key: &str) -> anyhow::Result<StepOutput> {
    let steps = steps(pool, run.id).await?;
    let step = steps.into_iter().find(|s| s.key == key).ok_or_else(|| {
        NotFound(format!(
            "run \"{}\" has no step \"{key}\" (completed, waiting or failed); `inspect` lists its steps",
            run.name
        ))
    })?;
    let stored = sqlx::query_scalar!(
        "SELECT result FROM cairn.steps WHERE run_id = $1 AND key = $2",
        run.id,
        key
    )
    .fetch_optional(pool)
    .await?;
    let artifact = stored
        .as_ref()
        .and_then(|stored| artifact_of(key, stored, step.started_at));
    let output = match stored {
        Some(stored) if !checkpoint::is_sealed(&stored) && artifact.is_none() => {
            Some(checkpoint::value_of(key, stored, None).map_err(|why| anyhow!(why))?)
        }
        _ => None,
    };
    Ok(StepOutput {
        run: run.name.clone(),
        key: step.key,
        kind: step.kind,
        status: step.status,
        sensitive: step.sensitive,
        output,
        artifact,
        error: step.error,
    })
}

/// The run's objects in the artifact store, in the order they were checkpointed.
pub async fn artifacts(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Vec<Artifact>> {
    let rows = sqlx::query!(
        r#"SELECT key, result, completed_at FROM cairn.steps
           WHERE run_id = $1 AND cairn.artifact_digest(result) IS NOT NULL
           ORDER BY completed_at, key"#,
        run_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| artifact_of(&row.key, &row.result, row.completed_at))
        .collect())
}

/// One artifact of the run, by its name or its step's key, with the reference to fetch it by.
pub async fn artifact(
    pool: &PgPool,
    run: &RunRecord,
    name: &str,
) -> anyhow::Result<(Artifact, ArtifactRef)> {
    let all = artifacts(pool, run.id).await?;
    let found = all
        .iter()
        .find(|a| a.name == name)
        .or_else(|| all.iter().find(|a| a.step == name))
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
            NotFound(format!(
                "run \"{}\" has no artifact \"{name}\" (it has: {})",
                run.name,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        })?;
    let reference = ArtifactRef {
        digest: found.digest.clone(),
        size: found.size,
        content_type: found.content_type.clone(),
        name: None,
    };
    Ok((found, reference))
}

/// The artifact a checkpoint refers to, if it refers to one.
fn artifact_of(key: &str, stored: &Value, created_at: DateTime<Utc>) -> Option<Artifact> {
    let (reference, sensitive) = match ArtifactRef::from_checkpoint(stored) {
        Some(reference) => (reference, false),
        None if checkpoint::is_sealed(stored) => (
            serde_json::from_value(stored.get("artifact")?.clone()).ok()?,
            true,
        ),
        None => return None,
    };
    let name = match &reference.name {
        Some(_) => key.strip_prefix("artifact:").unwrap_or(key).to_owned(),
        None => key.to_owned(),
    };
    Some(Artifact {
        name,
        step: key.to_owned(),
        digest: reference.digest,
        size: reference.size,
        content_type: reference.content_type,
        sensitive,
        created_at,
    })
}

/// The launched processes, for `cairn dev inspect` and the read API.
pub async fn attempts(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Vec<Attempt>> {
    Ok(sqlx::query_as!(
        Attempt,
        "SELECT attempt, started_at, ended_at, outcome, detail FROM cairn.attempts WHERE run_id = $1 ORDER BY attempt",
        run_id
    )
    .fetch_all(pool)
    .await?)
}

/// Token and dollar totals of a run.
pub async fn totals(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Totals> {
    Ok(sqlx::query_as!(
        Totals,
        r#"SELECT count(*) AS "steps!",
                  coalesce(sum(usd) FILTER (WHERE origin IS NULL), 0)::float8 AS "usd!",
                  coalesce(sum(tokens_in) FILTER (WHERE origin IS NULL), 0)::int8 AS "tokens_in!",
                  coalesce(sum(tokens_out) FILTER (WHERE origin IS NULL), 0)::int8 AS "tokens_out!",
                  count(*) FILTER (WHERE origin IS NOT NULL) AS "reused_steps!",
                  coalesce(sum(usd) FILTER (WHERE origin = 'reused'), 0)::float8 AS "reused_usd!"
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

/// What the steps of one execution of a run recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub namespace: String,
    pub flow: String,
    pub usd: f64,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

pub async fn attempt_usage(
    pool: &PgPool,
    run_id: Uuid,
    attempt: i32,
) -> anyhow::Result<Option<Usage>> {
    Ok(sqlx::query_as!(
        Usage,
        r#"SELECT r.namespace, r.flow, coalesce(sum(s.usd), 0)::float8 AS "usd!",
                  coalesce(sum(s.tokens_in), 0)::int8 AS "tokens_in!",
                  coalesce(sum(s.tokens_out), 0)::int8 AS "tokens_out!"
           FROM cairn.runs r LEFT JOIN cairn.steps s ON s.run_id = r.id AND s.attempt = $2
           WHERE r.id = $1
           GROUP BY r.namespace, r.flow"#,
        run_id,
        attempt
    )
    .fetch_optional(pool)
    .await?)
}

/// The runs above a run (its parent, theirs...), nearest first, as (namespace, name).
pub async fn ancestors(pool: &PgPool, run_id: Uuid) -> anyhow::Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        r#"WITH RECURSIVE up (id, depth) AS (
               SELECT parent_id, 1 FROM cairn.runs WHERE id = $1 AND parent_id IS NOT NULL
               UNION ALL
               SELECT r.parent_id, u.depth + 1 FROM cairn.runs r JOIN up u ON r.id = u.id
               WHERE r.parent_id IS NOT NULL)
           SELECT r.namespace, r.name FROM up JOIN cairn.runs r ON r.id = up.id ORDER BY up.depth"#,
        run_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.namespace, r.name)).collect())
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
