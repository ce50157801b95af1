//! Artifacts in a flow (see `cairn_engine::artifacts`): objects a flow stores on purpose with
//! [`Ctx::artifact`], and step results too large for a checkpoint row, which go to the object
//! store behind the flow's back and come back, lazily, when the step is replayed.

use anyhow::anyhow;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::sync::atomic::Ordering;

use super::Ctx;
use crate::conn::engine_call;
use crate::error::{Interrupted, permanent};
use cairn_engine::artifacts::{ArtifactError, ArtifactRef, ArtifactSettings, ArtifactStore};
use cairn_engine::checkpoint::MARKER;
use cairn_engine::runner as engine;

/// Without an artifact store, no step result may be larger than this (as JSON): Postgres
/// keeps a checkpoint in one row, and rows this large hurt every reader.
const INLINE_MAX_BYTES: u64 = cairn_engine::artifacts::INLINE_MAX_BYTES;

/// An object stored with [`Ctx::artifact`]. A step may return it (it is a reference); read
/// the object with [`Ctx::read_artifact`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    /// `sha256:` and the object's SHA-256 in hex.
    pub digest: String,
    pub size: u64,
    pub content_type: String,
}

/// What [`Ctx::artifact`] stores: bytes and their content type. Bytes alone are
/// `application/octet-stream`, text is `text/plain; charset=utf-8`, and
/// [`ArtifactContent::json`] serializes a value.
#[derive(Debug, Clone)]
pub struct ArtifactContent {
    bytes: Bytes,
    content_type: String,
}

impl ArtifactContent {
    pub fn new(bytes: impl Into<Bytes>, content_type: &str) -> ArtifactContent {
        ArtifactContent {
            bytes: bytes.into(),
            content_type: content_type.to_owned(),
        }
    }

    /// `value` as JSON (`application/json`).
    pub fn json<T: Serialize>(value: &T) -> anyhow::Result<ArtifactContent> {
        Ok(ArtifactContent::new(
            serde_json::to_vec(value)?,
            "application/json",
        ))
    }
}

impl From<Vec<u8>> for ArtifactContent {
    fn from(bytes: Vec<u8>) -> Self {
        ArtifactContent::new(bytes, "application/octet-stream")
    }
}

impl From<Bytes> for ArtifactContent {
    fn from(bytes: Bytes) -> Self {
        ArtifactContent::new(bytes, "application/octet-stream")
    }
}

impl From<String> for ArtifactContent {
    fn from(text: String) -> Self {
        ArtifactContent::new(text, "text/plain; charset=utf-8")
    }
}

impl From<&str> for ArtifactContent {
    fn from(text: &str) -> Self {
        ArtifactContent::from(text.to_owned())
    }
}

/// The artifact store a flow process was given, if any (a bad setting is kept as its message
/// and reported by the first step that needs the store).
pub(crate) type Store = Option<Result<ArtifactStore, String>>;

pub(crate) fn open_store(settings: Option<Result<ArtifactSettings, String>>) -> Store {
    settings.map(|settings| settings.and_then(|s| ArtifactStore::open(&s)))
}

impl Ctx {
    /// Stores `content` in the artifact store under `name` (durable: a replay returns the
    /// same artifact without storing anything). Fails when no store is configured, or when
    /// the content is over the store's maximum size.
    ///
    /// ```ignore
    /// let report = ctx.artifact("report.pdf", ArtifactContent::new(pdf, "application/pdf")).await?;
    /// ```
    pub async fn artifact(
        &self,
        name: &str,
        content: impl Into<ArtifactContent>,
    ) -> anyhow::Result<Artifact> {
        let key = self.next_key(&format!("artifact:{name}")).0;
        self.check_stopped()?;
        if let Some(stored) = self.inner.checkpoints.get(&key) {
            self.inner.replayed.fetch_add(1, Ordering::Relaxed);
            let reference = ArtifactRef::from_checkpoint(stored).ok_or_else(|| {
                permanent(anyhow!(
                    "the checkpoint of \"{key}\" is not an artifact: the flow's code no longer matches this run"
                ))
            })?;
            return Ok(artifact_of(name, reference));
        }
        let started = std::time::Instant::now();
        let content = content.into();
        let mut reference = self
            .write_object(&key, content.bytes, &content.content_type)
            .await?;
        reference.name = Some(name.to_owned());
        self.complete(&key, reference.to_checkpoint(), started, 1, None)
            .await?;
        Ok(artifact_of(name, reference))
    }

    /// The bytes of an artifact this run stored (checked against its digest).
    pub async fn read_artifact(&self, artifact: &Artifact) -> anyhow::Result<Bytes> {
        let reference = ArtifactRef {
            digest: artifact.digest.clone(),
            size: artifact.size,
            content_type: artifact.content_type.clone(),
            name: Some(artifact.name.clone()),
        };
        self.read_object(&format!("artifact \"{}\"", artifact.name), &reference)
            .await
    }

    /// A step's checkpoint as it is written: `stored` itself, or, when larger than the
    /// store's offload size, a reference to it in the store (a sealed value stays sealed).
    pub(super) async fn offload(&self, key: &str, stored: Value) -> anyhow::Result<Value> {
        let offload_bytes = match &self.inner.artifacts {
            Some(Ok(store)) => store.settings().offload_bytes,
            _ => INLINE_MAX_BYTES,
        };
        let bytes = serde_json::to_vec(&stored).expect("a JSON value serializes");
        if bytes.len() as u64 <= offload_bytes {
            return Ok(stored);
        }
        if self.inner.artifacts.is_none() {
            return Err(permanent(anyhow!(
                "the result of step \"{key}\" is {} bytes, over the {INLINE_MAX_BYTES} a checkpoint row may hold; \
                 give Cairn an artifact store for large results (the operator's --artifacts-url; \
                 `cairn dev` keeps them in a local directory)",
                bytes.len()
            )));
        }
        let sealed = cairn_engine::checkpoint::is_sealed(&stored);
        let reference = self
            .write_object(key, Bytes::from(bytes), "application/json")
            .await?;
        Ok(if sealed {
            json!({ MARKER: "sealed", "artifact": reference })
        } else {
            reference.to_checkpoint()
        })
    }

    /// The checkpoint a replay reads: the stored value itself, or, for an offloaded result,
    /// the one kept in the store.
    pub(super) async fn fetch_offloaded(&self, key: &str, stored: &Value) -> anyhow::Result<Value> {
        let reference = match ArtifactRef::from_checkpoint(stored) {
            Some(reference) if reference.name.is_none() => reference,
            _ => match stored.get("artifact") {
                Some(inner) if cairn_engine::checkpoint::is_sealed(stored) => {
                    serde_json::from_value(inner.clone()).map_err(|e| {
                        permanent(anyhow!(
                            "the checkpoint of step \"{key}\" is malformed: {e}"
                        ))
                    })?
                }
                _ => return Ok(stored.clone()),
            },
        };
        let bytes = self
            .read_object(&format!("the result of step \"{key}\""), &reference)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            permanent(anyhow!(
                "the stored result of step \"{key}\" is not JSON: {e}"
            ))
        })
    }

    fn store(&self, what: &str) -> anyhow::Result<&ArtifactStore> {
        match &self.inner.artifacts {
            Some(Ok(store)) => Ok(store),
            Some(Err(why)) => Err(permanent(anyhow!("{what} needs the artifact store: {why}"))),
            None => Err(permanent(anyhow!(
                "{what} needs an artifact store, and this process has none ({} is not set): \
                 configure one (the operator's --artifacts-url; `cairn dev` has one)",
                cairn_engine::protocol::env::ARTIFACTS
            ))),
        }
    }

    /// Writes an object for the step `key`: recorded in the engine first, so that retention
    /// never deletes it before the step's checkpoint refers to it.
    async fn write_object(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> anyhow::Result<ArtifactRef> {
        let what = format!("step \"{key}\"");
        let store = self.store(&what)?;
        let max = store.settings().max_bytes;
        if bytes.len() as u64 > max {
            return Err(permanent(anyhow!(
                "{what} stores {} bytes, over the artifact store's maximum of {max} bytes",
                bytes.len()
            )));
        }
        let reference = ArtifactRef::of(&bytes, content_type);
        // Recorded before the write and again after it: a second touch that finds no record
        // means retention took it (and perhaps the object) in between, so write it again.
        // Retention leaves a record alone for a grace period after its last touch, far longer
        // than from the second touch to the checkpoint.
        self.touch(&reference).await?;
        for _ in 0..3 {
            store
                .put(self.namespace(), &reference, bytes.clone())
                .await
                .map_err(|e| self.store_error(&what, e))?;
            if self.touch(&reference).await? {
                return Ok(reference);
            }
        }
        Err(permanent(anyhow!(
            "{what}: retention kept deleting its object while it was written; is the operator's --artifact-grace shorter than a write takes?"
        )))
    }

    async fn touch(&self, reference: &ArtifactRef) -> anyhow::Result<bool> {
        let mut conn = self.inner.conn.lock().await;
        engine_call!(*conn, |conn| engine::touch_artifact(
            conn,
            &self.inner.attempt,
            reference
        ))
        .map_err(|e| self.engine_error(e))
    }

    async fn read_object(&self, what: &str, reference: &ArtifactRef) -> anyhow::Result<Bytes> {
        let store = self.store(what)?;
        store
            .get(self.namespace(), reference)
            .await
            .map_err(|e| self.store_error(what, e))
    }

    /// A store that is down ends the attempt as crashed (a later one tries again); a missing
    /// or altered object, or a store that refuses the credentials, fails the step for good.
    fn store_error(&self, what: &str, err: ArtifactError) -> anyhow::Error {
        match err {
            ArtifactError::Unavailable(why) => {
                tracing::error!(%what, error = %why, "the artifact store is unavailable; this attempt ends and a later one retries");
                self.stop(Interrupted::StoreUnavailable)
            }
            other => permanent(anyhow!("{what}: {other}")),
        }
    }
}

fn artifact_of(name: &str, reference: ArtifactRef) -> Artifact {
    Artifact {
        name: name.to_owned(),
        digest: reference.digest,
        size: reference.size,
        content_type: reference.content_type,
    }
}
