//! The engine as a versioned contract: the readable schema (sql/schema/) equals what the
//! migrations build; launchers meet schemas of other releases as README "Upgrading" says; and
//! the runner protocol's handshake refuses an SDK the engine does not serve, failing its run
//! with a message instead of letting it crash-loop.

use cairn_engine::protocol::{LAUNCHER_CONTRACT, RUNNER_PROTOCOL};
use cairn_engine::runner::{self, Handshake};
use cairn_engine::schema::{self, Migrations};
use cairn_engine::{Phase, launcher};
use cairn_tests::TestDb;
use serde_json::json;
use sqlx::Connection;

/// The files of sql/schema/, in the order of their names.
fn readable_schema() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/schema");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("sql/schema")
        .map(|entry| entry.expect("sql/schema entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("schema file");
            (path.display().to_string(), text)
        })
        .collect()
}

/// A line-by-line difference of two dumps, for the failure message.
fn difference(migrated: &str, readable: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (migrated.lines().collect(), readable.lines().collect());
    let only = |x: &[&str], y: &[&str]| -> Vec<String> {
        x.iter()
            .filter(|line| !y.contains(line))
            .map(|line| line.to_string())
            .collect()
    };
    format!(
        "only in the migrated database:\n  {}\nonly in the database built from sql/schema/:\n  {}",
        only(&a, &b).join("\n  "),
        only(&b, &a).join("\n  ")
    )
}

#[tokio::test]
async fn the_readable_schema_builds_what_the_migrations_build() {
    let migrated = TestDb::new().await;
    let readable = TestDb::unmigrated().await;
    for (path, text) in readable_schema() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(text))
            .execute(&readable.pool)
            .await
            .unwrap_or_else(|e| panic!("{path} does not apply: {e}"));
    }
    let (migrated, readable) = (migrated.dump_schema(), readable.dump_schema());
    assert!(
        migrated.contains("CREATE FUNCTION cairn_runner_v1.complete_step"),
        "the dump is not of an engine schema:\n{migrated}"
    );
    assert!(
        migrated == readable,
        "sql/schema/ and sql/migrations/ build different schemas: change both together.\n{}",
        difference(&migrated, &readable)
    );
}

#[tokio::test]
async fn a_schema_migrated_by_a_newer_release_is_served_so_rollbacks_work() {
    let db = TestDb::new().await;
    let known = schema::newest_known_version();
    // What a newer release leaves behind: a migration this build does not carry.
    sqlx::query(
        "INSERT INTO cairn._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer release', true, '\\x00', 1)",
    )
    .bind(known + 1)
    .execute(&db.pool)
    .await
    .unwrap();
    let pool = schema::connect(&db.url)
        .await
        .expect("an older launcher starts");
    let info = schema::verify(&pool).await.unwrap();
    assert_eq!(info.schema_version, known + 1);
    assert_eq!(info.launcher_contract, LAUNCHER_CONTRACT);
}

#[tokio::test]
async fn a_schema_needing_a_newer_launcher_is_refused_naming_both_versions() {
    let db = TestDb::new().await;
    let newer = LAUNCHER_CONTRACT + 1;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION cairn.engine_info()
         RETURNS TABLE (launcher_contract integer, runner_oldest integer, runner_newest integer)
         LANGUAGE sql STABLE AS $$ SELECT {newer}, 1, 1 $$"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let refused = format!("{:#}", schema::connect(&db.url).await.unwrap_err());
    assert!(
        refused.contains(&format!("needs launcher contract {newer}"))
            && refused.contains(&format!("implements contract {LAUNCHER_CONTRACT}")),
        "{refused}"
    );
}

#[tokio::test]
async fn a_database_from_before_the_baseline_is_refused_with_what_to_do() {
    let db = TestDb::new().await;
    sqlx::query("UPDATE cairn._sqlx_migrations SET checksum = '\\xdeadbeef' WHERE version = 1")
        .execute(&db.pool)
        .await
        .unwrap();
    let refused = format!("{:#}", schema::connect(&db.url).await.unwrap_err());
    assert!(
        refused.contains("from before the first release") && refused.contains("new database"),
        "{refused}"
    );
}

#[tokio::test]
async fn launchers_starting_together_migrate_once_and_verify_mode_changes_nothing() {
    let db = TestDb::unmigrated().await;
    let refused = format!(
        "{:#}",
        schema::connect_with(&db.url, 1, Migrations::Verify)
            .await
            .unwrap_err()
    );
    assert!(refused.contains("cairn migrate"), "{refused}");
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { schema::connect(&url).await.map(drop) })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every launcher starts");
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM cairn._sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, schema::migrator().iter().count() as i64);
    schema::connect_with(&db.url, 1, Migrations::Verify)
        .await
        .expect("verify mode accepts a migrated schema");
}

#[tokio::test]
async fn the_handshake_serves_this_sdk_and_fails_the_run_of_one_it_does_not_serve() {
    let db = TestDb::new().await;
    // As a flow process does: through the runner login, which can call nothing else.
    let mut runner_conn = sqlx::PgConnection::connect(&db.runner_url).await.unwrap();
    let claim = |name: &'static str| {
        let db = &db;
        async move {
            let id = db.create_run(name, "any", json!(null)).await;
            launcher::start_attempt(&mut *db.conn().await, id)
                .await
                .unwrap()
                .expect("claimed")
        }
    };

    let current = claim("current-sdk").await;
    let served = runner::handshake(&mut runner_conn, &current, "this SDK").await;
    assert_eq!(served.unwrap(), Handshake::Served);

    for (name, protocol, advice) in [
        (
            "old-sdk",
            RUNNER_PROTOCOL - 1,
            "rebuild the image with a newer Cairn SDK",
        ),
        ("new-sdk", RUNNER_PROTOCOL + 1, "upgrade Cairn"),
    ] {
        let attempt = claim(name).await;
        let answer = runner::handshake_as(
            &mut runner_conn,
            &attempt,
            protocol,
            "an SDK of another age",
        )
        .await
        .unwrap();
        let Handshake::NotServed(message) = answer else {
            panic!("protocol {protocol} was served")
        };
        assert!(
            message.contains(&format!("speaks runner protocol {protocol}"))
                && message.contains(&format!(
                    "serves runner protocols {RUNNER_PROTOCOL} to {RUNNER_PROTOCOL}"
                ))
                && message.contains(advice),
            "{message}"
        );
        let run = db.run(attempt.run_id).await;
        assert_eq!(run.phase, Phase::Failed, "{name}");
        assert_eq!(run.error.as_ref().unwrap()["kind"], "protocol");
        assert_eq!(run.error_message(), Some(message.as_str()));
    }

    // A superseded token is refused before anything is decided.
    let mut forged = current.clone();
    forged.token = "not-the-token".into();
    let fenced = runner::handshake(&mut runner_conn, &forged, "this SDK").await;
    assert!(
        matches!(fenced, Err(cairn_engine::EngineError::Fenced(_))),
        "{fenced:?}"
    );
}
