//! A real browser for the web console's tests: Debian's headless Chromium, driven over
//! WebDriver (chromedriver) by fantoccini. `tests/install-deps.sh test` installs both.
//!
//! Any element inside a live part of a page can be replaced at any moment (a server-sent
//! update), so the helpers find elements again rather than hold them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use fantoccini::Client;
use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::{PATIENCE, free_port};

/// Chromium itself, not Debian's wrapper script (which adds flags from /etc/chromium.d).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// Runs `scenario` in a fresh browser session, which is closed whatever happened (killing
/// chromedriver alone would leave Chromium behind); chromedriver's log goes to `dir`.
pub async fn with_browser<F, Fut>(dir: &Path, scenario: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (_driver, url) = chromedriver(dir).await;
    let client = session(&url).await;
    let outcome = tokio::spawn(scenario(client.clone())).await;
    let _ = client.close().await;
    if let Err(failed) = outcome {
        std::panic::resume_unwind(failed.into_panic());
    }
}

/// chromedriver on a free loopback port (it accepts local connections only).
async fn chromedriver(dir: &Path) -> (Child, String) {
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: run `sudo tests/install-deps.sh test` (Debian's chromium and \
         chromium-driver), or set CAIRN_CHROMIUM"
    );
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg(format!(
            "--log-path={}",
            dir.join("chromedriver.log").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start chromedriver: run `sudo tests/install-deps.sh test`");
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, format!("http://127.0.0.1:{port}"))
}

/// Headless Chromium as CI runs it: as root in a container (no sandbox then), /tmp rather
/// than a small /dev/shm, no GPU, nothing fetched in the background.
async fn session(driver: &str) -> Client {
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--password-store=basic",
            ]
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object")
    };
    // Plain HTTP to the local chromedriver: no TLS stack.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver)
        .await
        .expect("cannot open a WebDriver session with Chromium")
}

/// The text of the element `css`, found now.
pub async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(e) => panic!("no {css} on {:?}: {e}", c.current_url().await.ok()),
    }
}

/// Polls the text of `css` until `want` holds; returns it.
pub async fn wait_text(c: &Client, css: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    loop {
        if let Ok(element) = c.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if want(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed what was expected; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finds and clicks `css`, again if a live update replaced it in between.
pub async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clicked = match c.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "cannot click {css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces what the field `css` holds by `value`.
pub async fn fill(c: &Client, css: &str, value: &str) {
    let field = c.find(Locator::Css(css)).await.expect(css);
    field.clear().await.expect("clear");
    field.send_keys(value).await.expect("send_keys");
}

/// Selects the option of `css` labelled `label`.
pub async fn select(c: &Client, css: &str, label: &str) {
    let field = c.find(Locator::Css(css)).await.expect(css);
    field.select_by_label(label).await.expect("select");
}

/// What the browser says is wrong with the field `css` (its constraint validation).
pub async fn validation_message(c: &Client, css: &str) -> String {
    let said = c
        .execute(
            "return document.querySelector(arguments[0]).validationMessage",
            vec![json!(css)],
        )
        .await
        .expect("validationMessage");
    said.as_str().unwrap_or_default().to_owned()
}

/// How many elements match `css` now.
pub async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css))
        .await
        .map_or(0, |all| all.len())
}

/// Marks the page, so that `not_reloaded` can tell a live update from a reload.
pub async fn mark_page(c: &Client) {
    c.execute("window.cairnTestMark = true", vec![])
        .await
        .expect("mark the page");
}

pub async fn not_reloaded(c: &Client) -> bool {
    c.execute("return window.cairnTestMark === true", vec![])
        .await
        .expect("read the mark")
        == json!(true)
}

/// Saves a screenshot as `target/screenshots/NAME.png` (for the notes) and returns its path.
pub async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let profile = crate::built_binary("cairn");
    let target = profile.ancestors().nth(2).expect("target/<profile>/cairn");
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write the screenshot");
    path
}
