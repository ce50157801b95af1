//! The operator's read API: runs with their steps, attempts, costs and current wait, read from
//! the engine's database. JSON only, no writes (events are FlowEvents, cancellation is the
//! FlowRun's `spec.cancel`). It is an aggregated API (`APIService v1alpha1.api.cairn.dev`): the
//! API server authenticates the user and forwards the request (`tls.rs` lets nobody else in), and
//! each request is allowed only if that user may `get` (one run) or `list` (a namespace's runs)
//! FlowRuns there (`auth.rs`), so RBAC on FlowRuns governs it:
//!
//! ```text
//! kubectl get --raw /apis/api.cairn.dev/v1alpha1/namespaces/{ns}/runs?phase=&flow=
//! kubectl get --raw /apis/api.cairn.dev/v1alpha1/namespaces/{ns}/runs/{name}
//! kubectl get --raw /apis/api.cairn.dev/v1alpha1/namespaces/{ns}/runs/{name}/steps/{key}
//! kubectl get --raw /apis/api.cairn.dev/v1alpha1/namespaces/{ns}/runs/{name}/artifacts[/{name}]
//! ```
//!
//! A step's value is shown (a preview in the run, the whole of it by key), except a sensitive
//! step's: the engine stores it sealed with a key only flow pods hold.
//!
//! Errors are Kubernetes `Status` objects: 401 without a user, 403 without the right, 404 for
//! an unknown run or a namespace this operator does not manage, 400 for a bad filter, 503 when
//! the database is unreachable.

pub mod artifacts;
pub mod auth;
pub mod tls;

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::lifecycle::Phase;
use auth::{Access, Authorizer, IdentityHeaders};
use cairn_engine::read::{self, RunRecord};
use cairn_engine::read_api::{RunDetail, RunInfo, RunList, RunSummary, StepOutput, Wait};

/// The API's group and version, as the APIService registers it.
pub const GROUP_VERSION: &str = "api.cairn.dev/v1alpha1";

/// What the read API needs: the engine's database, the namespaces it may show, and who may read.
#[derive(Clone)]
pub struct ApiState {
    pool: PgPool,
    /// `None`: every namespace.
    namespaces: Option<BTreeSet<String>>,
    authorizer: Authorizer,
    identity: IdentityHeaders,
    /// Where artifacts are read from (none configured: they are listed, not served).
    artifacts: Option<cairn_engine::artifacts::ArtifactStore>,
}

impl ApiState {
    /// `watch_namespaces` as the operator's flag gives it (empty entries ignored; none = all).
    pub fn new(
        pool: PgPool,
        watch_namespaces: &[String],
        authorizer: Authorizer,
        identity: IdentityHeaders,
    ) -> ApiState {
        let named: BTreeSet<String> = watch_namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        ApiState {
            pool,
            namespaces: (!named.is_empty()).then_some(named),
            authorizer,
            identity,
            artifacts: None,
        }
    }

    /// Serves artifacts' bytes from `store`.
    pub fn with_artifacts(mut self, store: Option<cairn_engine::artifacts::ArtifactStore>) -> Self {
        self.artifacts = store;
        self
    }

    /// Refuses a caller without the right, before anything is read.
    async fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
        let Some(caller) = self.identity.caller(headers) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "no user: the read API answers requests the API server forwards \
                 (kubectl get --raw /apis/api.cairn.dev/v1alpha1/...)"
                    .into(),
            ));
        };
        match self.authorizer.allows(&caller, &access).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "User \"{}\" cannot {}: reading runs needs that right (RBAC)",
                    caller.user,
                    access.describe()
                ),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "read API: SubjectAccessReview failed");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot ask the API server whether the caller may read runs: {e}"),
                ))
            }
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

/// The read API's routes; anything else is a 404 `Status`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/apis/api.cairn.dev/v1alpha1", get(discovery))
        .route(
            "/apis/api.cairn.dev/v1alpha1/namespaces/{namespace}/runs",
            get(list_runs),
        )
        .route(
            "/apis/api.cairn.dev/v1alpha1/namespaces/{namespace}/runs/{name}",
            get(get_run),
        )
        .route(
            "/apis/api.cairn.dev/v1alpha1/namespaces/{namespace}/runs/{name}/steps/{key}",
            get(get_step),
        )
        .route(
            "/apis/api.cairn.dev/v1alpha1/namespaces/{namespace}/runs/{name}/artifacts",
            get(artifacts::get_list),
        )
        .route(
            "/apis/api.cairn.dev/v1alpha1/namespaces/{namespace}/runs/{name}/artifacts/{artifact}",
            get(artifacts::get_one),
        )
        .fallback(no_route)
        .with_state(state)
}

/// Serves the read API to the API server's front proxy on `listen`, with the serving
/// certificate in `cert`/`key`. A cluster whose front proxy cannot be read yet (RBAC being
/// applied, a ConfigMap not written) is retried, never a reason to stop the operator.
pub async fn serve(
    client: kube::Client,
    pool: PgPool,
    watch_namespaces: Vec<String>,
    artifacts: Option<cairn_engine::artifacts::ArtifactStore>,
    listen: std::net::SocketAddr,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
) -> anyhow::Result<()> {
    let mut delay = std::time::Duration::from_secs(2);
    let proxy = loop {
        match tls::FrontProxy::load(&client).await {
            Ok(proxy) => break proxy,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), retry_in = ?delay, "the read API cannot start yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(60));
            }
        }
    };
    let state = ApiState::new(
        pool,
        &watch_namespaces,
        Authorizer::new(client),
        proxy.headers.clone(),
    )
    .with_artifacts(artifacts);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the read API to {listen}"))?;
    tls::serve(listener, cert, key, proxy, router(state)).await
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
    let run = find(pool, namespace, name_or_id).await?;
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

/// A run of a namespace, by name or by id.
pub(super) async fn find(
    pool: &PgPool,
    namespace: &str,
    name_or_id: &str,
) -> Result<RunRecord, ApiError> {
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
    Ok(run)
}

/// One step of a run of a namespace, with its whole value (hidden when sensitive).
pub async fn step(
    pool: &PgPool,
    namespace: &str,
    name_or_id: &str,
    key: &str,
) -> Result<StepOutput, ApiError> {
    let run = find(pool, namespace, name_or_id).await?;
    match read::step_output(pool, &run, key).await {
        Ok(step) => Ok(step),
        Err(e) if e.is::<read::NotFound>() => Err(ApiError::not_found(e.to_string())),
        Err(e) => Err(e.into()),
    }
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

/// Discovery: the group version exists, and has no Kubernetes-style resources (the runs are
/// JSON documents for `kubectl get --raw` and `kubectl cairn`). Asked by the API server itself
/// to know the APIService is available, so it needs no user.
async fn discovery() -> Json<serde_json::Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [],
    }))
}

async fn list_runs(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    state.authorize(&headers, Access::list(&namespace)).await?;
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
    headers: HeaderMap,
) -> Result<Json<RunDetail>, ApiError> {
    state
        .authorize(&headers, Access::get(&namespace, &name))
        .await?;
    state.check_namespace(&namespace)?;
    Ok(Json(detail(&state.pool, &namespace, &name).await?))
}

async fn get_step(
    State(state): State<ApiState>,
    Path((namespace, name, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<StepOutput>, ApiError> {
    state
        .authorize(&headers, Access::get(&namespace, &name))
        .await?;
    state.check_namespace(&namespace)?;
    Ok(Json(step(&state.pool, &namespace, &name, &key).await?))
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such route: {} (routes: /apis/api.cairn.dev/v1alpha1/namespaces/{{namespace}}/runs[?phase=&flow=], \
         /apis/api.cairn.dev/v1alpha1/namespaces/{{namespace}}/runs/{{name}}[/steps/{{key}}|/artifacts[/{{name}}]])",
        uri.path()
    ))
}

/// An error answer: a Kubernetes `Status` with its code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: String) -> ApiError {
        ApiError { status, message }
    }

    pub(super) fn not_found(message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    fn bad_request(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The `reason` Kubernetes gives the same code.
    fn reason(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            _ => "InternalError",
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
        // `details.group` tells a client this came from the read API, not from the API server
        // (which answers 404 itself while the APIService is not registered).
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason(),
            "details": { "group": "api.cairn.dev" },
            "code": self.status.as_u16(),
        });
        (self.status, Json(status)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tower::ServiceExt;

    const RUNS: &str = "/apis/api.cairn.dev/v1alpha1/namespaces";

    /// A pool whose database cannot be reached (nothing listens on port 1).
    fn unreachable_pool() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
            .unwrap()
    }

    /// GET as `user` (none: no identity headers).
    async fn get_as(state: ApiState, uri: &str, user: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::get(uri);
        if let Some(user) = user {
            request = request
                .header("X-Remote-User", user)
                .header("X-Remote-Group", "system:authenticated");
        }
        let response = router(state)
            .oneshot(request.body(Body::empty()).unwrap())
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

    async fn get(state: ApiState, uri: &str) -> (StatusCode, Value) {
        get_as(state, uri, Some("alice")).await
    }

    fn state_with(namespaces: &[&str], allowed: bool) -> ApiState {
        let names: Vec<String> = namespaces.iter().map(|n| n.to_string()).collect();
        ApiState::new(
            unreachable_pool(),
            &names,
            Authorizer::fixed(allowed),
            IdentityHeaders::default(),
        )
    }

    fn state(namespaces: &[&str]) -> ApiState {
        state_with(namespaces, true)
    }

    /// The `Status` message, after checking the object is one.
    fn message(body: &Value) -> &str {
        assert_eq!(body["kind"], "Status", "{body}");
        assert_eq!(body["details"]["group"], "api.cairn.dev", "{body}");
        body["message"].as_str().unwrap()
    }

    #[tokio::test]
    async fn a_caller_without_the_right_reads_nothing() {
        // Refused before the database is asked: it is unreachable here, yet the answer is 403.
        for uri in [
            format!("{RUNS}/a/runs"),
            format!("{RUNS}/a/runs/r"),
            format!("{RUNS}/a/runs/r/steps/plan%232"),
        ] {
            let (status, body) = get(state_with(&[], false), &uri).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
            assert_eq!(body["reason"], "Forbidden");
            let text = message(&body);
            assert!(text.starts_with("User \"alice\" cannot "), "{text}");
            assert!(text.contains("flowruns.cairn.dev"), "{text}");
        }
        let (_, body) = get(state_with(&[], false), &format!("{RUNS}/a/runs/r")).await;
        assert!(message(&body).contains("get flowruns.cairn.dev \"r\" in namespace \"a\""));
    }

    #[tokio::test]
    async fn a_request_without_a_user_is_401() {
        let (status, body) = get_as(state(&[]), &format!("{RUNS}/a/runs"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message(&body).starts_with("no user"), "{body}");
    }

    #[tokio::test]
    async fn discovery_needs_no_user_and_lists_no_resources() {
        let (status, body) = get_as(state(&[]), "/apis/api.cairn.dev/v1alpha1", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["kind"], "APIResourceList");
        assert_eq!(body["groupVersion"], "api.cairn.dev/v1alpha1");
        assert_eq!(body["resources"], json!([]));
    }

    #[tokio::test]
    async fn runs_of_an_unmanaged_namespace_are_not_found() {
        for uri in [
            format!("{RUNS}/other/runs"),
            format!("{RUNS}/other/runs/some-run"),
        ] {
            let (status, body) = get(state(&["team-a", " team-b "]), &uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            let error = message(&body);
            assert!(
                error.contains("\"other\" is not managed") && error.contains("team-a, team-b"),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn bad_filters_are_refused_with_400() {
        let (status, body) = get(state(&[]), &format!("{RUNS}/a/runs?phase=done")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["reason"], "BadRequest");
        assert!(message(&body).contains("unknown phase \"done\""), "{body}");
        let (status, body) = get(state(&[]), &format!("{RUNS}/a/runs?state=failed")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("state"), "{body}");
    }

    #[tokio::test]
    async fn an_unreachable_database_gives_503() {
        let (status, body) = get(state(&["a"]), &format!("{RUNS}/a/runs?phase=Waiting")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            message(&body).starts_with("the database is unreachable"),
            "{body}"
        );
        let (status, _) = get(state(&[]), &format!("{RUNS}/a/runs/r")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn unknown_routes_are_404_statuses() {
        for uri in ["/api/v1/namespaces/a/runs", "/apis/api.cairn.dev/v2/runs"] {
            let (status, body) = get(state(&[]), uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert!(message(&body).contains("no such route"), "{body}");
        }
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
