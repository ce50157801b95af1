//! The console's pages, from what the Backend returns: the runs table's rows and the engine's
//! `RunDetail`. maud escapes every `(…)` splice; `PreEscaped` only wraps markup rendered
//! here. The live parts are rendered by the same functions as the first page.

use std::collections::HashMap;

use cairn_engine::read_api::{Artifact, RunDetail, RunSummary, Step};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ListQuery, RunView, chart, form};
use crate::kubectl::render::{RunRow, tree_order};
use crate::lifecycle::Phase;

/// A short version of rendered markup: the live stream sends nothing while it is unchanged.
pub fn version(markup: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    markup.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cairn" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header { a href="/" { "cairn" } " " span .title { (title) } }
                main { (body) }
            }
        }
    }
}

/// What a path segment or query value keeps as is: the unreserved characters of RFC 3986.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment or query value, percent-encoded.
fn encode(part: &str) -> String {
    utf8_percent_encode(part, UNRESERVED).to_string()
}

fn run_href(namespace: &str, name: &str) -> String {
    format!("/runs/{}/{}", encode(namespace), encode(name))
}

fn usd(value: Option<f64>) -> String {
    value.map_or_else(String::new, |u| format!("${u:.4}"))
}

fn phase_badge(phase: Option<Phase>) -> Markup {
    let phase = phase.map_or_else(|| "Pending".to_owned(), |p| p.to_string());
    html! { span .phase data-phase=(phase) { (phase) } }
}

pub fn list_page(rows: &[RunRow], query: &ListQuery) -> Markup {
    let live = format!(
        "/events/runs?phase={}&flow={}&namespace={}",
        encode(&query.phase),
        encode(&query.flow),
        encode(query.namespace())
    );
    let rendered = run_rows(rows, query.namespace().is_empty()).into_string();
    layout(
        "runs",
        html! {
            form .filters method="get" action="/" {
                label { "phase " select name="phase" {
                    option value="" { "any" }
                    @for p in Phase::ALL { option value=(p) selected[query.phase == p.to_string()] { (p) } }
                } }
                label { "flow " input name="flow" value=(query.flow) size="14"; }
                label { "namespace " input name="namespace" value=(query.namespace()) size="14" placeholder="all"; }
                button { "filter" }
            }
            table .runs {
                thead { tr { th { "run" } th { "namespace" } th { "flow" } th { "phase" } th { "steps" } th { "cost" } th { "waiting for" } th { "created" } } }
                tbody #runs data-live=(format!("{live}&since={}", version(&rendered))) { (PreEscaped(rendered)) }
            }
        },
    )
}

/// The rows of the run list, children under their parents: also what the live update sends.
pub fn run_rows(rows: &[RunRow], all_namespaces: bool) -> Markup {
    html! {
        @for (depth, row) in tree_order(rows) {
            tr data-run=(row.name) {
                td style=(format!("padding-left:{}rem", 0.5 + 1.2 * depth as f64)) {
                    a href=(run_href(&row.namespace, &row.name)) { (row.name) }
                }
                td { (row.namespace) }
                td { (row.flow) }
                td { (phase_badge(row.phase)) }
                td .num { (row.steps.map(|s| s.to_string()).unwrap_or_default()) }
                td .num { (usd(row.usd)) }
                td { (row.waiting) }
                td { (row.created.map(|c| c.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()) }
            }
        }
        @if rows.is_empty() {
            tr { td colspan="8" .empty { "no runs" @if !all_namespaces { " in this namespace" } " match" } }
        }
    }
}

pub fn run_page(view: &RunView) -> Markup {
    let run = &view.detail.run;
    let href = run_href(&run.namespace, &run.name);
    let api = format!("/api{href}");
    let parts = run_parts(view);
    let live = format!("/events{href}?since={}", version(&parts.to_string()));
    // A live part, as run_parts rendered it (the update sends the very same markup), with
    // the version the page compares updates with.
    let part = |tag: &str, key: &str| {
        let html = parts["parts"][key].as_str().unwrap_or("").to_owned();
        let version = parts["versions"][key].as_str().unwrap_or("").to_owned();
        html! { div #(key) .(tag) data-version=(version) { (PreEscaped(html)) } }
    };
    html! {
        (layout(&run.name, html! {
            section .run-head #live data-live=(live) {
                h1 { (run.name) " " span .phase #phase data-phase=(run.phase) { (run.phase) } }
                p {
                    "flow " b { (run.flow) } " · namespace " (run.namespace) " · created " (stamp(run.created_at))
                    @if let Some(parent) = &run.parent { " · parent " a href=(run_href(&run.namespace, parent)) { (parent) } }
                }
                div .buttons {
                    button .steer data-action=(format!("{api}/cancel")) data-confirm=(format!("Cancel {}?", run.name)) { "cancel" }
                    button .steer data-action=(format!("{api}/retry")) data-confirm=(format!("Run {} again from its last checkpoint?", run.name)) { "retry" }
                }
                output #result role="status" {}
            }
            (part("wait", "wait"))
            section { h2 { "steps" } (part("part", "steps")) }
            section { h2 { "over time" } (part("part", "chart")) }
            section { h2 { "artifacts" } (part("part", "artifacts")) }
            section { h2 { "children" } (part("part", "children")) }
            section { h2 { "executions" } (part("part", "attempts")) }
        }))
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The live parts of a run page as HTML, each with its version: the page replaces a part
/// only when its version changed, so the question form (which holds no typed input in its
/// markup) is replaced only when the question itself changed, and an open log stays open.
pub fn run_parts(view: &RunView) -> Value {
    let detail = &view.detail;
    let parts = [
        ("wait", wait_section(detail)),
        ("steps", steps_table(detail)),
        ("chart", chart::over_time(detail)),
        ("artifacts", artifacts_table(detail, &view.artifacts)),
        ("children", children_tree(detail)),
        ("attempts", attempts_table(detail)),
    ]
    .map(|(key, markup)| (key, markup.into_string()));
    let versions: serde_json::Map<String, Value> = parts
        .iter()
        .map(|(key, html)| (key.to_string(), version(html).into()))
        .collect();
    let parts: serde_json::Map<String, Value> = parts
        .into_iter()
        .map(|(key, html)| (key.to_owned(), html.into()))
        .collect();
    json!({ "phase": detail.run.phase.to_string(), "parts": parts, "versions": versions })
}

fn steps_table(detail: &RunDetail) -> Markup {
    let start = detail.run.created_at;
    let offset = |step: &Step| (step.started_at - start).num_milliseconds().max(0) as f64;
    // An open wait is drawn from its start to the end of the timeline, and its duration is
    // not shown ticking: a parked run's page stays the same until something happens.
    let open = |step: &Step| step.status == "waiting";
    // The span the timeline bars share: the run's start to its last step's end (or its last
    // wait's start).
    let span = detail
        .steps
        .iter()
        .map(|step| offset(step) + if open(step) { 0.0 } else { step.duration_ms })
        .fold(1.0, f64::max);
    let width = |step: &Step| match open(step) {
        true => 100.0 - 100.0 * offset(step) / span,
        false => (100.0 * step.duration_ms / span).max(0.5),
    };
    let fork = format!(
        "/api{}/fork",
        run_href(&detail.run.namespace, &detail.run.name)
    );
    let totals = &detail.totals;
    html! {
        table .steps {
            thead { tr { th { "step" } th { "status" } th .timeline { "timeline" } th { "duration" } th { "tokens in / out" } th { "cost" } th { "model" } th { "output" } th {} } }
            tbody {
                @for step in &detail.steps {
                    tr .step data-step=(step.key) data-status=(step.status) {
                        td { (step.key) small { " " (step.kind) } }
                        td { (step.status) @if let Some(origin) = &step.origin { small { " (" (origin) ")" } } }
                        td .timeline { span .bar style=(format!("margin-left:{:.1}%;width:{:.1}%", 100.0 * offset(step) / span, width(step).max(0.5))) {} }
                        td .num { @if open(step) { "since " (step.started_at.format("%H:%M:%S")) } @else { (format!("{:.1} s", step.duration_ms / 1000.0)) } }
                        td .num { @if let (Some(i), Some(o)) = (step.tokens_in, step.tokens_out) { (i) " / " (o) } }
                        td .num { (usd(step.usd)) }
                        td { (step.model.as_deref().unwrap_or("")) }
                        td .preview {
                            @if step.sensitive { i { "sensitive" } }
                            @else if let Some(error) = &step.error { span .error { (error) } }
                            @else { code title=(step.preview.as_deref().unwrap_or("")) { (step.preview.as_deref().unwrap_or("")) } }
                        }
                        td { @if step.status == "completed" && step.kind == "step" {
                            button .steer .small data-action=(fork) data-body=(json!({ "from_step": step.key }).to_string())
                                data-confirm=(format!("Fork {} from step {}? A new run reuses the steps before it and runs it again.", detail.run.name, step.key)) { "fork here" }
                        } }
                    }
                }
            }
            tfoot { tr { td colspan="4" { "total: " (totals.steps) " steps" } td .num { (totals.tokens_in) " / " (totals.tokens_out) } td .num { (usd(Some(totals.usd))) } td colspan="3" {} } }
        }
    }
}

/// The objects the run's steps stored, each a download.
fn artifacts_table(detail: &RunDetail, artifacts: &[Artifact]) -> Markup {
    let base = format!(
        "/api{}/artifacts",
        run_href(&detail.run.namespace, &detail.run.name)
    );
    html! {
        @if artifacts.is_empty() { p .empty { "none" } }
        @else {
            table .artifacts {
                thead { tr { th { "name" } th { "step" } th { "type" } th { "size" } th { "stored" } } }
                tbody {
                    @for artifact in artifacts {
                        tr data-artifact=(artifact.name) {
                            td {
                                @if artifact.sensitive { (artifact.name) " " i { "sensitive" } }
                                @else { a href=(format!("{base}/{}", encode(&artifact.name))) download { (artifact.name) } }
                            }
                            td { (artifact.step) }
                            td { (artifact.content_type) }
                            td .num { (artifact.size) " B" }
                            td { (stamp(artifact.created_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// The children as a tree, grandchildren under their parents where the detail has them.
fn children_tree(detail: &RunDetail) -> Markup {
    let mut by_parent: HashMap<Option<Uuid>, Vec<&RunSummary>> = HashMap::new();
    for child in &detail.children {
        by_parent.entry(child.parent_id).or_default().push(child);
    }
    fn branch(
        parent: Option<Uuid>,
        by_parent: &HashMap<Option<Uuid>, Vec<&RunSummary>>,
        depth: usize,
    ) -> Markup {
        let kids = by_parent.get(&parent).map_or(&[][..], Vec::as_slice);
        html! {
            @if !kids.is_empty() && depth < 16 {
                ul .tree {
                    @for child in kids {
                        li {
                            a href=(run_href(&child.namespace, &child.name)) { (child.name) }
                            " " (phase_badge(Some(child.phase))) " " (child.flow) " " (usd(Some(child.usd)))
                            (branch(Some(child.id), by_parent, depth + 1))
                        }
                    }
                }
            }
        }
    }
    html! {
        @if detail.children.is_empty() { p .empty { "none" } }
        @else { (branch(Some(detail.run.id), &by_parent, 0)) }
    }
}

/// The executions (pods on a cluster), each with its logs on demand.
fn attempts_table(detail: &RunDetail) -> Markup {
    let logs = format!(
        "/api{}/logs",
        run_href(&detail.run.namespace, &detail.run.name)
    );
    html! {
        @if detail.attempts.is_empty() { p .empty { "none yet" } }
        @for attempt in &detail.attempts {
            details .logs data-src=(format!("{logs}?attempt={}", attempt.attempt)) {
                summary {
                    "execution " (attempt.attempt) " · " (stamp(attempt.started_at))
                    " · " (attempt.outcome.as_deref().unwrap_or("running"))
                    @if let Some(why) = &attempt.detail { " · " (why) }
                }
                pre { "loading…" }
            }
        }
    }
}

fn wait_section(detail: &RunDetail) -> Markup {
    let Some(wait) = &detail.wait else {
        return html! {};
    };
    let api = format!("/api{}", run_href(&detail.run.namespace, &detail.run.name));
    html! {
        h2 { "waiting for " (wait.kind) @if let Some(event) = &wait.event { " " code { (event) } } }
        @if let Some(question) = &wait.question { p .question { (question) } }
        @if let Some(deadline) = wait.deadline { p .deadline { "times out at " (stamp(deadline)) } }
        @if let Some(until) = wait.until { p .deadline { "until " (stamp(until)) } }
        @if let Some(reason) = &wait.reason { p { (reason) } }
        @if wait.kind == "event" {
            (form::question_form(&format!("{api}/answer?event={}", encode(wait.event.as_deref().unwrap_or(""))), wait.schema.as_ref()))
        }
        @if wait.kind == "budget" {
            p { (wait.budget_run.as_deref().unwrap_or(&detail.run.name)) " spent " (usd(wait.spent_usd)) " of its " (usd(wait.limit_usd)) " budget." }
            form #budget data-action=(format!("{api}/budget")) {
                label { "new budget (US dollars) " input #budget-usd name="usd" type="number" min="0" step="any" required; }
                button type="submit" { "raise the budget" }
            }
        }
    }
}
