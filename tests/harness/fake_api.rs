//! A stand-in Kubernetes API server for reconcile tests, in the style of kube-rs's
//! controller-rs: the reconcile's client talks to it in-process, it answers every request the
//! way the API server would for the objects the test gives it (creates and patches echo the
//! object back, lists return the test's pods, deletes of unknown objects are 404), and it
//! records each request so the test can assert exactly what the reconcile sent.
//!
//! Only for request shapes: behaviour is tested against the real cluster (`tests/e2e`).

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the reconcile sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/ns/pods?labelSelector=…`.
    pub uri: String,
    pub body: Value,
}

impl Sent {
    /// `"POST /api/v1/namespaces/ns/pods"`: method and path, without the query.
    pub fn line(&self) -> String {
        let path = self.uri.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

#[derive(Clone, Default)]
pub struct FakeApi {
    sent: Arc<Mutex<Vec<Sent>>>,
    /// What a list of pods returns.
    pods: Arc<Mutex<Vec<Pod>>>,
    /// The FlowRun a get, patch or status patch of it returns.
    flowrun: Arc<Mutex<Value>>,
}

impl FakeApi {
    /// The fake, serving `flowrun` (as JSON), and a client talking to it.
    pub fn new(flowrun: &impl serde::Serialize) -> (FakeApi, kube::Client) {
        let fake = FakeApi::default();
        *fake.flowrun.lock().unwrap() = serde_json::to_value(flowrun).unwrap();
        let serving = fake.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let fake = serving.clone();
            async move { Ok::<_, std::convert::Infallible>(fake.answer(request).await) }
        });
        (fake, kube::Client::new(service, "default"))
    }

    /// Pods the API server has (what a list returns).
    pub fn with_pods(&self, pods: Vec<Pod>) {
        *self.pods.lock().unwrap() = pods;
    }

    /// Every request so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// `sent()` as `"METHOD path"` lines, leaving out Events (published in the background by
    /// the recorder; tests look them up with `events`).
    pub fn lines(&self) -> Vec<String> {
        self.sent()
            .iter()
            .filter(|sent| !sent.uri.contains("/events"))
            .map(Sent::line)
            .collect()
    }

    /// The reasons of the Events published so far.
    pub fn events(&self) -> Vec<String> {
        self.sent()
            .iter()
            .filter(|sent| sent.uri.contains("/events") && sent.method == Method::POST)
            .filter_map(|sent| sent.body["reason"].as_str().map(str::to_owned))
            .collect()
    }

    /// The body of the only request matching `line` (see `Sent::line`).
    pub fn body_of(&self, line: &str) -> Value {
        let matching: Vec<Sent> = self
            .sent()
            .into_iter()
            .filter(|sent| sent.line() == line)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected exactly one {line}; sent: {:#?}",
            self.lines()
        );
        matching[0].body.clone()
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let uri = parts.uri.to_string();
        self.sent.lock().unwrap().push(Sent {
            method: parts.method.clone(),
            uri: uri.clone(),
            body: body.clone(),
        });
        let path = uri.split('?').next().unwrap_or_default().to_owned();
        let is_flowrun = path.contains("/flowruns/");
        let (status, answer) = match parts.method {
            Method::GET if path.ends_with("/pods") => {
                let pods = self.pods.lock().unwrap().clone();
                let list =
                    json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods });
                (StatusCode::OK, list)
            }
            Method::GET | Method::PATCH if is_flowrun => {
                (StatusCode::OK, self.flowrun.lock().unwrap().clone())
            }
            Method::GET => not_found(&path),
            // Creates and applies: the object as sent, as the API server would store it.
            Method::POST | Method::PATCH => (StatusCode::CREATED, with_name(body, &path)),
            Method::DELETE => (
                StatusCode::OK,
                json!({ "kind": "Status", "status": "Success" }),
            ),
            _ => not_found(&path),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap()
    }
}

fn not_found(path: &str) -> (StatusCode, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "message": format!("{path} not found"), "code": 404,
    });
    (StatusCode::NOT_FOUND, status)
}

/// An applied object's name is in the path; a server-side apply body may leave it out.
fn with_name(mut object: Value, path: &str) -> Value {
    if object["metadata"]["name"].is_null()
        && let Some(name) = path.rsplit('/').next()
    {
        object["metadata"]["name"] = json!(name);
    }
    object
}
