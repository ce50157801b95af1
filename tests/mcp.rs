//! `cairn mcp` (issue 18) driven by a real MCP client nobody here wrote: the official Python
//! SDK (`tests/mcp/scenario.py`) runs the example agent through the tools, as an agent would:
//! start it, poll it until it waits for its person, see an answer failing the wait's schema
//! refused, answer it, poll until it succeeds, read it as a resource, read its logs. Locally
//! (`--dev`), over stdio at the 2025-11-25 protocol and over streamable HTTP at the current
//! one, where a request without the bearer token is refused. The cluster's twin is in
//! `tests/e2e/tests/kubectl_cairn_mcp.rs`.

use std::process::{Output, Stdio};
use std::time::Duration;

use cairn_tests::cli::dev_server;
use cairn_tests::{EffectLog, PATIENCE, TestDb, built_binary, cairn_cli, free_port, mcp_python};
use serde_json::json;
use tokio::process::Command;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mcp/scenario.py");

/// A command with the environment `cairn` needs for this test's database and home.
fn with_test_env(mut command: Command, db: &TestDb, log: &EffectLog) -> Command {
    command
        .env("CAIRN_DATABASE_URL", &db.url)
        .env("CAIRN_HOME", db.dir.join("cairn-home"))
        .env("CAIRN_TEST_LOG", &log.path)
        .env("CAIRN_EXAMPLE_LLM_MS", "5")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs the scenario with `args`; fails showing what it and the dev server said.
async fn scenario(db: &TestDb, log: &EffectLog, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = with_test_env(Command::new(mcp_python()), db, log);
    command.arg(SCENARIO).args(args).envs(env.iter().copied());
    let output = tokio::time::timeout(PATIENCE * 2, command.output())
        .await
        .expect("the MCP scenario did not end in time")
        .expect("cannot run the MCP scenario");
    let server_log = db.dir.join("cairn-home/server/server.log");
    assert!(
        output.status.success(),
        "the MCP client's scenario failed:\n{}\n{}\nthe dev server's log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(&server_log).unwrap_or_default()
    );
    output
}

#[tokio::test]
async fn an_mcp_client_runs_the_example_over_stdio() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let _server = dev_server(&db);
    let agent = built_binary("agent");
    let server = json!([cairn_cli(), "mcp", "--dev", "--binary", agent]);
    let output = scenario(
        &db,
        &log,
        &[
            "--server",
            &server.to_string(),
            "--name",
            "over-stdio",
            "--mode",
            "legacy",
        ],
        &[],
    )
    .await;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("\"over-stdio\""), "{report}");
}

#[tokio::test]
async fn an_mcp_client_runs_the_example_over_http_with_a_token() {
    let db = TestDb::unmigrated().await;
    let log = db.log("effects");
    let _server = dev_server(&db);
    let agent = built_binary("agent");
    let port = free_port();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut mcp = with_test_env(Command::new(cairn_cli()), &db, &log);
    mcp.args([
        "mcp",
        "--dev",
        "--binary",
        agent.to_str().unwrap(),
        "--http",
        &addr,
    ])
    .env("CAIRN_MCP_TOKEN", &token)
    .stdout(Stdio::null())
    // A file, not a pipe nobody reads while it runs.
    .stderr(std::fs::File::create(db.dir.join("mcp.log")).unwrap());
    let mut mcp = mcp.spawn().expect("cannot start cairn mcp --http");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if let Some(status) = mcp.try_wait().unwrap() {
            let log = std::fs::read_to_string(db.dir.join("mcp.log")).unwrap_or_default();
            panic!("cairn mcp exited ({status}): {log}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cairn mcp never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://{addr}/mcp");
    scenario(
        &db,
        &log,
        &["--url", &url, "--name", "over-http"],
        &[("CAIRN_MCP_TOKEN", &token)],
    )
    .await;
    // SIGTERM: it stops.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mcp.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(PATIENCE, mcp.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "cairn mcp --http ended {status} on SIGTERM"
    );
}

/// The commands the skill file for coding agents shows (`skills/cairn/SKILL.md`) exist with the
/// flags it gives them: each line of its shell blocks that runs `cairn` (or `kubectl cairn`, the
/// same binary) is run with `--help` appended, which parses every subcommand and flag before it
/// and exits 0, while an unknown one exits 2. So the file cannot rot.
#[test]
fn the_skill_files_commands_parse() {
    let skill = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../skills/cairn/SKILL.md"
    ))
    .unwrap();
    let bin = cairn_cli().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut in_shell = false;
    let mut checked = 0;
    for line in skill.lines() {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        let command = line.split(" #").next().unwrap().trim();
        let Some(args) = command
            .strip_prefix("kubectl cairn ")
            .or_else(|| command.strip_prefix("cairn "))
            .filter(|_| in_shell)
        else {
            continue;
        };
        let output = std::process::Command::new("sh")
            .args(["-c", &format!("cairn {args} --help")])
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the skill file's `{command}` does not parse: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} commands found in the skill file"
    );
}
