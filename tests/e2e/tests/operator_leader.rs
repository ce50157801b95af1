//! Two operators for one namespace on the real cluster: one acts, the other stands by and takes
//! over, nothing lost or doubled; then, under the new leader, the running budget, an approval
//! checked against the wait's schema, least privilege of flow pods, and health and metrics.

use std::time::{Duration, Instant};

use cairn_crds::{FlowEvent, FlowRun};
use cairn_e2e::flows::{event, research_flow, run_of};
use cairn_e2e::{Phase, Scenario};
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_standby_takes_over_and_the_new_leader_keeps_every_promise() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("leader").await?;
    research_flow(&sc, None).await?;
    let input = json!({ "topic": "operator restarts", "breadth": 2 });
    run_of(&sc, "restarted", "research", input).await?;
    let _ = sc
        .wait_pod("restarted-a1", "be created", 60, |_| true)
        .await;

    // The standby runs with a small running budget, tried once it leads.
    let standby_addr = cairn_e2e::operator::free_addr("127.0.0.1")?;
    let standby = sc
        .start_operator(standby_addr, &["--max-running-per-namespace", "2"])
        .await?;
    let name = "a second operator stands by while the Lease is held";
    // Proof that it stands by: the leader renews the Lease after the standby began waiting for
    // it, and the standby still does not hold it.
    let waiting_since = k8s_openapi::jiff::Timestamp::now();
    let renewed = sc
        .wait_for::<Lease>("cairn-e2e", "be renewed by the leader", 60, move |l| {
            l.spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .is_some_and(|t| t.0 > waiting_since)
        })
        .await;
    let ready = sc.operators[standby].get("/readyz").await;
    let standby_log = sc.operators[standby].log_tail(5);
    sc.check(
        name,
        renewed.is_ok()
            && !standby_log.contains("holding the Lease")
            && ready.as_deref().map(str::trim) == Some("ok"),
        format!(
            "expected the leader to renew while the standby waits, ready; renewal: {:?}, \
             readyz {ready:?}; standby log: {standby_log}",
            renewed.err()
        ),
    );

    sc.operators[0].stop();
    let name = "when the leader stops, the standby takes over and the run carries on with one pod per attempt";
    // A run created after the handover is the new leader's from the start.
    let input = json!({ "topic": "new leaders", "breadth": 1 });
    run_of(&sc, "after-handover", "research", input).await?;
    let took_over = sc.operators[standby]
        .wait_log("holding the Lease", Duration::from_secs(60))
        .await
        .map_err(|e| format!("{e:#}"));
    let waits = async {
        took_over?;
        sc.wait_event("restarted", "approve-restarted", 180).await?;
        sc.wait_event("after-handover", "approve-after-handover", 180)
            .await
    }
    .await;
    match waits {
        Ok(_) => {
            let status = sc.status("restarted").await;
            let id = status.run_id.unwrap_or_default();
            let pods = sc.pods(&format!("cairn.dev/run={id}")).await.len();
            sc.check(
                name,
                Some(pods as i32) == status.attempt,
                format!(
                    "expected one pod per attempt; {pods} pods for attempt {:?}",
                    status.attempt
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "restarted").await,
    }

    budget(&mut sc).await?;
    schema_checked_approval(&mut sc).await?;
    least_privilege(&mut sc).await?;
    let standby = killed_leader_handover(&mut sc, standby).await?;

    let name = "the operator serves /livez, /readyz and /metrics with run counts and launches";
    let op = &sc.operators[standby];
    let (livez, readyz) = (op.get("/livez").await, op.get("/readyz").await);
    let metrics = op.get("/metrics").await.unwrap_or_default();
    let value = |metric: &str| -> Option<f64> {
        metrics.lines().find_map(|l| {
            l.strip_prefix(metric)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    let launches = value("cairn_pod_launches_total ").unwrap_or(0.0);
    let resumes = match (
        value("cairn_resume_latency_seconds_sum "),
        value("cairn_resume_latency_seconds_count "),
    ) {
        (Some(s), Some(n)) if n > 0.0 => format!(
            "resume latency (runnable -> pod created) mean {:.0} ms over {n} resumes",
            1000.0 * s / n
        ),
        _ => "no resumes since the handover".into(),
    };
    let ok = |b: &Option<String>| b.as_deref().map(str::trim) == Some("ok");
    sc.check(
        &format!("{name} ({resumes})"),
        ok(&livez)
            && ok(&readyz)
            && metrics.contains(r#"cairn_runs{phase="succeeded"}"#)
            && launches > 0.0,
        format!(
            "expected ok, ok, succeeded runs counted and launches > 0; livez {livez:?}, \
             readyz {readyz:?}, launches {launches} since the handover"
        ),
    );
    sc.finish();
    Ok(())
}

/// The leader SIGKILLed (it releases nothing): a new standby takes the Lease once it expires
/// and acts; a run created meanwhile launches under it. Prints the handover time (a figure,
/// not a bound: `--lease-seconds`, 4 by default, and up to a second more). Returns the index
/// of the new leader.
async fn killed_leader_handover(sc: &mut Scenario, leader: usize) -> anyhow::Result<usize> {
    let addr = cairn_e2e::operator::free_addr("127.0.0.1")?;
    let next = sc.start_operator(addr, &[]).await?;
    sc.operators[leader].kill();
    let killed = Instant::now();
    let name =
        "when the leader is SIGKILLed, a standby takes over once its Lease expires and launches";
    let took_over = sc.operators[next]
        .wait_log("holding the Lease", Duration::from_secs(60))
        .await
        .map(|_| killed.elapsed());
    let input = json!({ "topic": "sudden deaths", "breadth": 1 });
    run_of(sc, "after-kill", "research", input).await?;
    let launched = sc
        .wait_run("after-kill", "have an attempt", 120, |s| {
            s.attempt.unwrap_or(0) >= 1
        })
        .await;
    match (took_over, launched) {
        (Ok(handover), Ok(_)) => {
            println!("figure: handover after the leader's SIGKILL: {handover:.1?}");
            sc.check(&format!("{name} (handover {handover:.1?})"), true, "");
        }
        (took_over, launched) => {
            let seen = format!("took over: {took_over:?}; launched: {:?}", launched.err());
            sc.fail_explained(name, seen, "after-kill").await;
        }
    }
    Ok(next)
}

/// Over the running budget (the standby's flag: 2), runs wait Pending with the reason.
async fn budget(sc: &mut Scenario) -> anyhow::Result<()> {
    for i in 1..=5 {
        sc.create::<FlowRun>(json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowRun",
            "metadata": { "name": format!("budget-{i}") },
            "spec": {
                "image": sc.setup.image.name, "flow": "research",
                "input": { "topic": "budgets", "breadth": 1 },
                "env": [{ "name": "CAIRN_EXAMPLE_LLM_MS", "value": "1500" }],
            },
        }))
        .await?;
    }
    let name = "over the running budget, runs wait Pending with the reason, and all get their turn";
    let running_sql = format!(
        "SELECT count(*) FROM cairn.runs WHERE namespace = '{}' AND state = 'running'",
        sc.ns
    );
    let (mut most, mut held, mut waiting) = (0, false, 0);
    // Sampled (the budget is a bound over time): the most running at once, until all 5 wait.
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline {
        most = most.max(sc.count(&running_sql).await.unwrap_or(0));
        let runs = sc.api::<FlowRun>().list(&Default::default()).await?.items;
        let status = |r: &FlowRun| r.status.clone().unwrap_or_default();
        held |= runs.iter().any(|r| {
            status(r)
                .conditions
                .first()
                .is_some_and(|c| c.reason == "WaitingForSlot")
        });
        waiting = runs
            .iter()
            .filter(|r| {
                r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("budget-"))
            })
            .filter(|r| status(r).phase == Some(Phase::Waiting))
            .count();
        if waiting == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sc.check(
        &format!("{name} (at most {most} running; all 5 reached Waiting)"),
        waiting == 5 && most <= 2 && held,
        format!(
            "expected all 5 Waiting, never more than 2 running, WaitingForSlot seen; {waiting} \
             of 5 waiting, at most {most} running at once, held back: {held}"
        ),
    );
    // "Waiting" includes waiting for their children: deleting them frees the budget's two
    // slots for the checks below.
    for i in 1..=5 {
        let _ = sc
            .api::<FlowRun>()
            .delete(&format!("budget-{i}"), &Default::default())
            .await;
    }
    Ok(())
}

/// An approval failing the wait's schema is refused; a valid one completes the run.
async fn schema_checked_approval(sc: &mut Scenario) -> anyhow::Result<()> {
    let name = "an approval failing the wait's schema is refused, the run keeps waiting, and a valid one completes it";
    // Only a wait that exists can check a payload: emitted earlier, the run would fail on it.
    let waiting = sc
        .wait_event("after-handover", "approve-after-handover", 180)
        .await;
    let wrong = "approve-after-handover-wrong";
    event(sc, wrong, "approve-after-handover", json!("yes please")).await?;
    let refused = async {
        waiting?;
        sc.wait_for::<FlowEvent>(wrong, "be refused", 60, |e| {
            e.status.as_ref().and_then(|s| s.delivered) == Some(false)
        })
        .await
    }
    .await;
    match refused {
        Ok(fe) => {
            let message = fe.status.and_then(|s| s.message).unwrap_or_default();
            let phase = sc.status("after-handover").await.phase;
            let ev = "approve-after-handover";
            event(sc, ev, ev, json!(true)).await?;
            let done = sc.wait_phase("after-handover", Phase::Succeeded, 120).await;
            if message.contains("schema") && phase == Some(Phase::Waiting) && done.is_ok() {
                sc.check(name, true, "");
            } else {
                let seen = format!(
                    "expected a refusal naming the schema while Waiting, then Succeeded; \
                     refusal {message:?}, phase then {phase:?}, then: {:?}",
                    done.err()
                );
                sc.fail_explained(name, seen, "after-handover").await;
            }
        }
        Err(e) => sc.fail_explained(name, e, "after-handover").await,
    }
    Ok(())
}

/// Flow pods' credentials reach no table, only their own run.
async fn least_privilege(sc: &mut Scenario) -> anyhow::Result<()> {
    let name = "flow pods log in over verify-full as the runner role, which can touch no table, and carry their attempt's token";
    let runner_url = sc.secret("cairn-runner-db", "database-url").await;
    // Pods reach the cluster's Postgres over verify-full, with the CA the operator put in the
    // same Secret (mounted at /etc/cairn/db): connect as they do, that CA in a file here.
    let ca = sc.secret("cairn-runner-db", "ca.crt").await;
    let connected = match url_with_ca_file(&runner_url, &ca, &sc.dir.join("runner-ca.crt")) {
        Ok(url) => <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let (login, tables) = match connected {
        Ok(mut conn) => {
            let login: Result<String, _> = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&mut conn)
                .await;
            let tables: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM cairn.steps")
                .fetch_one(&mut conn)
                .await;
            (
                login.unwrap_or_else(|e| e.to_string()),
                tables.map_or_else(|e| e.to_string(), |n| format!("{n} rows read")),
            )
        }
        Err(e) => (format!("no connection: {e}"), String::new()),
    };
    // Any flow pod of the run (which attempts had pods depends on how the handover went).
    let id = sc.status("after-handover").await.run_id.unwrap_or_default();
    let pods = sc.pods(&format!("cairn.dev/run={id}")).await;
    let token_ref = pods
        .first()
        .and_then(|p| {
            let env = p.spec.as_ref()?.containers[0].env.as_ref()?;
            let token = env.iter().find(|e| e.name == "CAIRN_TOKEN")?;
            Some(
                token
                    .value_from
                    .as_ref()?
                    .secret_key_ref
                    .as_ref()?
                    .name
                    .clone(),
            )
        })
        .unwrap_or_default();
    if login.ends_with("runner_login")
        && tables.contains("permission denied")
        && token_ref.starts_with("cairn-token-")
    {
        sc.check(name, true, "");
    } else {
        let seen = format!(
            "expected the runner login, permission denied on cairn.steps, the token from a \
             cairn-token- Secret; login {login:?}; reading cairn.steps: {tables:?}; token from \
             {token_ref:?}"
        );
        sc.fail_explained(name, seen, "after-handover").await;
    }
    Ok(())
}

/// `url` (sslmode=verify-full, sslrootcert naming the pods' mount) with the CA written to `file`
/// and named instead, or what is missing for that.
fn url_with_ca_file(url: &str, ca: &str, file: &std::path::Path) -> Result<String, String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("the runner URL: {e}"))?;
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if !pairs
        .iter()
        .any(|(k, v)| k == "sslmode" && v == "verify-full")
    {
        return Err("the runner URL does not say sslmode=verify-full".into());
    }
    if !ca.contains("BEGIN CERTIFICATE") {
        return Err("the runner Secret holds no ca.crt".into());
    }
    std::fs::write(file, ca).map_err(|e| e.to_string())?;
    let file = file.to_string_lossy();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs.iter().map(|(k, v)| match k.as_str() {
            "sslrootcert" => (k.as_str(), &*file),
            _ => (k.as_str(), v.as_str()),
        }));
    Ok(parsed.to_string())
}
