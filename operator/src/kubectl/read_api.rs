//! The client of the operator's read API (`controller::api`): through the API server's service
//! proxy with the user's kube credentials, or at a URL (`--api-url`: a port-forward, a host
//! operator in tests).

use std::time::Duration;

use http::{Request, Uri};
use kube::Client;
use kube::client::Body;
use serde::de::DeserializeOwned;
use serde_json::Value;

use cairn_engine::read_api::RunDetail;

/// How long one read may take before the operator counts as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ReadApi {
    client: Client,
    /// Prepended to the API's own paths (the service proxy's path, or the URL's path).
    prefix: String,
    /// Where it is, for messages.
    pub location: String,
    /// How to point at another place, for messages.
    hint: &'static str,
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
    /// Through `GET /api/v1/namespaces/<ns>/services/<service>:http/proxy/...`.
    pub fn through_proxy(client: Client, namespace: &str, service: &str) -> ReadApi {
        ReadApi {
            client,
            prefix: format!("/api/v1/namespaces/{namespace}/services/{service}:http/proxy"),
            location: format!(
                "the operator's read API (service {namespace}/{service}, port \"http\", through the API server's service proxy)"
            ),
            hint: "is the operator installed and ready there? Point at it with --operator-namespace/--operator-service \
                   (CAIRN_OPERATOR_NAMESPACE/CAIRN_OPERATOR_SERVICE), or at a URL with --api-url (CAIRN_API_URL)",
        }
    }

    /// At `url` (`http://127.0.0.1:18080`, possibly with a path prefix).
    pub fn at_url(url: &str) -> anyhow::Result<ReadApi> {
        let uri: Uri = url.parse().map_err(|e| {
            super::InputError(format!(
                "--api-url {url:?} is not a URL ({e}); expected e.g. http://127.0.0.1:8080"
            ))
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(super::InputError(format!(
                "--api-url {url:?} needs a scheme and a host, e.g. http://127.0.0.1:8080"
            ))
            .into());
        };
        let base: Uri = format!("{scheme}://{authority}").parse()?;
        let mut config = kube::Config::new(base);
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(READ_TIMEOUT);
        Ok(ReadApi {
            client: Client::try_from(config)?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            location: format!("the read API at {url}"),
            hint: "is the operator running and listening there? (--api-url / CAIRN_API_URL)",
        })
    }

    /// A run's detail: steps, attempts, totals, children, wait.
    pub async fn run(&self, namespace: &str, name: &str) -> Result<RunDetail, ReadApiError> {
        self.get(&format!("/api/v1/namespaces/{namespace}/runs/{name}"))
            .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ReadApiError> {
        let uri = format!("{}{path}", self.prefix);
        let request = Request::get(&uri)
            .header("accept", "application/json")
            .body(Body::from(Vec::new()))
            .map_err(|e| ReadApiError::Failed(format!("bad request {uri}: {e}")))?;
        let unreachable = |why: String| {
            ReadApiError::Unreachable(format!(
                "cannot reach {}: {why}; {}",
                self.location, self.hint
            ))
        };
        let exchange = async {
            let response = self.client.send(request).await?;
            let status = response.status();
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(READ_TIMEOUT, exchange).await {
            Err(_) => return Err(unreachable(format!("no answer within {READ_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(unreachable(super::client::innermost(&e))),
            Ok(Ok(answer)) => answer,
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                ReadApiError::Failed(format!(
                    "unexpected answer from {} ({e}): {}",
                    self.location,
                    excerpt(&body)
                ))
            });
        }
        // The operator's own errors are {"error": "..."}.
        if let Some(message) = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
        {
            return Err(match status.as_u16() {
                404 => ReadApiError::NotFound(message.to_owned()),
                503 => {
                    ReadApiError::Unreachable(format!("{} cannot answer: {message}", self.location))
                }
                code => {
                    ReadApiError::Failed(format!("{} answered {code}: {message}", self.location))
                }
            });
        }
        // Anything else comes from the API server (a Status) or from whatever listens there.
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| excerpt(&body));
        Err(match status.as_u16() {
            401 | 403 => ReadApiError::Failed(format!(
                "not allowed to use {}: {message}. Reading it needs `get` on `services/proxy` in the operator's namespace (RBAC)",
                self.location
            )),
            code => unreachable(format!("HTTP {code}: {message}")),
        })
    }
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
