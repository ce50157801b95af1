//! `cairn mcp` on the real cluster (issue 18): the official MCP Python SDK launches
//! `kubectl cairn mcp` over stdio, on the scenario's kube context, and runs the example through
//! its tools as an agent would (`tests/mcp/scenario.py`, the same scenario as the local test):
//! it starts a FlowRun of the Flow `research`, polls it until it waits for its person, sees an
//! answer failing the wait's schema refused, answers it, polls until it succeeds, and reads it
//! back through the read API as a tool result and as a resource, and its pods' logs.

use std::time::Duration;

use cairn_e2e::Scenario;
use serde_json::json;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../mcp/scenario.py");

/// Runs the scenario against the Flow `research` of the kubectl_cairn scenario (whose read API
/// is registered).
pub(crate) async fn drive(sc: &mut Scenario) -> anyhow::Result<()> {
    let server = json!(["kubectl", "cairn", "mcp", "-n", sc.ns]);
    let mut command =
        tokio::process::Command::from(sc.setup.cluster.command(cairn_tests::mcp_python()));
    command
        .arg(SCENARIO)
        .args([
            "--server",
            &server.to_string(),
            "--name",
            "over-mcp",
            "--namespace",
            &sc.ns,
        ])
        .env("PATH", sc.setup.plugin_path())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output()).await;
    let (passed, said) = match output {
        Err(_) => (
            false,
            "the MCP scenario did not end within 600 s".to_owned(),
        ),
        Ok(output) => {
            let output = output?;
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.success(), said)
        }
    };
    let name = "an MCP client (the official Python SDK) runs the example through kubectl cairn mcp";
    if passed {
        sc.check(name, true, "");
    } else {
        sc.fail_explained(name, said, "over-mcp").await;
    }
    Ok(())
}
