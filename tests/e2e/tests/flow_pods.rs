//! What flow pods offer flow code on the real cluster, under the restricted Pod Security
//! Standard: a writable /tmp (the root filesystem stays read-only).

use cairn_crds::FlowRun;
use cairn_e2e::{Phase, Scenario};
use serde_json::json;

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn flow_code_can_write_to_tmp_under_the_restricted_standard() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("tmp").await?;
    let (rc, _, err) = sc.kubectl(
        &[
            "label",
            "namespace",
            &sc.ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    anyhow::ensure!(rc == 0, "labelling the namespace restricted: {err}");
    // The example agent appends every model call to its ledger file; one it cannot write says
    // so in its log ("cannot append to the ledger ...: Read-only file system").
    sc.create::<FlowRun>(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": { "name": "scratch" },
        "spec": {
            "image": sc.setup.image.name, "flow": "summarize",
            "input": { "topic": "disks", "subtopic": "scratch space" },
            "env": [{ "name": "CAIRN_EXAMPLE_LEDGER", "value": "/tmp/ledger" }],
        },
    }))
    .await?;
    let name = "a flow writes its files to /tmp, in a pod the restricted standard admits";
    let written = match sc.wait_phase("scratch", Phase::Succeeded, 120).await {
        // The runner's last line; the ledger's complaint, if any, came before it.
        Ok(_) => sc.wait_run_log("scratch", "flow returned", 60).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(pod) => {
            let log = sc.log_of(&pod).await;
            sc.check(
                name,
                !log.contains("cannot append to the ledger"),
                format!("the flow could not write /tmp/ledger: {log}"),
            );
        }
        Err(e) => sc.fail_explained(name, e, "scratch").await,
    }
    sc.finish();
    Ok(())
}
