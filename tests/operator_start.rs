//! The operator when its database is not usable yet: it stays up, not ready, says why on
//! /readyz and in its log, and starts once the cause is fixed, instead of crash-looping. A
//! migration that fails leaves the schema as it was (each migration is a transaction).
//! No Kubernetes here: the operator reaches the API server only after its database, and this
//! test stops it there.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_tests::{PATIENCE, TestDb, cairn_cli, http_get};

/// `GET path` on the operator's port: the status and the body, `None` while nothing listens.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let answer = http_get(([127, 0, 0, 1], port).into(), path).await?;
    Some((answer.status, answer.body))
}

/// Polls `check` every 100 ms until it gives a value, for at most PATIENCE.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exists(db: &TestDb, relation: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failing_migration_leaves_the_operator_up_and_not_ready_until_it_is_fixed() {
    let db = TestDb::unmigrated().await;
    // In the way of migration 1: it fails at CREATE TABLE cairn.runs.
    sqlx::raw_sql("CREATE SCHEMA cairn; CREATE TABLE cairn.runs (x integer)")
        .execute(&db.pool)
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A kubeconfig whose API server is not there: loading it needs no server.
    let kubeconfig = db.dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n\
         clusters: [{name: none, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: none, user: {token: none}}]\n\
         contexts: [{name: none, context: {cluster: none, user: none}}]\n",
    )
    .unwrap();
    let log_path = db.dir.join("operator.log");
    let mut operator = tokio::process::Command::new(cairn_cli())
        .args(["operator", "--listen", &format!("127.0.0.1:{port}")])
        .env("CAIRN_DATABASE_URL", &db.url)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start `cairn operator`");

    let (status, body) = eventually("/readyz to say why the operator is not ready", || async {
        get(port, "/readyz")
            .await
            .filter(|(_, body)| body.contains("migration"))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#"relation "runs" already exists"#), "{body}");
    assert_eq!(get(port, "/livez").await.map(|(s, _)| s), Some(200));
    assert!(
        !exists(&db, "cairn.attempts").await,
        "the failed migration left part of its schema behind"
    );
    assert!(
        operator.try_wait().unwrap().is_none(),
        "the operator exited instead of waiting for its database"
    );

    // Fixed: the next try (backoff of seconds) migrates, and the operator moves on.
    sqlx::raw_sql("DROP TABLE cairn.runs")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually("the operator to apply the migrations", || async {
        exists(&db, "cairn.attempts").await.then_some(())
    })
    .await;
    operator.kill().await.unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("not ready") && log.contains("already exists"),
        "the log does not carry the database's error:\n{log}"
    );
}
