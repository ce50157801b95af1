//! A run's artifacts in the read API: the list, and each object's bytes (read from the
//! artifact store by the operator, so users need no credentials of the store), under the same
//! `get flowruns` check as the rest of the run. A sensitive step's object is never served.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use cairn_engine::artifacts::{ArtifactError, ArtifactStore};
use cairn_engine::read;
use cairn_engine::read_api::{Artifact, ArtifactList};
use sqlx::PgPool;

use super::auth::Access;
use super::{ApiError, ApiState, find};

/// The run's objects in the artifact store.
pub async fn list(pool: &PgPool, namespace: &str, run: &str) -> Result<ArtifactList, ApiError> {
    let run = find(pool, namespace, run).await?;
    let items = read::artifacts(pool, run.id).await?;
    Ok(ArtifactList {
        run: run.name,
        items,
    })
}

/// One object of the run (by name, or its step's key), with its bytes.
pub async fn fetch(
    pool: &PgPool,
    store: Option<&ArtifactStore>,
    namespace: &str,
    run: &str,
    name: &str,
) -> Result<(Artifact, Bytes), ApiError> {
    let run = find(pool, namespace, run).await?;
    let (artifact, reference) = match read::artifact(pool, &run, name).await {
        Ok(found) => found,
        Err(e) if e.is::<read::NotFound>() => return Err(ApiError::not_found(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if artifact.sensitive {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "artifact \"{}\" is a sensitive step's result: it is never served",
                artifact.name
            ),
        ));
    }
    let store = store.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this operator has no artifact store configured (--artifacts-url)".into(),
        )
    })?;
    match store.get(&run.namespace, &reference).await {
        Ok(bytes) => Ok((artifact, bytes)),
        Err(ArtifactError::Unavailable(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the artifact store is unavailable: {why}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

pub(super) async fn get_list(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ArtifactList>, ApiError> {
    state
        .authorize(&headers, Access::get(&namespace, &name))
        .await?;
    state.check_namespace(&namespace)?;
    Ok(Json(list(&state.pool, &namespace, &name).await?))
}

pub(super) async fn get_one(
    State(state): State<ApiState>,
    Path((namespace, name, artifact)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state
        .authorize(&headers, Access::get(&namespace, &name))
        .await?;
    state.check_namespace(&namespace)?;
    let (artifact, bytes) = fetch(
        &state.pool,
        state.artifacts.as_ref(),
        &namespace,
        &name,
        &artifact,
    )
    .await?;
    // What a flow stored, served as a download, never rendered: its content type is the flow's
    // to choose (HTML, SVG), and a browser through `kubectl proxy` holds the user's rights.
    let content_type = HeaderValue::from_str(&artifact.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_DISPOSITION, "attachment")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, "sandbox")
        .header("x-cairn-digest", &artifact.digest)
        .body(Body::from(bytes))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
