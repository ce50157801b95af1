//! The web console (issue 18) in a real browser: `cairn dev dashboard` over a real Postgres,
//! runs carried on by a real `cairn dev` server, Debian's headless Chromium driven over
//! WebDriver. A person finds the example run in the list, opens it, sees its steps, its cost
//! chart and its question; a payload failing the question's schema is refused (in the browser
//! where HTML can tell, by the server where it cannot), with its message; the answers go
//! through the generated form and the runs succeed on the open page, without a reload; a run
//! is forked and cancelled through the buttons; an execution's logs open. Screenshots go to
//! `target/screenshots/`. Tenancy on a cluster (RBAC) is the e2e's: here the console shows
//! its namespace unless asked for another.

use cairn_tests::browser::{
    click, count, fill, mark_page, not_reloaded, screenshot, select, text, validation_message,
    wait_text, with_browser,
};
use cairn_tests::cli::{cairn, dev_server, dev_wait, finish, last_line, stderr};
use cairn_tests::{EffectLog, PATIENCE, TestDb, built_binary};
use fantoccini::{Client, Locator};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const TEAM: &str = "team-a";
const OTHER: &str = "team-b";

/// `cairn dev dashboard` on a free port; its URL (with the session's token) is the first line
/// it prints. Its live views poll every 200 ms.
async fn start_console(db: &TestDb, log: &EffectLog) -> (Child, String) {
    let mut command = cairn(
        db,
        log,
        &["dev", "dashboard", "--listen", "127.0.0.1:0", "-n", TEAM],
    );
    command
        .env("CAIRN_CONSOLE_POLL_MS", "200")
        // The dev server it starts, and so the flows, say what they do: the logs to read.
        .env("RUST_LOG", "info")
        .env("CAIRN_EXAMPLE_LLM_MS", "5")
        .stderr(std::fs::File::create(db.dir.join("console.log")).unwrap());
    let mut console = command.spawn().expect("cannot start cairn dev dashboard");
    let mut line = String::new();
    let mut out = BufReader::new(console.stdout.take().unwrap());
    let read = tokio::time::timeout(PATIENCE, out.read_line(&mut line)).await;
    let said = std::fs::read_to_string(db.dir.join("console.log")).unwrap_or_default();
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0),
        "the console printed no URL: {said}"
    );
    let url = line.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (console, url)
}

/// `cairn dev run BINARY ARGS...`: it hands the run to the dev server and follows it to its
/// end.
fn start_run(db: &TestDb, log: &EffectLog, binary: &str, args: &[&str]) -> Child {
    let binary = built_binary(binary);
    let mut all = vec!["dev", "run", binary.to_str().unwrap()];
    all.extend(args);
    cairn(db, log, &all)
        .spawn()
        .expect("cannot start cairn dev run")
}

#[tokio::test]
async fn a_person_answers_and_steers_runs_in_a_real_browser() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let _server = dev_server(&db);
    // The console first: it starts the dev server that carries the runs on.
    let (console, url) = start_console(&db, &log).await;
    let topic = json!({ "topic": "consoles", "breadth": 2 }).to_string();
    let demo = start_run(
        &db,
        &log,
        "agent",
        &[
            "--flow",
            "research",
            "--name",
            "console-demo",
            "-n",
            TEAM,
            "--input",
            &topic,
        ],
    );
    let review = start_run(
        &db,
        &log,
        "test-flows",
        &["--flow", "review", "--name", "console-review", "-n", TEAM],
    );
    let other = start_run(
        &db,
        &log,
        "test-flows",
        &["--flow", "review", "--name", "elsewhere", "-n", OTHER],
    );
    // $0.50 spent of $0.30: it parks until its budget is raised.
    let steps = json!({ "before": [0.25, 0.25, 0.25] }).to_string();
    let thrifty = start_run(
        &db,
        &log,
        "test-flows",
        &[
            "--flow", "spender", "--name", "thrifty", "-n", TEAM, "--input", &steps, "--budget",
            "0.3",
        ],
    );
    for (ns, run) in [
        (TEAM, "console-demo"),
        (TEAM, "console-review"),
        (OTHER, "elsewhere"),
        (TEAM, "thrifty"),
    ] {
        dev_wait(&db, &log, ns, run, &["--for", "input"]).await;
    }

    let started = std::time::Instant::now();
    with_browser(&db.dir, move |c| async move {
        scenario(&c, &url, console).await
    })
    .await;

    eprintln!("the browser's scenario took {:?}", started.elapsed());
    // The runs ended as the browser said: the answers reached the flows.
    let demo = finish(demo).await;
    assert_eq!(demo.status.code(), Some(0), "{}", stderr(&demo));
    assert_eq!(last_line(&demo)["approved"], json!(false));
    let review = finish(review).await;
    assert_eq!(
        last_line(&review),
        json!({ "published": true, "by": "bob" }),
        "{}",
        stderr(&review)
    );
    let thrifty = finish(thrifty).await;
    assert_eq!(last_line(&thrifty), json!(0.75), "{}", stderr(&thrifty));
    let other = finish(other).await;
    assert_ne!(other.status.code(), Some(0), "elsewhere was cancelled");
}

async fn scenario(c: &Client, url: &str, console: Child) {
    let base = url.split_once("/?").expect("URL with a token").0.to_owned();

    // Without the token: no session. With it: a cookie, the token gone from the address bar.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.source().await.unwrap().contains("no console session"));
    c.goto(url).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().as_str(), format!("{base}/"));

    // The list: this namespace's runs, the example's children under it; not team-b's.
    wait_text(c, "tr[data-run=console-demo] .phase", |t| t == "Waiting").await;
    assert!(count(c, "tr[data-run^=console-demo-summarize]").await >= 2);
    assert_eq!(count(c, "tr[data-run=elsewhere]").await, 0);
    // Filtered by phase (a plain GET form): only the runs waiting.
    select(c, "select[name=phase]", "Waiting").await;
    click(c, ".filters button").await;
    wait_text(c, "#runs", |t| {
        t.contains("console-review") && !t.contains("console-demo-summarize")
    })
    .await;
    let filtered = c.current_url().await.unwrap();
    assert!(filtered.as_str().contains("phase=Waiting"), "{filtered}");
    screenshot(c, "console-list").await;

    // The example run: its steps, its cost chart, its question.
    click(c, "tr[data-run=console-demo] a").await;
    wait_text(c, "#wait .question", |t| t.contains("Publish the report")).await;
    let steps = text(c, "#steps").await;
    for step in ["plan", "spawn:summarize", "join", "draft"] {
        assert!(steps.contains(step), "{step} in {steps}");
    }
    assert!(
        count(c, "#chart svg circle").await >= 2,
        "a dot per costed step"
    );
    assert!(count(c, "#children li").await >= 2);

    // The richer question: the form follows its schema.
    c.goto(&format!("{base}/runs/{TEAM}/console-review"))
        .await
        .unwrap();
    wait_text(c, "#wait .question", |t| t.contains("Publish the draft")).await;
    // A step's output preview is text, never markup.
    assert!(text(c, "#steps").await.contains("<b>in bold</b>"));
    // Its artifact: listed, and served only as a download (never as the HTML it claims to be,
    // which would run in the console's origin).
    wait_text(c, "#artifacts", |t| {
        t.contains("draft.html") && t.contains("text/html")
    })
    .await;
    let download = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.querySelector('#artifacts a').href).then(async r => done([r.status,
                 r.headers.get('content-type'), r.headers.get('content-disposition'), await r.text()]))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(download[0], json!(200), "{download}");
    assert_eq!(download[1], json!("application/octet-stream"), "{download}");
    assert_eq!(
        download[2],
        json!("attachment; filename=\"draft.html\""),
        "{download}"
    );
    assert!(
        download[3].as_str().unwrap().contains("<b>draft</b>"),
        "{download}"
    );

    // 1. Refused in the browser: the schema's pattern; nothing is sent.
    click(c, "input[data-path='/approve'][value=true]").await;
    fill(c, "#f-reviewer", "Bob").await;
    select(c, "#f-channel", "slack").await;
    fill(c, "#f-budget", "100").await;
    click(c, "#send").await;
    let refused = validation_message(c, "#f-reviewer").await;
    assert!(refused.contains("pattern ^[a-z]+$"), "{refused}");
    let sent = c
        .find(Locator::Css("#result"))
        .await
        .unwrap()
        .attr("data-sent")
        .await;
    assert_eq!(sent.unwrap(), None, "nothing was sent");
    // 2. Refused by the server: exclusiveMaximum, which HTML cannot express. The message says
    //    what and where.
    fill(c, "#f-reviewer", "bob").await;
    click(c, "#send").await;
    let refused = wait_text(c, "#result", |t| !t.is_empty()).await;
    assert!(
        refused.contains("does not match the question's schema") && refused.contains("/budget"),
        "{refused}"
    );
    screenshot(c, "console-refused").await;
    // 3. A valid answer; the run goes on and succeeds on this very page.
    mark_page(c).await;
    fill(c, "#f-budget", "42.5").await;
    click(c, "#send").await;
    wait_text(c, "#result", |t| t.contains("approved")).await;
    wait_text(c, "#phase", |t| t == "Succeeded").await;
    wait_text(c, "#steps", |t| t.contains("publish")).await;
    assert_eq!(text(c, "#wait").await, "", "the question is gone");
    assert!(not_reloaded(c).await, "the page updated itself");
    screenshot(c, "console-run").await;

    // Fork it from its draft: the buttons ask first (confirm()).
    click(c, "tr[data-step=draft] button.steer").await;
    assert!(
        c.get_alert_text()
            .await
            .unwrap()
            .starts_with("Fork console-review")
    );
    c.accept_alert().await.unwrap();
    wait_text(c, "#result", |t| t.contains("console-review-fork-")).await;

    // An answer to another question than the one asked now (a page left open) is refused.
    let stale = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/runs/team-a/console-demo/answer?event=approve-yesterday', {
                 method: 'POST', headers: { 'Content-Type': 'application/json' }, body: 'true' })
               .then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stale, json!(409));

    // The example run, answered `no` with the radios.
    c.goto(&format!("{base}/runs/{TEAM}/console-demo"))
        .await
        .unwrap();
    click(c, "input[data-path=''][value=false]").await;
    click(c, "#send").await;
    wait_text(c, "#phase", |t| t == "Succeeded").await;
    // An execution's logs, fetched when opened.
    click(c, "#attempts details.logs summary").await;
    wait_text(c, "#attempts details.logs pre", |t| {
        t.contains("entering flow")
    })
    .await;

    // A run parked at its budget: raised through its form, it goes on and succeeds.
    c.goto(&format!("{base}/runs/{TEAM}/thrifty"))
        .await
        .unwrap();
    wait_text(c, "#wait", |t| {
        t.contains("spent $0.5000 of its $0.3000 budget")
    })
    .await;
    fill(c, "#budget-usd", "0.4").await;
    click(c, "#budget button").await;
    let refused = wait_text(c, "#result", |t| !t.is_empty()).await;
    assert!(
        refused.contains("0.5"),
        "a budget below what was spent: {refused}"
    );
    fill(c, "#budget-usd", "2").await;
    click(c, "#budget button").await;
    wait_text(c, "#phase", |t| t == "Succeeded").await;

    // Another namespace, asked for by name; cancelled, live on its list.
    c.goto(&format!("{base}/?namespace={OTHER}")).await.unwrap();
    mark_page(c).await;
    wait_text(c, "tr[data-run=elsewhere] .phase", |t| t == "Waiting").await;
    let cancelled = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/runs/team-b/elsewhere/cancel', { method: 'POST',
                 headers: { 'Content-Type': 'application/json' }, body: 'null' })
               .then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cancelled, json!(200));
    wait_text(c, "tr[data-run=elsewhere] .phase", |t| t == "Cancelled").await;
    assert!(not_reloaded(c).await, "the list updated itself");

    // SIGTERM while this page holds a live stream open: the console ends it, and stops.
    cairn_tests::sigterm(console.id().expect("the console's pid"));
    let stopped = finish(console).await;
    assert!(stopped.status.success(), "the console stopped: {stopped:?}");
}
