//! The operator on the real cluster (a host process, see cairn_e2e::operator): the example runs,
//! waits with no pod running and resumes on the digest it began with; crashes cost nothing paid
//! twice; cancels; retention of tokens, events and finished runs. Each test is a scenario with its
//! own namespace, database and operator, so they run side by side.

use std::collections::HashMap;

use cairn_crds::LABEL_RUN;
use cairn_crds::{FlowEvent, FlowRun, ResourceProfile};
use cairn_e2e::flows::{example, research_flow, run_of, slow_flow};
use cairn_e2e::scenario::{pod_ended, pod_phase};
use cairn_e2e::{Phase, Scenario};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;

fn image_id(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| Some(s.container_statuses.as_ref()?.first()?.image_id.clone()))
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn the_example_waits_resumes_on_its_digest_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("example").await?;
    // An image of this scenario's own: it moves the tag while the run waits, and removes the
    // image at the end. Its own repository too: archives are reproducible, so the same binary
    // under `localhost/cairn-agent` would have the digest (and digest name) the others run.
    let tag = format!("localhost/cairn-{}:moving", sc.ns);
    let first = sc.setup.cluster.image(&tag, &sc.setup.agent, &[])?;
    let profile_name = format!("small-{}", sc.ns);
    let mut profile: ResourceProfile = example(&sc, "profile.yaml")?;
    profile.metadata.name = Some(profile_name.clone());
    sc.create_cluster_scoped(profile).await?;
    let mut flow: cairn_crds::Flow = example(&sc, "flow.yaml")?;
    flow.spec.image = tag.clone();
    flow.spec.profile = Some(profile_name);
    sc.create::<cairn_crds::Flow>(serde_json::to_value(flow)?)
        .await?;
    let run: FlowRun = example(&sc, "flowrun.yaml")?;
    sc.create::<FlowRun>(serde_json::to_value(run)?).await?;

    let name = "example FlowRun waits for approval with no pod running";
    match sc
        .wait_event("research-demo", "approve-research-demo", 180)
        .await
    {
        Ok(fr) => {
            let id = fr.status.and_then(|s| s.run_id).unwrap_or_default();
            let selector = format!("cairn.dev/run={id}");
            // The suspended attempt's process exits 0 right after parking.
            for pod in sc.pods_of("research-demo").await {
                let _ = sc
                    .wait_pod(&pod, "succeed", 60, |p| pod_phase(p) == "Succeeded")
                    .await;
            }
            let running = sc
                .pods(&selector)
                .await
                .iter()
                .filter(|p| pod_phase(p) != "Succeeded")
                .count();
            let child_runs = sc
                .api::<FlowRun>()
                .list(
                    &kube::api::ListParams::default()
                        .labels(&cairn_crds::parent_selector("research-demo")),
                )
                .await?
                .items
                .len();
            sc.check(
                name,
                running == 0 && child_runs == 3,
                format!(
                    "expected 0 pods not finished and 3 child FlowRuns; saw {running} and {child_runs}"
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "research-demo").await,
    }

    let name = "the ResourceProfile's requests, node selector and tolerations reach the flow pod";
    let a1 = sc.api::<Pod>().get_opt("research-demo-a1").await?;
    let placed = a1.as_ref().and_then(|p| p.spec.as_ref()).map(|spec| {
        let cpu = spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref()?.get("cpu").map(|q| q.0.clone()));
        let os = spec
            .node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os").cloned());
        let effect = spec.tolerations.iter().flatten().find_map(|t| {
            (t.key.as_deref() == Some("cairn.dev/flows")).then(|| t.effect.clone())?
        });
        (cpu, os, effect)
    });
    let want = (
        Some("50m".to_owned()),
        Some("linux".to_owned()),
        Some("NoSchedule".to_owned()),
    );
    sc.check(
        name,
        placed.as_ref() == Some(&want),
        format!("expected (cpu request, node selector, toleration) {want:?}; saw {placed:?}"),
    );

    // While it waits, the tag moves to another image: the run must stay on its first digest.
    let first_image = a1.as_ref().map(image_id).unwrap_or_default();
    let moved = sc
        .setup
        .cluster
        .image(&tag, &sc.setup.agent, &["--label", "variant=moved"])?;

    let name = "approving with a FlowEvent resumes the run to Succeeded";
    let approve: FlowEvent = example(&sc, "approve.yaml")?;
    sc.create::<FlowEvent>(serde_json::to_value(approve)?)
        .await?;
    match sc.wait_phase("research-demo", Phase::Succeeded, 180).await {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, "research-demo").await,
    }

    let name = "the resumed pod runs the digest the run started with, not the moved tag";
    let last = sc.status("research-demo").await.pod.unwrap_or_default();
    let last_pod = sc
        .wait_pod(&last, "succeed", 60, |p| pod_phase(p) == "Succeeded")
        .await
        .ok();
    let last_spec = last_pod
        .as_ref()
        .and_then(|p| p.spec.as_ref()?.containers[0].image.clone())
        .unwrap_or_default();
    let last_image = last_pod.as_ref().map(image_id).unwrap_or_default();
    sc.check(
        name,
        !first_image.is_empty()
            && last_spec == first_image
            && last_image == first_image
            && !last_image.contains(&moved.manifest_digest),
        format!(
            "expected the last pod {last} to ask for and run {first_image}; it asked for \
             {last_spec}, ran {last_image}; the tag is now {}",
            moved.manifest_digest
        ),
    );

    let name = "an ended attempt's token Secret is deleted (the engine revoked its token)";
    let id = sc.status("research-demo").await.run_id.unwrap_or_default();
    let secrets = sc.api::<Secret>();
    let of_the_run = ListParams::default().labels(&format!("{LABEL_RUN}={id}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let left = loop {
        let left: Vec<String> = match secrets.list(&of_the_run).await {
            Ok(list) => list.items.iter().map(|s| s.name_any()).collect(),
            Err(e) => vec![format!("(cannot list: {e})")],
        };
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    sc.check(
        name,
        !id.is_empty() && left.is_empty(),
        format!("expected no token Secret of run {id:?} after the run finished; left: {left:?}"),
    );

    let name = "deleting a delivered FlowEvent deletes its event from the database";
    let deleted = sc
        .delete_and_wait::<FlowEvent>("approve-research-demo", 60)
        .await;
    let left = sc
        .until_zero(
            &format!(
                "SELECT count(*) FROM cairn.events WHERE namespace = '{}' \
                 AND name = 'approve-research-demo'",
                sc.ns
            ),
            30,
        )
        .await;
    sc.check(
        name,
        deleted.is_ok() && left.is_ok(),
        format!("expected no event row; {deleted:?} {left:?}"),
    );

    // The delete event forgets them (FlowRuns carry no finalizer), just after the FlowRun goes.
    let name = "deleting a FlowRun deletes its runs, children included, from the database";
    let deleted = sc.delete_and_wait::<FlowRun>("research-demo", 60).await;
    let rows = sc
        .until_zero(
            &format!(
                "SELECT count(*) FROM cairn.runs WHERE namespace = '{}' AND name LIKE 'research-demo%'",
                sc.ns
            ),
            30,
        )
        .await;
    sc.check(
        name,
        deleted.is_ok() && rows.is_ok(),
        format!("expected no rows soon after the FlowRun is gone; {deleted:?}, {rows:?}"),
    );

    sc.setup
        .cluster
        .remove_images(&[tag.clone(), first.digest_ref(), moved.digest_ref()]);
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn crashed_pods_are_relaunched_and_nothing_is_paid_twice() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("crashes").await?;
    // Every child aborts inside its LLM step once.
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "crashy" },
        "spec": {
            "image": sc.setup.image.name, "flow": "research",
            "retry": { "maxAttempts": 3, "backoffSeconds": 1 },
            "env": [
                { "name": "CAIRN_EXAMPLE_CRASH_AT", "value": "summarize" },
                { "name": "CAIRN_EXAMPLE_LEDGER", "value": "-" },
            ],
        },
    }))
    .await?;
    run_of(
        &sc,
        "crashy",
        "crashy",
        json!({ "topic": "crash recovery", "breadth": 2 }),
    )
    .await?;
    cairn_e2e::flows::event(&sc, "approve-crashy", "approve-crashy", json!(true)).await?;

    let name = "crashed pods are relaunched and no LLM call is paid twice";
    match sc.wait_phase("crashy", Phase::Succeeded, 180).await {
        Ok(_) => {
            let pods: Vec<String> = sc
                .pod_names()
                .await
                .into_iter()
                .filter(|p| p.starts_with("crashy"))
                .collect();
            // The run can be over before the kubelet reports its last pod's end.
            for pod in &pods {
                let _ = sc.wait_pod(pod, "end", 60, pod_ended).await;
            }
            let ledger = sc.ledger_of(&pods).await;
            let kind = |k: &'static str| {
                ledger
                    .iter()
                    .filter(move |l| l.split('\t').nth(1) == Some(k))
            };
            let mut paid_per_call: HashMap<String, usize> = HashMap::new();
            for line in kind("paid") {
                let f: Vec<&str> = line.split('\t').collect();
                *paid_per_call
                    .entry(format!(
                        "{}/{}",
                        f.get(2).unwrap_or(&""),
                        f.get(3).unwrap_or(&"")
                    ))
                    .or_default() += 1;
            }
            let paid_twice = paid_per_call.values().filter(|n| **n > 1).count();
            let (crashes, replayed, paid) = (
                kind("crash").count(),
                kind("replayed").count(),
                kind("paid").count(),
            );
            // plan, 2 summaries, draft, final: 5 calls paid once each; each child crashed once;
            // the approval was emitted before the wait, so only the parent's second attempt
            // replays (plan).
            sc.check(
                &format!("{name} ({paid} paid, {replayed} replayed, {crashes} crashes)"),
                crashes == 2 && paid_twice == 0 && replayed > 0 && paid == 5,
                format!(
                    "expected 5 paid, none twice, some replayed, 2 crashes; saw paid {paid}, \
                     paid twice {paid_twice}, replayed {replayed}, crashes {crashes}; ledger: {}",
                    ledger.join(" | ")
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "crashy").await,
    }
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn cancelled_runs_stop_and_finished_runs_expire() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("cancel").await?;
    research_flow(&sc, None).await?;
    slow_flow(&sc).await?;
    let topic = json!({ "topic": "cancelled work", "breadth": 1 });
    run_of(&sc, "to-cancel", "research", topic).await?;

    let name = "cancelling a waiting run ends it with no pod left running";
    let cancelled = async {
        sc.wait_event("to-cancel", "approve-to-cancel", 180).await?;
        sc.patch::<FlowRun>("to-cancel", json!({ "spec": { "cancel": true } }))
            .await
            .map_err(|e| e.to_string())?;
        sc.wait_phase("to-cancel", Phase::Cancelled, 60).await
    }
    .await;
    match cancelled {
        Ok(fr) => {
            let id = fr.status.and_then(|s| s.run_id).unwrap_or_default();
            for pod in sc.pods_of("to-cancel").await {
                let _ = sc
                    .wait_pod(&pod, "succeed", 60, |p| pod_phase(p) == "Succeeded")
                    .await;
            }
            let running: Vec<String> = sc
                .pods(&format!("cairn.dev/run={id}"))
                .await
                .into_iter()
                .filter(|p| pod_phase(p) == "Running")
                .filter_map(|p| p.metadata.name)
                .collect();
            sc.check(
                name,
                running.is_empty(),
                format!("expected no pod running; running: {running:?}"),
            );
        }
        Err(e) => sc.fail_explained(name, e, "to-cancel").await,
    }

    let name =
        "a finished FlowRun is deleted, with its rows, once its ttlSecondsAfterFinished has passed";
    sc.patch::<FlowRun>(
        "to-cancel",
        json!({ "spec": { "ttlSecondsAfterFinished": 1 } }),
    )
    .await?;
    let gone = sc.wait_gone::<FlowRun>("to-cancel", 60).await;
    let rows = sc
        .until_zero(
            &format!(
                "SELECT count(*) FROM cairn.runs WHERE namespace = '{}' AND name = 'to-cancel'",
                sc.ns
            ),
            30,
        )
        .await;
    sc.check(
        name,
        gone.is_ok() && rows.is_ok(),
        format!("expected the FlowRun and its rows gone; {gone:?}; {rows:?}"),
    );

    let name = "cancelling a running run stops it at the next step boundary";
    // Made now: it must still be in its first call when the cancel comes.
    let slow = json!({ "topic": "second thoughts", "breadth": 1 });
    run_of(&sc, "cancel-running", "slow", slow).await?;
    // Attempt 1 is inside its first call (plan) when the cancel arrives: the call finishes and is
    // kept, and nothing after it runs.
    let cancelled = async {
        sc.wait_pod_log("cancel-running-a1", "calling\tcancel-running\tplan", 90)
            .await?;
        sc.patch::<FlowRun>("cancel-running", json!({ "spec": { "cancel": true } }))
            .await
            .map_err(|e| e.to_string())?;
        sc.wait_phase("cancel-running", Phase::Cancelled, 60).await
    }
    .await;
    match cancelled {
        Ok(_) => {
            let _ = sc
                .wait_pod("cancel-running-a1", "succeed", 60, |p| {
                    pod_phase(p) == "Succeeded"
                })
                .await;
            let ledger = sc.ledger_of(&["cancel-running-a1".into()]).await;
            let children = sc
                .api::<FlowRun>()
                .list(
                    &kube::api::ListParams::default()
                        .labels(&cairn_crds::parent_selector("cancel-running")),
                )
                .await?
                .items
                .len();
            let pods = sc
                .pod_names()
                .await
                .iter()
                .filter(|p| p.starts_with("cancel-running-"))
                .count();
            let planned = ledger
                .iter()
                .any(|l| l.starts_with("ledger\tpaid\tcancel-running\tplan"));
            let drafted = ledger.iter().any(|l| l.contains("draft"));
            sc.check(
                name,
                planned && !drafted && children == 0 && pods == 1,
                format!(
                    "expected plan paid, no draft, no children, 1 pod; saw {children} children, \
                     {pods} pods; ledger: {}",
                    ledger.join(" | ")
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "cancel-running").await,
    }
    sc.finish();
    Ok(())
}
