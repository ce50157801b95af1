//! `kubectl cairn`'s commands that change runs, on the runs kubectl_cairn.rs made: approve, emit,
//! cancel, retry, and the logs and inspection of the runs they changed.

use cairn_crds::{FlowEvent, FlowRun};
use cairn_e2e::Scenario;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::kubectl_cairn::{Kc, Plugin, at, expect, json_of};

/// asks, approved and finished, is deleted and created again: the first one's approval does
/// not answer the new one, an approval addressed to the first one is refused, and its own
/// approval resumes it (README, "Events").
async fn a_reused_name_waits_for_its_own_approval(
    sc: &mut Scenario,
    kc: &impl Fn(&Scenario, &[&str]) -> Kc,
) -> anyhow::Result<()> {
    let first = sc.run("asks").await.expect("asks exists");
    let first_uid = first.uid().unwrap_or_default();
    sc.delete_and_wait::<FlowRun>("asks", 120)
        .await
        .map_err(anyhow::Error::msg)?;
    sc.create::<FlowRun>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowRun",
        "metadata": { "name": "asks" }, "spec": first.spec,
    }))
    .await?;
    let got = kc(
        sc,
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
        sc,
        "asks created again under its name waits for its own approval",
        &got,
        0,
        &["asks is Waiting"],
    );

    sc.create::<FlowEvent>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowEvent",
        "metadata": { "name": "approve-the-first-asks" },
        "spec": { "event": "approve-asks", "payload": true,
                  "flowRun": { "name": "asks", "uid": first_uid } },
    }))
    .await?;
    let refused = sc
        .wait_for::<FlowEvent>("approve-the-first-asks", "be refused", 120, |e| {
            e.status.as_ref().and_then(|s| s.delivered) == Some(false)
        })
        .await;
    let message = refused.map(|e| e.status.and_then(|s| s.message).unwrap_or_default());
    sc.check(
        "a FlowEvent for the deleted asks is refused, saying it no longer exists and how to approve the new one",
        message
            .as_ref()
            .is_ok_and(|m| {
                m.contains("FlowRun asks (uid ")
                    && m.contains("no longer exists")
                    && m.contains("(approve that one with `kubectl cairn approve asks`)")
            }),
        format!("{message:?}"),
    );

    let got = kc(
        sc,
        &[
            "approve",
            "asks",
            "--data",
            "false",
            "--wait",
            "--timeout",
            "240s",
        ],
    );
    expect(
        sc,
        "its own approval resumes the new asks",
        &got,
        0,
        &[
            "asks: approved event approve-asks with payload false",
            "asks: resumed",
        ],
    );
    let got = kc(
        sc,
        &["wait", "asks", "--for", "succeeded", "--timeout", "240s"],
    );
    let approved = sc
        .status("asks")
        .await
        .result
        .and_then(|r| r.get("approved").cloned());
    sc.check(
        "the new asks finishes with its own approval's payload",
        got.rc == 0 && approved == Some(json!(false)),
        format!("exit {}, approved {approved:?}: {}", got.rc, got.out),
    );
    Ok(())
}

pub(crate) async fn approve_and_emit(sc: &mut Scenario) -> anyhow::Result<()> {
    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);
    let got = kc(sc, &["approve", "asks", "--data", r#""yes""#]);
    expect(
        sc,
        "approve with a payload failing the schema: exit 2, the failing value, nothing created",
        &got,
        2,
        &[r#""yes" is not of type "boolean""#, "nothing was created"],
    );
    let name = "a refused approve creates no FlowEvent";
    let made: Vec<String> = sc
        .api::<cairn_crds::FlowEvent>()
        .list(&Default::default())
        .await?
        .into_iter()
        .filter(|e| e.spec.event == "approve-asks")
        .map(|e| e.name_any())
        .collect();
    sc.check(
        name,
        made.is_empty(),
        format!("expected no FlowEvent for approve-asks; saw {made:?}"),
    );
    let got = kc(sc, &["approve", "nope"]);
    expect(
        sc,
        "approve of an unknown run: exit 2",
        &got,
        2,
        &[r#"FlowRun "nope" not found"#],
    );
    let got = kc(sc, &["approve", "asks", "--wait", "--timeout", "240s"]);
    expect(
        sc,
        "approve --wait: the FlowEvent is created, delivered, and the run resumes",
        &got,
        0,
        &[
            "asks: approved event approve-asks with payload true (FlowEvent approve-asks-",
            "asks: resumed",
        ],
    );
    let got = kc(
        sc,
        &["wait", "asks", "--for", "succeeded", "--timeout", "240s"],
    );
    expect(
        sc,
        "the approved run succeeds",
        &got,
        0,
        &["asks is Succeeded"],
    );
    let got = kc(sc, &["approve", "asks"]);
    expect(
        sc,
        "approve of a finished run: exit 1, not waiting",
        &got,
        1,
        &["asks is not waiting for an event: it is Succeeded"],
    );
    let got = kc(sc, &["inspect", "asks"]);
    expect(
        sc,
        "inspect of a succeeded run shows its result and the final step",
        &got,
        0,
        &["Phase:     Succeeded", "Result:", "final", "Finished:"],
    );
    println!(
        "--- kubectl cairn inspect asks (succeeded) ---\n{}",
        got.out
    );
    a_reused_name_waits_for_its_own_approval(sc, &kc).await?;

    let got = kc(
        sc,
        &["emit", "approve-emitted", "--data", r#"{"publish": 1}"#],
    );
    expect(
        sc,
        "emit checks the payload against the waiting runs' schema: exit 2",
        &got,
        2,
        &[r#"run "emitted""#, r#"is not of type "boolean""#],
    );
    let got = kc(sc, &["emit", "approve-emitted", "--data", "false"]);
    expect(
        sc,
        "emit creates the FlowEvent and names the runs waiting for it",
        &got,
        0,
        &["event approve-emitted emitted (FlowEvent approve-emitted); waiting for it: emitted"],
    );
    let got = kc(sc, &["emit", "approve-emitted", "--data", "false"]);
    expect(
        sc,
        "emitting the same event again is a no-op",
        &got,
        0,
        &["was already emitted with this payload"],
    );
    let got = kc(sc, &["emit", "approve-emitted", "--data", "true"]);
    expect(
        sc,
        "emitting it with another payload is refused (write-once): exit 2",
        &got,
        2,
        &["already exists with another payload"],
    );
    let got = kc(
        sc,
        &["wait", "emitted", "--for", "succeeded", "--timeout", "240s"],
    );
    let approved = sc
        .status("emitted")
        .await
        .result
        .and_then(|r| r.get("approved").cloned());
    sc.check(
        "the emitted run finishes with the payload it got",
        got.rc == 0 && approved == Some(json!(false)),
        format!(
            "expected Succeeded with approved false; exit {}, approved {approved:?}: {}",
            got.rc, got.out
        ),
    );
    let got = kc(sc, &["emit", "Not_A DNS name", "--data", "1"]);
    expect(
        sc,
        "an event name that is not an object name gets a DNS-safe FlowEvent name",
        &got,
        0,
        &["(FlowEvent not-a-dns-name-"],
    );
    Ok(())
}

pub(crate) async fn cancel_and_retry(sc: &mut Scenario) -> anyhow::Result<()> {
    let kc = |sc: &Scenario, args: &[&str]| Plugin { sc }.kc(args);
    let steps: [(&str, &[&str], i32, &[&str]); 8] = [
        (
            "cancel --wait ends a waiting run",
            &["cancel", "to-cancel", "--wait", "--timeout", "120s"],
            0,
            &["cancellation requested", "to-cancel is Cancelled"],
        ),
        (
            "cancel of a finished run says so (exit 0)",
            &["cancel", "to-cancel"],
            0,
            &["to-cancel already finished as Cancelled; nothing to cancel"],
        ),
        (
            "retry refuses a run that did not fail: exit 1",
            &["retry", "to-cancel"],
            1,
            &["only a failed run can be retried"],
        ),
        (
            "inspect of a failed run shows the error",
            &["inspect", "wrong-input"],
            0,
            &["Phase:     Failed", "Error:", "topic"],
        ),
        (
            "logs: a header per attempt and the crash in the log",
            &["logs", "crashy"],
            0,
            &[
                "── attempt 1 · pod crashy-a1",
                "CAIRN_EXAMPLE_CRASH_AT=plan: aborting attempt 1",
            ],
        ),
        (
            "retry --wait: the failed run runs again",
            &["retry", "crashy", "--wait", "--timeout", "120s"],
            0,
            &[
                "crashy: retry requested (cairn.dev/retry=",
                "crashy: retried; now",
            ],
        ),
        (
            "the retried run gets past the step that crashed",
            &[
                "wait",
                "crashy",
                "--for",
                "waiting",
                "--event",
                "approve-crashy",
                "--timeout",
                "240s",
            ],
            0,
            &["crashy is Waiting"],
        ),
        (
            "",
            &["approve", "crashy", "--wait", "--timeout", "240s"],
            0,
            &[],
        ),
    ];
    for (name, args, rc, texts) in steps {
        let got = kc(sc, args);
        if name.is_empty() {
            // A step, not a check: only its failure is reported.
            if got.rc != rc {
                sc.fail(&args.join(" "), got.out);
            }
        } else {
            expect(sc, name, &got, rc, texts);
        }
    }
    let got = kc(
        sc,
        &["wait", "crashy", "--for", "succeeded", "--timeout", "240s"],
    );
    expect(
        sc,
        "the retried run succeeds",
        &got,
        0,
        &["crashy is Succeeded"],
    );
    let got = kc(sc, &["inspect", "crashy", "-o", "json"]);
    let v = json_of(&got);
    let attempts = v.pointer("/detail/attempts").and_then(Value::as_array);
    let steps = v.pointer("/detail/steps").and_then(Value::as_array);
    let summary = format!(
        "{},{},{},{}",
        at(&v, "/detail/attempts/0/outcome"),
        attempts.is_some_and(|a| a.len() >= 2),
        v.pointer("/flowRun/status/retried")
            .is_some_and(|r| !r.is_null()),
        steps.is_some_and(|s| s.iter().any(|s| at(s, "/key") == "plan")),
    );
    sc.check(
        "inspect of the retried run: the crashed attempt, then the retry",
        summary == "crashed,true,true,true",
        format!(
            "expected crashed,true,true,true; saw {summary:?}: {}",
            got.out
        ),
    );
    let got = kc(sc, &["logs", "crashy"]);
    expect(
        sc,
        "logs of the retried run show every attempt in order",
        &got,
        0,
        &[
            "── attempt 1 · pod crashy-a1",
            "── attempt 2 · pod crashy-a2",
        ],
    );
    let got = kc(sc, &["logs", "crashy", "-f"]);
    expect(
        sc,
        "logs -f of a finished run prints it and ends",
        &got,
        0,
        &["── attempt 1", "CAIRN_EXAMPLE_CRASH_AT=plan"],
    );
    let got = kc(sc, &["logs", "crashy", "--attempt", "1", "-o", "json"]);
    let lines = got
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["attempt"] == json!(1))
        .count();
    sc.check(
        "logs -o json: one object per line",
        got.rc == 0 && lines > 0,
        format!(
            "expected lines of attempt 1; exit {}, {lines} lines: {}",
            got.rc, got.out
        ),
    );
    let got = kc(sc, &["runs"]);
    expect(
        sc,
        "runs at the end: every phase",
        &got,
        0,
        &["Succeeded", "Failed", "Cancelled"],
    );
    println!("--- kubectl cairn runs (at the end) ---\n{}", got.out);
    Ok(())
}
