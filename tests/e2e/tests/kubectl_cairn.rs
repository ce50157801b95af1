//! `kubectl cairn` on the real cluster: the static cairn installed as the kubectl plugin
//! `kubectl-cairn` on PATH, run through kubectl itself, against runs in every phase (waiting,
//! succeeded, failed, cancelled, retried). An operator of the scenario's own runs them, on free
//! ports at the node address, and serves the read API: the scenario registers it as the
//! aggregated API api.cairn.dev (an APIService and a Service in front of the host operator), so
//! `kubectl cairn inspect` and `kubectl get --raw` reach it through the API server, under RBAC.

use std::time::{Duration, Instant};

use cairn_e2e::Scenario;

use crate::kubectl_cairn_writes;
use cairn_e2e::cluster::NODE_IP;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::{Value, json};

/// The result of one `kubectl cairn` command.
pub(crate) struct Kc {
    pub(crate) rc: i32,
    /// stdout, then stderr
    pub(crate) out: String,
    pub(crate) stdout: String,
}

pub(crate) struct Plugin<'a> {
    pub(crate) sc: &'a Scenario,
}

impl Plugin<'_> {
    /// `kubectl cairn ARGS -n NS`.
    pub(crate) fn kc(&self, args: &[&str]) -> Kc {
        let mut all = vec!["cairn"];
        all.extend(args);
        all.extend(["-n", &self.sc.ns]);
        let (rc, stdout, stderr) = self.sc.kubectl_env(&all, None, &[("NO_COLOR", "1")]);
        Kc {
            rc,
            out: format!("{stdout}{stderr}"),
            stdout,
        }
    }
}

/// PASS when the command exited `rc` and printed every text.
pub(crate) fn expect(sc: &mut Scenario, name: &str, got: &Kc, rc: i32, texts: &[&str]) {
    let missing: Vec<&&str> = texts.iter().filter(|t| !got.out.contains(**t)).collect();
    sc.check(
        name,
        got.rc == rc && missing.is_empty(),
        format!(
            "expected exit {rc} and {texts:?}; exit {}, missing {missing:?}; output:\n{}",
            got.rc, got.out
        ),
    );
}

/// A JSON value at `pointer` as text ("null" when absent).
pub(crate) fn at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "null".into(),
    }
}

pub(crate) fn json_of(k: &Kc) -> Value {
    serde_json::from_str(&k.stdout).unwrap_or(Value::Null)
}

/// The sorted names of `runs -o json`'s runs.
fn run_names(v: &Value) -> String {
    let mut names: Vec<String> = v["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| at(r, "/name"))
        .collect();
    names.sort();
    names.join(",")
}

async fn create_runs(sc: &Scenario) -> anyhow::Result<()> {
    let image = &sc.setup.image.name;
    let flow = |name: &str, retry: i32, env: Value| {
        json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": name },
            "spec": { "image": image, "flow": "research",
                      "retry": { "maxAttempts": retry, "backoffSeconds": 1 }, "env": env },
        })
    };
    let fast = json!([{ "name": "CAIRN_EXAMPLE_LLM_MS", "value": "20" }]);
    sc.create::<cairn_crds::Flow>(flow("research", 3, fast))
        .await?;
    let crashing = json!([
        { "name": "CAIRN_EXAMPLE_CRASH_AT", "value": "plan" },
        { "name": "CAIRN_EXAMPLE_LEDGER", "value": "-" },
        { "name": "CAIRN_EXAMPLE_LLM_MS", "value": "20" },
    ]);
    sc.create::<cairn_crds::Flow>(flow("crashy", 1, crashing))
        .await?;
    let runs = [
        (
            "asks",
            "research",
            json!({ "topic": "kubectl plugins", "breadth": 2 }),
        ),
        (
            "emitted",
            "research",
            json!({ "topic": "events", "breadth": 1 }),
        ),
        (
            "to-cancel",
            "research",
            json!({ "topic": "cancelled work", "breadth": 1 }),
        ),
        (
            "wrong-input",
            "research",
            json!({ "subject": "not the field the flow wants" }),
        ),
        (
            "crashy",
            "crashy",
            json!({ "topic": "retries", "breadth": 1 }),
        ),
    ];
    for (name, flow, input) in runs {
        cairn_e2e::flows::run_of(sc, name, flow, input).await?;
    }
    crate::kubectl_cairn_outputs::create(sc).await?;
    crate::kubectl_cairn_artifacts::create(sc).await?;
    Ok(())
}

/// The read API as the chart registers it, in front of the host operator: its Service (ports
/// `http` and `https`) and the APIService v1alpha1.api.cairn.dev (deleted when the scenario
/// ends; only this scenario registers it). The API server reaches a Service's endpoints only
/// when a pod has their address: a host-network pod on the node has the node's address, so a
/// Service selecting it reaches the operator's ports there.
async fn register_read_api(
    sc: &mut Scenario,
    port: u16,
    api_port: u16,
    ca_bundle: &str,
) -> anyhow::Result<()> {
    sc.create::<Pod>(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "operator-stand-in", "labels": { "app": "cairn-operator-e2e" } },
        "spec": { "hostNetwork": true, "containers": [{
            "name": "pause", "image": "registry.k8s.io/pause:3.10", "imagePullPolicy": "IfNotPresent",
        }] },
    }))
    .await?;
    sc.create::<Service>(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": { "name": "cairn-operator" },
        "spec": { "selector": { "app": "cairn-operator-e2e" },
                  "ports": [{ "name": "http", "port": 80, "targetPort": port, "protocol": "TCP" },
                            { "name": "https", "port": 443, "targetPort": api_port, "protocol": "TCP" }] },
    }))
    .await?;
    let _ = sc
        .wait_pod("operator-stand-in", "be ready", 60, |p| {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
    // A leftover of an interrupted run would refuse the create.
    let _ = sc.kubectl_env(
        &[
            "delete",
            "apiservice",
            "v1alpha1.api.cairn.dev",
            "--ignore-not-found",
        ],
        None,
        &[],
    );
    let service: APIService = serde_json::from_value(json!({
        "metadata": { "name": "v1alpha1.api.cairn.dev" },
        "spec": { "group": "api.cairn.dev", "version": "v1alpha1", "groupPriorityMinimum": 1000,
                  "versionPriority": 15,
                  "service": { "name": "cairn-operator", "namespace": sc.ns, "port": 443 },
                  "caBundle": ByteString(ca_bundle.as_bytes().to_vec()) },
    }))?;
    sc.create_cluster_scoped(service).await?;
    let (rc, out, err) = sc.kubectl_env(
        &[
            "wait",
            "--for=condition=Available",
            "apiservice/v1alpha1.api.cairn.dev",
            "--timeout=90s",
        ],
        None,
        &[],
    );
    anyhow::ensure!(
        rc == 0,
        "the read API's APIService never became Available: {out}{err}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn kubectl_cairn_on_runs_in_every_phase() -> anyhow::Result<()> {
    let mut sc = Scenario::new("kubectl-cairn").await?;
    // At the node address: the API server never proxies to loopback.
    let listen = cairn_e2e::operator::free_addr(NODE_IP)?;
    let api_listen = cairn_e2e::operator::free_addr(NODE_IP)?;
    let ns = sc.ns.clone();
    let certs = sc.dir.join("api-tls");
    let ca_bundle =
        cairn_tests::tls::serving_certificate(&certs, &format!("cairn-operator.{ns}.svc"));
    let (cert, key) = (certs.join("tls.crt"), certs.join("tls.key"));
    let api_flags = [
        "--api-listen",
        &api_listen.to_string(),
        "--api-tls-cert",
        &cert.to_string_lossy(),
        "--api-tls-key",
        &key.to_string_lossy(),
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(crate::kubectl_cairn_artifacts::operator_flags(&sc))
    .collect::<Vec<_>>();
    let api_flags: Vec<&str> = api_flags.iter().map(String::as_str).collect();
    let op = sc.start_operator(listen, &api_flags).await?;
    sc.operators[op].wait_ready(Duration::from_secs(60)).await?;
    register_read_api(&mut sc, listen.port(), api_listen.port(), &ca_bundle).await?;

    let name = "kubectl finds the plugin";
    let (_, plugins, err) = sc.kubectl_env(&["plugin", "list"], None, &[]);
    let plugin = sc.setup.plugin_dir.join("kubectl-cairn");
    sc.check(
        name,
        plugins.contains(&*plugin.to_string_lossy()),
        format!("expected {} listed; saw {plugins}{err}", plugin.display()),
    );

    create_runs(&sc).await?;
    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);

    let got = kc(
        &sc,
        &[
            "wait",
            "asks",
            "--for",
            "waiting",
            "--event",
            "approve-asks",
            "--timeout",
            "240s",
        ],
    );
    expect(
        &mut sc,
        "wait --for waiting --event: asks waits for its approval",
        &got,
        0,
        &["asks is Waiting"],
    );
    let got = kc(
        &sc,
        &["wait", "crashy", "--for", "failed", "--timeout", "240s"],
    );
    expect(
        &mut sc,
        "wait --for failed: crashy failed after its only attempt crashed",
        &got,
        0,
        &["crashy is Failed"],
    );
    let got = kc(
        &sc,
        &[
            "wait",
            "wrong-input",
            "--for",
            "succeeded",
            "--timeout",
            "240s",
        ],
    );
    expect(
        &mut sc,
        "wait --for succeeded on a run that fails says it never will (exit 1)",
        &got,
        1,
        &[
            "wrong-input finished as Failed and will never be Succeeded",
            "topic",
        ],
    );
    for run in ["emitted", "to-cancel"] {
        let got = kc(&sc, &["wait", run, "--for", "waiting", "--timeout", "240s"]);
        if got.rc != 0 {
            sc.fail(&format!("wait for {run} to wait"), got.out);
        }
    }
    let got = kc(
        &sc,
        &["wait", "emitted", "--for", "sleeping", "--timeout", "2s"],
    );
    expect(
        &mut sc,
        "wait times out with exit 1, saying where the run is",
        &got,
        1,
        &[
            "timed out after 2s waiting for emitted to be Sleeping",
            "it is Waiting",
        ],
    );

    // --- runs
    let runs_table = kc(&sc, &["runs"]);
    expect(
        &mut sc,
        "runs: a table with phases, waits, costs and children under their parent",
        &runs_table,
        0,
        &[
            "NAME",
            "PHASE",
            "WAITING FOR",
            "event approve-asks",
            "└ asks-",
            "Failed",
            "Waiting",
            "$0.",
        ],
    );
    let got = kc(&sc, &["runs", "--phase", "failed", "-o", "json"]);
    let names = run_names(&json_of(&got));
    sc.check(
        "runs --phase failed -o json",
        got.rc == 0 && names == "crashy,wrong-input",
        format!(
            "expected crashy,wrong-input; exit {}, names {names:?}: {}",
            got.rc, got.out
        ),
    );
    let got = kc(&sc, &["runs", "--flow", "crashy", "-o", "json"]);
    let v = json_of(&got);
    let listed: Vec<String> = v["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}:{}:{}",
                at(r, "/name"),
                at(r, "/phase"),
                at(r, "/attempt")
            )
        })
        .collect();
    sc.check(
        "runs --flow",
        listed == ["crashy:Failed:1"],
        format!("expected [crashy:Failed:1]; saw {listed:?}: {}", got.out),
    );
    let got = kc(&sc, &["runs", "-A"]);
    expect(
        &mut sc,
        "runs -A shows the namespace",
        &got,
        0,
        &["NAMESPACE", &ns],
    );

    // --- inspect
    let inspect_waiting = kc(&sc, &["inspect", "asks"]);
    expect(
        &mut sc,
        "inspect: steps, costs, attempts, children and the question with its schema",
        &inspect_waiting,
        0,
        &[
            "Phase:     Waiting",
            "Question:  Publish the report on",
            r#""type":"boolean""#,
            "kubectl cairn approve asks",
            "STEP",
            "plan",
            "draft",
            "fake-llm-1",
            "TOKENS IN/OUT",
            "Totals:",
            "Attempts",
            "asks-a1",
            "suspended",
            "Children",
        ],
    );
    let got = kc(&sc, &["inspect", "asks", "-o", "json"]);
    let v = json_of(&got);
    let summary = format!(
        "{},{},{},{}",
        at(&v, "/flowRun/status/phase"),
        at(&v, "/detail/wait/event"),
        v.pointer("/detail/totals/usd")
            .and_then(Value::as_f64)
            .is_some_and(|u| u > 0.0),
        at(&v, "/detailError")
    );
    sc.check(
        "inspect -o json has the FlowRun and the detail",
        summary == "Waiting,approve-asks,true,null",
        format!(
            "expected Waiting,approve-asks,true,null; saw {summary:?}: {}",
            got.out
        ),
    );

    let not_found = format!("FlowRun \"nope\" not found in namespace \"{ns}\"");
    let got = kc(&sc, &["inspect", "nope"]);
    expect(
        &mut sc,
        "inspect of an unknown run: exit 2, naming the namespace",
        &got,
        2,
        &[&not_found],
    );

    read_api_under_rbac(&mut sc).await?;
    crate::kubectl_cairn_console::tenants(&mut sc).await?;
    crate::kubectl_cairn_outputs::step_outputs(&mut sc).await?;
    let forked = crate::kubectl_cairn_outputs::fork(&mut sc).await?;
    crate::kubectl_cairn_artifacts::check(&mut sc).await?;
    kubectl_cairn_writes::approve_and_emit(&mut sc).await?;
    kubectl_cairn_writes::cancel_and_retry(&mut sc).await?;
    crate::kubectl_cairn_mcp::drive(&mut sc).await?;

    let (rc, out, err) = sc.kubectl_env(
        &["delete", "apiservice", "v1alpha1.api.cairn.dev"],
        None,
        &[],
    );
    sc.check(
        "the read API's APIService is removed",
        rc == 0,
        format!("{out}{err}"),
    );
    let no_api = kc(&sc, &["inspect", "asks"]);
    expect(
        &mut sc,
        "inspect without the read API shows the status and says why the rest is missing",
        &no_api,
        0,
        &[
            "Phase:",
            "warning: steps, attempts and costs are not shown",
            "v1alpha1.api.cairn.dev",
        ],
    );

    // What it looked like, for people reading the log.
    for (title, shown) in [
        ("kubectl cairn runs (while runs waited)", &runs_table.out),
        ("kubectl cairn inspect asks (waiting)", &inspect_waiting.out),
        ("kubectl cairn fork, then inspect of the fork", &forked),
    ] {
        println!("--- {title} ---\n{shown}");
    }
    sc.finish();
    Ok(())
}

/// The read API through the API server, as three identities: the admin, a user who may read
/// FlowRuns here, and one who may not (both pass the API server's own gate on api.cairn.dev).
async fn read_api_under_rbac(sc: &mut Scenario) -> anyhow::Result<()> {
    let ns = sc.ns.clone();
    let raw = |sc: &Scenario, who: Option<&str>, path: &str| {
        let path = format!("/apis/api.cairn.dev/v1alpha1/namespaces/{path}");
        let mut args = vec!["get", "--raw", &path];
        if let Some(who) = who {
            args.extend(["--as", who]);
        }
        let (rc, out, err) = sc.kubectl_env(&args, None, &[]);
        (
            rc,
            format!("{out}{err}"),
            serde_json::from_str::<Value>(&out).ok(),
        )
    };
    let (_, listed, json) = raw(sc, None, &format!("{ns}/runs?phase=failed"));
    let (other_rc, other, _) = raw(sc, None, "default/runs");
    sc.check(
        "kubectl get --raw lists runs by phase, and refuses unmanaged namespaces with a 404",
        json.as_ref().map(run_names).as_deref() == Some("crashy,wrong-input")
            && other_rc != 0
            && other.contains("NotFound")
            && other.contains("not managed"),
        format!("listed: {listed}; other namespace: {other}"),
    );

    for (role, resources) in [("run-reader", true), ("api-only", false)] {
        let mut rules = vec![
            json!({ "apiGroups": ["api.cairn.dev"], "resources": ["runs"], "verbs": ["get", "list"] }),
        ];
        if resources {
            rules.push(json!({ "apiGroups": ["cairn.dev"], "resources": ["flowruns"], "verbs": ["get", "list"] }));
        }
        sc.create::<k8s_openapi::api::rbac::v1::Role>(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": role }, "rules": rules,
        }))
        .await?;
        let user = if resources { "e2e-alice" } else { "e2e-bob" };
        sc.create::<k8s_openapi::api::rbac::v1::RoleBinding>(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": role },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        }))
        .await?;
    }
    // RBAC takes effect within moments; the operator caches each answer for 10 s, so the
    // first asks may be retried only until the bindings are seen.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (alice_rc, alice, alice_json) = loop {
        let got = raw(sc, Some("e2e-alice"), &format!("{ns}/runs/asks"));
        if got.0 == 0 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    sc.check(
        "a user who may get the FlowRun reads its run through the read API",
        alice_rc == 0 && alice_json.is_some_and(|v| at(&v, "/run/name") == "asks"),
        format!("exit {alice_rc}: {alice}"),
    );
    let (bob_rc, bob, _) = raw(sc, Some("e2e-bob"), &format!("{ns}/runs/asks"));
    let (bob_list_rc, bob_list, _) = raw(sc, Some("e2e-bob"), &format!("{ns}/runs"));
    sc.check(
        "a user who may not get the FlowRun reads nothing (403 naming the right)",
        bob_rc != 0
            && bob.contains("Forbidden")
            && bob.contains("cannot get flowruns.cairn.dev \"asks\"")
            && bob_list_rc != 0
            && bob_list.contains("cannot list flowruns.cairn.dev"),
        format!("get: {bob}; list: {bob_list}"),
    );
    let inspected = Plugin { sc }.kc(&["inspect", "asks", "--as", "e2e-alice"]);
    expect(
        sc,
        "kubectl cairn inspect --as a user who may read shows the detail",
        &inspected,
        0,
        &["Question:", "STEP", "fake-llm-1"],
    );
    Ok(())
}
