//! What steps returned, through `kubectl cairn inspect` and the read API (issue 17): a preview
//! per step, the whole value by key, and a sensitive step's value nowhere, while the flow pod
//! sealed it with its namespace's step key (the operator's runner Secret carries it).

use cairn_e2e::Scenario;
use serde_json::json;

use crate::kubectl_cairn::{Plugin, expect, json_of};

/// The credential the run `secretive` keeps in its sensitive step.
pub(crate) const SECRET: &str = "sk-e2e-do-not-show-0123456789";

/// The Flow on the test flows' image and its run, made with the scenario's other runs.
pub(crate) async fn create(sc: &Scenario) -> anyhow::Result<()> {
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "secretive" },
        "spec": { "image": sc.setup.flows_image.name, "flow": "secretive" },
    }))
    .await?;
    cairn_e2e::flows::run_of(sc, "secretive", "secretive", json!({ "secret": SECRET })).await?;
    Ok(())
}

pub(crate) async fn step_outputs(sc: &mut Scenario) -> anyhow::Result<()> {
    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);
    let got = kc(
        sc,
        &[
            "wait",
            "secretive",
            "--for",
            "succeeded",
            "--timeout",
            "240s",
        ],
    );
    expect(
        sc,
        "the run with a sensitive step succeeds",
        &got,
        0,
        &["secretive is Succeeded"],
    );

    let got = kc(sc, &["inspect", "secretive"]);
    expect(
        sc,
        "inspect shows each step's output, and (sensitive) for the sensitive one",
        &got,
        0,
        &[
            "OUTPUT",
            "credentials",
            "(sensitive)",
            "like ours",
            "called with a key of",
        ],
    );
    sc.check(
        "inspect never shows the sensitive value",
        !got.out.contains(SECRET),
        got.out.clone(),
    );

    let got = kc(
        sc,
        &[
            "inspect",
            "secretive",
            "--step",
            "credentials",
            "-o",
            "json",
        ],
    );
    let v = json_of(&got);
    sc.check(
        "inspect --step of the sensitive step: sensitive, no output",
        got.rc == 0
            && v["sensitive"] == json!(true)
            && v["output"].is_null()
            && !got.out.contains(SECRET),
        got.out.clone(),
    );
    let got = kc(sc, &["inspect", "secretive", "--step", "tricky"]);
    expect(
        sc,
        "inspect --step shows a step's whole value",
        &got,
        0,
        &["Step: tricky", r#""looks": "like ours""#],
    );
    let got = kc(sc, &["inspect", "secretive", "--step", "nope"]);
    sc.check(
        "inspect --step of an unknown step says so",
        got.rc != 0 && got.out.contains(r#"no step "nope""#),
        format!("exit {}: {}", got.rc, got.out),
    );

    let path = format!(
        "/apis/api.cairn.dev/v1alpha1/namespaces/{}/runs/secretive/steps/credentials",
        sc.ns
    );
    let (rc, out, err) = sc.kubectl_env(&["get", "--raw", &path], None, &[]);
    sc.check(
        "the read API serves the step without its sensitive value",
        rc == 0 && out.contains(r#""sensitive":true"#) && !out.contains(SECRET),
        format!("exit {rc}: {out}{err}"),
    );
    Ok(())
}
