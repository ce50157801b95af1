//! Connecting launchers to the engine's database, and keeping its schema: the migrations in
//! `sql/migrations/` (embedded here), applied once under a lock by the schema owner, and the
//! checks that let releases meet one another across upgrades and rollbacks:
//!
//! - a schema migrated by a newer release is accepted (its extra migrations are ignored) as
//!   long as its launcher contract is one this build implements: `helm rollback` works;
//! - a schema needing a newer launcher is refused with both versions named;
//! - a database from before the baseline is refused with what to do about it.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::protocol::LAUNCHER_CONTRACT;

/// The engine's migrations. Their bookkeeping table lives in the `cairn` schema too: with the
/// default search path (`"$user", public`) a database user named `cairn` would otherwise see
/// a different `_sqlx_migrations` before and after the first migration creates the schema.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("cairn._sqlx_migrations");
    migrator.create_schema("cairn");
    // Migrations applied by a newer release are not an error: the launcher contract decides.
    migrator.set_ignore_missing(true);
    migrator
}

/// The newest migration this build carries.
pub fn newest_known_version() -> i64 {
    migrator().iter().map(|m| m.version).max().unwrap_or(0)
}

/// What to do about the schema when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Migrations {
    /// Apply pending migrations (under the migrator's advisory lock: one launcher migrates,
    /// others wait, then find nothing to do).
    #[default]
    Apply,
    /// Apply nothing; the schema must already hold every migration this build knows (applied
    /// by `cairn migrate`, e.g. the Helm chart's pre-upgrade Job).
    Verify,
}

impl std::str::FromStr for Migrations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "apply" => Ok(Migrations::Apply),
            "verify" => Ok(Migrations::Verify),
            other => Err(format!(
                "unknown migrations mode {other:?}: \"apply\" (migrate at start) or \"verify\" (a Job migrates; only check)"
            )),
        }
    }
}

/// What a database's schema is and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The newest migration applied.
    pub schema_version: i64,
    pub launcher_contract: i32,
    pub runner_oldest: i32,
    pub runner_newest: i32,
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

/// Connects a small pool and applies pending migrations. A database that is down gives one
/// clear error, quickly.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    connect_with(url, 4, Migrations::Apply).await
}

/// [`connect`] with a pool size and a choice about migrations.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    migrations: Migrations,
) -> anyhow::Result<PgPool> {
    let pool = open(url, max_connections).await?;
    match migrations {
        Migrations::Apply => migrate(&pool).await?,
        Migrations::Verify => verify(&pool).await?,
    };
    Ok(pool)
}

/// A pool on the database, after one direct connection proved it reachable: a pool would
/// retry until its timeout and then report only "timed out", hiding the cause (refused,
/// unknown host, bad password). Touches no schema.
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().with_context(|| {
        format!(
            "CAIRN_DATABASE_URL is not a valid Postgres URL: {}",
            redact(url)
        )
    })?;
    let probe = PgConnection::connect_with(&options).await.map_err(|e| {
        anyhow!(
            "cannot connect to the database at {} {}\n\
             Is Postgres running and reachable? Set CAIRN_DATABASE_URL, or unset it to use Cairn's private Postgres.",
            redact(url),
            crate::error::explain_connect_error(url, &e)
        )
    })?;
    probe.close().await?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

/// Applies pending migrations, then checks that this build can work with the result. Each
/// migration runs in a transaction: one that fails leaves the previous schema as it was.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<EngineInfo> {
    migrator().run(pool).await.map_err(explain_migrate_error)?;
    verify(pool).await
}

/// Checks, without changing anything, that the schema holds every migration this build
/// knows and that its launcher contract is one this build implements.
pub async fn verify(pool: &PgPool) -> anyhow::Result<EngineInfo> {
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM cairn._sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(|e| {
                anyhow!(
                    "the database holds no Cairn schema ({e}): run `cairn migrate` against it first"
                )
            })?;
    let schema_version = applied.unwrap_or(0);
    let known = newest_known_version();
    if schema_version < known {
        bail!(
            "the database's Cairn schema is at version {schema_version}, and this build needs version {known}: \
             apply the migrations first (`cairn migrate`, or the Helm chart with migrations.mode=operator)"
        );
    }
    let info = sqlx::query!(
        r#"SELECT launcher_contract AS "launcher_contract!", runner_oldest AS "runner_oldest!",
                  runner_newest AS "runner_newest!"
           FROM cairn.engine_info()"#
    )
    .fetch_one(pool)
    .await
    .context("cannot read the schema's cairn.engine_info()")?;
    let info = EngineInfo {
        schema_version,
        launcher_contract: info.launcher_contract,
        runner_oldest: info.runner_oldest,
        runner_newest: info.runner_newest,
    };
    check_contract(&info, known)?;
    Ok(info)
}

/// Whether a launcher of [`LAUNCHER_CONTRACT`], knowing migrations up to `known`, may work
/// with a schema.
fn check_contract(info: &EngineInfo, known: i64) -> anyhow::Result<()> {
    if info.launcher_contract > LAUNCHER_CONTRACT {
        bail!(
            "the database's Cairn schema (version {}) needs launcher contract {}, and this build of cairn \
             {} implements contract {LAUNCHER_CONTRACT}: upgrade the operator and the cairn CLI to a release that \
             migrated it, or newer",
            info.schema_version,
            info.launcher_contract,
            env!("CARGO_PKG_VERSION"),
        );
    }
    if info.schema_version > known {
        tracing::info!(
            schema_version = info.schema_version,
            known,
            "the database's schema is newer than this build (a rollback?); its launcher contract {} is served",
            info.launcher_contract
        );
    }
    Ok(())
}

fn explain_migrate_error(error: MigrateError) -> anyhow::Error {
    match error {
        // The baseline (1) is the first migration of every released schema, so a different
        // version 1 means the database was made before it.
        MigrateError::VersionMismatch(1) => anyhow!(
            "this database holds a Cairn schema from before the first release (its migration 1 is not the baseline): \
             its runs cannot be carried over. Point CAIRN_DATABASE_URL at a new database, or for `cairn dev`'s private \
             database run `cairn dev db-stop` and delete its directory (CAIRN_HOME, by default ~/.local/share/cairn)"
        ),
        MigrateError::VersionMismatch(version) => anyhow!(
            "migration {version} applied to this database differs from the one this build carries: \
             the database was migrated by a different build of the same version; use the release that migrated it"
        ),
        MigrateError::Dirty(version) => anyhow!(
            "migration {version} failed part-way in an earlier attempt and the schema is marked dirty: \
             see the Postgres log for the error, fix its cause, then delete the row of version {version} \
             from cairn._sqlx_migrations and start again"
        ),
        other => anyhow::Error::new(other).context("cannot apply Cairn's database migrations"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(contract: i32, version: i64) -> EngineInfo {
        EngineInfo {
            schema_version: version,
            launcher_contract: contract,
            runner_oldest: 1,
            runner_newest: 1,
        }
    }

    #[test]
    fn a_newer_schema_of_the_same_contract_is_served_and_a_newer_contract_is_refused() {
        let known = newest_known_version();
        assert!(check_contract(&info(LAUNCHER_CONTRACT, known + 3), known).is_ok());
        let refused = check_contract(&info(LAUNCHER_CONTRACT + 1, known + 3), known)
            .unwrap_err()
            .to_string();
        assert!(refused.contains(&format!(
            "needs launcher contract {}",
            LAUNCHER_CONTRACT + 1
        )));
        assert!(refused.contains(&format!("implements contract {LAUNCHER_CONTRACT}")));
    }

    #[test]
    fn the_baseline_is_the_first_migration() {
        let first = migrator()
            .iter()
            .next()
            .map(|m| (m.version, m.description.to_string()));
        assert_eq!(first, Some((1, "baseline".to_string())));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://owner:s3cret@db:5432/cairn"),
            "postgres://owner:***@db:5432/cairn"
        );
        assert!(!redact("not a url s3cret").contains("s3cret"));
    }
}
