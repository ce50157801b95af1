//! `kubectl cairn` on the real cluster: the static cairn installed as the kubectl plugin
//! `kubectl-cairn` on PATH, run through kubectl itself, against runs in every phase (waiting,
//! succeeded, failed, cancelled, retried). An operator of the scenario's own runs them, on a free
//! port at the node address; the read API is reached with --api-url (CAIRN_API_URL), and once
//! through the API server's service proxy (a Service in front of the host operator).

use std::time::{Duration, Instant};

use cairn_e2e::Scenario;

use crate::kubectl_cairn_writes;
use cairn_e2e::cluster::NODE_IP;
use k8s_openapi::api::core::v1::{Pod, Service};
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
    pub(crate) api: String,
}

impl Plugin<'_> {
    /// `kubectl cairn ARGS -n NS` with CAIRN_API_URL set to the operator.
    pub(crate) fn kc(&self, args: &[&str]) -> Kc {
        self.run(args, &[("CAIRN_API_URL", &self.api)])
    }

    /// The same without CAIRN_API_URL: the plugin finds the read API itself.
    fn kc_proxied(&self, args: &[&str]) -> Kc {
        self.run(args, &[("CAIRN_API_URL", "")])
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Kc {
        let mut all = vec!["cairn"];
        all.extend(args);
        all.extend(["-n", &self.sc.ns]);
        let mut env = env.to_vec();
        env.extend([
            ("NO_COLOR", "1"),
            ("CAIRN_OPERATOR_NAMESPACE", ""),
            ("CAIRN_OPERATOR_SERVICE", ""),
        ]);
        let (rc, stdout, stderr) = self.sc.kubectl_env(&all, None, &env);
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
    Ok(())
}

/// The operator's Service, as the chart would make it, in front of the host operator. The API
/// server proxies only to endpoints backed by a pod with that address: a host-network pod on the
/// node has the node's address, so a Service selecting it reaches the operator's port there.
async fn operator_service(sc: &Scenario, port: u16) -> anyhow::Result<()> {
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
                  "ports": [{ "name": "http", "port": 80, "targetPort": port, "protocol": "TCP" }] },
    }))
    .await?;
    let _ = sc
        .wait_pod("operator-stand-in", "be ready", 60, |p| {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
    // Until the proxy reaches it (endpoints take a moment to follow the pod).
    let path = format!(
        "/api/v1/namespaces/{}/services/cairn-operator:http/proxy/livez",
        sc.ns
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sc.kubectl_env(&["get", "--raw", &path], None, &[]).0 != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn kubectl_cairn_on_runs_in_every_phase() -> anyhow::Result<()> {
    let mut sc = Scenario::new("kubectl-cairn").await?;
    // At the node address: the API server's service proxy never proxies to loopback.
    let listen = cairn_e2e::operator::free_addr(NODE_IP)?;
    let op = sc.start_operator(listen, &[]).await?;
    sc.operators[op].wait_ready(Duration::from_secs(60)).await?;
    let api = format!("http://{listen}");
    let ns = sc.ns.clone();

    let name = "kubectl finds the plugin";
    let (_, plugins, err) = sc.kubectl_env(&["plugin", "list"], None, &[]);
    let plugin = sc.setup.plugin_dir.join("kubectl-cairn");
    sc.check(
        name,
        plugins.contains(&*plugin.to_string_lossy()),
        format!("expected {} listed; saw {plugins}{err}", plugin.display()),
    );

    create_runs(&sc).await?;
    let kc = |sc: &Scenario, args: &[&str]| {
        Plugin {
            sc,
            api: api.clone(),
        }
        .kc(args)
    };

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

    operator_service(&sc, listen.port()).await?;
    let plugin = Plugin {
        sc: &sc,
        api: api.clone(),
    };
    let via_proxy = plugin.kc_proxied(&["inspect", "asks", "--operator-namespace", &ns]);
    let no_api = plugin.kc_proxied(&[
        "inspect",
        "asks",
        "--operator-namespace",
        &ns,
        "--operator-service",
        "nothing-here",
    ]);
    expect(
        &mut sc,
        "inspect reaches the read API through the API server's service proxy",
        &via_proxy,
        0,
        &["Question:", "STEP", "fake-llm-1", "asks-a1"],
    );
    expect(
        &mut sc,
        "inspect without the read API shows the status and says why the rest is missing",
        &no_api,
        0,
        &[
            "Phase:     Waiting",
            "Question:",
            "warning: steps, attempts and costs are not shown",
            "nothing-here",
        ],
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

    // --- the read API itself
    let name = "the read API lists runs by phase and refuses other namespaces with a JSON 404";
    let listed = cairn_tests::http_get(
        listen,
        &format!("/api/v1/namespaces/{ns}/runs?phase=failed"),
    )
    .await;
    let listed = listed.map(|a| run_names(&serde_json::from_str(&a.body).unwrap_or_default()));
    let other = cairn_tests::http_get(listen, "/api/v1/namespaces/default/runs").await;
    let (other_status, other_body) = other.map_or((0, String::new()), |a| (a.status, a.body));
    let other_error = serde_json::from_str::<Value>(&other_body).map(|v| at(&v, "/error"));
    sc.check(
        name,
        listed.as_deref() == Some("crashy,wrong-input")
            && other_status == 404
            && other_error
                .as_ref()
                .is_ok_and(|e| e.contains("not managed")),
        format!(
            "expected crashy,wrong-input and a 404 saying \"not managed\"; listed {listed:?}, \
             other namespace: {other_status} {other_body}"
        ),
    );

    kubectl_cairn_writes::approve_and_emit(&mut sc, &api).await?;
    kubectl_cairn_writes::cancel_and_retry(&mut sc, &api).await?;

    // What it looked like, for people reading the log.
    for (title, shown) in [
        ("kubectl cairn runs (while runs waited)", &runs_table.out),
        ("kubectl cairn inspect asks (waiting)", &inspect_waiting.out),
    ] {
        println!("--- {title} ---\n{shown}");
    }
    sc.finish();
    Ok(())
}
