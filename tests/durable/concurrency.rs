//! A Flow's concurrency limits, decided by the engine under the claim's lock
//! (`cairn.start_attempt_within`): places per flow and per key, held from the first launch to
//! the finish (waits included), queued runs admitted in creation order, and each freed place
//! announced on `cairn_admit` to the run whose turn it is.

use std::time::Duration;

use cairn_engine::launcher::{self, Claim, Concurrency, HeldBy, Limits};
use cairn_engine::runner::{self, Attempt, EventWait};
use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use serde_json::json;
use sqlx::postgres::PgListener;
use uuid::Uuid;

/// At most 3 runs of the Flow `billing` at once, 2 per customer.
const LIMITS: Limits = Limits {
    max_running: None,
    max_in_namespace: None,
    max_per_flow: Some(3),
    max_per_key: Some(2),
};

async fn create(db: &TestDb, name: &str, customer: &str) -> Uuid {
    let input = json!({ "customer": customer });
    let run = launcher::NewRun {
        namespace: "shop",
        name,
        flow: "billing",
        input: &input,
        max_attempts: 3,
        retry_backoff_ms: 100,
        created_at: None,
        flowrun_uid: None,
        concurrency: Some(Concurrency {
            group: "billing",
            key: Some(customer),
        }),
    };
    launcher::create_run(&mut *db.conn().await, &run)
        .await
        .unwrap()
        .0
}

async fn claim(db: &TestDb, id: Uuid) -> Claim {
    launcher::claim(&mut *db.conn().await, id, &LIMITS)
        .await
        .unwrap()
}

async fn started(db: &TestDb, id: Uuid) -> Attempt {
    match claim(db, id).await {
        Claim::Started(attempt) => attempt,
        other => panic!("expected a start, got {other:?}"),
    }
}

/// The claim is refused by the concurrency limits, saying `says`.
async fn held(db: &TestDb, id: Uuid, says: &[&str]) {
    match claim(db, id).await {
        Claim::Refused(held) => {
            assert_eq!(held.by, HeldBy::Concurrency, "{}", held.why);
            for part in says {
                assert!(held.why.contains(part), "{:?} lacks {part:?}", held.why);
            }
        }
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
    assert_eq!(
        db.run(id).await.phase,
        Phase::Pending,
        "a held run stays pending"
    );
}

/// The runs `cairn_admit` named since the last look: all announced before a marker sent now
/// (notifications arrive in commit order).
async fn turns(db: &TestDb, listener: &mut PgListener) -> Vec<String> {
    const MARK: &str = "-mark-";
    sqlx::query(
        "SELECT pg_notify('cairn_admit', json_build_object('namespace', 'shop', 'name', $1)::text)",
    )
    .bind(MARK)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut named = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the marker did not come back within 10 s")
            .unwrap();
        let turn: serde_json::Value = serde_json::from_str(next.payload()).unwrap();
        assert_eq!(turn["namespace"], "shop");
        match turn["name"].as_str().unwrap() {
            MARK => {
                named.sort();
                return named;
            }
            name => named.push(name.to_owned()),
        }
    }
}

#[tokio::test]
async fn runs_over_a_flow_or_key_limit_wait_their_turn_in_creation_order() {
    let db = TestDb::new().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("cairn_admit").await.unwrap();
    let mut ids = std::collections::HashMap::new();
    for (name, customer) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("a4", "a"),
        ("b1", "b"),
        ("b2", "b"),
    ] {
        ids.insert(name, create(&db, name, customer).await);
    }
    let id = |name: &str| ids[name];

    let a1 = started(&db, id("a1")).await;
    let a2 = started(&db, id("a2")).await;
    held(
        &db,
        id("a3"),
        &[
            r#"Flow "billing" allows 2 run(s) at a time per key "a""#,
            "running: a1, a2",
        ],
    )
    .await;
    held(
        &db,
        id("a4"),
        &["running: a1, a2", "1 earlier run(s) wait first"],
    )
    .await;
    let b1 = started(&db, id("b1")).await;
    held(
        &db,
        id("b2"),
        &[
            "allows 3 run(s) at a time (concurrency.max)",
            "running: a1, a2, b1",
        ],
    )
    .await;

    // A run parked on a wait keeps its place: no pod, but the limit is about work under way.
    let wait = EventWait {
        key: "approval",
        event: "approve-a1",
        timeout_ms: None,
        question: None,
        schema: None,
        include_earlier: false,
    };
    let mut conn = db.conn().await;
    runner::await_event(&mut conn, &a1, &wait).await.unwrap();
    assert_eq!(db.run(id("a1")).await.phase, Phase::Waiting);
    held(&db, id("a3"), &["running: a1, a2"]).await;
    assert!(
        turns(&db, &mut listener).await.is_empty(),
        "nothing announced"
    );

    // a2 finishes: its key's first queued run, a3, is told, and the first of each other key
    // waiting (b2: a place in the flow may be all it waits for); a3 takes the place.
    runner::complete_run(&mut conn, &a2, &json!("paid"))
        .await
        .unwrap();
    assert_eq!(turns(&db, &mut listener).await, ["a3", "b2"]);
    let a3 = started(&db, id("a3")).await;
    // Admitting a queued run tells the next in line (a4, first of its key; b2 of the other),
    // which find no room: key "a" is full again, and so is the flow.
    assert_eq!(turns(&db, &mut listener).await, ["a4", "b2"]);
    held(&db, id("a4"), &["running: a1, a3"]).await;

    // b1 fails: a place in the flow frees. a4 (created before b2) is first in line but its key
    // is full, so b2 does not wait behind it.
    runner::fail_run(&mut conn, &b1, &json!({ "message": "card declined" }))
        .await
        .unwrap();
    let told = turns(&db, &mut listener).await;
    assert!(told.contains(&"b2".to_owned()), "{told:?}");
    started(&db, id("b2")).await;
    // Its admission tells the next in line, a4, whose key is still full.
    assert_eq!(turns(&db, &mut listener).await, ["a4"]);
    held(&db, id("a4"), &["running: a1, a3"]).await;

    // A retried run queues again: its old place was given up when it failed.
    launcher::retry_run(&mut conn, id("b1")).await.unwrap();
    held(
        &db,
        id("b1"),
        &["allows 3 run(s) at a time", "running: a1, a3, b2"],
    )
    .await;

    // a1 is cancelled while waiting: a4, first for key "a", goes before b1 (created earlier).
    launcher::cancel_run(&mut conn, id("a1")).await.unwrap();
    assert_eq!(turns(&db, &mut listener).await, ["a4", "b1"]);
    started(&db, id("a4")).await;
    held(&db, id("b1"), &["running: a3, b2, a4"]).await;
    runner::complete_run(&mut conn, &a3, &json!("paid"))
        .await
        .unwrap();
    let told = turns(&db, &mut listener).await;
    assert!(told.contains(&"b1".to_owned()), "{told:?}");
    started(&db, id("b1")).await;
}

#[tokio::test]
async fn without_limits_or_a_group_nothing_is_held() {
    let db = TestDb::new().await;
    // Runs of one group: no limit passed (the Flow has none), all start, and are admitted: a
    // limit set later counts them.
    let first = create(&db, "c1", "c").await;
    let second = create(&db, "c2", "c").await;
    for id in [first, second] {
        let free = launcher::claim(&mut *db.conn().await, id, &Limits::default()).await;
        assert!(matches!(free.unwrap(), Claim::Started(_)));
    }
    let third = create(&db, "c3", "c").await;
    held(&db, third, &["per key \"c\"", "running: c1, c2"]).await;
    // A run in no group (a child, a fork) ignores the limits it is given.
    let loose = db.create_run("loose", "billing", json!({})).await;
    assert!(matches!(claim(&db, loose).await, Claim::Started(_)));
}

#[tokio::test]
async fn a_freed_place_goes_past_runs_whose_key_is_full() {
    let db = TestDb::new().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("cairn_admit").await.unwrap();
    // Two runs of the flow at once, one per customer.
    let limits = Limits {
        max_per_flow: Some(2),
        max_per_key: Some(1),
        ..Limits::default()
    };
    let claim = async |id| {
        let mut conn = db.conn().await;
        launcher::claim(&mut conn, id, &limits).await.unwrap()
    };
    let (k1, k2) = (
        create(&db, "k1-a", "k1").await,
        create(&db, "k2-a", "k2").await,
    );
    let (k1_later, k3) = (
        create(&db, "k1-b", "k1").await,
        create(&db, "k3-a", "k3").await,
    );
    assert!(matches!(claim(k1).await, Claim::Started(_)));
    let Claim::Started(second) = claim(k2).await else {
        panic!("k2-a did not start")
    };
    assert!(matches!(claim(k1_later).await, Claim::Refused(_)));
    assert!(matches!(claim(k3).await, Claim::Refused(_)));
    // k2-a ends: k1-b is first in line but its key is full; k3-a is told too, and starts.
    runner::complete_run(&mut *db.conn().await, &second, &json!("done"))
        .await
        .unwrap();
    assert_eq!(turns(&db, &mut listener).await, ["k1-b", "k3-a"]);
    assert!(matches!(claim(k1_later).await, Claim::Refused(_)));
    assert!(matches!(claim(k3).await, Claim::Started(_)));
}
