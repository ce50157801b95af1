//! The launchers' calls (the operator, `cairn dev`, the CLI), as the database owner: creating,
//! claiming, waking and steering runs, and emitting events from outside a flow. Each is one
//! round trip to a function of `sql/schema/40_launchers.sql`. Run states come back typed.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Phase;
use crate::error::{EngineError, EngineResult, Result};
use crate::runner::{Attempt, Waiter, check_waiters};

/// A request to create a run; idempotent by (namespace, name).
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub flow: &'a str,
    pub input: &'a Value,
    pub max_attempts: i32,
    pub retry_backoff_ms: i64,
    /// When the run was asked for (its FlowRun's creationTimestamp); `None`: now. Events sent
    /// to the namespace before it do not reach the run (`cairn.event_reaches`).
    pub created_at: Option<DateTime<Utc>>,
    /// The FlowRun the run belongs to (operator runs): a row of the same name bound to another
    /// FlowRun is dropped first, so a reused name starts clean.
    pub flowrun_uid: Option<Uuid>,
    /// The concurrency group and key whose limits its claims are held to (see `Limits`).
    pub concurrency: Option<Concurrency<'a>>,
}

/// Where a run stands in its Flow's concurrency limits: the group (the Flow's name) and the
/// key computed from its input, if the Flow has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency<'a> {
    pub group: &'a str,
    pub key: Option<&'a str>,
}

/// Creates a run, or returns the existing one created by the same request. Returns
/// `(run id, created)`.
pub async fn create_run(conn: &mut PgConnection, run: &NewRun<'_>) -> Result<(Uuid, bool)> {
    let row = sqlx::query!(
        r#"SELECT run_id AS "run_id!", created AS "created!"
           FROM cairn.create_run($1, $2, $3, $4, $5, $6, p_created_at => $7, p_flowrun_uid => $8,
                                 p_concurrency_group => $9, p_concurrency_key => $10)"#,
        run.namespace,
        run.name,
        run.flow,
        run.input,
        run.max_attempts,
        run.retry_backoff_ms,
        run.created_at,
        run.flowrun_uid,
        run.concurrency.map(|c| c.group),
        run.concurrency.and_then(|c| c.key),
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok((row.run_id, row.created))
}

/// A fork: a new run, in its source's namespace and of its flow, from the source's checkpoints
/// (see `cairn.fork_run`).
#[derive(Debug, Clone)]
pub struct Fork<'a> {
    pub name: &'a str,
    /// `None`: the source's input.
    pub input: Option<&'a Value>,
    pub max_attempts: i32,
    pub retry_backoff_ms: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub flowrun_uid: Option<Uuid>,
    pub source: Uuid,
    /// The step the fork runs again, and everything after it.
    pub from_step: &'a str,
    /// Other values for steps before `from_step`: `{key: value}`.
    pub outputs: &'a Value,
    /// Events sent to the fork alone, so its waits for them are answered: `{event: payload}`.
    pub answers: &'a Value,
}

/// Makes a fork, or returns the existing one of that name. Returns `(run id, created, how
/// many checkpoints it reused)`. An unknown step is `NotFound`; an output for a step the fork
/// does not reuse is `WrongState`.
pub async fn fork_run(conn: &mut PgConnection, fork: &Fork<'_>) -> Result<(Uuid, bool, i32)> {
    let row = sqlx::query!(
        r#"SELECT run_id AS "run_id!", created AS "created!", reused AS "reused!"
           FROM cairn.fork_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"#,
        fork.source,
        fork.name,
        fork.input,
        fork.from_step,
        fork.outputs,
        fork.answers,
        fork.max_attempts,
        fork.retry_backoff_ms,
        fork.created_at,
        fork.flowrun_uid,
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok((row.run_id, row.created, row.reused))
}

/// Forgets the run of a deleted FlowRun (cancelled, then deleted with its children): the run
/// bound to it, else the unbound one of its namespace and name. False when there is none.
pub async fn forget_flowrun(
    pool: &PgPool,
    flowrun_uid: Uuid,
    namespace: &str,
    name: &str,
) -> Result<bool> {
    let forgot = sqlx::query_scalar!(
        r#"SELECT cairn.forget_flowrun($1, $2, $3) AS "forgot!""#,
        flowrun_uid,
        namespace,
        name
    )
    .fetch_one(pool)
    .await
    .engine()?;
    Ok(forgot)
}

/// Forgets a namespace being deleted: its runs and events. Returns how many runs went.
pub async fn forget_namespace(pool: &PgPool, namespace: &str) -> Result<i32> {
    let runs = sqlx::query_scalar!(r#"SELECT cairn.forget_namespace($1) AS "runs!""#, namespace)
        .fetch_one(pool)
        .await
        .engine()?;
    Ok(runs)
}

/// The FlowRuns that runs are bound to, as (uid, namespace, name), in one namespace or all.
pub async fn bound_flowruns(
    pool: &PgPool,
    namespace: Option<&str>,
) -> Result<Vec<(Uuid, String, String)>> {
    let rows = sqlx::query!(
        r#"SELECT flowrun_uid AS "uid!", namespace, name FROM cairn.runs
           WHERE flowrun_uid IS NOT NULL AND ($1::text IS NULL OR namespace = $1)"#,
        namespace
    )
    .fetch_all(pool)
    .await
    .engine()?;
    Ok(rows
        .into_iter()
        .map(|r| (r.uid, r.namespace, r.name))
        .collect())
}

/// The outcome of claiming a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The run is now running this attempt: launch its process with it.
    Started(Attempt),
    /// The run is not pending any more (someone else claimed it, or it ended).
    NotPending,
    /// A limit holds the run back; it stays pending.
    Refused(Held),
}

/// Why a claim was refused: which limit, and what to show on the run's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub by: HeldBy,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBy {
    /// The running budget (flow pods running at once): any run finishing frees a slot.
    Budget,
    /// Its Flow's concurrency limits: the run is queued in the engine, and told (NOTIFY
    /// `cairn_admit`) when its turn may have come.
    Concurrency,
}

/// The limits a claim is held to; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Runs running (with a process) in all, and in the run's namespace.
    pub max_running: Option<i32>,
    pub max_in_namespace: Option<i32>,
    /// Runs of the run's concurrency group admitted and unfinished, in all and per key. A run
    /// is admitted on its first claim and holds its place until it finishes.
    pub max_per_flow: Option<i32>,
    pub max_per_key: Option<i32>,
}

/// Claims a pending run for a new process within `limits` (`cairn.start_attempt_within`), and
/// issues the new attempt's token.
pub async fn claim(conn: &mut PgConnection, run_id: Uuid, limits: &Limits) -> Result<Claim> {
    let row = sqlx::query!(
        "SELECT attempt, token, refused, held_by FROM cairn.claim($1, $2, $3, $4, $5)",
        run_id,
        limits.max_running,
        limits.max_in_namespace,
        limits.max_per_flow,
        limits.max_per_key,
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(match (row.attempt, row.token, row.refused) {
        (Some(number), Some(token), _) => Claim::Started(Attempt {
            run_id,
            number,
            token,
        }),
        (_, _, Some(why)) => Claim::Refused(Held {
            by: match row.held_by.as_deref() {
                Some("concurrency") => HeldBy::Concurrency,
                _ => HeldBy::Budget,
            },
            why,
        }),
        _ => Claim::NotPending,
    })
}

/// The attempt `number` of a running run again, with a fresh token, when its process never
/// reached the database (`cairn.reissue`): launch it again; it is not a crash. `None` when
/// the attempt is not the running one or its process did start.
pub async fn reissue(
    conn: &mut PgConnection,
    run_id: Uuid,
    number: i32,
) -> Result<Option<Attempt>> {
    let token = sqlx::query_scalar!("SELECT cairn.reissue($1, $2)", run_id, number)
        .fetch_one(conn)
        .await
        .engine()?;
    Ok(token.map(|token| Attempt {
        run_id,
        number,
        token,
    }))
}

/// Claims a pending run with no running budget; `None` when it is not pending any more.
pub async fn start_attempt(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<Attempt>> {
    Ok(match claim(conn, run_id, &Limits::default()).await? {
        Claim::Started(attempt) => Some(attempt),
        _ => None,
    })
}

/// The result of an emit from outside a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The same payload had already been emitted: nothing changed.
    pub duplicate: bool,
    /// Runs woken by this emit.
    pub woken: i32,
}

/// Who an event emitted from outside a flow is for, and when it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addressing {
    /// One run (by id) instead of every run of the namespace: `approve` addresses the run it
    /// names, so a later run reusing the name is not answered by it.
    pub run: Option<Uuid>,
    /// When it was sent (a FlowEvent's creationTimestamp); `None`: now.
    pub sent_at: Option<DateTime<Utc>>,
}

/// Emits an event to a whole namespace, now: [`emit_to`] with the default [`Addressing`].
pub async fn emit(
    conn: &mut PgConnection,
    namespace: &str,
    event: &str,
    payload: &Value,
) -> Result<Emitted> {
    emit_to(conn, namespace, event, payload, Addressing::default()).await
}

/// Emits an event (first write wins; the same payload again is a no-op) after checking the
/// payload against the schema of every wait it reaches, in one transaction that holds the
/// event's lock, so no wait can slip in between check and emit.
pub async fn emit_to(
    conn: &mut PgConnection,
    namespace: &str,
    event: &str,
    payload: &Value,
    to: Addressing,
) -> Result<Emitted> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await.engine()?;
    let waiters = sqlx::query_as!(
        Waiter,
        r#"SELECT run_name AS "run_name!", question, schema
           FROM cairn.event_waiters($1, $2, $3, $4)"#,
        namespace,
        event,
        to.run,
        to.sent_at,
    )
    .fetch_all(&mut *tx)
    .await
    .engine()?;
    check_waiters(&waiters, event, payload)?;
    let row = sqlx::query!(
        r#"SELECT duplicate AS "duplicate!", woken AS "woken!"
           FROM cairn.emit_event($1, $2, $3, NULL, $4, $5)"#,
        namespace,
        event,
        payload,
        to.run,
        to.sent_at,
    )
    .fetch_one(&mut *tx)
    .await
    .engine()?;
    tx.commit().await.engine()?;
    Ok(Emitted {
        duplicate: row.duplicate,
        woken: row.woken,
    })
}

/// Settles a run whose process died while it was running. `retry_in_ms` comes from the
/// lifecycle policy (`None` gives up). Returns the run's phase afterwards (`None`: the run
/// no longer exists).
pub async fn record_crash(
    conn: &mut PgConnection,
    run_id: Uuid,
    attempt: i32,
    reason: &str,
    retry_in_ms: Option<i64>,
) -> Result<Option<Phase>> {
    let state = sqlx::query_scalar!(
        r#"SELECT cairn.record_crash($1, $2, $3, $4) AS "state!""#,
        run_id,
        attempt,
        reason,
        retry_in_ms
    )
    .fetch_one(conn)
    .await
    .engine()?;
    // "missing": the run was deleted meanwhile.
    (state != "missing").then(|| phase(state)).transpose()
}

/// Makes due sleeping, retrying and timed-out runs runnable; returns how many.
pub async fn wake_due(conn: &mut PgConnection) -> Result<i32> {
    sqlx::query_scalar!(r#"SELECT cairn.wake_due() AS "woken!""#)
        .fetch_one(conn)
        .await
        .engine()
}

/// Milliseconds until the next timer, by the database clock.
pub async fn next_wake_ms(conn: &mut PgConnection) -> Result<Option<i64>> {
    sqlx::query_scalar!("SELECT cairn.next_wake_ms()")
        .fetch_one(conn)
        .await
        .engine()
}

/// Fails the run if it has outlived `deadline_seconds` (by the database clock), fencing off a
/// running attempt; returns its state afterwards.
pub async fn expire_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    deadline_seconds: i64,
) -> Result<Phase> {
    let state = sqlx::query_scalar!(
        r#"SELECT cairn.expire_run($1, $2) AS "state!""#,
        run_id,
        deadline_seconds
    )
    .fetch_one(conn)
    .await
    .engine()?;
    phase(state)
}

/// Makes a failed run runnable again from its last checkpoint, with a fresh crash budget.
pub async fn retry_run(conn: &mut PgConnection, run_id: Uuid) -> Result<Phase> {
    let state = sqlx::query_scalar!(r#"SELECT cairn.retry_run($1) AS "state!""#, run_id)
        .fetch_one(conn)
        .await
        .engine()?;
    phase(state)
}

/// Sets what a run's tree may spend (US dollars; `None`: no limit), waking the runs of the tree
/// parked at a budget that no longer holds them back. Returns how many it woke. A budget below
/// what the tree already spent is refused (`WrongState`), saying both figures.
pub async fn set_budget(conn: &mut PgConnection, run_id: Uuid, usd: Option<f64>) -> Result<i32> {
    sqlx::query_scalar!(
        r#"SELECT cairn.set_budget($1, $2::float8::numeric) AS "woken!""#,
        run_id,
        usd
    )
    .fetch_one(conn)
    .await
    .engine()
}

/// Cancels a run (and its unfinished children); returns its state afterwards.
pub async fn cancel_run(conn: &mut PgConnection, run_id: Uuid) -> Result<Phase> {
    let state = sqlx::query_scalar!(r#"SELECT cairn.cancel_run($1) AS "state!""#, run_id)
        .fetch_one(conn)
        .await
        .engine()?;
    phase(state)
}

/// A state the engine returned, typed. Anything else is a schema this build does not know.
fn phase(state: String) -> Result<Phase> {
    state
        .parse()
        .map_err(|e: String| EngineError::Database(sqlx::Error::Decode(e.into())))
}

/// The URL flow processes use: `owner_url` with the database's runner login (created on first
/// use), which can only call the runner protocol's functions, for its own run.
pub async fn runner_url(pool: &PgPool, owner_url: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let login = sqlx::query!(
        r#"SELECT login AS "login!", password AS "password!" FROM cairn.ensure_runner_login()"#
    )
    .fetch_one(pool)
    .await
    .context(
        "cannot create the runner's database login (the owner needs CREATEROLE once); \
         or create a login in role cairn_runner and pass its URL as CAIRN_RUNNER_DATABASE_URL",
    )?;
    let redacted = crate::schema::redact(owner_url);
    let mut url = url::Url::parse(owner_url)
        .with_context(|| format!("not a valid database URL: {redacted}"))?;
    url.set_username(&login.login)
        .and_then(|()| url.set_password(Some(&login.password)))
        .map_err(|()| anyhow::anyhow!("cannot put a login into {redacted}"))?;
    Ok(url.to_string())
}

/// What [`gc`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collected {
    pub runs: i32,
    pub events: i32,
}

/// Retention: deletes runs finished before `runs_before` (with everything they own) and
/// events emitted before `events_before` that no run waits for; `None` keeps that kind, and
/// `namespace` limits it to one namespace. Runs mirrored by FlowRuns go with their FlowRun
/// instead (the operator passes `None` for runs).
pub async fn gc(
    conn: &mut PgConnection,
    runs_before: Option<DateTime<Utc>>,
    events_before: Option<DateTime<Utc>>,
    namespace: Option<&str>,
) -> Result<Collected> {
    let row = sqlx::query!(
        r#"SELECT runs AS "runs!", events AS "events!" FROM cairn.gc($1, $2, $3)"#,
        runs_before,
        events_before,
        namespace
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(Collected {
        runs: row.runs,
        events: row.events,
    })
}

/// Retention of artifacts in the namespaces `only` names (none: all): deletes the objects no
/// checkpoint refers to any more (see [`delete_unreferenced_artifacts`]). Returns how many.
pub async fn collect_artifacts(
    pool: &PgPool,
    store: &crate::artifacts::ArtifactStore,
    only: Option<&[String]>,
    grace: std::time::Duration,
) -> anyhow::Result<usize> {
    // Small batches: a batch holds the namespace's artifact lock, which writers wait for.
    const BATCH: i32 = 100;
    let mut deleted = 0;
    for namespace in artifact_namespaces(pool).await? {
        if only.is_some_and(|only| !only.contains(&namespace)) {
            continue;
        }
        loop {
            let batch =
                delete_unreferenced_artifacts(pool, store, &namespace, grace, BATCH).await?;
            deleted += batch;
            if batch < BATCH as usize {
                break;
            }
        }
    }
    Ok(deleted)
}

/// The namespaces with objects in the artifact store.
pub async fn artifact_namespaces(pool: &PgPool) -> Result<Vec<String>> {
    sqlx::query_scalar!("SELECT DISTINCT namespace FROM cairn.artifacts ORDER BY namespace")
        .fetch_all(pool)
        .await
        .engine()
}

/// Retention of artifacts: deletes from `store` up to `limit` objects of `namespace` that no
/// checkpoint refers to and that no run recorded in the last `grace` (one being written for a
/// step not checkpointed yet). Returns how many went. The records go only once their objects
/// did: a store that fails leaves them for the next pass.
pub async fn delete_unreferenced_artifacts(
    pool: &PgPool,
    store: &crate::artifacts::ArtifactStore,
    namespace: &str,
    grace: std::time::Duration,
    limit: i32,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let digests = sqlx::query_scalar!(
        r#"SELECT digest AS "digest!"
           FROM cairn.artifacts_to_delete($1, now() - make_interval(secs => $2), $3) digest"#,
        namespace,
        grace.as_secs_f64(),
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    // Bounded: runs writing objects in this namespace wait for the lock meanwhile, and their
    // database calls time out (30 s by default). Past the bound the batch rolls back.
    let deletes = async {
        for digest in &digests {
            store.delete(namespace, digest).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), deletes)
        .await
        .map_err(|_| anyhow::anyhow!("deleting {} objects took over 10 s", digests.len()))??;
    tx.commit().await?;
    Ok(digests.len())
}

/// Deletes an event (its FlowEvent is gone); a later wait for the name waits for a new emit.
/// Returns whether it existed.
pub async fn delete_event(conn: &mut PgConnection, namespace: &str, name: &str) -> Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT cairn.delete_event($1, $2) AS "deleted!""#,
        namespace,
        name
    )
    .fetch_one(conn)
    .await
    .engine()
}

/// The flow binary of a local run tree (`cairn dev`): the SHA-256 of its copy in the binary
/// store, and the path it was copied from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedBinary {
    pub sha256: String,
    pub built_from: String,
}

/// Records the binary of the tree rooted at `root`, unless it has one: the first pin wins, so
/// the tree keeps the binary it started with. Returns the tree's binary.
pub async fn pin_binary(
    conn: &mut PgConnection,
    root: Uuid,
    sha256: &str,
    built_from: &str,
) -> Result<PinnedBinary> {
    let pinned = sqlx::query_as!(
        PinnedBinary,
        r#"SELECT sha256 AS "sha256!", built_from AS "built_from!"
           FROM cairn.pin_binary($1, $2, $3)"#,
        root,
        sha256,
        built_from
    )
    .fetch_one(conn)
    .await
    .engine()?;
    Ok(pinned)
}

/// The binary of the tree rooted at `root`, if one was pinned.
pub async fn pinned_binary(conn: &mut PgConnection, root: Uuid) -> Result<Option<PinnedBinary>> {
    let pinned = sqlx::query_as!(
        PinnedBinary,
        "SELECT sha256, built_from FROM cairn.run_binaries WHERE root_id = $1",
        root
    )
    .fetch_optional(conn)
    .await
    .engine()?;
    Ok(pinned)
}

/// The local run trees a `cairn dev` server carries on: roots with a pinned binary, not the
/// operator's (no FlowRun), with a run of the tree not finished; oldest first.
pub async fn unfinished_local_trees(pool: &PgPool) -> Result<Vec<Uuid>> {
    let roots = sqlx::query_scalar!(
        r#"SELECT r.id FROM cairn.runs r JOIN cairn.run_binaries b ON b.root_id = r.id
           WHERE r.parent_id IS NULL AND r.flowrun_uid IS NULL
             AND EXISTS (SELECT 1 FROM cairn.runs t
                         WHERE t.root_id = r.id AND NOT cairn.is_terminal(t.state))
           ORDER BY r.created_at"#
    )
    .fetch_all(pool)
    .await
    .engine()?;
    Ok(roots)
}
