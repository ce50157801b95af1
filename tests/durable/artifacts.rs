//! Artifacts: a step result too large for a checkpoint row goes to a real S3 server (s3s-fs)
//! and a relaunch replays it from there; the store going away mid-step crashes the attempt
//! and a later one finishes; objects stored on purpose are listed and never written twice;
//! the maximum size and a missing store fail the run clearly; retention deletes only what no
//! checkpoint refers to; a sensitive result is stored sealed.

use std::time::Duration;

use cairn_engine::artifacts::{ArtifactError, ArtifactRef, ArtifactStore, digest_of};
use cairn_engine::checkpoint;
use cairn_engine::read;
use cairn_operator::lifecycle::Phase;
use cairn_tests::s3::S3Server;
use cairn_tests::{Effect, EffectLog, NS, PATIENCE, TestDb, sigkill};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;

/// A database whose launchers keep artifacts under `cairn/` in a bucket of an S3 server of
/// its own.
async fn db_on_s3() -> (TestDb, S3Server) {
    let mut db = TestDb::new().await;
    let s3 = S3Server::start(&db.dir.join("s3"));
    db.artifacts = s3.settings("cairn");
    (db, s3)
}

/// Waits until the flow records an effect matching `pred` and returns it; fails at once,
/// with the run's error, when the run finishes first (a flow process that cannot start).
async fn effect_of_run(
    db: &TestDb,
    log: &EffectLog,
    id: Uuid,
    pred: impl Fn(&Effect) -> bool,
) -> Effect {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(effect) = log.effects().into_iter().find(|e| pred(e)) {
            return effect;
        }
        let run = db.run(id).await;
        assert!(
            !run.phase.is_terminal(),
            "run {} finished as {} before the effect the test waited for: {:?}; the log has {:?}",
            run.name,
            run.phase,
            run.error,
            log.summary()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such effect within {PATIENCE:?}; the log has {:?}",
            log.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text `big_result` makes for `mb` megabytes.
fn big_text(mb: f64) -> String {
    cairn_tests::payloads::big_text((mb * (1 << 20) as f64) as usize)
}

/// What `big_result` returns for `text`.
fn big_summary(text: &str) -> Value {
    json!({
        "len": text.len(),
        "fnv": cairn_tests::payloads::fnv1a(text.as_bytes()),
        "head": text.lines().next().unwrap_or_default(),
    })
}

/// The bytes of the store's object for a step that returned `text`: its checkpoint, as JSON.
fn checkpoint_bytes(text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!(text)).unwrap()
}

/// How many bytes the step's checkpoint takes in its row.
async fn row_size(db: &TestDb, id: Uuid, key: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT pg_column_size(result) FROM cairn.steps WHERE run_id = $1 AND key = $2",
    )
    .bind(id)
    .bind(key)
    .fetch_one(&db.pool)
    .await
    .expect("the step's checkpoint")
}

/// The objects recorded in the engine (cairn.artifacts), as (digest, touched_at).
async fn recorded(db: &TestDb) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as("SELECT digest, touched_at FROM cairn.artifacts ORDER BY digest")
        .fetch_all(&db.pool)
        .await
        .expect("cairn.artifacts")
}

/// The file s3s-fs keeps an object of the default namespace in (the store's prefix `cairn`).
fn object_file(s3: &S3Server, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    s3.bucket_dir()
        .join("cairn")
        .join(NS)
        .join("sha256")
        .join(hex)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test]
async fn a_fifty_megabyte_result_goes_to_s3_and_a_relaunch_replays_it_from_there() {
    let (db, s3) = db_on_s3().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "big",
            "big_result",
            json!({ "mb": 50, "hang": "after:big" }),
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let hung = effect_of_run(&db, &log, id, |e| e.what == "hang:after:big").await;
    assert_eq!(hung.attempt, 1);

    // Checkpointed before the kill: the row holds a reference, the object is in the bucket.
    let text = big_text(50.0);
    let expected = checkpoint_bytes(&text);
    let stored = db.checkpoint(id, "big").await.expect("big is checkpointed");
    let reference = ArtifactRef::from_checkpoint(&stored).expect("the row is a reference");
    assert_eq!(reference.digest, digest_of(&expected), "{stored}");
    assert_eq!(reference.size, expected.len() as u64);
    assert_eq!(reference.content_type, "application/json");
    let row = row_size(&db, id, "big").await;
    assert!(row < 1024, "the checkpoint row takes {row} bytes");
    let file = object_file(&s3, &reference.digest);
    assert_eq!(
        std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .len(),
        expected.len() as u64,
        "the object in the S3 server's bucket"
    );

    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    // The relaunch read the value back from S3 (the row has only its digest) without
    // running the step again.
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!((run.attempt, run.crashes), (2, 1));
    assert_eq!(run.result, Some(big_summary(&text)));
    assert_eq!(log.count("step:big"), 1, "{:?}", log.summary());
    assert_eq!(outcomes(&db.attempts(id).await), ["crashed", "completed"]);
    let steps = db.steps(id).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].attempt, Some(1));
    let preview = steps[0].preview.as_deref().unwrap_or_default();
    assert!(preview.contains("artifact"), "preview {preview:?}");
    // What the store holds is the step's checkpoint, byte for byte.
    let store = ArtifactStore::open(&db.artifacts).unwrap();
    let object = store.get(NS, &reference).await.unwrap();
    assert!(
        object == expected,
        "the stored object differs from the result"
    );
    let listed = read::artifacts(&db.pool, id).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].step.as_str()),
        ("big", "big")
    );
    assert_eq!(listed[0].size, expected.len() as u64);
    assert!(!listed[0].sensitive);
    // Nothing went to the directory store the harness would have used otherwise.
    assert!(files_under(&db.dir.join("artifacts")).is_empty());
}

#[tokio::test]
async fn the_store_going_down_mid_step_crashes_the_attempt_and_a_later_one_finishes() {
    let (db, mut s3) = db_on_s3().await;
    let log = db.log("effects");
    let release = db.dir.join("release");
    let id = db
        .create_run_with(
            "outage",
            "big_result",
            json!({ "mb": 1, "release": release.to_string_lossy() }),
            5,
            100,
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);

    // The step is working: the store goes away, then the step finishes.
    effect_of_run(&db, &log, id, |e| e.what == "waiting:big").await;
    s3.stop();
    std::fs::write(release.with_extension("1"), "").unwrap();

    // Its result could not be stored: the attempt crashed (after the store client's own
    // retries), nothing was checkpointed, and the next attempt runs the step again.
    effect_of_run(&db, &log, id, |e| e.what == "waiting:big" && e.attempt == 2).await;
    let attempts = db.attempts(id).await;
    assert_eq!(outcomes(&attempts), ["crashed", "running"]);
    let detail = attempts[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("code 70"), "crash detail: {detail}");
    assert_eq!(db.checkpoint(id, "big").await, None);

    // The store is back before this attempt's step finishes.
    s3.start_again();
    std::fs::write(release.with_extension("2"), "").unwrap();
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!((run.attempt, run.crashes), (2, 1));
    let text = big_text(1.0);
    assert_eq!(run.result, Some(big_summary(&text)));
    assert_eq!(
        log.summary(),
        ["step:big@1", "waiting:big@1", "step:big@2", "waiting:big@2"]
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["crashed", "completed"]);
    let stored = db.checkpoint(id, "big").await.expect("big is checkpointed");
    let reference = ArtifactRef::from_checkpoint(&stored).expect("the row is a reference");
    let store = ArtifactStore::open(&db.artifacts).unwrap();
    let object = store.get(NS, &reference).await.unwrap();
    assert!(object == checkpoint_bytes(&text), "the stored object");
    assert_eq!(db.steps(id).await[0].attempt, Some(2));
}

const REPORT: &str = "quarterly report: all green\n";

#[tokio::test]
async fn a_stored_artifact_is_listed_read_back_and_not_written_again_by_a_replay() {
    let (db, s3) = db_on_s3().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "reporter",
            "stores_artifact",
            json!({
                "items": [{ "name": "report.txt", "text": REPORT }],
                "hang": "after:artifacts",
            }),
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let hung = effect_of_run(&db, &log, id, |e| e.what == "hang:after:artifacts").await;
    let stored = db
        .checkpoint(id, "artifact:report.txt")
        .await
        .expect("the artifact is checkpointed");
    let reference = ArtifactRef::from_checkpoint(&stored).expect("a reference");
    assert_eq!(reference.name.as_deref(), Some("report.txt"));
    assert_eq!(reference.digest, digest_of(REPORT.as_bytes()));
    assert!(object_file(&s3, &reference.digest).is_file());
    let before = recorded(&db).await;
    assert_eq!(before.len(), 1, "{before:?}");

    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!((run.attempt, run.crashes), (2, 1));
    let result = run.result.unwrap();
    assert_eq!(result["read"], json!([REPORT]));
    assert_eq!(
        result["artifacts"],
        json!([{
            "name": "report.txt",
            "digest": reference.digest,
            "size": REPORT.len(),
            "content_type": "text/plain; charset=utf-8",
        }])
    );
    // The replay got the artifact from its checkpoint: no new record (a write records the
    // object first), and the checkpoint is attempt 1's.
    assert_eq!(recorded(&db).await, before);
    assert_eq!(
        log.summary(),
        [
            "stored:report.txt@1",
            "hang:after:artifacts@1",
            "stored:report.txt@2"
        ]
    );
    assert_eq!(db.steps(id).await[0].attempt, Some(1));

    let listed = read::artifacts(&db.pool, id).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let artifact = &listed[0];
    assert_eq!(
        (
            artifact.name.as_str(),
            artifact.step.as_str(),
            artifact.size,
            artifact.content_type.as_str(),
            artifact.sensitive
        ),
        (
            "report.txt",
            "artifact:report.txt",
            REPORT.len() as u64,
            "text/plain; charset=utf-8",
            false
        )
    );
    assert_eq!(artifact.digest, reference.digest);
    let store = ArtifactStore::open(&db.artifacts).unwrap();
    assert_eq!(store.get(NS, &reference).await.unwrap(), REPORT.as_bytes());
}

#[tokio::test]
async fn an_artifact_over_the_maximum_fails_the_run_naming_the_maximum() {
    let (mut db, s3) = db_on_s3().await;
    db.artifacts.max_bytes = 512 * 1024;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);

    // A step's result (1 MiB, offloaded as it is over 256 KiB).
    let big = db
        .create_run("too-big", "big_result", json!({ "mb": 1 }))
        .await;
    let run = db.supervise(&launcher_, big).await;
    assert_eq!(run.phase, Phase::Failed, "{:?}", run.result);
    let message = run.error_message().unwrap();
    assert!(
        message.contains("\"big\"") && message.contains("maximum of 524288 bytes"),
        "{message}"
    );
    assert_eq!(db.checkpoint(big, "big").await, None);
    // Permanent: not tried again.
    assert_eq!(log.count("step:big"), 1, "{:?}", log.summary());
    assert_eq!(outcomes(&db.attempts(big).await), ["failed"]);

    // An object stored on purpose.
    let text = "x".repeat(600 * 1024);
    let stored = db
        .create_run(
            "too-big-report",
            "stores_artifact",
            json!({ "items": [{ "name": "huge.txt", "text": text }] }),
        )
        .await;
    let run = db.supervise(&launcher_, stored).await;
    assert_eq!(run.phase, Phase::Failed, "{:?}", run.result);
    let message = run.error_message().unwrap();
    assert!(
        message.contains("artifact:huge.txt") && message.contains("maximum of 524288 bytes"),
        "{message}"
    );
    assert_eq!(db.checkpoint(stored, "artifact:huge.txt").await, None);
    assert_eq!(log.count("stored:huge.txt"), 0);

    // Refused before anything was recorded or written.
    let records = recorded(&db).await;
    assert!(records.is_empty(), "{records:?}");
    let files = files_under(&s3.bucket_dir());
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test]
async fn without_a_store_storing_an_artifact_fails_saying_it_needs_one() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let mut launcher_ = db.launcher(FLOWS, &log, &[]);
    launcher_.artifacts = None;
    let id = db
        .create_run(
            "storeless",
            "stores_artifact",
            json!({ "items": [{ "name": "report.txt", "text": REPORT }] }),
        )
        .await;
    let run = db.supervise(&launcher_, id).await;
    assert_eq!(run.phase, Phase::Failed, "{:?}", run.result);
    let message = run.error_message().unwrap();
    assert!(
        message.contains("\"artifact:report.txt\"")
            && message.contains("needs an artifact store")
            && message.contains("CAIRN_ARTIFACTS"),
        "{message}"
    );
    assert_eq!(outcomes(&db.attempts(id).await), ["failed"]);
    assert_eq!(db.checkpoint(id, "artifact:report.txt").await, None);
    assert_eq!(log.count("stored:report.txt"), 0);
    let records = recorded(&db).await;
    assert!(records.is_empty(), "{records:?}");
}

#[tokio::test]
async fn retention_deletes_the_objects_of_deleted_runs_and_keeps_those_still_referenced() {
    let (db, _s3) = db_on_s3().await;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let shared = json!({ "name": "shared.txt", "text": "in both runs\n" });
    let own = json!({ "name": "own.txt", "text": "only in the deleted run\n" });
    let gone = db
        .create_run(
            "gone",
            "stores_artifact",
            json!({ "items": [shared.clone(), own] }),
        )
        .await;
    let kept = db
        .create_run("kept", "stores_artifact", json!({ "items": [shared] }))
        .await;
    for id in [gone, kept] {
        let run = db.supervise(&launcher_, id).await;
        assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    }
    let reference = |text: &str| ArtifactRef::of(text.as_bytes(), "text/plain; charset=utf-8");
    let (shared_ref, own_ref) = (
        reference("in both runs\n"),
        reference("only in the deleted run\n"),
    );
    let store = ArtifactStore::open(&db.artifacts).unwrap();
    assert_eq!(launcher::artifact_namespaces(&db.pool).await.unwrap(), [NS]);

    // Both runs exist: every object is referenced.
    let deleted =
        launcher::delete_unreferenced_artifacts(&db.pool, &store, NS, Duration::ZERO, 100)
            .await
            .unwrap();
    assert_eq!(deleted, 0);

    read::delete_run(&db.pool, gone).await.unwrap();
    // Within the grace period an unreferenced object stays (it may be being written for a
    // step not checkpointed yet).
    let deleted = launcher::delete_unreferenced_artifacts(
        &db.pool,
        &store,
        NS,
        Duration::from_secs(3600),
        100,
    )
    .await
    .unwrap();
    assert_eq!(deleted, 0);
    assert!(store.get(NS, &own_ref).await.is_ok());

    let deleted =
        launcher::delete_unreferenced_artifacts(&db.pool, &store, NS, Duration::ZERO, 100)
            .await
            .unwrap();
    assert_eq!(deleted, 1);
    assert!(
        matches!(
            store.get(NS, &own_ref).await,
            Err(ArtifactError::Missing(_))
        ),
        "the deleted run's own object is gone"
    );
    assert_eq!(
        store.get(NS, &shared_ref).await.unwrap(),
        "in both runs\n".as_bytes(),
        "the object the kept run refers to stays"
    );
    let left: Vec<String> = recorded(&db).await.into_iter().map(|(d, _)| d).collect();
    assert_eq!(left, std::slice::from_ref(&shared_ref.digest));
    // The kept run still reads it.
    let listed = read::artifacts(&db.pool, kept).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, shared_ref.digest);
}

#[tokio::test]
async fn a_fork_shares_its_sources_objects_by_reference_and_retention_keeps_them_for_it() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let items = json!({ "items": [{ "name": "a.txt", "text": "first\n" },
                                  { "name": "b.txt", "text": "second\n" }] });
    let source = db.create_run("source", "stores_artifact", items).await;
    let done = db.supervise(&launcher_, source).await;
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.error);

    // From b.txt: a.txt's checkpoint is copied, a reference to the same object.
    let none = json!({});
    let (forked, created, reused) = launcher::fork_run(
        &mut *db.conn().await,
        &crate::forks::fork(source, "forked", "artifact:b.txt", &none, &none),
    )
    .await
    .unwrap();
    assert!(created);
    assert_eq!(reused, 1);
    let run = db.supervise(&launcher_, forked).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, done.result, "the fork reads the same objects");
    let origin = db
        .steps(forked)
        .await
        .into_iter()
        .find(|s| s.key == "artifact:a.txt")
        .map(|s| s.origin);
    assert_eq!(origin, Some(Some("reused".to_owned())));
    let digests = |listed: Vec<cairn_engine::read_api::Artifact>| -> Vec<String> {
        listed.into_iter().map(|a| a.digest).collect()
    };
    assert_eq!(
        digests(read::artifacts(&db.pool, forked).await.unwrap()),
        digests(read::artifacts(&db.pool, source).await.unwrap())
    );

    // The source deleted, its objects stay: the fork refers to both.
    read::delete_run(&db.pool, source).await.unwrap();
    let store = ArtifactStore::open(&db.artifacts).unwrap();
    let deleted =
        launcher::delete_unreferenced_artifacts(&db.pool, &store, NS, Duration::ZERO, 100)
            .await
            .unwrap();
    assert_eq!(deleted, 0);
    let first = ArtifactRef::of(b"first\n", "text/plain; charset=utf-8");
    assert_eq!(store.get(NS, &first).await.unwrap(), "first\n".as_bytes());
}

#[tokio::test]
async fn a_large_sensitive_result_is_stored_sealed_and_opened_by_a_replay() {
    let (db, _s3) = db_on_s3().await;
    let log = db.log("effects");
    let id = db
        .create_run(
            "sealed-big",
            "big_result",
            json!({ "mb": 1, "sensitive": true, "hang": "after:big" }),
        )
        .await;
    let supervisor = db.supervise_in_background(&db.launcher(FLOWS, &log, &[]), id);
    let hung = effect_of_run(&db, &log, id, |e| e.what == "hang:after:big").await;

    let text = big_text(1.0);
    let plaintext = "block 0000000001";
    let stored = db.checkpoint(id, "big").await.expect("big is checkpointed");
    assert!(checkpoint::is_sealed(&stored), "{stored}");
    assert!(!stored.to_string().contains(plaintext), "{stored}");
    let reference: ArtifactRef =
        serde_json::from_value(stored["artifact"].clone()).expect("a sealed reference");
    let row = row_size(&db, id, "big").await;
    assert!(row < 1024, "the checkpoint row takes {row} bytes");
    // The object is the sealed value: no plaintext in the store either.
    let store = ArtifactStore::open(&db.artifacts).unwrap();
    let object = store.get(NS, &reference).await.unwrap();
    assert!(
        !object
            .windows(plaintext.len())
            .any(|w| w == plaintext.as_bytes()),
        "the stored object holds plaintext"
    );
    let sealed: Value = serde_json::from_slice(&object).expect("the object is JSON");
    assert!(checkpoint::is_sealed(&sealed));

    sigkill(hung.pid);
    let run = supervisor.await.unwrap();

    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!((run.attempt, run.crashes), (2, 1));
    assert_eq!(run.result, Some(big_summary(&text)));
    assert_eq!(log.count("step:big"), 1, "{:?}", log.summary());
    let listed = read::artifacts(&db.pool, id).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].sensitive, "{listed:?}");
    assert_eq!(listed[0].digest, reference.digest);
    let steps = db.steps(id).await;
    assert!(
        steps[0].sensitive && steps[0].preview.is_none(),
        "{steps:?}"
    );
}

#[tokio::test]
async fn by_default_a_large_result_goes_to_the_test_databases_own_directory() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let id = db
        .create_run("local", "big_result", json!({ "mb": 1 }))
        .await;
    let run = db.supervise(&db.launcher(FLOWS, &log, &[]), id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    let text = big_text(1.0);
    assert_eq!(run.result, Some(big_summary(&text)));
    let stored = db.checkpoint(id, "big").await.expect("big is checkpointed");
    let reference = ArtifactRef::from_checkpoint(&stored).expect("the row is a reference");
    let hex = reference.digest.strip_prefix("sha256:").unwrap();
    let file = db.dir.join("artifacts").join(NS).join("sha256").join(hex);
    let object = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(object == checkpoint_bytes(&text), "the stored object");
}
