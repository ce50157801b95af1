//! Live updates over server-sent events: the server polls the Backend and sends a part again
//! only when its rendered markup changed. Polling works the same over a cluster and the local
//! database, and catches what sends no notification (a step's checkpoint, its cost).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use super::{Console, ListQuery, RunPath, pages};

/// The version of what the browser already shows: the last event's id on a reconnect, else
/// the page's own (`?since=`). Replacing equal markup would lose focus and stale elements.
fn since(headers: &HeaderMap, page: Option<&str>) -> String {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(page)
        .unwrap_or("")
        .to_owned()
}

/// Polls `poll` every interval and sends event `name` when its result changed. The stream
/// ends when the browser goes away, and when the console stops (or a graceful shutdown would
/// wait for it forever).
fn poll_sse<F, Fut>(
    console: &Console,
    name: &'static str,
    since: String,
    poll: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<F, Fut>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send,
{
    let interval = console.poll;
    let stopping = console.stopping.subscribe();
    let poll = Arc::new(poll);
    let stream = futures::stream::unfold((since, true), move |(mut last, mut first)| {
        let poll = poll.clone();
        let mut stopping = stopping.clone();
        async move {
            loop {
                let pause = if first { Duration::ZERO } else { interval };
                first = false;
                // A failed poll (the API server or database away for a moment) sends nothing:
                // the page keeps what it shows and the next poll tries again. A poll under
                // way does not hold up a shutdown either.
                let polled = tokio::select! {
                    polled = async { tokio::time::sleep(pause).await; poll().await } => polled,
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                if let Some(now) = polled {
                    let version = pages::version(&now);
                    if version != last {
                        let event = Event::default().event(name).id(version.clone()).data(now);
                        return Some((Ok(event), (version, false)));
                    }
                    last = version;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn list_events(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> impl IntoResponse {
    let since = since(&headers, query.since.as_deref());
    let all = query.namespace().is_empty();
    let poller = console.clone();
    poll_sse(&console, "runs", since, move || {
        let (console, query) = (poller.clone(), query.clone());
        async move {
            let rows = console.rows(&query).await.ok()?;
            Some(pages::run_rows(&rows, all).into_string())
        }
    })
}

#[derive(serde::Deserialize)]
pub struct Since {
    since: Option<String>,
}

pub async fn run_events(
    State(console): State<Arc<Console>>,
    RunPath(namespace, name): RunPath,
    headers: HeaderMap,
    Query(page): Query<Since>,
) -> impl IntoResponse {
    let since = since(&headers, page.since.as_deref());
    let poller = console.clone();
    poll_sse(&console, "run", since, move || {
        let (console, namespace, name) = (poller.clone(), namespace.clone(), name.clone());
        async move {
            let view = console.run_view(&namespace, &name).await.ok()?;
            Some(pages::run_parts(&view).to_string())
        }
    })
}
