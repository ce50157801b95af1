//! Bad work on the real cluster is reported, not crash-looped: unknown flows, objects the API
//! server refuses (CEL, a corpus of malformed manifests), missing images, wrong input, invalid
//! profiles, deadlines, a flow pod deleted mid-call, an SDK the engine no longer serves.

use cairn_crds::{Flow, FlowRun, ResourceProfile};
use cairn_e2e::flows::{event, research_flow, run_of, slow_flow};
use cairn_e2e::scenario::pod_phase;
use cairn_e2e::{Phase, Scenario};
use serde_json::json;

fn flowrun(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowRun",
        "metadata": { "name": name }, "spec": spec,
    })
}

fn reason_is(reason: &'static str) -> impl Fn(&cairn_crds::FlowRunStatus) -> bool {
    move |s| s.conditions.first().is_some_and(|c| c.reason == reason)
}

/// Checks that refused run `run` gets an attempt within 40 s of what it lacked appearing: below
/// the minute after which a refused run is looked at again, so only the watch can meet it.
async fn starts_before_its_periodic_look(sc: &mut Scenario, name: &str, run: &str) {
    let started = sc.wait_run(run, "have an attempt", 40, |s| s.attempt.unwrap_or(0) >= 1);
    match started.await {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, run).await,
    }
}

/// Waits until a Warning Event with `reason` is about FlowRun `run`; returns its name.
async fn warning_about(
    sc: &Scenario,
    run: &str,
    reason: &str,
    secs: u64,
) -> Result<String, String> {
    let events = sc.api::<k8s_openapi::api::events::v1::Event>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let listed = events.list(&Default::default()).await;
        let found = listed.iter().flat_map(|l| &l.items).find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(run)
        });
        if let Some(event) = found {
            return Ok(event.metadata.name.clone().unwrap_or_default());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "no Warning Event {reason} about {run} within {secs}s"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn bad_runs_fail_saying_why() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("bad-runs").await?;
    research_flow(&sc, None).await?;
    let image = sc.setup.image.name.clone();
    sc.create::<FlowRun>(flowrun("no-such-flow", json!({ "flowRef": "missing" })))
        .await?;
    // As long as a name may be: its Events' names must be shortened to be valid.
    let longest = format!("{}-{}", "l".repeat(200), "n".repeat(52));
    sc.create::<FlowRun>(flowrun(&longest, json!({ "flowRef": "never" })))
        .await?;
    sc.create::<FlowRun>(flowrun(
        "no-such-image",
        json!({
            "image": "localhost/no-such-image:1", "flow": "research", "input": { "topic": "x" },
            "retry": { "maxAttempts": 2, "backoffSeconds": 1 },
        }),
    ))
    .await?;
    sc.create::<FlowRun>(flowrun(
        "wrong-input",
        json!({ "image": image, "flow": "research",
                "input": { "subject": "not the field the flow wants" } }),
    ))
    .await?;

    let name = "a FlowRun naming an unknown Flow gets a condition saying so";
    match sc
        .wait_run(
            "no-such-flow",
            "have reason FlowNotFound",
            60,
            reason_is("FlowNotFound"),
        )
        .await
    {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, "no-such-flow").await,
    }
    let name = "a FlowRun named with 253 characters gets its Warning Event too";
    match warning_about(&sc, &longest, "FlowNotFound", 60).await {
        Ok(event) => sc.check(name, true, event),
        Err(e) => sc.fail_explained(name, e, &longest).await,
    }

    // Refused, the run is looked at again a minute later at the latest; the Flow's watch makes
    // it sooner. The bound sits below that minute, so only the watch can meet it.
    let name = "a run refused for want of its Flow starts once the Flow is created, before its periodic look";
    sc.create::<Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "Flow",
        "metadata": { "name": "missing" },
        "spec": { "image": image, "flow": "research" },
    }))
    .await?;
    starts_before_its_periodic_look(&mut sc, name, "no-such-flow").await;

    let name = "the API server refuses a FlowRun with both flowRef and image (CEL)";
    let both = flowrun(
        "both",
        json!({ "flowRef": "research", "image": "localhost/other:1", "flow": "summarize" }),
    );
    match sc.create::<FlowRun>(both).await {
        Ok(_) => sc.fail(name, "expected a refusal; it was accepted"),
        Err(e) => sc.check(
            name,
            format!("{e:#}").contains("set either spec.flowRef"),
            format!("expected a refusal saying \"set either spec.flowRef\"; got: {e:#}"),
        ),
    }

    let name =
        "an image that does not exist fails the run after its attempts, naming the pull error";
    match sc.wait_phase("no-such-image", Phase::Failed, 180).await {
        Ok(fr) => {
            let error = fr.status.and_then(|s| s.error).unwrap_or_default();
            sc.check(
                name,
                error.contains("ImagePull"),
                format!("expected an error naming ImagePull; error: {error:?}"),
            );
        }
        Err(e) => sc.fail_explained(name, e, "no-such-image").await,
    }

    let name = "input that does not match the flow's type fails the run once, naming the field";
    match sc.wait_phase("wrong-input", Phase::Failed, 120).await {
        Ok(fr) => {
            let s = fr.status.unwrap_or_default();
            let error = s.error.unwrap_or_default();
            sc.check(
                name,
                error.contains("topic") && s.attempt == Some(1),
                format!(
                    "expected attempt 1 and an error naming `topic`; attempt {:?}, error {error:?}",
                    s.attempt
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "wrong-input").await,
    }

    let name = "the cairn.dev/retry annotation retries a failed run once per value";
    sc.patch::<FlowRun>(
        "wrong-input",
        json!({ "metadata": { "annotations": { "cairn.dev/retry": "first" } } }),
    )
    .await?;
    let retried = async {
        let what = "record the retry `first`";
        sc.wait_run("wrong-input", what, 60, |s| {
            s.retried.as_deref() == Some("first")
        })
        .await?;
        sc.wait_run("wrong-input", "be at attempt 2", 60, |s| {
            s.attempt == Some(2)
        })
        .await?;
        sc.wait_phase("wrong-input", Phase::Failed, 60).await
    }
    .await;
    match retried {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, "wrong-input").await,
    }

    // A profile a pod would refuse (`cpu: lots`, a misspelt toleration effect) is refused by
    // the API server's CEL rules (the corpus scenario); the operator's own check of it stays for
    // profiles stored before those rules and is unit-tested. A missing profile is the operator's.
    let name = "a FlowRun naming a missing profile gets a condition naming it, and no pod";
    let profile = format!("missing-{}", sc.ns);
    sc.create::<FlowRun>(flowrun(
        "bad-profile",
        json!({ "flowRef": "research", "profile": profile, "input": { "topic": "x" } }),
    ))
    .await?;
    let what = "have reason ProfileNotFound";
    match sc
        .wait_run("bad-profile", what, 60, reason_is("ProfileNotFound"))
        .await
    {
        Ok(fr) => {
            let message = fr
                .status
                .and_then(|s| s.conditions.first().map(|c| c.message.clone()))
                .unwrap_or_default();
            let pods = sc.pod_names().await;
            let pods: Vec<_> = pods
                .iter()
                .filter(|p| p.starts_with("bad-profile-"))
                .collect();
            sc.check(
                name,
                message.contains(&format!("ResourceProfile \"{profile}\" not found"))
                    && pods.is_empty(),
                format!(
                    "expected a message naming the missing profile and no pod; \
                     message {message:?}, pods {pods:?}"
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "bad-profile").await,
    }

    // The same for a profile, through the ResourceProfiles' watch (cluster-scoped).
    let name = "a run refused for want of its profile starts once the profile is created, before its periodic look";
    sc.create_cluster_scoped(ResourceProfile::new(&profile, Default::default()))
        .await?;
    starts_before_its_periodic_look(&mut sc, name, "bad-profile").await;
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn the_malformed_corpus_is_refused_saying_what_is_wrong() -> anyhow::Result<()> {
    // Only the API server is asked (a server-side dry run): no operator.
    let mut sc = Scenario::new("corpus").await?;
    let name =
        "every manifest of the malformed corpus is refused by the API server, saying what is wrong";
    let dir = sc.setup.repo_file("tests/cluster/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (mut refused, mut wrong) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_default()
            .to_owned();
        let file_name = file.file_name().unwrap_or_default().to_string_lossy();
        let path = file.to_string_lossy();
        let (rc, out, err) = sc.kubectl(&["apply", "--dry-run=server", "-f", &path], None);
        if rc == 0 {
            wrong.push(format!("{file_name}: accepted"));
        } else if !expect.is_empty() && format!("{out}{err}").contains(&expect) {
            refused += 1;
        } else {
            wrong.push(format!("{file_name}: expected {expect:?}, got {err}"));
        }
    }
    // An input far over the API server's request limit.
    let huge = format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: FlowRun\nmetadata: {{ name: corpus-huge }}\n\
         spec: {{ flowRef: research, input: {{ topic: \"{}\" }} }}\n",
        "x".repeat(4_000_000)
    );
    let (rc, _, err) = sc.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&huge));
    let lower = err.to_lowercase();
    if rc == 0 {
        wrong.push("a 4 MB input: accepted".into());
    } else if lower.contains("too large") || lower.contains("exceeds") {
        refused += 1;
    } else {
        wrong.push(format!("a 4 MB input: {}", &err[..err.len().min(200)]));
    }
    let total = files.len() + 1;
    sc.check(
        &format!("{name} ({refused} manifests)"),
        refused == total && files.len() > 1,
        format!(
            "expected all {total} refused with their message; {refused} were: {}",
            wrong.join("; ")
        ),
    );
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_flow_pod_deleted_mid_call_is_relaunched() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("killed").await?;
    slow_flow(&sc).await?;
    let input = json!({ "topic": "pods that vanish", "breadth": 1 });
    run_of(&sc, "killed", "slow", input).await?;
    event(&sc, "approve-killed", "approve-killed", json!(true)).await?;

    let name = "a flow pod deleted in the middle of a call finishes the call, gives the run back, and a new pod goes on from there";
    // Attempt 1 plans and parks on its child; a later attempt replays the plan and drafts. The
    // pod that is drafting is deleted mid-call (which attempt that is does not matter). Sent
    // SIGTERM, its process finishes the call (4 s, within its 20 s grace), checkpoints it and
    // gives the run back; the next attempt replays plan and draft, is already approved, and
    // finishes. Nothing is paid twice and the stop is no crash. The deleted pod's log goes
    // with it, so its payment is seen in the database (the draft step's attempt).
    let victim = sc
        .wait_run_log("killed", "calling\tkilled\tdraft", 240)
        .await;
    let outcome = match &victim {
        Ok(victim) => {
            let deleted = sc
                .api::<k8s_openapi::api::core::v1::Pod>()
                .delete(victim, &Default::default())
                .await;
            match deleted {
                Ok(_) => sc.wait_phase("killed", Phase::Succeeded, 180).await,
                Err(e) => Err(format!("deleting {victim}: {e}")),
            }
        }
        Err(e) => Err(e.clone()),
    };
    match (outcome, victim) {
        (Ok(fr), Ok(victim)) => {
            let status = fr.status.unwrap_or_default();
            let last = status.pod.clone().unwrap_or_default();
            let _ = sc
                .wait_pod(&last, "succeed", 60, |p| pod_phase(p) == "Succeeded")
                .await;
            let others: Vec<String> = sc
                .pods_of("killed")
                .await
                .into_iter()
                .filter(|p| *p != victim)
                .collect();
            let ledger = sc.ledger_of(&others).await;
            let last_ledger = sc.ledger_of(std::slice::from_ref(&last)).await;
            let count = |l: &[String], p: &str| l.iter().filter(|x| x.starts_with(p)).count();
            let plan_paid = count(&ledger, "ledger\tpaid\tkilled\tplan");
            let draft_paid = count(&ledger, "ledger\tpaid\tkilled\tdraft");
            let victim_attempt: i64 = victim
                .rsplit_once("-a")
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or(0);
            let run_id = status.run_id.clone().unwrap_or_default();
            let draft_by = sc
                .count(&format!(
                    "SELECT coalesce(max(attempt), 0)::bigint FROM cairn.steps \
                     WHERE run_id = '{run_id}' AND key = 'draft'"
                ))
                .await
                .unwrap_or(-1);
            let crashes = sc
                .count(&format!(
                    "SELECT crashes::bigint FROM cairn.runs WHERE id = '{run_id}'"
                ))
                .await
                .unwrap_or(-1);
            sc.check(
                name,
                plan_paid == 1
                    && draft_paid == 0
                    && draft_by == victim_attempt
                    && crashes == 0
                    && last != victim
                    && status.attempt == Some(victim_attempt as i32 + 1)
                    && count(&last_ledger, "ledger\treplayed\tkilled\tplan") > 0
                    && count(&last_ledger, "ledger\treplayed\tkilled\tdraft") > 0,
                format!(
                    "expected plan paid once and draft paid by the deleted pod only (checkpointed \
                     by its attempt), no crash, the last attempt right after it replaying both; \
                     deleted {victim}, finished in {last} (attempt {:?}); plan paid \
                     {plan_paid}, draft paid elsewhere {draft_paid}, draft checkpointed by \
                     attempt {draft_by}, crashes {crashes}; ledger: {}",
                    status.attempt,
                    ledger.join(" | ")
                ),
            );
        }
        (Err(e), victim) => {
            let seen = format!("{e} (deleted: {victim:?})");
            sc.fail_explained(name, seen, "killed").await
        }
        (Ok(_), Err(e)) => sc.fail(name, e),
    }
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn an_operator_killed_right_after_a_claim_costs_the_run_no_attempt() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("claimed").await?;
    // The state an operator leaves when it dies between claiming an attempt and creating its
    // pod: the engine's run holds attempt 1, running, and no pod exists. Made here with the
    // operator stopped (it migrated the database first), then another operator starts.
    sc.operators[0].stop();
    sc.create::<Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "summarize" },
        "spec": { "image": sc.setup.image.name, "flow": "summarize",
                  "retry": { "maxAttempts": 1, "backoffSeconds": 1 } },
    }))
    .await?;
    let input = json!({ "topic": "operators", "subtopic": "dying at the worst moment" });
    run_of(&sc, "claimed", "summarize", input.clone()).await?;
    let pool = sc.pool().await?;
    let run_id: sqlx::types::Uuid = sqlx::query_scalar(
        "SELECT run_id FROM cairn.create_run($1, 'claimed', 'summarize', $2, 1, 1000)",
    )
    .bind(&sc.ns)
    .bind(&input)
    .fetch_one(&pool)
    .await?;
    let claimed: Option<i32> =
        sqlx::query_scalar("SELECT attempt FROM cairn.claim($1, NULL, NULL)")
            .bind(run_id)
            .fetch_one(&pool)
            .await?;
    anyhow::ensure!(claimed == Some(1), "claim gave {claimed:?}");
    sc.start_operator(cairn_e2e::operator::free_addr("127.0.0.1")?, &[])
        .await?;

    let name = "an attempt claimed by an operator that died before its pod runs under the same number, maxAttempts 1, no crash";
    match sc.wait_phase("claimed", Phase::Succeeded, 180).await {
        Ok(fr) => {
            let status = fr.status.unwrap_or_default();
            let crashes = sc
                .count(&format!(
                    "SELECT crashes::bigint FROM cairn.runs WHERE id = '{run_id}'"
                ))
                .await?;
            let attempts = sc
                .count(&format!(
                    "SELECT count(*) FROM cairn.attempts WHERE run_id = '{run_id}'"
                ))
                .await?;
            sc.check(
                name,
                status.attempt == Some(1) && crashes == 0 && attempts == 1,
                format!(
                    "attempt {:?}, {crashes} crashes, {attempts} attempt rows",
                    status.attempt
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "claimed").await,
    }
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_run_past_its_deadline_fails_saying_so() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("deadline").await?;
    research_flow(&sc, None).await?;
    sc.create::<FlowRun>(flowrun(
        "too-late",
        json!({ "flowRef": "research", "input": { "topic": "deadlines", "breadth": 1 },
                "deadlineSeconds": 45 }),
    ))
    .await?;
    let name = "a run past spec.deadlineSeconds fails saying so, and its pods carry the deadline";
    match sc.wait_phase("too-late", Phase::Failed, 150).await {
        Ok(fr) => {
            let status = fr.status.unwrap_or_default();
            let error = status.error.unwrap_or_default();
            let id = status.run_id.unwrap_or_default();
            let pods = sc.pods(&format!("cairn.dev/run={id}")).await;
            let active = pods
                .first()
                .and_then(|p| p.spec.as_ref()?.active_deadline_seconds);
            let children: Vec<String> = sc
                .api::<FlowRun>()
                .list(
                    &kube::api::ListParams::default()
                        .labels(&cairn_crds::parent_selector("too-late")),
                )
                .await?
                .items
                .into_iter()
                .map(|c| format!("{:?}", c.status.and_then(|s| s.phase)))
                .collect();
            sc.check(
                name,
                error.contains("deadline exceeded")
                    && active.is_some_and(|a| (1..=45).contains(&a))
                    && !children.iter().any(|c| c.contains("Running")),
                format!(
                    "expected \"deadline exceeded\", activeDeadlineSeconds in 1..=45 and no child \
                     running; error {error:?}, activeDeadlineSeconds {active:?}, children {children:?}"
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "too-late").await,
    }
    sc.finish();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn an_image_whose_sdk_the_engine_no_longer_serves_fails_once() -> anyhow::Result<()> {
    // Its own database: the schema's engine_info is set as a release that drops runner
    // protocol 1 would set it.
    let mut sc = Scenario::with_operator("old-sdk").await?;
    research_flow(&sc, None).await?;
    let pool = sc.pool().await?;
    sqlx::query(
        "CREATE OR REPLACE FUNCTION cairn.engine_info() \
         RETURNS TABLE (launcher_contract integer, runner_oldest integer, runner_newest integer) \
         LANGUAGE sql STABLE AS $$ SELECT 1, 2, 2 $$",
    )
    .execute(&pool)
    .await?;
    let input = json!({ "topic": "protocols", "breadth": 1 });
    run_of(&sc, "old-sdk", "research", input).await?;
    let name = "a flow image whose SDK speaks a protocol the engine no longer serves fails its run, saying so, once";
    match sc.wait_phase("old-sdk", Phase::Failed, 120).await {
        Ok(fr) => {
            let status = fr.status.unwrap_or_default();
            let message = status.error.unwrap_or_default();
            let id = status.run_id.unwrap_or_default();
            let pods = sc.pods(&format!("cairn.dev/run={id}")).await.len();
            let said = [
                "speaks runner protocol 1",
                "serves runner protocols 2 to 2",
                "rebuild the image",
            ];
            let mut rest = message.as_str();
            let in_order = said.iter().all(|s| match rest.find(s) {
                Some(i) => {
                    rest = &rest[i + s.len()..];
                    true
                }
                None => false,
            });
            sc.check(
                name,
                in_order && pods == 1,
                format!("expected {said:?} in the error and 1 pod; error {message:?}, {pods} pods"),
            );
        }
        Err(e) => sc.fail_explained(name, e, "old-sdk").await,
    }
    sc.finish();
    Ok(())
}

/// FlowRuns carry no finalizer, so one deleted while no operator runs is gone at once; the
/// operator that comes back forgets its run (and its child's) within its sweep.
#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_flowrun_deleted_while_no_operator_runs_is_forgotten_when_one_returns()
-> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("away").await?;
    research_flow(&sc, None).await?;
    run_of(
        &sc,
        "away",
        "research",
        json!({ "topic": "absence", "breadth": 1 }),
    )
    .await?;
    if let Err(e) = sc.wait_event("away", "approve-away", 180).await {
        sc.fail_explained("the run waits for its approval", e, "away")
            .await;
        sc.finish();
        return Ok(());
    }
    let runs = "SELECT count(*) FROM cairn.runs";
    let registered = sc.count(runs).await?;
    let finalizers = sc.run("away").await.map(|r| r.metadata.finalizers);
    sc.operators[0].stop();
    let deleted = sc.delete_and_wait::<FlowRun>("away", 30).await;
    let kept = sc.count(runs).await?;
    sc.check(
        "without an operator, the FlowRun (no finalizer) is deleted at once and its rows stay",
        registered >= 2 && deleted.is_ok() && kept == registered && finalizers == Some(None),
        format!("{registered} runs registered, {kept} after the delete ({deleted:?}); finalizers {finalizers:?}"),
    );
    sc.start_operator(cairn_e2e::operator::free_addr("127.0.0.1")?, &[])
        .await?;
    let forgotten = sc.until_zero(runs, 60).await;
    sc.check(
        "the operator back forgets the deleted FlowRun's run and its child",
        forgotten.is_ok(),
        format!("{forgotten:?}"),
    );
    sc.finish();
    Ok(())
}
