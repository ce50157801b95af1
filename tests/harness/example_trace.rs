//! What the example agent's trace must be, once its run crashed inside `draft` and waited for a
//! person (tests/traces.rs locally, the e2e's traces scenario on the cluster): one whole trace
//! with the right parents.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::otelcol::ReceivedSpan;

/// The spans of the trace whose root run is `name` in `namespace`, once that run's span is
/// among `spans`.
pub fn trace_of_run(
    spans: &[ReceivedSpan],
    namespace: &str,
    name: &str,
) -> Option<Vec<ReceivedSpan>> {
    let root = spans.iter().find(|s| {
        s.name.starts_with("run ")
            && s.attributes.get("cairn.run.name") == Some(&json!(name))
            && s.attributes.get("k8s.namespace.name") == Some(&json!(namespace))
    })?;
    Some(
        spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .cloned()
            .collect(),
    )
}

/// What is wrong with `trace`, the example run `name` with `children` child runs: empty when
/// its run span is the root, every other span has its parent in the trace, the attempts (one
/// crashed, one parked, the last completed) are under the run, each LLM step executed once
/// under the attempt that completed it (never the crashed one) with the GenAI attributes and
/// its cost, the wait for the person under the run, and the child runs under it with their
/// own attempts and steps.
pub fn example_trace_problems(trace: &[ReceivedSpan], name: &str, children: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    let by_id: BTreeMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &ReceivedSpan| by_id.get(s.parent_span_id.as_str()).copied();
    let attr = |s: &ReceivedSpan, key: &str| s.attributes.get(key).cloned().unwrap_or(Value::Null);
    let roots: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    let [root] = roots[..] else {
        return vec![format!("{} spans without a parent, not one", roots.len())];
    };
    expect(root.name == "run research", "the root is the run's span");
    expect(
        attr(root, "cairn.run.name") == json!(name),
        "the root names the run",
    );
    expect(
        attr(root, "cairn.run.phase") == json!("succeeded"),
        "the root says succeeded",
    );
    expect(
        attr(root, "cairn.cost_usd").as_f64() > Some(0.0),
        "the root carries the run's cost",
    );
    expect(
        trace
            .iter()
            .all(|s| s.parent_span_id.is_empty() || parent_of(s).is_some()),
        "every span's parent is in the trace",
    );

    let child_runs: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.name == "run summarize" && s.parent_span_id == root.span_id)
        .collect();
    expect(
        child_runs.len() == children,
        "each child run's span is under the root",
    );

    let attempts: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.name.starts_with("attempt ") && s.parent_span_id == root.span_id)
        .collect();
    let outcome = |s: &ReceivedSpan| attr(s, "cairn.attempt.outcome");
    let crashed = attempts.iter().find(|a| outcome(a) == json!("crashed"));
    expect(
        crashed.is_some_and(|a| a.error.is_some()),
        "an attempt crashed, as an error",
    );
    expect(
        attempts.iter().any(|a| outcome(a) == json!("suspended")),
        "an attempt parked",
    );
    let last = attempts
        .iter()
        .max_by_key(|a| attr(a, "cairn.attempt").as_i64());
    expect(
        last.is_some_and(|a| outcome(a) == json!("completed")),
        "the last attempt completed",
    );

    let under_attempt = |s: &&ReceivedSpan| {
        parent_of(s).is_some_and(|p| attempts.iter().any(|a| a.span_id == p.span_id))
    };
    let steps: Vec<&ReceivedSpan> = trace.iter().filter(under_attempt).collect();
    for key in ["plan", "draft", "final"] {
        let count = steps.iter().filter(|s| s.name == key).count();
        expect(
            count == 1,
            &format!("one span of step {key} under an attempt, not {count}"),
        );
    }
    expect(
        crashed.is_none_or(|c| steps.iter().all(|s| s.parent_span_id != c.span_id)),
        "no step span under the crashed attempt",
    );
    for step in &steps {
        let used = step.service == "research"
            && attr(step, "gen_ai.request.model") == json!("fake-llm-1")
            && attr(step, "gen_ai.usage.input_tokens").as_i64() > Some(0)
            && attr(step, "gen_ai.usage.output_tokens").as_i64() > Some(0)
            && attr(step, "cairn.cost_usd").as_f64() > Some(0.0);
        expect(used, &format!("step {} says what it used", step.name));
        // Clocks of the pod and of the launcher may differ by a little.
        let within = parent_of(step).is_some_and(|a| {
            step.start_ns + 50_000_000 >= a.start_ns && step.end_ns <= a.end_ns + 50_000_000
        });
        expect(
            within,
            &format!("step {} lies within its attempt", step.name),
        );
    }

    let wait = format!("wait event:approve-{name}");
    expect(
        trace
            .iter()
            .any(|s| s.name == wait && s.parent_span_id == root.span_id),
        "the wait for the person is under the run",
    );

    let summaries: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.name == "summarize").collect();
    expect(summaries.len() == children, "each child's step has a span");
    for summary in summaries {
        let child = parent_of(summary).and_then(parent_of);
        expect(
            child.is_some_and(|c| child_runs.iter().any(|r| r.span_id == c.span_id)),
            "a child's step is under its attempt, under the child run",
        );
    }
    problems
}
