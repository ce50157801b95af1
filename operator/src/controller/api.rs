//! The operator's read API: runs with their steps, attempts, costs and current wait, read from
//! the engine's database. JSON only, no writes (events are FlowEvents, cancellation is the
//! FlowRun's `spec.cancel`). Users reach it through the API server's service proxy, so their
//! kubectl credentials and RBAC on `services/proxy` govern it:
//!
//! ```text
//! GET /api/v1/namespaces/<operator-ns>/services/cairn-operator:http/proxy/api/v1/namespaces/{ns}/runs?phase=&flow=
//! GET /api/v1/namespaces/<operator-ns>/services/cairn-operator:http/proxy/api/v1/namespaces/{ns}/runs/{name}
//! ```
//!
//! Errors are `{"error": "..."}`: 404 for an unknown run or a namespace this operator does not
//! manage, 400 for a bad filter, 503 when the database is unreachable.

use std::collections::{BTreeSet, HashMap};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::lifecycle::Phase;
use cairn_engine::read::{self, RunRecord};
use cairn_engine::read_api::{RunDetail, RunInfo, RunList, RunSummary, Wait};

/// What the read API needs: the engine's database and the namespaces it may show.
#[derive(Clone)]
pub struct ApiState {
    pool: PgPool,
    /// `None`: every namespace.
    namespaces: Option<BTreeSet<String>>,
}

impl ApiState {
    /// `watch_namespaces` as the operator's flag gives it (empty entries ignored; none = all).
    pub fn new(pool: PgPool, watch_namespaces: &[String]) -> ApiState {
        let named: BTreeSet<String> = watch_namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        ApiState {
            pool,
            namespaces: (!named.is_empty()).then_some(named),
        }
    }

    fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        match &self.namespaces {
            Some(managed) if !managed.contains(namespace) => Err(ApiError::not_found(format!(
                "namespace \"{namespace}\" is not managed by this operator (it manages: {})",
                managed.iter().cloned().collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(()),
        }
    }
}

/// The read API's routes, under `/api/v1`; anything else under `/api/` is a JSON 404.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/namespaces/{namespace}/runs", get(list_runs))
        .route("/api/v1/namespaces/{namespace}/runs/{name}", get(get_run))
        .route("/api/{*rest}", get(no_route))
        .with_state(state)
}

/// Serves the read API alone (no controller, no Kubernetes): for tests, and for looking at a
/// database's runs the way `kubectl cairn inspect --api-url` does.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

// ---- queries (shared with `cairn dev runs` / `cairn dev inspect`) -----------------------------

/// Runs of a namespace, oldest first, optionally of some phases and of one flow.
pub async fn list(
    pool: &PgPool,
    namespace: &str,
    phases: &[Phase],
    flow: Option<&str>,
) -> anyhow::Result<Vec<RunSummary>> {
    let records = read::list(pool, Some(namespace)).await?;
    Ok(summaries(&records)
        .into_iter()
        .filter(|r| phases.is_empty() || phases.contains(&r.phase))
        .filter(|r| flow.is_none_or(|f| r.flow == f))
        .collect())
}

/// Summaries of runs, each child naming its parent (when the parent is among them).
pub fn summaries(records: &[RunRecord]) -> Vec<RunSummary> {
    let names: HashMap<Uuid, String> = records.iter().map(|r| (r.id, r.name.clone())).collect();
    records
        .iter()
        .map(|r| {
            let parent = r.parent_id.and_then(|p| names.get(&p).cloned());
            RunSummary::from_record(r, parent)
        })
        .collect()
}

/// A run of a namespace (by name, or by id) with its steps, attempts, totals, children and wait.
pub async fn detail(
    pool: &PgPool,
    namespace: &str,
    name_or_id: &str,
) -> Result<RunDetail, ApiError> {
    let unknown = || {
        ApiError::not_found(format!(
            "run \"{name_or_id}\" not found in namespace \"{namespace}\""
        ))
    };
    let run = match read::find(pool, namespace, name_or_id).await {
        Ok(run) => run,
        Err(e) if e.is::<read::NotFound>() => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    // `find` also matches an id in any namespace: stay within the one asked for.
    if run.namespace != namespace {
        return Err(unknown());
    }
    let steps = read::steps(pool, run.id).await?;
    let attempts = read::attempts(pool, run.id).await?;
    let totals = read::totals(pool, run.id).await?;
    // The root of the run's tree, then the tree: children with their phases, and the parent.
    let mut root = run.clone();
    let mut parent = None;
    while let Some(up) = root.parent_id {
        root = read::find(pool, namespace, &up.to_string()).await?;
        parent.get_or_insert_with(|| root.name.clone());
    }
    let children = if read::children(pool, run.id).await?.is_empty() {
        vec![]
    } else {
        read::tree(pool, root.id)
            .await?
            .iter()
            .filter(|r| r.parent_id == Some(run.id))
            .map(|r| RunSummary::from_record(r, Some(run.name.clone())))
            .collect()
    };
    let wait = run.wait().map(Wait::from);
    Ok(RunDetail {
        run: RunInfo::from_record(&run, parent),
        steps,
        attempts,
        totals,
        children,
        wait,
    })
}

// ---- handlers -----------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Comma-separated phases.
    phase: Option<String>,
    flow: Option<String>,
}

/// Parses `phase=waiting,failed` (case-insensitive; empty = any).
pub fn parse_phases(text: &str) -> Result<Vec<Phase>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse::<Phase>)
        .collect()
}

async fn list_runs(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "bad filter: {} (the filters are phase=<phase>[,<phase>...] and flow=<name>)",
            e.body_text()
        ))
    })?;
    let phases = parse_phases(query.phase.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad phase filter: {e}")))?;
    let flow = query.flow.as_deref().filter(|f| !f.is_empty());
    state.check_namespace(&namespace)?;
    let runs = list(&state.pool, &namespace, &phases, flow).await?;
    Ok(Json(RunList { runs }))
}

async fn get_run(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<RunDetail>, ApiError> {
    state.check_namespace(&namespace)?;
    Ok(Json(detail(&state.pool, &namespace, &name).await?))
}

async fn no_route(Path(rest): Path<String>) -> ApiError {
    ApiError::not_found(format!(
        "no such route: /api/{rest} (routes: /api/v1/namespaces/{{namespace}}/runs[?phase=&flow=], /api/v1/namespaces/{{namespace}}/runs/{{name}})"
    ))
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn not_found(message: String) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message,
        }
    }

    fn bad_request(message: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// Database errors: 503 when the database cannot be reached, 500 otherwise.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        let unreachable = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<sqlx::Error>(),
                Some(
                    sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                )
            )
        });
        if unreachable {
            tracing::warn!(error = %format!("{e:#}"), "read API: database unreachable");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("the database is unreachable: {e:#}"),
            }
        } else {
            tracing::warn!(error = %format!("{e:#}"), "read API: query failed");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("{e:#}"),
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tower::ServiceExt;

    /// A pool whose database cannot be reached (nothing listens on port 1).
    fn unreachable_pool() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
            .unwrap()
    }

    async fn get(state: ApiState, uri: &str) -> (StatusCode, Value) {
        let response = router(state)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{uri}: {}",
            String::from_utf8_lossy(&bytes)
        );
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn state(namespaces: &[&str]) -> ApiState {
        let names: Vec<String> = namespaces.iter().map(|n| n.to_string()).collect();
        ApiState::new(unreachable_pool(), &names)
    }

    #[tokio::test]
    async fn runs_of_an_unmanaged_namespace_are_not_found() {
        for uri in [
            "/api/v1/namespaces/other/runs",
            "/api/v1/namespaces/other/runs/some-run",
        ] {
            let (status, body) = get(state(&["team-a", " team-b "]), uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            let error = body["error"].as_str().unwrap();
            assert!(
                error.contains("\"other\" is not managed") && error.contains("team-a, team-b"),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn bad_filters_are_refused_with_400() {
        let (status, body) = get(state(&[]), "/api/v1/namespaces/a/runs?phase=done").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("unknown phase \"done\""),
            "{body}"
        );
        let (status, body) = get(state(&[]), "/api/v1/namespaces/a/runs?state=failed").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("state"), "{body}");
    }

    #[tokio::test]
    async fn an_unreachable_database_gives_503() {
        let (status, body) = get(state(&["a"]), "/api/v1/namespaces/a/runs?phase=Waiting").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("the database is unreachable"),
            "{body}"
        );
        let (status, _) = get(state(&[]), "/api/v1/namespaces/a/runs/r").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404s() {
        let (status, body) = get(state(&[]), "/api/v2/runs").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body["error"].as_str().unwrap().contains("no such route"),
            "{body}"
        );
    }

    #[test]
    fn phases_parse_comma_separated_and_case_insensitive() {
        assert_eq!(
            parse_phases("Waiting, failed,").unwrap(),
            vec![Phase::Waiting, Phase::Failed]
        );
        assert_eq!(parse_phases("").unwrap(), vec![]);
        assert!(parse_phases("waiting,nope").is_err());
    }
}
