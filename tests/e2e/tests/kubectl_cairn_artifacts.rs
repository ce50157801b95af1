//! Artifacts on the cluster (issue 17): the operator hands flow pods the cluster's S3 server
//! (s3s-fs) through their runner Secret; a step result over the offload size goes there and
//! its checkpoint row keeps a reference; an object stored with `ctx.artifact` is listed and
//! downloaded with `kubectl cairn artifacts`, through the read API; and once the run's FlowRun
//! is deleted, retention deletes its objects from the store.

use std::path::PathBuf;

use cairn_e2e::Scenario;
use serde_json::json;

use crate::kubectl_cairn::{Plugin, expect, json_of};

const REPORT: &str = "the report an agent wrote, kept in object storage\n";

/// The operator's flags that give it the cluster's S3 server (objects under the namespace).
pub(crate) fn operator_flags(sc: &Scenario) -> Vec<String> {
    [
        "--artifacts-url",
        &format!("s3://{}/{}", sc.setup.cluster.s3.bucket, sc.ns),
        "--artifact-offload-bytes",
        "65536",
        "--artifact-grace",
        "10s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The runs: one whose 1 MB result is offloaded, one that stores a report on purpose.
pub(crate) async fn create(sc: &Scenario) -> anyhow::Result<()> {
    for (flow, name) in [("big_result", "big-result"), ("stores_artifact", "stores")] {
        sc.create::<cairn_crds::Flow>(json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": name },
            "spec": { "image": sc.setup.flows_image.name, "flow": flow },
        }))
        .await?;
    }
    cairn_e2e::flows::run_of(sc, "big", "big-result", json!({ "mb": 1 })).await?;
    let items = json!({ "items": [{ "name": "report.txt", "text": REPORT }] });
    cairn_e2e::flows::run_of(sc, "stored", "stores", items).await?;
    Ok(())
}

/// Where the S3 server keeps the object of `digest` of this namespace.
fn object_path(sc: &Scenario, digest: &str) -> PathBuf {
    let s3 = &sc.setup.cluster.s3;
    let hex = digest.trim_start_matches("sha256:");
    s3.data
        .join(&s3.bucket)
        .join(&sc.ns)
        .join(&sc.ns)
        .join("sha256")
        .join(hex)
}

pub(crate) async fn check(sc: &mut Scenario) -> anyhow::Result<()> {
    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);
    for run in ["big", "stored"] {
        let got = kc(
            sc,
            &["wait", run, "--for", "succeeded", "--timeout", "240s"],
        );
        expect(sc, &format!("{run} succeeds"), &got, 0, &[]);
    }
    let result = sc.status("big").await.result.unwrap_or_default();
    sc.check(
        "the 1 MB result comes back whole",
        result["len"] == json!(1 << 20),
        format!("result {result}"),
    );
    let row = sc
        .count(
            "SELECT pg_column_size(s.result)::bigint FROM cairn.steps s JOIN cairn.runs r ON r.id = s.run_id \
             WHERE r.name = 'big' AND s.key = 'big'",
        )
        .await?;
    sc.check(
        "its checkpoint row holds a reference only",
        row > 0 && row < 1024,
        format!("{row} bytes"),
    );
    let got = kc(sc, &["inspect", "big"]);
    expect(
        sc,
        "inspect shows the step's result is in the artifact store",
        &got,
        0,
        &["<artifact: 1084 kB, application/json>"],
    );
    let got = kc(sc, &["artifacts", "big", "-o", "json"]);
    let listed = json_of(&got);
    let digest = listed["items"][0]["digest"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let object = object_path(sc, &digest);
    sc.check(
        "artifacts lists the offloaded result, kept in S3 under the namespace",
        listed["items"][0]["name"] == "big" && object.is_file(),
        format!(
            "{listed}; {} exists: {}",
            object.display(),
            object.is_file()
        ),
    );

    let got = kc(sc, &["artifacts", "stored"]);
    expect(
        sc,
        "artifacts lists what the flow stored",
        &got,
        0,
        &["report.txt", "artifact:report.txt", "text/plain"],
    );
    let file = sc.dir.join("report.txt");
    let got = kc(
        sc,
        &[
            "artifacts",
            "stored",
            "get",
            "report.txt",
            "-f",
            &file.to_string_lossy(),
        ],
    );
    let downloaded = std::fs::read_to_string(&file).unwrap_or_default();
    sc.check(
        "artifacts get downloads it through the read API",
        got.rc == 0 && downloaded == REPORT,
        format!("exit {}: {}; file holds {downloaded:?}", got.rc, got.out),
    );
    let got = kc(sc, &["artifacts", "stored", "get", "nope"]);
    expect(
        sc,
        "artifacts get of an unknown name: exit 2, naming what there is",
        &got,
        2,
        &[r#"has no artifact "nope""#, "report.txt"],
    );

    // Retention: the FlowRun deleted, its run is forgotten, then its objects go.
    if let Err(why) = sc.delete_and_wait::<cairn_crds::FlowRun>("big", 60).await {
        sc.fail("the FlowRun big is deleted", why);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while object.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    sc.check(
        "once the run is deleted, retention deletes its object from S3",
        !digest.is_empty() && !object.exists(),
        format!("{} still exists", object.display()),
    );
    Ok(())
}
