//! `inspect` as text: one renderer for every source of what is known about a run. The engine's
//! detail (the operator's read API, or the database for `cairn dev inspect`) knows the most;
//! without it, `kubectl cairn inspect` falls back to the FlowRun's status. Sources differ in
//! what they know (only the engine has steps, attempts and costs), never in how a thing they
//! both know is shown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    RunRow, Ui, attempts_table, compact_json, duration, money, runs_table, schema_text,
    steps_table, when,
};
use crate::lifecycle::Phase;
use cairn_engine::read_api::RunDetail;

/// Kubernetes' view of a run, shown next to (or instead of) the engine's detail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeView {
    pub pod: Option<String>,
    pub image_digest: Option<String>,
    /// The Ready condition's message.
    pub condition: Option<String>,
    /// Pods by attempt.
    pub pods: BTreeMap<i32, String>,
}

/// What answers a wait: an event, or a raise of a run's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer<'a> {
    Event(&'a str),
    /// The run whose budget to raise, and what its tree spent.
    Budget {
        run: &'a str,
        spent: f64,
    },
}

/// How to answer a wait, for the hint under a question (`kubectl cairn approve RUN --data`).
pub type AnswerHint<'a> = &'a dyn Fn(Answer<'_>) -> String;

/// The labelled lines above the tables: what every source knows about a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub name: String,
    pub namespace: String,
    /// The engine's id of the run, or why there is none yet.
    pub id: String,
    pub flow: String,
    pub parent: Option<String>,
    /// For a fork: where it comes from, in words.
    pub fork: Option<String>,
    pub phase: Option<Phase>,
    /// The budget the run's tree is held to and what the tree spent (US dollars).
    pub budget: Option<(f64, f64)>,
    /// After the phase: `execution 2, crashes 1 of 3` (the engine), or
    /// `execution 1, crashes 0, 3 steps, $0.0100` (a FlowRun's status).
    pub progress: String,
    pub created: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    /// What it waits for, in words (`event approve-x`, `timer ...`).
    pub waiting: Option<String>,
    pub wait: WaitLines,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// What is known of the current wait, each shown when there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitLines {
    pub question: Option<String>,
    /// The JSON schema an answer must satisfy.
    pub schema: Option<Value>,
    /// When an event wait times out.
    pub deadline: Option<DateTime<Utc>>,
    /// When a sleep or a crash backoff ends.
    pub until: Option<DateTime<Utc>>,
    /// The crash a retry backs off from.
    pub crash: Option<String>,
    /// The event that answers it (shown with the answer hint).
    pub event: Option<String>,
    /// A budget wait: the run whose budget was passed, what its tree spent, and the budget.
    pub budget: Option<(String, f64, f64)>,
}

impl Header {
    /// From the engine's detail of the run.
    pub fn of_detail(detail: &RunDetail) -> Header {
        let run = &detail.run;
        let cancel = if run.cancel_requested && !run.phase.is_terminal() {
            ", cancellation requested"
        } else {
            ""
        };
        let wait = detail.wait.as_ref();
        Header {
            name: run.name.clone(),
            namespace: run.namespace.clone(),
            id: run.id.to_string(),
            flow: run.flow.clone(),
            parent: run.parent.clone(),
            fork: run.fork_of.as_ref().map(|fork| {
                let text = |key: &str| fork.get(key).and_then(Value::as_str).unwrap_or("?");
                let count = |key: &str| fork.get(key).and_then(Value::as_i64).unwrap_or(0);
                format!(
                    "from {} at step {} ({} step(s) reused, {} set)",
                    text("run"),
                    text("step"),
                    count("reused"),
                    count("set")
                )
            }),
            phase: Some(run.phase),
            budget: run
                .budget_usd
                .map(|limit| (limit, run.tree_usd.unwrap_or(run.usd))),
            progress: format!(
                "execution {}, crashes {} of {}{cancel}",
                run.attempt, run.crashes, run.max_attempts
            ),
            created: Some(run.created_at),
            finished: run.finished_at,
            waiting: wait.map(|w| w.summary()),
            wait: wait
                .map(|w| WaitLines {
                    question: w.question.clone(),
                    schema: w.schema.clone(),
                    deadline: w.deadline,
                    // An event wait's `until` is its deadline, shown as such.
                    until: w.until.filter(|_| w.kind != "event"),
                    crash: w.reason.clone(),
                    event: w.event.clone(),
                    budget: w.budget_run.clone().map(|run| {
                        (
                            run,
                            w.spent_usd.unwrap_or_default(),
                            w.limit_usd.unwrap_or_default(),
                        )
                    }),
                })
                .unwrap_or_default(),
            result: run.result.clone(),
            error: run.error_message().map(str::to_owned),
        }
    }
}

/// Everything `inspect` shows of one run.
pub struct Inspect<'a> {
    pub header: Header,
    /// Steps, totals, attempts and children: only the engine has them.
    pub detail: Option<&'a RunDetail>,
    pub kube: Option<&'a KubeView>,
    pub answer: Option<AnswerHint<'a>>,
}

impl<'a> Inspect<'a> {
    /// From the engine's detail (and Kubernetes' view of the run, when there is one).
    pub fn of_detail(
        detail: &'a RunDetail,
        kube: Option<&'a KubeView>,
        answer: Option<AnswerHint<'a>>,
    ) -> Inspect<'a> {
        Inspect {
            header: Header::of_detail(detail),
            detail: Some(detail),
            kube,
            answer,
        }
    }
}

/// Labelled lines (`Label:  value`), aligned.
struct Lines<'a> {
    out: String,
    ui: &'a Ui,
}

impl Lines<'_> {
    fn line(&mut self, label: &str, value: impl AsRef<str>) {
        let _ = writeln!(
            self.out,
            "{}{} {}",
            self.ui.bold(&format!("{label}:")),
            " ".repeat(10usize.saturating_sub(label.len() + 1)),
            value.as_ref()
        );
    }

    fn section(&mut self, title: &str) {
        let _ = writeln!(self.out, "\n{}", self.ui.bold(title));
    }
}

/// `inspect`, whatever it was built from.
pub fn inspect_text(inspect: &Inspect<'_>, ui: &Ui, now: DateTime<Utc>) -> String {
    let h = &inspect.header;
    let mut l = Lines {
        out: String::new(),
        ui,
    };
    l.line(
        "Run",
        format!(
            "{}  {}",
            ui.bold(&h.name),
            ui.dim(&format!("(namespace {}, id {})", h.namespace, h.id))
        ),
    );
    l.line("Flow", &h.flow);
    if let Some(parent) = &h.parent {
        l.line("Parent", parent);
    }
    if let Some(fork) = &h.fork {
        l.line("Forked", fork);
    }
    l.line("Phase", format!("{}  {}", ui.phase(h.phase), h.progress));
    if let Some((limit, spent)) = h.budget {
        let line = format!(
            "{} of {} spent (children included)",
            money(spent),
            money(limit)
        );
        l.line("Budget", line);
    }
    if let Some(kube) = inspect.kube {
        if let Some(pod) = &kube.pod {
            l.line("Pod", pod);
        }
        if let Some(digest) = &kube.image_digest {
            l.line("Image", digest);
        }
    }
    if let Some(created) = h.created {
        l.line("Created", when(created, now));
    }
    if let Some(finished) = h.finished {
        let took = h.created.map(|created| {
            format!(
                ", took {}",
                duration((finished - created).num_milliseconds() as f64)
            )
        });
        l.line(
            "Finished",
            format!("{}{}", when(finished, now), took.unwrap_or_default()),
        );
    }
    if let Some(waiting) = &h.waiting {
        l.line("Waiting", ui.wait_text(waiting));
    }
    let w = &h.wait;
    if let Some(question) = &w.question {
        l.line("Question", question);
    }
    if let Some(schema) = &w.schema {
        l.line("Schema", schema_text(schema));
    }
    if let Some(deadline) = w.deadline {
        l.line("Deadline", when(deadline, now));
    }
    if let Some(until) = w.until {
        l.line("Until", when(until, now));
    }
    if let Some(crash) = &w.crash {
        l.line("Crash", crash);
    }
    if let (Some(event), Some(answer)) = (&w.event, inspect.answer) {
        l.line("Answer", ui.dim(&answer(Answer::Event(event))));
    }
    if let Some((run, spent, limit)) = &w.budget {
        let line = format!("{} spent of {} (run {run})", money(*spent), money(*limit));
        l.line("Over budget", ui.error(&line));
        if let Some(answer) = inspect.answer {
            let hint = answer(Answer::Budget { run, spent: *spent });
            l.line("Answer", ui.dim(&hint));
        }
    }
    if let Some(result) = &h.result {
        l.line("Result", compact_json(result));
    }
    if let Some(error) = &h.error {
        l.line("Error", ui.error(error));
    }
    match inspect.detail {
        Some(detail) => history(&mut l, detail, inspect.kube, now),
        // Without the engine's tables, Kubernetes' own account of the run stands in.
        None => {
            if let Some(message) = inspect.kube.and_then(|k| k.condition.as_ref()) {
                l.line("Condition", message);
            }
            let pods = inspect.kube.map(|k| &k.pods).filter(|p| !p.is_empty());
            if let Some(pods) = pods {
                let pods: Vec<String> = pods.iter().map(|(a, p)| format!("#{a} {p}")).collect();
                l.line("Pods", pods.join(", "));
            }
        }
    }
    l.out
}

/// The engine's tables: steps with their totals, attempts (with their pods), children.
fn history(l: &mut Lines<'_>, detail: &RunDetail, kube: Option<&KubeView>, now: DateTime<Utc>) {
    let ui = l.ui;
    l.section("Steps");
    if detail.steps.is_empty() {
        let _ = writeln!(l.out, "{}", ui.dim("(none yet)"));
    } else {
        let _ = writeln!(l.out, "{}", steps_table(&detail.steps, ui));
    }
    let t = &detail.totals;
    let tree = detail
        .run
        .tree_usd
        .filter(|tree| *tree > t.usd + 1e-9)
        .map(|tree| format!(" ({} with its children)", money(tree)));
    let reused = (t.reused_steps > 0).then(|| {
        format!(
            "; {} step(s) from the source, {} not paid again",
            t.reused_steps,
            money(t.reused_usd)
        )
    });
    let _ = writeln!(
        l.out,
        "{} {} steps, {} tokens in, {} tokens out, {}{}{}",
        ui.bold("Totals:"),
        t.steps,
        t.tokens_in,
        t.tokens_out,
        money(t.usd),
        tree.unwrap_or_default(),
        reused.unwrap_or_default()
    );

    l.section("Attempts");
    if detail.attempts.is_empty() {
        let _ = writeln!(l.out, "{}", ui.dim("(none yet)"));
    } else {
        let pods = kube.map(|k| k.pods.clone()).unwrap_or_default();
        let _ = writeln!(l.out, "{}", attempts_table(&detail.attempts, &pods, ui));
    }

    if !detail.children.is_empty() {
        l.section("Children");
        let rows: Vec<RunRow> = detail
            .children
            .iter()
            .map(|c| RunRow {
                parent: None,
                ..RunRow::from(c)
            })
            .collect();
        let _ = writeln!(l.out, "{}", runs_table(&rows, false, ui, now));
    }
}

impl Ui {
    fn wait_text(&self, text: &str) -> String {
        self.paint(text, Style::new().fg_color(Some(AnsiColor::Yellow.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_engine::read_api::{Attempt, RunInfo, Step, Totals, Wait};
    use chrono::TimeZone;
    use serde_json::json;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn detail() -> RunDetail {
        RunDetail {
            run: RunInfo {
                id: uuid::Uuid::nil(),
                namespace: "ns".into(),
                name: "research-1".into(),
                flow: "research".into(),
                parent_id: None,
                parent: None,
                phase: Phase::Waiting,
                attempt: 2,
                crashes: 1,
                max_attempts: 3,
                cancel_requested: false,
                wake_at: None,
                waiting_for: None,
                result: None,
                error: None,
                created_at: t(0),
                updated_at: t(10),
                finished_at: None,
                steps: 1,
                usd: 0.5,
                tree_usd: Some(0.75),
                budget_usd: Some(2.0),
                fork_of: None,
            },
            steps: vec![
                Step {
                    key: "plan".into(),
                    kind: "step".into(),
                    status: "completed".into(),
                    attempt: Some(1),
                    tries: Some(2),
                    started_at: t(1),
                    duration_ms: 1500.0,
                    usd: Some(0.5),
                    tokens_in: Some(100),
                    tokens_out: Some(20),
                    model: Some("fake-llm-1".into()),
                    preview: Some(r#"{"outline":["a","b"]}"#.into()),
                    sensitive: false,
                    error: None,
                    origin: None,
                },
                Step {
                    key: "approve".into(),
                    kind: "wait".into(),
                    status: "waiting".into(),
                    attempt: None,
                    tries: None,
                    started_at: t(3),
                    duration_ms: 7000.0,
                    usd: None,
                    tokens_in: None,
                    tokens_out: None,
                    model: None,
                    preview: None,
                    sensitive: false,
                    error: None,
                    origin: None,
                },
            ],
            attempts: vec![
                Attempt {
                    attempt: 1,
                    started_at: t(0),
                    ended_at: Some(t(2)),
                    outcome: Some("crashed".into()),
                    detail: Some("killed by SIGKILL".into()),
                },
                Attempt {
                    attempt: 2,
                    started_at: t(2),
                    ended_at: Some(t(3)),
                    outcome: Some("suspended".into()),
                    detail: None,
                },
            ],
            totals: Totals {
                steps: 1,
                usd: 0.5,
                tokens_in: 100,
                tokens_out: 20,
                reused_steps: 0,
                reused_usd: 0.0,
            },
            children: vec![],
            wait: Some(Wait {
                kind: "event".into(),
                event: Some("approve-research-1".into()),
                question: Some("Publish?".into()),
                schema: Some(json!({ "type": "boolean" })),
                deadline: None,
                until: None,
                children: None,
                unfinished: None,
                reason: None,
                budget_run: None,
                spent_usd: None,
                limit_usd: None,
            }),
        }
    }

    #[test]
    fn inspect_shows_steps_attempts_and_the_question() {
        let kube = KubeView {
            pod: Some("research-1-a2".into()),
            image_digest: Some("localhost/agent@sha256:abc".into()),
            condition: None,
            pods: BTreeMap::from([(1, "research-1-a1".into()), (2, "research-1-a2".into())]),
        };
        let hint = |answer: Answer<'_>| match answer {
            Answer::Event(event) => format!("kubectl cairn approve research-1 # event {event}"),
            Answer::Budget { run, .. } => format!("kubectl cairn approve {run} --budget <USD>"),
        };
        let detail = detail();
        let text = inspect_text(
            &Inspect::of_detail(&detail, Some(&kube), Some(&hint)),
            &Ui::plain(),
            t(10),
        );
        for expected in [
            "Run:       research-1  (namespace ns, id 00000000-0000-0000-0000-000000000000)",
            "Phase:     Waiting  execution 2, crashes 1 of 3",
            "Pod:       research-1-a2",
            "Waiting:   event approve-research-1",
            "Question:  Publish?",
            r#"Schema:    {"type":"boolean"}"#,
            "Answer:    kubectl cairn approve research-1 # event approve-research-1",
            "fake-llm-1",
            "100/20",
            "1.5 s",
            "Totals: 1 steps, 100 tokens in, 20 tokens out, $0.5000 ($0.7500 with its children)",
            "Budget:    $0.7500 of $2.0000 spent (children included)",
            "research-1-a1",
            "killed by SIGKILL",
            r#"{"outline":["a","b"]}"#,
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn without_the_engine_the_status_and_the_pods_stand_in() {
        let header = Header {
            name: "research-1".into(),
            namespace: "ns".into(),
            id: "not registered yet".into(),
            flow: "research".into(),
            phase: Some(Phase::Waiting),
            progress: "execution 1, crashes 0, 3 steps, $0.0100".into(),
            created: Some(t(0)),
            finished: Some(t(90)),
            waiting: Some("event approve-research-1".into()),
            wait: WaitLines {
                event: Some("approve-research-1".into()),
                ..WaitLines::default()
            },
            ..Header::default()
        };
        let kube = KubeView {
            condition: Some("waiting for event approve-research-1".into()),
            pods: BTreeMap::from([(1, "research-1-a1".into())]),
            ..KubeView::default()
        };
        let hint = |answer: Answer<'_>| match answer {
            Answer::Event(event) => format!("answer {event}"),
            Answer::Budget { run, .. } => format!("raise {run}"),
        };
        let inspect = Inspect {
            header,
            detail: None,
            kube: Some(&kube),
            answer: Some(&hint),
        };
        let text = inspect_text(&inspect, &Ui::plain(), t(100));
        for expected in [
            "Run:       research-1  (namespace ns, id not registered yet)",
            "Phase:     Waiting  execution 1, crashes 0, 3 steps, $0.0100",
            "Finished:  2023-11-14 22:14:50Z (10s ago), took 1m 30s",
            "Waiting:   event approve-research-1",
            "Answer:    answer approve-research-1",
            "Condition: waiting for event approve-research-1",
            "Pods:      #1 research-1-a1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("Steps"), "{text}");
    }

    #[test]
    fn a_run_over_its_budget_says_what_was_spent_and_how_to_raise_it() {
        let mut detail = detail();
        detail.wait = Some(Wait::from(cairn_engine::Wait::Budget {
            run: "research-1".into(),
            spent: 2.5,
            limit: 2.0,
            question: Some("Raise the budget?".into()),
        }));
        let hint = |answer: Answer<'_>| match answer {
            Answer::Budget { run, spent } => format!("approve {run} --budget <above {spent}>"),
            Answer::Event(event) => format!("emit {event}"),
        };
        let text = inspect_text(
            &Inspect::of_detail(&detail, None, Some(&hint)),
            &Ui::plain(),
            t(10),
        );
        for expected in [
            "Waiting:   budget of research-1",
            "Question:  Raise the budget?",
            "Over budget: $2.5000 spent of $2.0000 (run research-1)",
            "approve research-1 --budget <above 2.5>",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
