//! Who may use the console. It acts with the user's own credentials, so a page elsewhere in
//! their browser must not be able to read or steer through it:
//! - the session token, from the URL printed at start (`?token=`), is traded for an
//!   `HttpOnly; SameSite=Strict` cookie and a redirect that drops it from the address bar;
//! - the Host must be a loopback name (a DNS-rebound name is not);
//! - a POST must come from the console's own pages (`Origin`), and carry JSON, which a
//!   cross-site form cannot send.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::Console;

const COOKIE: &str = "cairn_console";

pub async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !loopback_host(host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this console answers on 127.0.0.1 only",
        );
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
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            console.token
        );
        let mut response = Redirect::to(request.uri().path()).into_response();
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        return response;
    }
    if !cookie(headers, COOKIE).is_some_and(|c| bool::from(c.as_bytes().ct_eq(token))) {
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

fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_hosts() {
        for host in ["127.0.0.1:8080", "localhost:1", "[::1]:9", "127.0.0.1"] {
            assert!(loopback_host(host), "{host}");
        }
        for host in ["evil.example:8080", "127.0.0.1.evil.example", "", "[::1]x"] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
