//! Forks (issue 17): a new run from another's checkpoints completed before a chosen step,
//! reused without being paid again; outputs set before the fork point; waits answered ahead;
//! the source never changed; what cannot be forked refused with what was wrong.

use cairn_engine::launcher::Fork;
use cairn_engine::{EngineError, read};
use cairn_operator::lifecycle::Phase;
use cairn_tests::{EffectLog, TestDb};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;

pub(crate) fn fork<'a>(
    source: Uuid,
    name: &'a str,
    step: &'a str,
    outputs: &'a Value,
    answers: &'a Value,
) -> Fork<'a> {
    Fork {
        name,
        input: None,
        max_attempts: 3,
        retry_backoff_ms: 100,
        created_at: None,
        flowrun_uid: None,
        source,
        from_step: step,
        outputs,
        answers,
    }
}

/// `run`'s effects, as `what@attempt`.
fn effects_of(log: &EffectLog, run: &str) -> Vec<String> {
    log.effects()
        .into_iter()
        .filter(|e| e.run == run)
        .map(|e| format!("{}@{}", e.what, e.attempt))
        .collect()
}

#[tokio::test]
async fn a_fork_reuses_the_steps_before_its_point_runs_the_rest_and_leaves_the_source_alone() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let source = db.create_run("source", "steps", json!({})).await;
    let done = db.supervise(&launcher_, source).await;
    assert_eq!(done.phase, Phase::Succeeded);
    let source_steps = db.steps(source).await;

    // From b: a is reused, b and c run again.
    let none = json!({});
    let (again, created, reused) = launcher::fork_run(
        &mut *db.conn().await,
        &fork(source, "again", "b", &none, &none),
    )
    .await
    .unwrap();
    assert!(created);
    assert_eq!(reused, 1);
    let run = db.supervise(&launcher_, again).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.result, Some(json!(["a done", "b done", "c done"])));
    assert_eq!(effects_of(&log, "again"), ["step:b@1", "step:c@1"]);
    let origins: Vec<(String, Option<String>)> = db
        .steps(again)
        .await
        .into_iter()
        .map(|s| (s.key, s.origin))
        .collect();
    assert_eq!(
        origins,
        [
            ("a".into(), Some("reused".into())),
            ("b".into(), None),
            ("c".into(), None)
        ]
    );
    let fork_of = run.fork_of.unwrap();
    assert_eq!(
        (&fork_of["run"], &fork_of["step"], &fork_of["reused"]),
        (&json!("source"), &json!("b"), &json!(1))
    );

    // From c, with b's output set: the fork replays the given value.
    let outputs = json!({ "b": "b, edited" });
    let (edited, _, reused) = launcher::fork_run(
        &mut *db.conn().await,
        &fork(source, "edited", "c", &outputs, &none),
    )
    .await
    .unwrap();
    assert_eq!(reused, 1, "a reused; b set");
    let run = db.supervise(&launcher_, edited).await;
    assert_eq!(run.result, Some(json!(["a done", "b, edited", "c done"])));
    assert_eq!(effects_of(&log, "edited"), ["step:c@1"]);

    // The source: as it was.
    let after = db.run(source).await;
    assert_eq!((after.phase, after.result), (Phase::Succeeded, done.result));
    assert_eq!(db.steps(source).await, source_steps);
    assert_eq!(
        effects_of(&log, "source"),
        ["step:a@1", "step:b@1", "step:c@1"]
    );
}

#[tokio::test]
async fn a_fork_with_its_wait_answered_ahead_runs_through_it() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let source = db
        .create_run("asked", "approval", json!({ "event": "ok" }))
        .await;
    let supervisor = db.supervise_in_background(&launcher_, source);
    db.wait_for_phase(source, Phase::Waiting).await;
    emit(&db, "ok", json!({ "approved": true, "by": "alice" }))
        .await
        .unwrap();
    assert_eq!(supervisor.await.unwrap().phase, Phase::Succeeded);

    let none = json!({});
    let answers = json!({ "ok": { "approved": false, "by": "fork" } });
    let (id, _, reused) = launcher::fork_run(
        &mut *db.conn().await,
        &fork(source, "answered", "event:ok", &none, &answers),
    )
    .await
    .unwrap();
    assert_eq!(reused, 1, "the step before the wait");
    let run = db.supervise(&launcher_, id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(run.attempt, 1, "it never parked");
    assert_eq!(
        effects_of(&log, "answered"),
        [r#"saw:{"approved":false,"by":"fork"}@1"#, "step:after@1"]
    );
    // The source's answer was the source's alone.
    assert!(
        effects_of(&log, "asked").contains(&r#"saw:{"approved":true,"by":"alice"}@2"#.to_owned())
    );
}

#[tokio::test]
async fn what_cannot_be_forked_is_refused_saying_why_and_nothing_is_made() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let source = db.create_run("src", "steps", json!({})).await;
    db.supervise(&db.launcher(FLOWS, &log, &[]), source).await;
    let none = json!({});
    let mut conn = db.conn().await;
    match launcher::fork_run(&mut conn, &fork(source, "f1", "nope", &none, &none)).await {
        Err(EngineError::NotFound(message)) => {
            assert!(message.contains(r#"has no step "nope""#), "{message}")
        }
        other => panic!("an unknown step was not refused: {other:?}"),
    }
    let later = json!({ "c": "x" });
    match launcher::fork_run(&mut conn, &fork(source, "f2", "b", &later, &none)).await {
        Err(EngineError::WrongState(message)) => {
            assert!(
                message.contains(r#"step "c""#) && message.contains("not one the fork reuses"),
                "{message}"
            )
        }
        other => panic!("an output for a step after the fork point was not refused: {other:?}"),
    }
    match launcher::fork_run(&mut conn, &fork(Uuid::new_v4(), "f3", "a", &none, &none)).await {
        Err(EngineError::NotFound(_)) => {}
        other => panic!("a missing source was not refused: {other:?}"),
    }
    for name in ["f1", "f2", "f3"] {
        assert!(
            read::find(&db.pool, cairn_tests::NS, name).await.is_err(),
            "{name} was made"
        );
    }
}

#[tokio::test]
async fn a_forks_reused_steps_cost_it_nothing() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let source = db
        .create_run("paid", "spender", json!({ "before": [0.5, 0.25] }))
        .await;
    db.supervise(&launcher_, source).await;
    let none = json!({});
    let (id, _, _) = launcher::fork_run(
        &mut *db.conn().await,
        &fork(source, "cheap", "pay#2", &none, &none),
    )
    .await
    .unwrap();
    let run = db.supervise(&launcher_, id).await;
    assert_eq!(run.result, Some(json!(0.75)));
    assert_eq!((run.usd, run.tree_usd), (0.25, 0.25));
    let totals = read::totals(&db.pool, id).await.unwrap();
    assert_eq!(
        (
            totals.steps,
            totals.usd,
            totals.reused_steps,
            totals.reused_usd
        ),
        (2, 0.25, 1, 0.5)
    );
    assert_eq!(effects_of(&log, "cheap"), ["pay:2@1"]);
}

#[tokio::test]
async fn a_fork_never_inherits_a_sealed_value_and_never_joins_an_unfinished_child() {
    let db = TestDb::new().await;
    let log = db.log("effects");
    let launcher_ = db.launcher(FLOWS, &log, &[]);
    let none = json!({});

    // Sensitive steps run again in the fork: a value sealed for one run is opened by its code
    // alone. Nor can a fork give one a value.
    let secret = json!({ "secret": "sk-fork-0123" });
    let source = db.create_run("sealed-src", "secretive", secret).await;
    db.supervise(&launcher_, source).await;
    let (id, _, reused) = launcher::fork_run(
        &mut *db.conn().await,
        &fork(source, "sealed-fork", "use", &none, &none),
    )
    .await
    .unwrap();
    assert_eq!(reused, 1, "tricky reused; credentials not");
    let run = db.supervise(&launcher_, id).await;
    assert_eq!(run.phase, Phase::Succeeded, "{:?}", run.error);
    assert_eq!(effects_of(&log, "sealed-fork"), ["credentials@1"]);
    let set = json!({ "credentials": { "api_key": "mine" } });
    match launcher::fork_run(
        &mut *db.conn().await,
        &fork(source, "sealed-set", "use", &set, &none),
    )
    .await
    {
        Err(EngineError::WrongState(message)) => {
            assert!(message.contains("sensitive"), "{message}")
        }
        other => panic!("an output for a sensitive step was not refused: {other:?}"),
    }

    // A source whose child is parked (at its parent's budget): forking after the spawn would
    // join that child, which would never wake the fork.
    let input = json!({ "child": [0.5, 0.5] });
    let parent = db.create_run("parked-parent", "spender", input).await;
    launcher::set_budget(&mut *db.conn().await, parent, Some(0.25))
        .await
        .unwrap();
    let supervisor = db.supervise_in_background(&launcher_, parent);
    let child = cairn_engine::names::child_run_name("parked-parent", "spender", 1);
    loop {
        let tree = read::tree(&db.pool, parent).await.unwrap();
        let parked = tree
            .iter()
            .any(|r| r.name == child && r.phase == Phase::Waiting);
        let joining = tree
            .iter()
            .any(|r| r.id == parent && r.phase == Phase::Waiting);
        if parked && joining {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    match launcher::fork_run(
        &mut *db.conn().await,
        &fork(parent, "too-late", "join", &none, &none),
    )
    .await
    {
        Err(EngineError::WrongState(message)) => {
            assert!(
                message.contains("has not finished") && message.contains("spawn:spender"),
                "{message}"
            )
        }
        other => panic!("a fork after an unfinished child was not refused: {other:?}"),
    }
    launcher::set_budget(&mut *db.conn().await, parent, None)
        .await
        .unwrap();
    assert_eq!(supervisor.await.unwrap().phase, Phase::Succeeded);
}
