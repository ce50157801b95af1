//! `cairn dev runs` and `cairn dev inspect`: the database's runs, as tables (the same ones
//! `kubectl cairn` prints) or as the read API's JSON.

use std::process::ExitCode;

use anyhow::anyhow;
use cairn_engine::read;
use cairn_engine::read_api::RunList;

use crate::controller::api;
use crate::kubectl::render::{self, Inspect, RunRow, Ui};

/// `runs`: every run (of one namespace, or all), children under their parents.
pub async fn list(namespace: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let records = read::list(&pool, namespace).await?;
    let runs = api::summaries(&records);
    if json {
        println!("{}", serde_json::to_string_pretty(&RunList { runs })?);
    } else {
        let rows: Vec<RunRow> = runs.iter().map(RunRow::from).collect();
        let table = render::runs_table(
            &rows,
            namespace.is_none(),
            &Ui::detect(),
            chrono::Utc::now(),
        );
        println!("{table}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect`: a run with its steps, attempts, children and current wait.
pub async fn inspect(run: &str, namespace: &str, json: bool) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let detail = api::detail(&pool, namespace, run)
        .await
        .map_err(not_found_is_a_mistake)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        let answer = |answer: render::Answer<'_>| match answer {
            render::Answer::Event(event) => {
                format!("cairn dev emit {event} --data <JSON> -n {namespace}")
            }
            render::Answer::Budget { run, spent } => format!(
                "cairn dev approve {run} --budget <USD above {}> -n {namespace}",
                render::money(spent)
            ),
        };
        let text = render::inspect_text(
            &Inspect::of_detail(&detail, None, Some(&answer)),
            &Ui::detect(),
            chrono::Utc::now(),
        );
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect --step KEY`: one step with its whole value (never a sensitive one's).
pub async fn inspect_step(
    run: &str,
    key: &str,
    namespace: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let step = api::step(&pool, namespace, run, key)
        .await
        .map_err(not_found_is_a_mistake)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&step)?);
    } else {
        print!("{}", render::step_text(&step, &Ui::detect()));
    }
    Ok(ExitCode::SUCCESS)
}

/// An unknown run or step is a mistake in what was asked (exit 2).
pub(crate) fn not_found_is_a_mistake(e: api::ApiError) -> anyhow::Error {
    match e.status {
        axum::http::StatusCode::NOT_FOUND => crate::kubectl::input(format!(
            "{e} (see `cairn dev runs` and `cairn dev inspect`)"
        )),
        _ => anyhow!(e),
    }
}
