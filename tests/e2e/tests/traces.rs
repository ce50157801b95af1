//! Traces on the real cluster (issue 17). Every scenario's operator traces (its
//! OTEL_EXPORTER_OTLP_ENDPOINT is the cluster's collector); here the example, crashed inside
//! its first step and then waiting for a person, must be one trace: the operator's run,
//! attempt and wait spans, and its flow pods' step spans, with the right parents.

use std::time::{Duration, Instant};

use cairn_e2e::flows::{event, run_of};
use cairn_e2e::{Phase, Scenario};
use cairn_tests::example_trace::{example_trace_problems, trace_of_run};
use cairn_tests::otelcol::{read_spans, render_tree};
use serde_json::json;

#[tokio::test]
#[ignore = "needs the test cluster: make test-cluster"]
async fn the_example_is_one_trace_across_its_crash_and_its_wait() -> anyhow::Result<()> {
    let mut sc = Scenario::with_operator("traces").await?;
    // A pod's ledger is its log, so the crash comes on attempt 1: inside `plan`.
    sc.create::<cairn_crds::Flow>(json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Flow", "metadata": { "name": "traced" },
        "spec": {
            "image": sc.setup.image.name, "flow": "research",
            "retry": { "maxAttempts": 3, "backoffSeconds": 1 },
            "env": [
                { "name": "CAIRN_EXAMPLE_CRASH_AT", "value": "plan" },
                { "name": "CAIRN_EXAMPLE_LEDGER", "value": "-" },
                { "name": "CAIRN_EXAMPLE_LLM_MS", "value": "20" },
            ],
        },
    }))
    .await?;
    run_of(
        &sc,
        "traced",
        "traced",
        json!({ "topic": "tracing agents", "breadth": 1 }),
    )
    .await?;

    let name = "the run crashes inside plan, then waits for its approval";
    match sc.wait_event("traced", "approve-traced", 240).await {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, "traced").await,
    }
    event(&sc, "approve-traced", "approve-traced", json!(true)).await?;
    let name = "approved, it succeeds";
    match sc.wait_phase("traced", Phase::Succeeded, 180).await {
        Ok(_) => sc.check(name, true, ""),
        Err(e) => sc.fail_explained(name, e, "traced").await,
    }

    // The operator exports a run's own spans within seconds of its end.
    let started = Instant::now();
    let trace = loop {
        let spans = read_spans(&sc.setup.cluster.otlp.spans);
        if let Some(trace) = trace_of_run(&spans, &sc.ns, "traced") {
            break Some(trace);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let name =
        "the run is one trace: run, attempts and wait from the operator, steps from the pods";
    match trace {
        Some(trace) => {
            let problems = example_trace_problems(&trace, "traced", 1);
            let tree = render_tree(&trace);
            eprintln!("e2e: the trace of run traced:\n{tree}");
            sc.check(
                name,
                problems.is_empty(),
                format!("{problems:?} in\n{tree}"),
            );
        }
        None => sc.fail(name, "the collector got no span of run traced within 60 s"),
    }
    sc.finish();
    Ok(())
}
