//! The web console (`kubectl cairn dashboard`, `cairn dev dashboard`): runs listed and
//! inspected in a browser, their questions answered through a form generated from the wait's
//! JSON schema, steered (cancel, retry, fork, budget), their logs read, live.
//!
//! It serves loopback only and acts through a `Backend`, so it sees and may do exactly what
//! `kubectl cairn` would with the user's credentials. Pages are rendered here (maud); one
//! small script and a stylesheet are compiled into the binary: no CDN, no build step, nothing
//! fetched at run time.

mod api;
mod chart;
mod form;
mod guard;
mod live;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::html;

use super::{Backend, Filter};
use crate::kubectl::render::RunRow;
use crate::lifecycle::Phase;

/// How often live views poll the Backend, unless `CAIRN_CONSOLE_POLL_MS` says otherwise.
const POLL: Duration = Duration::from_secs(1);

pub struct Console {
    backend: Backend,
    /// The session's secret: in the printed URL once, then in an HttpOnly cookie.
    token: String,
    /// That cookie's name, which names the port: browsers share cookies across the ports of a
    /// host, and two consoles (two contexts, or a user and `--as` someone) must not log each
    /// other out.
    cookie: String,
    poll: Duration,
    /// The Host values requests may name: the address served, and `localhost` at its port
    /// (any other name may be a DNS rebinding).
    hosts: Vec<String>,
    /// Set on shutdown: the live streams end then.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The run list's filters (`?phase=&flow=&namespace=`). No `namespace` at all means the
/// default one (the kube context's); an empty one means every namespace.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub flow: String,
    pub namespace: Option<String>,
    /// The version of the rows the page shows (see `live`).
    pub since: Option<String>,
}

/// A run's namespace and name from the path: refused unless they could be a namespace's and a
/// run's, so that a decoded `%2F` never reaches the paths built from them.
pub struct RunPath(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for RunPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        #[derive(serde::Deserialize)]
        struct Raw {
            ns: String,
            name: String,
        }
        let Path(raw) = Path::<Raw>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        for part in [&raw.ns, &raw.name] {
            let plausible = !part.is_empty()
                && part.len() <= 253
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !plausible {
                let error = format!("{part:?} is no namespace or run name");
                return Err(refuse(StatusCode::BAD_REQUEST, &error));
            }
        }
        Ok(RunPath(raw.ns, raw.name))
    }
}

/// A refusal, as every JSON endpoint of the console says one: `{"error": why}`.
fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
}

/// What a run page shows.
pub struct RunView {
    pub detail: cairn_engine::read_api::RunDetail,
    pub artifacts: Vec<cairn_engine::read_api::Artifact>,
}

impl ListQuery {
    fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

impl Console {
    /// A run and its artifacts (none when they cannot be listed: no store, an older operator).
    async fn run_view(&self, namespace: &str, run: &str) -> anyhow::Result<RunView> {
        let (detail, artifacts) = tokio::join!(
            self.backend.detail(namespace, run),
            self.backend.artifacts(namespace, run)
        );
        Ok(RunView {
            detail: detail?,
            artifacts: artifacts.map(|list| list.items).unwrap_or_default(),
        })
    }

    async fn rows(&self, query: &ListQuery) -> anyhow::Result<Vec<RunRow>> {
        let phase = match query.phase.as_str() {
            "" => None,
            phase => Some(phase.parse::<Phase>().map_err(crate::kubectl::input)?),
        };
        let filter = Filter {
            namespace: Some(query.namespace().to_owned()).filter(|ns| !ns.is_empty()),
            phase,
            flow: Some(query.flow.clone()).filter(|f| !f.is_empty()),
        };
        self.backend.rows(&filter).await
    }
}

/// Serves the console at `addr` (loopback only) until Ctrl-C or SIGTERM; prints its URL, with
/// the session token, on stdout's first line.
pub async fn serve(backend: Backend, addr: SocketAddr) -> anyhow::Result<()> {
    super::mcp::check_loopback(addr)?;
    let poll = std::env::var("CAIRN_CONSOLE_POLL_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(POLL, Duration::from_millis);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let console = Arc::new(Console {
        backend,
        token: uuid::Uuid::new_v4().simple().to_string(),
        cookie: format!("cairn_console_{}", local.port()),
        hosts: vec![local.to_string(), format!("localhost:{}", local.port())],
        poll,
        stopping: tokio::sync::watch::Sender::new(false),
    });
    println!("http://{local}/?token={}", console.token);
    eprintln!(
        "The console is up: open the URL above (it carries this session's token). Ctrl-C stops it."
    );
    let stopping = console.clone();
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async move {
            super::stop_signal().await;
            // An event stream never ends by itself: without this the shutdown would wait.
            stopping.stopping.send_replace(true);
        })
        .await?;
    Ok(())
}

fn router(console: Arc<Console>) -> Router {
    let run = "/api/runs/{ns}/{name}";
    Router::new()
        .route("/", get(list_page))
        .route("/runs/{ns}/{name}", get(run_page))
        .route("/events/runs", get(live::list_events))
        .route("/events/runs/{ns}/{name}", get(live::run_events))
        .route(&format!("{run}/answer"), post(api::answer))
        .route(&format!("{run}/cancel"), post(api::cancel))
        .route(&format!("{run}/retry"), post(api::retry))
        .route(&format!("{run}/fork"), post(api::fork))
        .route(&format!("{run}/budget"), post(api::budget))
        .route(&format!("{run}/logs"), get(api::logs))
        .route(&format!("{run}/artifacts/{{artifact}}"), get(api::artifact))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            guard::guard,
        ))
        // The assets need no session: nothing in them is secret.
        .route("/assets/console.js", get(|| asset(JS, "text/javascript")))
        .route("/assets/console.css", get(|| asset(CSS, "text/css")))
        .layer(middleware::map_response(harden))
        .with_state(console)
}

/// What every answer says to the browser: never framed (no clickjacking of the answer
/// form), scripts and styles from here only, nothing sniffed or cached.
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

const JS: &str = include_str!("assets/console.js");
const CSS: &str = include_str!("assets/console.css");

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// A page saying what went wrong (a forbidden namespace, an unknown run, an API away).
fn error_page(status: StatusCode, error: &anyhow::Error) -> Response {
    let page = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "error · cairn" } link rel="stylesheet" href="/assets/console.css"; }
            body { header { a href="/" { "cairn" } } main { p .error #error { (format!("{error:#}")) } } }
        }
    };
    (status, Html(page.into_string())).into_response()
}

/// A mistake in what was asked (`mistake`: an unknown run, a bad filter), or a failure.
fn status_of(error: &anyhow::Error, mistake: StatusCode) -> StatusCode {
    match crate::kubectl::exit_code(error) {
        2 => mistake,
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn list_page(
    State(console): State<Arc<Console>>,
    Query(mut query): Query<ListQuery>,
) -> Response {
    if query.namespace.is_none() {
        query.namespace = Some(console.backend.default_namespace());
    }
    match console.rows(&query).await {
        Ok(rows) => Html(pages::list_page(&rows, &query).into_string()).into_response(),
        Err(e) => error_page(status_of(&e, StatusCode::BAD_REQUEST), &e),
    }
}

async fn run_page(
    State(console): State<Arc<Console>>,
    RunPath(namespace, name): RunPath,
) -> Response {
    match console.run_view(&namespace, &name).await {
        Ok(view) => Html(pages::run_page(&view).into_string()).into_response(),
        Err(e) => error_page(status_of(&e, StatusCode::NOT_FOUND), &e),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::*;

    /// A console over a database nobody listens at: what the guard lets through fails there.
    fn console() -> Router {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        router(Arc::new(Console {
            backend: Backend::Dev {
                pool,
                binary: None,
                namespace: "default".into(),
            },
            token: "t0ken".into(),
            cookie: "cairn_console_8788".into(),
            hosts: vec!["127.0.0.1:8788".into()],
            poll: POLL,
            stopping: tokio::sync::watch::Sender::new(false),
        }))
    }

    async fn send(request: Request<Body>) -> axum::response::Response {
        console().oneshot(request).await.unwrap()
    }

    fn get(uri: &str) -> axum::http::request::Builder {
        Request::get(uri).header(header::HOST, "127.0.0.1:8788")
    }

    #[tokio::test]
    async fn the_token_becomes_a_strict_http_only_cookie_and_leaves_the_url() {
        let answer = send(get("/runs/a/b?token=t0ken").body(Body::empty()).unwrap()).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(answer.headers()[header::LOCATION], "/runs/a/b");
        let cookie = answer.headers()[header::SET_COOKIE].to_str().unwrap();
        assert_eq!(
            cookie,
            "cairn_console_8788=t0ken; HttpOnly; SameSite=Strict; Path=/"
        );
        let wrong = send(get("/?token=guess").body(Body::empty()).unwrap()).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_the_session_only_the_assets_are_served() {
        let page = send(get("/").body(Body::empty()).unwrap()).await;
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
        let asset = send(get("/assets/console.js").body(Body::empty()).unwrap()).await;
        assert_eq!(asset.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn another_host_or_origin_is_refused_and_ours_passes() {
        let rebound = Request::get("/")
            .header(header::HOST, "attacker.example:8788")
            .header(header::COOKIE, "cairn_console_8788=t0ken")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(rebound).await.status(), StatusCode::FORBIDDEN);
        let post = |origin: Option<&str>| {
            let mut request = Request::post("/api/runs/default/r/cancel")
                .header(header::HOST, "127.0.0.1:8788")
                .header(header::COOKIE, "cairn_console_8788=t0ken")
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(origin) = origin {
                request = request.header(header::ORIGIN, origin);
            }
            request.body(Body::from("null")).unwrap()
        };
        assert_eq!(send(post(None)).await.status(), StatusCode::FORBIDDEN);
        let cross = post(Some("http://attacker.example"));
        assert_eq!(send(cross).await.status(), StatusCode::FORBIDDEN);
        // Our own page's request reaches the database, which is away here.
        let ours = send(post(Some("http://127.0.0.1:8788"))).await;
        assert_eq!(ours.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn names_that_could_be_paths_are_refused_and_nothing_may_frame_a_page() {
        let sneaky = get("/runs/a%2Fb/c")
            .header(header::COOKIE, "cairn_console_8788=t0ken")
            .body(Body::empty())
            .unwrap();
        let answer = send(sneaky).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        assert_eq!(answer.headers()[header::X_FRAME_OPTIONS], "DENY");
        let policy = answer.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}
