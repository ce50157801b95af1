//! TLS to Postgres, with libpq's `sslmode` and `sslrootcert` (tests/harness/tls.rs starts the
//! servers): the engine, the SDK in flow processes and `cairn dev run` over `verify-full`; what
//! each mode checks; and clear refusals for an untrusted certificate, a host name the
//! certificate does not name, and a server without TLS.

use std::process::Stdio;

use cairn_engine::launcher;
use cairn_engine::schema;
use cairn_operator::lifecycle::Phase;
use cairn_tests::tls::servers;
use cairn_tests::{PATIENCE, TestDb, cairn_cli};
use sqlx::PgPool;

const FLOWS: &str = env!("CARGO_BIN_EXE_test-flows");

/// A new database on the TLS server; returns its name.
async fn new_database() -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = servers().tls_url("localhost", "cairn", &verify_full());
    let pool = schema::open(&admin, 1).await.expect("the TLS server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("CREATE DATABASE");
    name
}

fn verify_full() -> String {
    format!("sslmode=verify-full&sslrootcert={}", servers().ca.display())
}

async fn uses_tls(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl")
}

/// The message opening the database at `url` fails with.
async fn refusal(url: &str) -> String {
    match schema::open(url, 1).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => {
            eprintln!("refused, as it should be: {e:#}");
            format!("{e:#}")
        }
    }
}

#[tokio::test]
async fn the_engine_and_a_flow_process_work_over_verify_full() {
    let url = servers().tls_url("localhost", &new_database().await, &verify_full());
    let pool = schema::connect(&url).await.expect("migrated over TLS");
    assert!(uses_tls(&pool).await);
    // The flow process gets the runner's URL, which keeps the TLS settings.
    let runner_url = launcher::runner_url(&pool, &url).await.unwrap();
    assert!(runner_url.contains("sslmode=verify-full"), "{runner_url}");
    let db = TestDb {
        pool,
        url: url.clone(),
        runner_url,
        name: "tls".into(),
        dir: std::env::temp_dir().join(format!("cairn-tls-files-{}", uuid::Uuid::new_v4())),
        step_keys: cairn_engine::checkpoint::StepKeys::generate(),
        artifacts: cairn_engine::artifacts::ArtifactSettings::new("file:///nonexistent"),
    };
    std::fs::create_dir_all(&db.dir).unwrap();
    let log = db.log("effects");
    let id = db
        .create_run("over-tls", "echo", serde_json::json!({ "x": 1 }))
        .await;
    let record = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(record.phase, Phase::Succeeded, "{:?}", record.error);
    // pg_hba.conf takes only TLS connections over TCP: the flow process used TLS too.
    assert_eq!(log.summary(), ["step:echo@1"]);
}

#[tokio::test]
async fn cairn_dev_run_finishes_a_flow_over_verify_full_and_names_a_wrong_ca() {
    let database = new_database().await;
    let cairn = |url: String| {
        let mut command = tokio::process::Command::new(cairn_cli());
        command
            .args([
                "dev",
                "run",
                FLOWS,
                "--flow",
                "echo",
                "--input",
                r#"{"x":2}"#,
            ])
            .args(["--name", "cli-over-tls"])
            .env("CAIRN_DATABASE_URL", url)
            .env(
                "CAIRN_TEST_LOG",
                std::env::temp_dir().join(format!("{database}.log")),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    };
    let run = |mut command: tokio::process::Command| async move {
        tokio::time::timeout(PATIENCE, command.output())
            .await
            .expect("cairn finished in time")
            .expect("cairn ran")
    };
    let ok = run(cairn(servers().tls_url(
        "localhost",
        &database,
        &verify_full(),
    )))
    .await;
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert_eq!(ok.status.code(), Some(0), "{stderr}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains(r#""x":2"#));

    let wrong_ca = format!(
        "sslmode=verify-full&sslrootcert={}",
        servers().other_ca.display()
    );
    let refused = run(cairn(servers().tls_url("localhost", &database, &wrong_ca))).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        stderr.contains("sslmode=verify-full") && stderr.contains("not trusted"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn each_sslmode_checks_what_libpq_checks() {
    let database = new_database().await;
    let ca = servers().ca.display().to_string();
    // The certificate names localhost, not 127.0.0.1: verify-ca accepts, verify-full refuses.
    for (host, query) in [
        ("localhost", "sslmode=require".to_owned()),
        ("127.0.0.1", "sslmode=require".to_owned()),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("localhost", "sslmode=prefer".to_owned()),
    ] {
        let url = servers().tls_url(host, &database, &query);
        let pool = schema::open(&url, 1)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        assert!(uses_tls(&pool).await, "{url}");
    }
    let wrong_name = servers().tls_url(
        "127.0.0.1",
        &database,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let message = refusal(&wrong_name).await;
    assert!(
        message.contains("sslmode=verify-full") && message.contains("host name"),
        "{message}"
    );
    // This server takes TLS only: without it, pg_hba.conf refuses the connection.
    let message = refusal(&servers().tls_url("localhost", &database, "sslmode=disable")).await;
    assert!(message.contains("no encryption"), "{message}");
}

#[tokio::test]
async fn a_server_without_tls_is_refused_when_tls_is_required_and_used_when_preferred() {
    let message = refusal(&servers().plain_url("cairn", "sslmode=require")).await;
    assert!(
        message.contains("sslmode=require") && message.contains("does not support TLS"),
        "{message}"
    );
    let preferred = schema::open(&servers().plain_url("cairn", "sslmode=prefer"), 1)
        .await
        .expect("prefer falls back to plaintext");
    assert!(!uses_tls(&preferred).await);
}
