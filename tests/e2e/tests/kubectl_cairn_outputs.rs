//! What an agent did, and what to do about it (issue 17), through `kubectl cairn` and the read
//! API: a preview of each step's output, the whole value by key, and a sensitive step's value
//! nowhere, while the flow pod sealed it with its namespace's step key (the operator's runner
//! Secret carries it); and a fork of the example at `draft` with an edited plan, whose ledger
//! shows only `draft` and `final` paid, its source unchanged.

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
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "ledgered" },
        "spec": { "image": sc.setup.image.name, "flow": "research",
                  "env": [{ "name": "CAIRN_EXAMPLE_LLM_MS", "value": "20" },
                          { "name": "CAIRN_EXAMPLE_LEDGER", "value": "-" }] },
    }))
    .await?;
    let input = json!({ "topic": "forks", "breadth": 1 });
    cairn_e2e::flows::run_of(sc, "to-fork", "ledgered", input).await?;
    Ok(())
}

/// The example approved and finished, then forked at `draft` with an edited plan and its
/// approval answered ahead.
pub(crate) async fn fork(sc: &mut Scenario) -> anyhow::Result<String> {
    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);
    let got = kc(sc, &["approve", "to-fork", "--wait", "--timeout", "240s"]);
    expect(
        sc,
        "the run to fork is approved",
        &got,
        0,
        &["to-fork: resumed"],
    );
    let source = sc
        .wait_phase("to-fork", cairn_e2e::Phase::Succeeded, 240)
        .await;
    let before = source.ok().and_then(|r| r.status).and_then(|s| s.result);
    let got = kc(
        sc,
        &[
            "fork",
            "to-fork",
            "--from-step",
            "draft",
            "--set-output",
            r#"plan="an edited plan""#,
            "--answer",
            "approve-edited=true",
            "--name",
            "edited",
            "--wait",
            "--timeout",
            "240s",
        ],
    );
    expect(
        sc,
        "fork --from-step draft --set-output plan --answer: the fork succeeds",
        &got,
        0,
        &[
            "edited: forked from to-fork at step draft",
            "edited is Succeeded",
        ],
    );
    // The run is over in the database before the kubelet says its pod ended (and serves its
    // log).
    if let Err(why) = sc.wait_pods_ended("edited", 120).await {
        sc.fail("the fork's pods end", why);
    }
    let pods = sc.pods_of("edited").await;
    let ledger = sc.ledger_of(&pods).await;
    let paid: Vec<String> = ledger
        .iter()
        .filter(|l| l.starts_with("ledger\tpaid\t"))
        .filter_map(|l| l.split('\t').nth(3).map(str::to_owned))
        .collect();
    sc.check(
        "the fork's ledger: only draft and final paid",
        paid == ["draft", "final"],
        format!("{paid:?} in the ledger of pods {pods:?}: {ledger:?}"),
    );
    let after = sc.status("to-fork").await.result;
    sc.check(
        "the source's result is unchanged",
        before.is_some() && after == before,
        format!("{before:?} then {after:?}"),
    );
    let got = kc(sc, &["inspect", "edited"]);
    expect(
        sc,
        "inspect of the fork shows what it reused, set and paid",
        &got,
        0,
        &[
            "Forked:    from to-fork at step draft",
            "reused",
            "set",
            "not paid again",
        ],
    );
    let got = kc(sc, &["fork", "to-fork", "--from-step", "nope"]);
    expect(
        sc,
        "fork from an unknown step: refused, saying so (exit 2)",
        &got,
        2,
        &[r#"has no step "nope""#],
    );
    Ok(got.out.clone() + &kc(sc, &["inspect", "edited"]).out)
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
