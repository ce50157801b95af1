//! `kubectl cairn dashboard` on the real cluster (issue 18), in Debian's headless Chromium:
//! the console acts with its user's credentials, so Kubernetes RBAC decides what each person
//! sees. A user who may read this namespace's FlowRuns (`e2e-alice`, bound by
//! `read_api_under_rbac`) sees the waiting run, its steps and question (through the read API);
//! another tenant's namespace, and the cluster-wide list, are refused with the API server's
//! reason. An admin's console shows that tenant's run, so only RBAC hid it.

use std::panic::AssertUnwindSafe;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_crds::FlowRun;
use cairn_e2e::Scenario;
use cairn_tests::browser::{Client, click, screenshot, text, wait_text, with_browser};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// `kubectl cairn dashboard -n NS [--as USER]` on a free loopback port, and its URL.
async fn dashboard(sc: &Scenario, user: Option<&str>) -> anyhow::Result<(Child, String)> {
    let log = sc
        .dir
        .join(format!("dashboard-{}.log", user.unwrap_or("admin")));
    let mut command = tokio::process::Command::from(sc.setup.cluster.command("kubectl"));
    command
        .args([
            "cairn",
            "dashboard",
            "--listen",
            "127.0.0.1:0",
            "-n",
            &sc.ns,
        ])
        .env("PATH", sc.setup.plugin_path())
        .env("CAIRN_CONSOLE_POLL_MS", "500")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    if let Some(user) = user {
        command.args(["--as", user]);
    }
    let mut console = command.spawn()?;
    let mut line = String::new();
    let mut out = BufReader::new(console.stdout.take().expect("piped"));
    let read = tokio::time::timeout(Duration::from_secs(60), out.read_line(&mut line)).await;
    anyhow::ensure!(
        matches!(read, Ok(Ok(_))) && line.starts_with("http://127.0.0.1:"),
        "kubectl cairn dashboard printed no URL ({line:?}); it said: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Ok((console, line.trim().to_owned()))
}

/// Runs after `read_api_under_rbac`, while `asks` waits for its approval.
pub(crate) async fn tenants(sc: &mut Scenario) -> anyhow::Result<()> {
    // Another tenant: a namespace of its own with a FlowRun in it.
    let other = format!("{}-other", sc.ns);
    let namespaces: Api<Namespace> = Api::all(sc.client.clone());
    let namespace = serde_json::from_value(json!({ "metadata": { "name": other } }))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    let neighbour = serde_json::from_value(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowRun",
        "metadata": { "name": "neighbour" },
        "spec": { "flowRef": "research", "input": { "topic": "private" } },
    }))?;
    Api::<FlowRun>::namespaced(sc.client.clone(), &other)
        .create(&PostParams::default(), &neighbour)
        .await?;

    let (_alice, alice_url) = dashboard(sc, Some("e2e-alice")).await?;
    let (_admin, admin_url) = dashboard(sc, None).await?;
    let (ns, dir) = (sc.ns.clone(), sc.dir.clone());
    let seen = Arc::new(Mutex::new(Vec::<(String, bool, String)>::new()));
    let record = seen.clone();
    let other_ns = other.clone();
    // A failed step of the browser is a failed check; the other tenant goes either way.
    let browsed = AssertUnwindSafe(with_browser(&dir, move |c| async move {
        browse(&c, &alice_url, &admin_url, &ns, &other_ns, &record).await;
    }))
    .catch_unwind()
    .await;
    let _ = namespaces.delete(&other, &DeleteParams::default()).await;
    for (name, ok, shown) in seen.lock().unwrap().drain(..) {
        sc.check(&name, ok, shown);
    }
    if let Err(panic) = browsed {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        sc.fail("the console's browser session went through", why);
    }
    Ok(())
}

/// What each console shows: a check (name, passed, what was seen) recorded as each is made.
async fn browse(
    c: &Client,
    alice: &str,
    admin: &str,
    ns: &str,
    other: &str,
    checks: &Mutex<Vec<(String, bool, String)>>,
) {
    let base = |url: &str| {
        url.split_once("/?")
            .map(|(b, _)| b.to_owned())
            .unwrap_or_default()
    };
    let (alice_base, admin_base) = (base(alice), base(admin));

    c.goto(alice).await.expect("open alice's console");
    let row = wait_text(c, "tr[data-run=asks] .phase", |t| t == "Waiting").await;
    checks.lock().unwrap().push((
        "the console as a user who may read the namespace lists its waiting run".into(),
        row == "Waiting",
        row,
    ));
    c.goto(&format!("{alice_base}/runs/{ns}/asks"))
        .await
        .unwrap();
    let question = wait_text(c, "#wait", |t| t.contains("Publish the report")).await;
    let steps = text(c, "#steps").await;
    checks.lock().unwrap().push((
        "her console shows the run's steps and question through the read API".into(),
        steps.contains("plan") && steps.contains("fake-llm-1"),
        format!("{question}\n{steps}"),
    ));
    screenshot(c, "console-cluster-run").await;
    // She may read, not steer: the API server's refusal is shown, and the run still waits.
    click(c, "button.steer[data-action$='/cancel']").await;
    let asked = c.get_alert_text().await.unwrap_or_default();
    let _ = c.accept_alert().await;
    let refused = wait_text(c, "#result", |t| !t.is_empty()).await;
    checks.lock().unwrap().push((
        "her console cannot cancel the run: it shows the API server's refusal".into(),
        asked.starts_with("Cancel asks") && refused.contains("forbidden"),
        format!("{asked}\n{refused}"),
    ));

    for (what, path) in [
        ("another tenant's namespace", format!("/?namespace={other}")),
        ("another tenant's run", format!("/runs/{other}/neighbour")),
        ("every namespace", "/?namespace=".to_owned()),
    ] {
        c.goto(&format!("{alice_base}{path}")).await.unwrap();
        let said = text(c, "body").await;
        checks.lock().unwrap().push((
            format!("her console refuses {what}, saying why"),
            said.contains("forbidden") || said.contains("Forbidden"),
            said,
        ));
    }
    screenshot(c, "console-cluster-refused").await;

    c.goto(admin).await.expect("open the admin's console");
    c.goto(&format!("{admin_base}/?namespace={other}"))
        .await
        .unwrap();
    let listed = text(c, "#runs").await;
    checks.lock().unwrap().push((
        "an admin's console lists that tenant's run: only RBAC hid it".into(),
        listed.contains("neighbour"),
        listed,
    ));
    // Alice's session survived the admin's login on another port.
    c.goto(&format!("{alice_base}/")).await.unwrap();
    let list = text(c, "body").await;
    checks.lock().unwrap().push((
        "two consoles on one host keep their own sessions".into(),
        list.contains("asks"),
        list,
    ));
}
