//! A research agent: plan → one `summarize` child flow per subtopic → join → draft → wait for a
//! person's approval → final report. The "LLM" is a deterministic fake (~100 ms a call) that
//! reports tokens and cost, so the demo shows real durability without a real model.
//!
//! Demo hooks:
//! - `CAIRN_EXAMPLE_LEDGER=<file>`: every LLM call that runs is appended as `paid`, every call
//!   answered from a checkpoint as `replayed`, so nothing paid twice is visible at a glance
//!   (`-` writes the lines to stderr, prefixed `ledger`, for pods).
//! - `CAIRN_EXAMPLE_CRASH_AT=<step>`: the first attempt to execute that step aborts inside it,
//!   mid-call (before the call's result exists).
//! - `CAIRN_EXAMPLE_LLM_MS=<ms>`: how long a fake LLM call takes (default 100; real ones take
//!   seconds, which is when killing a pod mid-call matters). The ledger notes `calling` as a
//!   call starts.

use std::io::Write;
use std::time::Duration;

use cairn::{Ctx, Runner, StepStart, Usage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct ResearchInput {
    topic: String,
    /// How many subtopics to research in parallel (default 3).
    #[serde(default = "default_breadth")]
    breadth: usize,
}

fn default_breadth() -> usize {
    3
}

#[derive(Debug, Serialize, Deserialize)]
struct SummarizeInput {
    topic: String,
    subtopic: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    subtopic: String,
    text: String,
}

#[derive(Debug, Serialize)]
struct Report {
    topic: String,
    approved: bool,
    summaries: Vec<Summary>,
    report: String,
}

async fn research(ctx: Ctx, input: ResearchInput) -> anyhow::Result<Report> {
    let plan = llm_step(
        &ctx,
        "plan",
        format!("List {} subtopics of {}", input.breadth, input.topic),
    )
    .await?;
    let subtopics: Vec<String> = plan
        .split(';')
        .map(|s| s.trim().to_owned())
        .take(input.breadth)
        .collect();

    let mut children = Vec::new();
    for subtopic in &subtopics {
        let request = SummarizeInput {
            topic: input.topic.clone(),
            subtopic: subtopic.clone(),
        };
        children.push(ctx.spawn::<Summary, _>("summarize", &request).await?);
    }
    let summaries = ctx.join_all(&children).await?;

    let notes: Vec<&str> = summaries.iter().map(|s| s.text.as_str()).collect();
    let draft = llm_step(
        &ctx,
        "draft",
        format!(
            "Write a report on {} from: {}",
            input.topic,
            notes.join(" | ")
        ),
    )
    .await?;

    let approved: bool = ctx
        .wait_for_event(&format!("approve-{}", ctx.run_name()))
        .question(format!(
            "Publish the report on \"{}\"? (true/false)",
            input.topic
        ))
        .await?;

    let report = if approved {
        llm_step(&ctx, "final", format!("Polish for publication: {draft}")).await?
    } else {
        draft
    };
    Ok(Report {
        topic: input.topic,
        approved,
        summaries,
        report,
    })
}

async fn summarize(ctx: Ctx, input: SummarizeInput) -> anyhow::Result<Summary> {
    // Plain steps work too: this one stands for fetching sources (free, but worth keeping).
    let sources: Vec<String> = ctx
        .step("sources", || async {
            Ok((1..=3)
                .map(|i| format!("https://example.org/{}/{i}", slug(&input.subtopic)))
                .collect())
        })
        .await?;
    let text = llm_step(
        &ctx,
        "summarize",
        format!(
            "Summarise {} ({}) from {}",
            input.subtopic,
            input.topic,
            sources.join(", ")
        ),
    )
    .await?;
    Ok(Summary {
        subtopic: input.subtopic,
        text,
    })
}

/// An LLM call as a durable step, written with the decomposed API so it can log replays.
async fn llm_step(ctx: &Ctx, name: &str, prompt: String) -> anyhow::Result<String> {
    match ctx.begin_step::<String>(name).await? {
        StepStart::Replayed(text) => {
            ledger(ctx, "replayed", name, 0.0);
            Ok(text)
        }
        StepStart::Run(pending) => {
            ledger(ctx, "calling", name, 0.0);
            crash_if_asked(ctx, name);
            let (text, usage) = fake_llm(&prompt).await;
            ledger(ctx, "paid", name, usage.usd);
            pending.complete(&text, Some(usage)).await?;
            Ok(text)
        }
    }
}

/// A deterministic stand-in for a model: ~100 ms (`CAIRN_EXAMPLE_LLM_MS`), tokens counted from the text, priced like a
/// mid-size model ($3 / $15 per million tokens in / out).
async fn fake_llm(prompt: &str) -> (String, Usage) {
    let latency = std::env::var("CAIRN_EXAMPLE_LLM_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(100);
    tokio::time::sleep(Duration::from_millis(latency)).await;
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let text = if prompt.starts_with("List") {
        let topic = words.iter().skip(4).copied().collect::<Vec<_>>().join(" ");
        [
            "history",
            "current methods",
            "open problems",
            "applications",
            "costs",
            "risks",
        ]
        .iter()
        .map(|aspect| format!("{aspect} of {topic}"))
        .collect::<Vec<_>>()
        .join("; ")
    } else {
        let digest = words
            .iter()
            .fold(7u64, |h, w| h.wrapping_mul(31).wrapping_add(w.len() as u64));
        format!(
            "{} [{}]",
            words.iter().take(12).copied().collect::<Vec<_>>().join(" "),
            digest % 10_000
        )
    };
    let tokens_in = (words.len() as u64 * 4).div_ceil(3);
    let tokens_out = (text.split_whitespace().count() as u64 * 4).div_ceil(3) + 200;
    let usd = (tokens_in as f64 * 3.0 + tokens_out as f64 * 15.0) / 1_000_000.0;
    (text, Usage::llm("fake-llm-1", tokens_in, tokens_out, usd))
}

fn ledger(ctx: &Ctx, what: &str, step: &str, usd: f64) {
    let Some(path) = std::env::var_os("CAIRN_EXAMPLE_LEDGER") else {
        return;
    };
    let line = format!(
        "{what}\t{}\t{step}\t{usd:.6}\tattempt {}\n",
        ctx.run_name(),
        ctx.attempt()
    );
    // In a pod the ledger goes to the log ("-"): pods are kept until the run is deleted.
    if path == "-" {
        eprint!("ledger\t{line}");
        return;
    }
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = appended {
        eprintln!(
            "cannot append to the ledger {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// Aborts the process inside `step` the first time any attempt of this run executes it. A ledger
/// file remembers that the crash happened (without one, or with `-`: only in attempt 1).
fn crash_if_asked(ctx: &Ctx, step: &str) {
    if std::env::var("CAIRN_EXAMPLE_CRASH_AT").ok().as_deref() != Some(step) {
        return;
    }
    let first_time = match std::env::var_os("CAIRN_EXAMPLE_LEDGER") {
        Some(path) if path != "-" => {
            let marker = format!("crash\t{}\t{step}\t", ctx.run_name());
            !std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(&marker))
        }
        _ => ctx.attempt() == 1,
    };
    if first_time {
        ledger(ctx, "crash", step, 0.0);
        eprintln!(
            "CAIRN_EXAMPLE_CRASH_AT={step}: aborting attempt {} mid-call",
            ctx.attempt()
        );
        std::process::abort();
    }
}

fn slug(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase()
}

#[tokio::main]
async fn main() {
    Runner::new()
        .flow("research", research)
        .flow("summarize", summarize)
        .run()
        .await
}
