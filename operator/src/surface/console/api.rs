//! What the console's buttons and forms do, as JSON endpoints: `{"message"}` on success,
//! `{"error"}` with a 4xx status for a mistake in what was asked (the CLI's exit code 2) and
//! 502 for an operation that failed. Each calls the same Backend operation as `cairn mcp`, so
//! the checks and the messages are the CLI's own.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Console, RunPath, refuse};
use crate::kubectl::{self, fork::ForkArgs};

fn said(message: String) -> Response {
    Json(json!({ "message": message })).into_response()
}

fn failed(error: &anyhow::Error) -> Response {
    let status = match kubectl::exit_code(error) {
        2 => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    refuse(status, &format!("{error:#}"))
}

fn answered(result: anyhow::Result<String>) -> Response {
    match result {
        Ok(message) => said(message),
        Err(e) => failed(&e),
    }
}

#[derive(Deserialize)]
pub struct Question {
    /// The event the page showed the question of.
    event: String,
}

/// The payload the open question asks for, answering the question the page showed and no
/// other (a page left open must not answer the next question with this one's answer). It is
/// checked against the wait's schema here first (422 with every problem and where it is),
/// then again where it is delivered.
pub async fn answer(
    State(console): State<Arc<Console>>,
    RunPath(namespace, run): RunPath,
    Query(shown): Query<Question>,
    Json(payload): Json<Value>,
) -> Response {
    let detail = match console.backend.detail(&namespace, &run).await {
        Ok(detail) => detail,
        Err(e) => return failed(&e),
    };
    let asked = detail.wait.filter(|w| w.kind == "event");
    let Some(wait) = asked.filter(|w| w.event.as_deref() == Some(shown.event.as_str())) else {
        let error = format!(
            "{run} no longer asks this question (it is {}): nothing was sent; see what it asks now",
            detail.run.phase
        );
        return refuse(StatusCode::CONFLICT, &error);
    };
    if let Some(schema) = &wait.schema
        && let Err(problems) = cairn_engine::runner::check_payload(schema, &payload)
    {
        let error = format!("this answer does not match the question's schema: {problems}");
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, &error);
    }
    answered(console.backend.answer(&namespace, &run, payload).await)
}

pub async fn cancel(State(console): State<Arc<Console>>, RunPath(ns, run): RunPath) -> Response {
    answered(console.backend.cancel(&ns, &run).await)
}

pub async fn retry(State(console): State<Arc<Console>>, RunPath(ns, run): RunPath) -> Response {
    answered(console.backend.retry(&ns, &run).await)
}

#[derive(Deserialize)]
pub struct Fork {
    from_step: String,
}

pub async fn fork(
    State(console): State<Arc<Console>>,
    RunPath(ns, run): RunPath,
    Json(fork): Json<Fork>,
) -> Response {
    let args = ForkArgs {
        run,
        from_step: fork.from_step,
        input: None,
        set_output: vec![],
        answer: vec![],
        name: None,
    };
    answered(console.backend.fork(&ns, &args).await)
}

#[derive(Deserialize)]
pub struct Budget {
    usd: String,
}

pub async fn budget(
    State(console): State<Arc<Console>>,
    RunPath(ns, run): RunPath,
    Json(budget): Json<Budget>,
) -> Response {
    answered(console.backend.raise_budget(&ns, &run, &budget.usd).await)
}

#[derive(Deserialize)]
pub struct Attempt {
    attempt: Option<i32>,
}

#[derive(Deserialize)]
pub struct ArtifactName {
    artifact: String,
}

/// An artifact's bytes, as a download: never shown in the console's origin as what it claims
/// to be (a stored HTML page would run there with the user's session).
pub async fn artifact(
    State(console): State<Arc<Console>>,
    RunPath(ns, run): RunPath,
    Path(ArtifactName { artifact: name }): Path<ArtifactName>,
) -> Response {
    match console.backend.artifact(&ns, &run, &name).await {
        Ok(bytes) => {
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let headers = [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}\""),
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            ];
            (headers, bytes).into_response()
        }
        Err(e) => failed(&e),
    }
}

/// What one execution (or every one) printed, as text.
pub async fn logs(
    State(console): State<Arc<Console>>,
    RunPath(ns, run): RunPath,
    Query(which): Query<Attempt>,
) -> Response {
    match console.backend.logs(&ns, &run, which.attempt).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => failed(&e),
    }
}
