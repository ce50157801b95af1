//! The FlowRun reconcile against a stand-in API server (`harness::fake_api`) and a real
//! Postgres: for a new run, a relaunch, a crash, a cancel, a deletion, a run naming a missing
//! Flow, a database that is down and the children of a long-named parent, the exact requests
//! sent to Kubernetes and what the engine holds afterwards. The same cases run on the real cluster in `tests/e2e`.

use std::sync::Arc;

use cairn_crds::FINALIZER;
use cairn_crds::FlowRun;
use cairn_engine::launcher::{self, Claim};
use cairn_engine::read;
use cairn_operator::controller::error::{Category, Stage};
use cairn_operator::controller::flowrun::{self, Scope};
use cairn_operator::controller::runner_db::RunnerDb;
use cairn_operator::controller::{Config, Context};
use cairn_operator::lifecycle::Phase;
use cairn_tests::TestDb;
use cairn_tests::fake_api::FakeApi;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};
use uuid::Uuid;

const NS: &str = "team-a";
const RUNS: &str = "/apis/cairn.dev/v1alpha1/namespaces/team-a/flowruns";
const DIGEST: &str =
    "localhost/agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: Config,
}

/// The FlowRun's uid.
const UID: &str = "0b5e1c2d-0000-4000-8000-0000000000f1";

/// A FlowRun `research` in `NS`, changed by `overrides` (merged in).
fn flowrun(overrides: Value) -> FlowRun {
    let mut run = json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": { "name": "research", "namespace": NS, "uid": UID, "generation": 1 },
        "spec": { "image": "localhost/agent:dev", "flow": "research" },
    });
    json_patch::merge(&mut run, &overrides);
    serde_json::from_value(run).expect("a FlowRun")
}

/// A pod of attempt `attempt` of engine run `run_id`, with the given status.
fn pod(run_id: Uuid, attempt: i32, status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": format!("research-a{attempt}"), "namespace": NS,
                      "labels": { "cairn.dev/run": run_id.to_string(), "cairn.dev/attempt": attempt.to_string(),
                                  "app.kubernetes.io/managed-by": "cairn" } },
        "status": status,
    }))
    .expect("a pod")
}

fn exited(code: i32) -> Value {
    json!({ "phase": "Failed", "containerStatuses": [{ "name": "flow", "ready": false, "restartCount": 0,
        "image": "localhost/agent:dev", "imageID": DIGEST,
        "state": { "terminated": { "exitCode": code, "reason": "Error" } } }] })
}

struct Case {
    db: TestDb,
    api: FakeApi,
    scope: Arc<Scope>,
}

/// The reconcile's world: a fresh database, the fake API server serving `run`, and the watch
/// cache holding `cached` pods.
async fn case(run: &FlowRun, cached: Vec<Pod>) -> Case {
    let db = TestDb::new().await;
    let (api, client) = FakeApi::new(run);
    let config = Flags::parse_from(["cairn"]).config;
    let runner = RunnerDb::from_url(&db.runner_url).unwrap();
    let ctx = Context::new(
        client,
        db.pool.clone(),
        config,
        runner,
        db.step_keys.clone(),
        None,
        None,
    );
    let scope = scope(Arc::new(ctx), cached);
    Case { db, api, scope }
}

impl Case {
    async fn reconcile(&self, run: FlowRun) -> Result<(), cairn_operator::controller::Error> {
        flowrun::reconcile(Arc::new(run), self.scope.clone())
            .await
            .map(|_| ())
    }

    async fn engine_run(&self) -> Option<read::RunRecord> {
        read::find(&self.db.pool, NS, "research").await.ok()
    }

    /// The FlowRun uid an engine run is bound to.
    async fn bound_to(&self, run_id: Uuid) -> Option<Uuid> {
        sqlx::query_scalar("SELECT flowrun_uid FROM cairn.runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// The engine's run, created and started (attempt 1 running), as a launch leaves it.
    async fn started(&self) -> Uuid {
        let mut conn = self.db.conn().await;
        let (id, _) = launcher::create_run(
            &mut conn,
            &launcher::NewRun {
                namespace: NS,
                name: "research",
                flow: "research",
                input: &Value::Null,
                max_attempts: 3,
                retry_backoff_ms: 0,
                created_at: None,
                flowrun_uid: None,
                concurrency: None,
            },
        )
        .await
        .unwrap();
        assert!(matches!(
            launcher::claim(&mut conn, id, &Default::default())
                .await
                .unwrap(),
            Claim::Started(_)
        ));
        id
    }
}

#[tokio::test]
async fn a_new_run_gets_its_engine_run_and_its_first_pod_and_no_finalizer() {
    let run = flowrun(json!({}));
    let case = case(&run, vec![]).await;
    case.reconcile(run).await.unwrap();

    let record = case.engine_run().await.expect("the engine's run");
    assert_eq!((record.phase, record.attempt), (Phase::Running, 1));
    assert_eq!(
        case.api.lines(),
        [
            "PATCH /api/v1/namespaces/team-a/secrets/cairn-runner-db".into(),
            "POST /api/v1/namespaces/team-a/secrets".into(),
            "POST /api/v1/namespaces/team-a/pods".into(),
            format!("PATCH {RUNS}/research/status"),
        ]
    );
    let bound = case.bound_to(record.id).await;
    assert_eq!(
        bound.map(|u| u.to_string()).as_deref(),
        Some(UID),
        "bound to its FlowRun"
    );
    let token = case.api.body_of("POST /api/v1/namespaces/team-a/secrets");
    let token_name = format!("cairn-token-{}-a1", record.id);
    assert_eq!(token["metadata"]["name"], json!(token_name));
    assert_eq!(token["metadata"]["ownerReferences"][0]["uid"], UID);
    let pod = case.api.body_of("POST /api/v1/namespaces/team-a/pods");
    assert_eq!(pod["metadata"]["name"], "research-a1");
    assert_eq!(
        pod["metadata"]["labels"]["cairn.dev/run"],
        json!(record.id.to_string())
    );
    assert_eq!(pod["spec"]["containers"][0]["image"], "localhost/agent:dev");
    assert!(
        pod.to_string().contains(&token_name),
        "the pod reads its token: {pod}"
    );
    let status = case.api.body_of(&format!("PATCH {RUNS}/research/status"))["status"].clone();
    assert_eq!(
        (&status["phase"], &status["attempt"], &status["pod"]),
        (&json!("Running"), &json!(1), &json!("research-a1"))
    );
    assert_eq!(case.api.events(), ["Launched"]);
}

#[tokio::test]
async fn a_relaunch_runs_the_pinned_digest_and_says_resumed() {
    let status = json!({ "phase": "Retrying", "attempt": 1, "imageDigest": DIGEST });
    let run = flowrun(json!({ "status": status }));
    let case = case(&run, vec![]).await;
    let id = case.started().await;
    let mut conn = case.db.conn().await;
    launcher::record_crash(&mut conn, id, 1, "exit code 3", Some(0))
        .await
        .unwrap();
    launcher::wake_due(&mut conn).await.unwrap();
    drop(conn);
    // The failed first pod is in the cache.
    let case = Case {
        scope: case_with_pods(&case, vec![pod(id, 1, exited(3))]),
        ..case
    };
    case.reconcile(run).await.unwrap();

    assert_eq!(
        case.api.lines(),
        [
            "PATCH /api/v1/namespaces/team-a/secrets/cairn-runner-db".to_owned(),
            "POST /api/v1/namespaces/team-a/secrets".into(),
            "POST /api/v1/namespaces/team-a/pods".into(),
            format!("PATCH {RUNS}/research/status"),
        ]
    );
    let pod = case.api.body_of("POST /api/v1/namespaces/team-a/pods");
    assert_eq!(pod["metadata"]["name"], "research-a2");
    assert_eq!(pod["spec"]["containers"][0]["image"], DIGEST);
    assert_eq!(case.api.events(), ["Resumed"]);
    let record = case.engine_run().await.unwrap();
    assert_eq!((record.phase, record.attempt), (Phase::Running, 2));
}

/// The same case with other pods in the watch cache.
fn case_with_pods(case: &Case, cached: Vec<Pod>) -> Arc<Scope> {
    scope(case.scope.ctx.clone(), cached)
}

/// A reconcile scope over `ctx` whose pod cache holds `cached` (no Flows, no profiles).
fn scope(ctx: Arc<Context>, cached: Vec<Pod>) -> Arc<Scope> {
    let (pods, mut writer) = reflector::store();
    for pod in cached {
        writer.apply_watcher_event(&watcher::Event::Apply(pod));
    }
    Arc::new(Scope {
        ctx,
        pods,
        flows: reflector::store().0,
        profiles: reflector::store().0,
    })
}

#[tokio::test]
async fn a_crash_is_confirmed_from_the_api_server_recorded_and_its_token_deleted() {
    let run = flowrun(json!({ "status": { "phase": "Running", "attempt": 1 } }));
    let case = case(&run, vec![]).await;
    let id = case.started().await;
    let failed = pod(id, 1, exited(3));
    let case = Case {
        scope: case_with_pods(&case, vec![failed.clone()]),
        ..case
    };
    case.api.with_pods(vec![failed]);
    case.reconcile(run).await.unwrap();

    let record = case.engine_run().await.unwrap();
    assert_eq!((record.phase, record.crashes), (Phase::Retrying, 1));
    assert_eq!(
        case.api.lines(),
        [
            "GET /api/v1/namespaces/team-a/pods".to_owned(),
            format!("PATCH {RUNS}/research/status"),
            format!("DELETE /api/v1/namespaces/team-a/secrets/cairn-token-{id}-a1"),
        ]
    );
    let list = &case.api.sent()[0].uri;
    assert!(list.contains(&format!("cairn.dev%2Frun%3D{id}")), "{list}");
    let status = case.api.body_of(&format!("PATCH {RUNS}/research/status"))["status"].clone();
    assert_eq!(status["phase"], "Retrying");
    assert_eq!(case.api.events(), ["Crashed"]);
}

#[tokio::test]
async fn an_attempt_whose_process_never_started_is_launched_again_under_its_number() {
    // The operator before this one claimed attempt 1 and died before creating its pod.
    let run = flowrun(json!({ "status": { "phase": "Running", "attempt": 1 } }));
    let case = case(&run, vec![]).await;
    let id = case.started().await;
    case.reconcile(run).await.unwrap();

    let record = case.engine_run().await.unwrap();
    assert_eq!(
        (record.phase, record.attempt, record.crashes),
        (Phase::Running, 1, 0),
        "the same attempt, running again, and no crash counted"
    );
    assert_eq!(
        case.api.lines(),
        [
            "GET /api/v1/namespaces/team-a/pods".to_owned(),
            "PATCH /api/v1/namespaces/team-a/secrets/cairn-runner-db".into(),
            "POST /api/v1/namespaces/team-a/secrets".into(),
            "POST /api/v1/namespaces/team-a/pods".into(),
            format!("PATCH {RUNS}/research/status"),
        ]
    );
    let token = case.api.body_of("POST /api/v1/namespaces/team-a/secrets");
    assert_eq!(
        token["metadata"]["name"],
        json!(format!("cairn-token-{id}-a1"))
    );
    let pod = case.api.body_of("POST /api/v1/namespaces/team-a/pods");
    assert_eq!(pod["metadata"]["name"], "research-a1");
    assert_eq!(case.api.events(), ["Relaunched"]);
}

#[tokio::test]
async fn a_cancelled_run_that_never_started_is_finished_and_launches_nothing() {
    let run = flowrun(
        json!({ "spec": { "cancel": true }, "status": { "phase": "Pending", "attempt": 0 } }),
    );
    let case = case(&run, vec![]).await;
    case.reconcile(run).await.unwrap();

    let record = case.engine_run().await.unwrap();
    assert_eq!(record.phase, Phase::Cancelled);
    assert_eq!(case.api.lines(), [format!("PATCH {RUNS}/research/status")]);
    let status = case.api.body_of(&format!("PATCH {RUNS}/research/status"))["status"].clone();
    assert_eq!(status["phase"], "Cancelled");
    assert_eq!(status["conditions"][0]["reason"], "Cancelled");
}

#[tokio::test]
async fn a_deleted_run_held_by_an_older_operators_finalizer_leaves_the_engine_then_loses_it() {
    let run = flowrun(
        json!({ "metadata": { "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [FINALIZER] },
                              "status": { "phase": "Running", "attempt": 1 } }),
    );
    let case = case(&run, vec![]).await;
    case.started().await;
    case.reconcile(run).await.unwrap();

    assert!(
        case.engine_run().await.is_none(),
        "the engine's run is deleted"
    );
    assert_eq!(case.api.lines(), [format!("PATCH {RUNS}/research")]);
    let patch = case.api.body_of(&format!("PATCH {RUNS}/research"));
    assert!(
        patch.to_string().contains("remove"),
        "the finalizer is removed: {patch}"
    );
}

#[tokio::test]
async fn a_deleted_run_without_a_finalizer_is_left_to_the_delete_event() {
    let run = flowrun(
        json!({ "metadata": { "deletionTimestamp": "2026-01-01T00:00:00Z" },
                              "status": { "phase": "Running", "attempt": 1 } }),
    );
    let case = case(&run, vec![]).await;
    case.started().await;
    case.reconcile(run).await.unwrap();
    assert!(case.api.lines().is_empty(), "{:?}", case.api.lines());
}

#[tokio::test]
async fn an_older_operators_finalizer_goes_once_the_run_is_bound_to_its_flowrun() {
    let run = flowrun(json!({ "metadata": { "finalizers": [FINALIZER] },
                              "status": { "phase": "Running", "attempt": 1 } }));
    let case = case(&run, vec![]).await;
    let id = case.started().await;
    case.reconcile(run).await.unwrap();
    let bound = case.bound_to(id).await;
    assert_eq!(
        bound.map(|u| u.to_string()).as_deref(),
        Some(UID),
        "bound by the reconcile"
    );
    let lines = case.api.lines();
    assert_eq!(
        lines.last(),
        Some(&format!("PATCH {RUNS}/research")),
        "{lines:?}"
    );
    let patch = case.api.body_of(&format!("PATCH {RUNS}/research"));
    assert!(patch.to_string().contains("remove"), "{patch}");
}

#[tokio::test]
async fn a_run_naming_a_missing_flow_says_so_and_creates_nothing() {
    let run = flowrun(json!({ "spec": { "image": null, "flow": null, "flowRef": "agent" } }));
    let case = case(&run, vec![]).await;
    case.reconcile(run).await.unwrap();

    assert!(case.engine_run().await.is_none());
    assert_eq!(
        case.api.lines(),
        [
            "GET /apis/cairn.dev/v1alpha1/namespaces/team-a/flows/agent".to_owned(),
            format!("PATCH {RUNS}/research/status"),
        ]
    );
    let status = case.api.body_of(&format!("PATCH {RUNS}/research/status"))["status"].clone();
    assert_eq!(status["conditions"][0]["reason"], "FlowNotFound");
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"agent\"") && e.contains("team-a")),
        "{status}"
    );
    assert_eq!(case.api.events(), ["FlowNotFound"]);
}

#[tokio::test]
async fn a_database_that_is_down_fails_the_stage_as_unavailable_and_says_so_on_the_flowrun() {
    let run = flowrun(json!({}));
    let case = case(&run, vec![]).await;
    case.db.pool.close().await;
    let error = case.reconcile(run).await.unwrap_err();

    assert_eq!(error.category(), Category::DatabaseUnavailable, "{error}");
    assert_eq!(error.stage(), Some(Stage::SyncEngine), "{error}");
    assert!(case.api.lines().is_empty(), "{:?}", case.api.lines());

    // The controller's error policy: a Warning Event and a condition on the FlowRun say so.
    let run = flowrun(json!({ "status": { "phase": "Running", "attempt": 1,
        "conditions": [{ "type": "Ready", "status": "False", "reason": "Running",
                         "message": "attempt 1 is running", "lastTransitionTime": "2026-12-06T20:00:00Z" }] } }));
    flowrun::on_error(Arc::new(run), &error, case.scope.clone());
    let patched = format!("PATCH {RUNS}/research/status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !case.api.lines().contains(&patched) || case.api.events().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            case.api.lines()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(case.api.events(), ["DatabaseUnavailable"]);
    let conditions = case.api.body_of(&patched)["status"]["conditions"].clone();
    assert_eq!(conditions[0]["type"], "Ready", "kept: {conditions}");
    let failing = &conditions[1];
    assert_eq!(
        (&failing["type"], &failing["status"], &failing["reason"]),
        (
            &json!("Reconciled"),
            &json!("False"),
            &json!("DatabaseUnavailable")
        )
    );
    let message = failing["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&error.to_string()) && message.contains("trying again in"),
        "{message}"
    );
}

/// A parent named with 200 characters (any valid FlowRun name, up to 253, must work), running
/// a Flow with a profile, a service account, pull secrets and env, that spawned two children:
/// one of a flow with a Flow of its own (which overrides some settings), one without.
#[tokio::test]
async fn children_of_a_long_named_parent_are_made_with_its_resolved_settings() {
    use cairn_engine::names;
    let parent = format!("research-{}", "x".repeat(191));
    assert_eq!(parent.len(), 200);
    let run = flowrun(json!({
        "metadata": { "name": parent },
        "spec": { "image": null, "flow": null, "flowRef": "agent",
                  "env": [{ "name": "TOPIC", "value": "durable" }] },
        "status": { "phase": "Running", "attempt": 1, "imageDigest": DIGEST },
    }));
    let case = case(&run, vec![]).await;
    let flow = |name: &str, spec: Value| -> cairn_crds::Flow {
        serde_json::from_value(json!({ "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow",
            "metadata": { "name": name, "namespace": NS }, "spec": spec }))
        .unwrap()
    };
    let flows = [
        flow(
            "agent",
            json!({ "image": "localhost/agent:dev", "flow": "research", "profile": "gpu",
                    "serviceAccountName": "agents", "imagePullSecrets": [{ "name": "registry" }],
                    "env": [{ "name": "MODEL", "value": "big" }] }),
        ),
        // The `draft` children's own Flow: same image repository, another profile and model.
        flow(
            "drafting",
            json!({ "image": "localhost/agent:v2", "flow": "draft", "profile": "small",
                    "env": [{ "name": "MODEL", "value": "small" }] }),
        ),
    ];
    let profiles = ["gpu", "small"].map(|name| {
        cairn_crds::ResourceProfile::new(name, cairn_crds::ResourceProfileSpec::default())
    });
    // The engine's parent, running attempt 1, and its two children.
    let mut conn = case.db.conn().await;
    let (id, _) = launcher::create_run(
        &mut conn,
        &launcher::NewRun {
            namespace: NS,
            name: &parent,
            flow: "research",
            input: &Value::Null,
            max_attempts: 3,
            retry_backoff_ms: 10_000,
            created_at: None,
            flowrun_uid: None,
            concurrency: None,
        },
    )
    .await
    .unwrap();
    let Claim::Started(attempt) = launcher::claim(&mut conn, id, &Default::default())
        .await
        .unwrap()
    else {
        panic!("the parent starts");
    };
    let children = [
        names::child_run_name(&parent, "summarize", 1),
        names::child_run_name(&parent, "draft", 1),
    ];
    for (child, flow) in children.iter().zip(["summarize", "draft"]) {
        let key = format!("spawn:{flow}");
        cairn_engine::runner::spawn_child(&mut conn, &attempt, &key, child, flow, &json!("in"))
            .await
            .unwrap();
    }
    drop(conn);
    // The parent's pod runs.
    let running = json!({ "phase": "Running", "containerStatuses": [{ "name": "flow",
        "ready": true, "restartCount": 0, "image": "localhost/agent:dev", "imageID": DIGEST,
        "state": { "running": {} } }] });
    let pods = vec![pod(id, 1, running)];
    let scope = scope_with(case.scope.ctx.clone(), pods, &flows, &profiles);
    let case = Case { scope, ..case };
    case.reconcile(run).await.unwrap();

    let (summarize, draft) = (&children[0], &children[1]);
    assert_eq!(
        case.api.lines(),
        [
            format!("PATCH {RUNS}/{summarize}"),
            format!("PATCH {RUNS}/{draft}"),
            format!("PATCH {RUNS}/{parent}/status"),
        ]
    );
    let made = case.api.body_of(&format!("PATCH {RUNS}/{summarize}"));
    let meta = &made["metadata"];
    let label = meta["labels"]["cairn.dev/parent"].as_str().unwrap();
    assert_eq!(label, names::label_value(&parent));
    assert!(
        label.len() <= 63 && parent.starts_with(&label[..40]),
        "{label}"
    );
    assert_eq!(meta["annotations"]["cairn.dev/parent"], json!(parent));
    // The label selector `kubectl` and the tests use selects it.
    assert_eq!(
        cairn_crds::parent_selector(&parent),
        format!("cairn.dev/parent={label}")
    );
    let spec = &made["spec"];
    assert_eq!(spec["image"], DIGEST, "the parent's pinned digest");
    assert_eq!(spec["flow"], "summarize");
    assert_eq!(spec["profile"], "gpu");
    assert_eq!(spec["serviceAccountName"], "agents");
    assert_eq!(spec["imagePullSecrets"], json!([{ "name": "registry" }]));
    assert_eq!(
        spec["env"],
        json!([{ "name": "MODEL", "value": "big" }, { "name": "TOPIC", "value": "durable" }])
    );
    // Its own Flow's settings win where it sets them; the rest is the parent's.
    let spec = &case.api.body_of(&format!("PATCH {RUNS}/{draft}"))["spec"];
    assert_eq!(spec["profile"], "small");
    assert_eq!(spec["serviceAccountName"], "agents");
    assert_eq!(spec["imagePullSecrets"], json!([{ "name": "registry" }]));
    assert_eq!(
        spec["env"],
        json!([{ "name": "TOPIC", "value": "durable" }, { "name": "MODEL", "value": "small" }])
    );
}

/// The longest valid FlowRun name launches a pod whose name fits a hostname, carrying the
/// run's own service account and pull secrets.
#[tokio::test]
async fn a_run_with_the_longest_name_launches_a_pod_with_a_valid_name() {
    let name = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    assert_eq!(name.len(), 253);
    let run = flowrun(json!({
        "metadata": { "name": name },
        "spec": { "serviceAccountName": "agents", "imagePullSecrets": [{ "name": "registry" }] },
    }));
    let case = case(&run, vec![]).await;
    case.reconcile(run).await.unwrap();

    let pod = case.api.body_of("POST /api/v1/namespaces/team-a/pods");
    let pod_name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(pod_name, cairn_engine::names::pod_name(&name, 1));
    assert!(
        pod_name.len() <= 63 && pod_name.ends_with("-a1"),
        "{pod_name}"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "agents");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{ "name": "registry" }])
    );
    let status = case.api.body_of(&format!("PATCH {RUNS}/{name}/status"))["status"].clone();
    assert_eq!(status["pod"], json!(pod_name));
}

/// A scope whose caches hold `pods`, `flows` and `profiles`.
fn scope_with(
    ctx: Arc<Context>,
    pods: Vec<Pod>,
    flows: &[cairn_crds::Flow],
    profiles: &[cairn_crds::ResourceProfile],
) -> Arc<Scope> {
    let (flow_store, mut flow_writer) = reflector::store();
    for flow in flows {
        flow_writer.apply_watcher_event(&watcher::Event::Apply(flow.clone()));
    }
    let (profile_store, mut profile_writer) = reflector::store();
    for profile in profiles {
        profile_writer.apply_watcher_event(&watcher::Event::Apply(profile.clone()));
    }
    Arc::new(Scope {
        flows: flow_store,
        profiles: profile_store,
        ..Arc::into_inner(scope(ctx, pods)).unwrap()
    })
}
