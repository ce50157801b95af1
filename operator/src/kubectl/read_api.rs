//! The client of the operator's read API (`controller::api`), the aggregated API
//! `api.cairn.dev/v1alpha1`: through the API server with the user's own kube credentials, so the
//! user reads exactly the runs RBAC lets them `get`.

use std::time::Duration;

use http::Request;
use kube::Client;
use kube::client::Body;
use serde::de::DeserializeOwned;
use serde_json::Value;

use cairn_engine::read_api::{ArtifactList, RunDetail, StepOutput};

/// How long one read may take before the operator counts as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long downloading one artifact may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const PREFIX: &str = "/apis/api.cairn.dev/v1alpha1";

pub struct ReadApi {
    client: Client,
    /// Where it is, for messages.
    pub location: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadApiError {
    /// The operator answered that it does not know the run (or does not manage the namespace).
    #[error("{0}")]
    NotFound(String),
    /// The operator could not be reached, or could not reach its database.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

impl ReadApi {
    pub fn new(client: Client) -> ReadApi {
        ReadApi {
            client,
            location: format!(
                "the operator's read API ({PREFIX}, APIService v1alpha1.api.cairn.dev)"
            ),
        }
    }

    /// A run's detail: steps, attempts, totals, children, wait.
    pub async fn run(&self, namespace: &str, name: &str) -> Result<RunDetail, ReadApiError> {
        self.get(&format!("{PREFIX}/namespaces/{namespace}/runs/{name}"))
            .await
    }

    /// One step of a run with its whole value.
    pub async fn step(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<StepOutput, ReadApiError> {
        self.get(&path(&[
            "namespaces",
            namespace,
            "runs",
            name,
            "steps",
            key,
        ]))
        .await
    }

    /// A run's artifacts.
    pub async fn artifacts(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ArtifactList, ReadApiError> {
        self.get(&path(&["namespaces", namespace, "runs", name, "artifacts"]))
            .await
    }

    /// The bytes of one of a run's artifacts (by name or step key).
    pub async fn artifact(
        &self,
        namespace: &str,
        name: &str,
        artifact: &str,
    ) -> Result<bytes::Bytes, ReadApiError> {
        let path = path(&["namespaces", namespace, "runs", name, "artifacts", artifact]);
        self.fetch(&path, "*/*", DOWNLOAD_TIMEOUT).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ReadApiError> {
        let body = self.fetch(path, "application/json", READ_TIMEOUT).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ReadApiError::Failed(format!(
                "unexpected answer from {} ({e}): {}",
                self.location,
                excerpt(&body)
            ))
        })
    }

    async fn fetch(
        &self,
        path: &str,
        accept: &str,
        timeout: Duration,
    ) -> Result<bytes::Bytes, ReadApiError> {
        let request = Request::get(path)
            .header("accept", accept)
            .body(Body::from(Vec::new()))
            .map_err(|e| ReadApiError::Failed(format!("bad request {path}: {e}")))?;
        let unreachable = |why: String| {
            ReadApiError::Unreachable(format!(
                "cannot reach {}: {why}; is the operator installed (Helm value readApi.enabled) and ready? \
                 `kubectl get apiservice v1alpha1.api.cairn.dev` says",
                self.location
            ))
        };
        let exchange = async {
            let response = self.client.send(request).await?;
            let status = response.status();
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => return Err(unreachable(super::client::innermost(&e))),
            Ok(Ok(answer)) => answer,
        };
        if status.is_success() {
            return Ok(body);
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        // A Status: the operator's own (details.group is its group), or the API server's.
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| excerpt(&body));
        let from_operator = json
            .as_ref()
            .and_then(|j| j.pointer("/details/group"))
            .and_then(Value::as_str)
            == Some("api.cairn.dev");
        Err(match (status.as_u16(), from_operator) {
            (404, true) => ReadApiError::NotFound(message),
            (401 | 403, _) => ReadApiError::Failed(format!(
                "not allowed to read this run through {}: {message}",
                self.location
            )),
            (503, true) => {
                ReadApiError::Unreachable(format!("{} cannot answer: {message}", self.location))
            }
            (code, true) => {
                ReadApiError::Failed(format!("{} answered {code}: {message}", self.location))
            }
            (code, false) => unreachable(format!("HTTP {code}: {message}")),
        })
    }
}

/// The read API's path of `segments`, each escaped (keys hold `#` and `:`: `plan#2`).
fn path(segments: &[&str]) -> String {
    let mut url = url::Url::parse("http://read-api").expect("a valid base URL");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .extend(PREFIX.trim_start_matches('/').split('/'))
        .extend(segments);
    url.path().to_owned()
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_owned(),
    }
}
