//! A flow pod's traffic to Postgres dropped on the node by iptables (no reset, no answer: a
//! network gone silent): the engine call in flight gives up within
//! `CAIRN_DATABASE_CALL_TIMEOUT_MS`, the process exits, the attempt counts as a crash, and the
//! next pod carries the run on from its last checkpoint.

use std::process::Command;
use std::time::Instant;

use cairn_e2e::scenario::pod_ended;
use cairn_e2e::{Phase, Scenario};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// The flow pods' bound on one engine call in this test (the default is 30 s).
const CALL_TIMEOUT_MS: u64 = 5000;

/// Rules that drop every packet between one pod and Postgres, both ways, until dropped.
/// Postgres listens on the node (the bridge gateway), so the pod's packets meet INPUT and
/// Postgres's answers OUTPUT; a pod of another scenario has another address.
struct Silence {
    rules: Vec<Vec<String>>,
}

impl Silence {
    fn start(pod_ip: &str, pg_port: u16) -> anyhow::Result<Silence> {
        let port = pg_port.to_string();
        let rules: Vec<Vec<String>> = [
            [
                "INPUT", "-s", pod_ip, "-p", "tcp", "--dport", &port, "-j", "DROP",
            ],
            [
                "OUTPUT", "-d", pod_ip, "-p", "tcp", "--sport", &port, "-j", "DROP",
            ],
        ]
        .iter()
        .map(|rule| rule.iter().map(|s| s.to_string()).collect())
        .collect();
        let mut silence = Silence { rules: Vec::new() };
        for rule in rules {
            iptables("-I", &rule)?;
            silence.rules.push(rule);
        }
        Ok(silence)
    }
}

impl Drop for Silence {
    fn drop(&mut self) {
        for rule in &self.rules {
            if let Err(e) = iptables("-D", rule) {
                eprintln!("e2e: could not remove an iptables rule: {e:#}");
            }
        }
    }
}

/// `iptables -w <op> <rule>`: waits for the xtables lock, which kube-proxy takes too.
fn iptables(op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .args(["-w", "30", op])
        .args(rule)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "iptables {op} {}: {}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The port the cluster's Postgres listens on, from the URL the harness has for it.
fn postgres_port() -> anyhow::Result<u16> {
    let url = url::Url::parse(&cairn_e2e::cluster::env_var("CAIRN_CLUSTER_PG_URL")?)?;
    Ok(url.port().unwrap_or(5432))
}

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn a_pod_cut_off_from_postgres_crashes_within_the_bound_and_the_next_one_goes_on()
-> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("silent").await?;
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "looper" },
        "spec": {
            "image": sc.setup.flows_image.name, "flow": "looper",
            "retry": { "maxAttempts": 3, "backoffSeconds": 1 },
            "env": [
                { "name": "CAIRN_TEST_LOG", "value": "-" },
                { "name": "CAIRN_DATABASE_CALL_TIMEOUT_MS", "value": CALL_TIMEOUT_MS.to_string() },
            ],
        },
    }))
    .await?;
    sc.create::<cairn_crds::FlowRun>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "FlowRun", "metadata": { "name": "silent" },
        "spec": { "flowRef": "looper", "input": { "n": 4, "step_ms": 2000 } },
    }))
    .await?;

    let name = "a pod whose packets to Postgres are dropped ends as a crash within the call bound, and the next pod finishes the run";
    // Silent while step tick:1 runs: its checkpoint, 2 s later, gets no answer.
    let victim = match sc.wait_run_log("silent", "\ttick:1\t", 120).await {
        Ok(victim) => victim,
        Err(e) => {
            sc.fail_explained(name, e, "silent").await;
            sc.finish();
            return Ok(());
        }
    };
    let pod_ip = sc
        .api::<Pod>()
        .get(&victim)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .unwrap_or_default();
    let silence = Silence::start(&pod_ip, postgres_port()?)?;
    let silenced = Instant::now();
    let crashed = sc
        .wait_pod(&victim, "end while cut off", 120, pod_ended)
        .await
        .map(|_| silenced.elapsed());
    // Its address goes back to the pool with it: lift the rules before another pod gets it.
    drop(silence);
    let outcome = match crashed {
        Ok(crashed) => sc
            .wait_phase("silent", Phase::Succeeded, 180)
            .await
            .map(|run| (crashed, run)),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((crashed, run)) => {
            println!(
                "figure: a flow pod cut off from Postgres mid-step ended {crashed:.1?} later \
                 (CAIRN_DATABASE_CALL_TIMEOUT_MS={CALL_TIMEOUT_MS})"
            );
            let run_id = run.status.and_then(|s| s.run_id).unwrap_or_default();
            let first_outcome = sc
                .count(&format!(
                    "SELECT count(*) FROM cairn.attempts \
                     WHERE run_id = '{run_id}' AND attempt = 1 AND outcome = 'crashed'"
                ))
                .await
                .unwrap_or(-1);
            let pods = sc.pods_of("silent").await;
            let mut effects = Vec::new();
            for pod in &pods {
                let log = sc.log_of(pod).await;
                effects.extend(
                    log.lines()
                        .filter_map(|l| l.strip_prefix("effect\tsilent\t"))
                        .filter_map(|l| l.split('\t').next().map(str::to_owned)),
                );
            }
            let ran = |what: &str| effects.iter().filter(|e| *e == what).count();
            // The runner's own words for the bound it hit, not some other failure.
            let victim_log = sc.log_of(&victim).await;
            let gave_up = victim_log.contains("no answer from the database within");
            sc.check(
                name,
                first_outcome == 1
                    && gave_up
                    && pods.len() >= 2
                    && ran("tick:0") == 1
                    && ran("tick:3") == 1,
                format!(
                    "attempt 1 crashed: {first_outcome}; pods {pods:?}; effects {effects:?} \
                     (tick:0 once, before the silence; tick:3 once, after it); the cut-off \
                     pod said it got no answer: {gave_up} ({})",
                    cairn_e2e::operator::tail(&victim_log, 5)
                ),
            );
        }
        Err(e) => sc.fail_explained(name, e, "silent").await,
    }
    sc.finish();
    Ok(())
}
