//! Who may use the console. It acts with the user's own credentials, so a page elsewhere in
//! their browser must not be able to read or steer through it:
//! - the session token, from the URL printed at start (`?token=`), is traded for an
//!   `HttpOnly; SameSite=Strict` cookie and a redirect that drops it from the address bar;
//! - the Host must be the address served, or `localhost` at its port (a DNS-rebound name is
//!   not);
//! - a POST must come from the console's own pages (`Origin`), and carry JSON, which a
//!   cross-site form cannot send.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::{Console, refuse};

pub async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !console.hosts.iter().any(|h| h == host) {
        let error = format!(
            "this console answers as {} only (not {host:?})",
            console.hosts.join(" or ")
        );
        return refuse(StatusCode::FORBIDDEN, &error);
    }
    let token = console.token.as_bytes();
    let given = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    if let Some(given) = given {
        if !bool::from(given.as_bytes().ct_eq(token)) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this link's token is not this console's: open the URL the dashboard command printed",
            );
        }
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            console.cookie, console.token
        );
        let mut response = Redirect::to(request.uri().path()).into_response();
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        return response;
    }
    if !cookie(headers, &console.cookie).is_some_and(|c| bool::from(c.as_bytes().ct_eq(token))) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no console session: open the URL the dashboard command printed (it carries a token)",
        );
    }
    if request.method() == Method::POST {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if origin != Some(&format!("http://{host}")) {
            return refuse(
                StatusCode::FORBIDDEN,
                "a cross-origin request: only the console's own pages may steer runs",
            );
        }
    }
    next.run(request).await
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}
