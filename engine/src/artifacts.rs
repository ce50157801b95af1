//! Artifacts: values kept in object storage, a checkpoint holding only a reference to them.
//!
//! Two kinds: a step's result larger than the offload size (its checkpoint, as JSON, goes to
//! the store), and what a flow stores on purpose (`ctx.artifact(name, ..)`). Either way the
//! checkpoint is `{"$cairn": "artifact", "v": 1, "digest": "sha256:HEX", "size": N,
//! "content_type": T}`, with `"name"` for a stored one. A sensitive step's large result stays
//! a sealed value (`checkpoint`): `{"$cairn": "sealed", "artifact": REFERENCE}`, the object
//! holding the sealed envelope, so that every reader treats it as sealed. Objects are content-addressed per namespace (`<prefix>/<namespace>/sha256/
//! <HEX>`): writing one is idempotent, forks share them by reference, and a reader checks what
//! it got against the digest.
//!
//! Deleting: the engine records each object a run is about to write (`touch_artifact`) before
//! the write; retention deletes the objects no checkpoint refers to once their record is older
//! than a grace period (`cairn.artifacts_to_delete`), so an object being written for a step not
//! yet checkpointed is never taken.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, ObjectStoreScheme, RetryConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::checkpoint::MARKER;

const ARTIFACT: &str = "artifact";

/// Results larger than this (as JSON) go to the store, by default.
pub const DEFAULT_OFFLOAD_BYTES: u64 = 256 * 1024;
/// The largest artifact a flow may write, by default.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Where a flow process keeps artifacts: what a launcher gives it, as JSON, in
/// `CAIRN_ARTIFACTS` (`protocol::env::ARTIFACTS`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSettings {
    /// `s3://bucket/prefix`, `gs://..`, `az://..` or `file:///dir`.
    pub url: String,
    /// The store's options (object_store's keys: `aws_access_key_id`, `aws_endpoint`, ..).
    /// May hold credentials: never logged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// A step result larger than this many bytes (as JSON) is kept in the store.
    #[serde(default = "default_offload")]
    pub offload_bytes: u64,
    /// No artifact may be larger.
    #[serde(default = "default_max")]
    pub max_bytes: u64,
}

fn default_offload() -> u64 {
    DEFAULT_OFFLOAD_BYTES
}

fn default_max() -> u64 {
    DEFAULT_MAX_BYTES
}

impl std::fmt::Debug for ArtifactSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactSettings")
            .field("url", &self.url)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("offload_bytes", &self.offload_bytes)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl ArtifactSettings {
    pub fn new(url: impl Into<String>) -> ArtifactSettings {
        ArtifactSettings {
            url: url.into(),
            options: BTreeMap::new(),
            offload_bytes: DEFAULT_OFFLOAD_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The store options in this process's environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as
    /// object_store's builders read them), for a launcher to pass on to flow processes.
    pub fn with_options_from_env(mut self) -> ArtifactSettings {
        for (key, value) in std::env::vars() {
            if ["AWS_", "GOOGLE_", "AZURE_"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
            {
                self.options.insert(key.to_ascii_lowercase(), value);
            }
        }
        self
    }

    /// Reads the settings a launcher gave (the message never quotes the text: it holds keys).
    pub fn parse(text: &str) -> Result<ArtifactSettings, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "the artifact settings are not valid (JSON with url, options, offload_bytes, max_bytes): line {} column {}",
                e.line(),
                e.column()
            )
        })
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("settings serialize")
    }

    /// Checks the sizes: results up to the offload size stay in their row (at most
    /// [`INLINE_MAX_BYTES`]), and no object may pass [`MAX_OBJECT_BYTES`] (one PUT).
    pub fn check(&self) -> Result<(), String> {
        if !(1024..=INLINE_MAX_BYTES).contains(&self.offload_bytes) {
            return Err(format!(
                "the offload size is {} bytes; it must be between 1024 and {INLINE_MAX_BYTES}",
                self.offload_bytes
            ));
        }
        if !(self.offload_bytes..=MAX_OBJECT_BYTES).contains(&self.max_bytes) {
            return Err(format!(
                "the maximum artifact size is {} bytes; it must be between the offload size ({}) and {MAX_OBJECT_BYTES}",
                self.max_bytes, self.offload_bytes
            ));
        }
        Ok(())
    }
}

/// The largest result a checkpoint row holds (beyond it, a store is needed).
pub const INLINE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The largest object: what one S3 PUT takes.
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A checkpoint's reference to an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// `sha256:` and the object's SHA-256 in hex.
    pub digest: String,
    pub size: u64,
    pub content_type: String,
    /// The name a flow stored it under; none for an offloaded step result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ArtifactRef {
    /// The reference to `bytes`.
    pub fn of(bytes: &[u8], content_type: &str) -> ArtifactRef {
        ArtifactRef {
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            content_type: content_type.to_owned(),
            name: None,
        }
    }

    /// The reference as a checkpoint stores it.
    pub fn to_checkpoint(&self) -> Value {
        let mut value = json!({ MARKER: ARTIFACT, "v": 1 });
        if let (Value::Object(map), Ok(Value::Object(fields))) =
            (&mut value, serde_json::to_value(self))
        {
            map.extend(fields);
        }
        value
    }

    /// The reference a stored checkpoint is, if it is one.
    pub fn from_checkpoint(stored: &Value) -> Option<ArtifactRef> {
        if stored.get(MARKER).and_then(Value::as_str) != Some(ARTIFACT) {
            return None;
        }
        serde_json::from_value(stored.clone()).ok()
    }
}

/// `sha256:` and the SHA-256 of `bytes` in hex.
pub fn digest_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The store cannot be used now (down, refused, timed out): worth trying again later.
    #[error("the artifact store is unavailable: {0}")]
    Unavailable(String),
    /// The object is missing from the store.
    #[error("artifact {0} is missing from the artifact store")]
    Missing(String),
    /// What the store returned is not what the checkpoint refers to.
    #[error("artifact is corrupt: {0}")]
    Corrupt(String),
    /// The store refused the credentials or the access: fix them, then retry the run.
    #[error("the artifact store refused access (check its credentials and permissions): {0}")]
    Refused(String),
}

/// An object store, opened from [`ArtifactSettings`].
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    settings: ArtifactSettings,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArtifactStore({})", self.settings.url)
    }
}

impl ArtifactStore {
    /// Opens the store the settings name (no I/O). The message says what is wrong.
    pub fn open(settings: &ArtifactSettings) -> Result<ArtifactStore, String> {
        let bad = |e: &dyn std::fmt::Display| {
            format!("the artifact store {:?} cannot be used: {e}", settings.url)
        };
        let url = url::Url::parse(&settings.url).map_err(|e| bad(&e))?;
        let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|e| bad(&e))?;
        let prefix = Path::parse(path).map_err(|e| bad(&e))?;
        // A store that is down fails the write within seconds (the step is then tried again
        // by a later attempt), rather than after object_store's default three minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        if scheme != ObjectStoreScheme::Local {
            // reqwest is built without a TLS provider of its own: ring, the build's only one,
            // serves the process (already done when another client installed it first).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        // A cloud store: its builder with our client options, the URL, then the settings'
        // options on top (object_store's keys; unknown ones are ignored, as its own
        // `parse_url_opts` does).
        macro_rules! cloud {
            ($builder:ty) => {{
                let builder = settings.options.iter().fold(
                    <$builder>::new()
                        .with_client_options(client_options())
                        .with_url(settings.url.as_str()),
                    |builder, (key, value)| match key.parse() {
                        Ok(key) => builder.with_config(key, value),
                        Err(_) => builder,
                    },
                );
                Arc::new(builder.with_retry(retry).build().map_err(|e| bad(&e))?)
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
            ObjectStoreScheme::AmazonS3 => cloud!(object_store::aws::AmazonS3Builder),
            ObjectStoreScheme::GoogleCloudStorage => {
                cloud!(object_store::gcp::GoogleCloudStorageBuilder)
            }
            ObjectStoreScheme::MicrosoftAzure => cloud!(object_store::azure::MicrosoftAzureBuilder),
            other => {
                return Err(bad(&format!(
                    "{other:?} is not supported: use s3://, gs://, az:// or file://"
                )));
            }
        };
        Ok(ArtifactStore {
            store,
            prefix,
            settings: settings.clone(),
        })
    }

    pub fn settings(&self) -> &ArtifactSettings {
        &self.settings
    }

    /// Where the object of `digest` lives; the digest is validated, since it names a path.
    fn location(&self, namespace: &str, digest: &str) -> Result<Path, ArtifactError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ArtifactError::Corrupt(format!("bad digest {digest:?}")))?;
        Ok(self.prefix.clone().join(namespace).join("sha256").join(hex))
    }

    /// Writes `bytes` (whose reference is `artifact`) unless the store has it already.
    pub async fn put(
        &self,
        namespace: &str,
        artifact: &ArtifactRef,
        bytes: Bytes,
    ) -> Result<(), ArtifactError> {
        let location = self.location(namespace, &artifact.digest)?;
        match self.store.head(&location).await {
            Ok(meta) if meta.size == artifact.size => return Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.store
            .put(&location, bytes.into())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Reads the object `artifact` refers to, checked against its digest.
    pub async fn get(
        &self,
        namespace: &str,
        artifact: &ArtifactRef,
    ) -> Result<Bytes, ArtifactError> {
        let location = self.location(namespace, &artifact.digest)?;
        let bytes = match self.store.get(&location).await {
            Ok(got) => got.bytes().await.map_err(unavailable)?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArtifactError::Missing(artifact.digest.clone()));
            }
            Err(e) => return Err(unavailable(e)),
        };
        if bytes.len() as u64 != artifact.size || digest_of(&bytes) != artifact.digest {
            return Err(ArtifactError::Corrupt(format!(
                "the store's object for {} has another content ({} bytes)",
                artifact.digest,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Deletes the object of `digest` in `namespace` (done when it is already gone).
    pub async fn delete(&self, namespace: &str, digest: &str) -> Result<(), ArtifactError> {
        match self.store.delete(&self.location(namespace, digest)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// The roots HTTPS peers (object stores, OTLP endpoints) are checked against: the system's and
/// Mozilla's (webpki-root-certs) together, instead of the system's alone, which an image without
/// a CA bundle (ours are FROM scratch) does not have: a client could then not even be built.
pub(crate) fn trusted_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls_native_certs::load_native_certs().certs;
        roots.extend(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        roots
    })
}

/// HTTP client options of the cloud stores: certificates checked against [`trusted_roots`].
/// The store's options (`aws_allow_http`, ..) are applied on top.
fn client_options() -> object_store::ClientOptions {
    trusted_roots()
        .iter()
        .filter_map(|der| object_store::Certificate::from_der(der).ok())
        .fold(
            object_store::ClientOptions::new()
                .with_no_system_certificates(true)
                // A request may move an object of up to a few GiB: object_store's 30 s default
                // would fail every large one, every time. A silent peer is still cut by the read
                // timeout.
                .with_timeout(Duration::from_secs(1800))
                .with_read_timeout(Duration::from_secs(60)),
            object_store::ClientOptions::with_root_certificate,
        )
}

fn unavailable(e: object_store::Error) -> ArtifactError {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ArtifactError::Refused(e.to_string()),
        other => ArtifactError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_through_its_checkpoint_form() {
        let mut artifact = ArtifactRef::of(b"hello", "text/plain");
        artifact.name = Some("greeting".into());
        let stored = artifact.to_checkpoint();
        assert_eq!(stored["$cairn"], "artifact");
        assert_eq!(stored["size"], 5);
        assert_eq!(ArtifactRef::from_checkpoint(&stored), Some(artifact));
        assert_eq!(ArtifactRef::from_checkpoint(&json!({"size": 5})), None);
    }

    #[test]
    fn settings_never_show_their_options_and_bad_ones_are_named() {
        let mut settings = ArtifactSettings::new("s3://bucket/cairn");
        settings
            .options
            .insert("aws_secret_access_key".into(), "hunter2".into());
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(
            ArtifactSettings::parse(&settings.encode()).unwrap(),
            settings
        );
        let bad = ArtifactSettings::parse("{\"url\": \"hunter2\", ").unwrap_err();
        assert!(!bad.contains("hunter2"), "{bad}");
        let http = ArtifactStore::open(&ArtifactSettings::new("ftp://x/y")).unwrap_err();
        assert!(http.contains("ftp://x/y"), "{http}");
    }

    #[test]
    fn sizes_out_of_range_are_refused_saying_the_range() {
        let mut settings = ArtifactSettings::new("s3://b/p");
        assert_eq!(settings.check(), Ok(()));
        settings.offload_bytes = 10;
        assert!(settings.check().unwrap_err().contains("between 1024"));
        settings.offload_bytes = 4096;
        settings.max_bytes = 2048;
        assert!(
            settings
                .check()
                .unwrap_err()
                .contains("offload size (4096)")
        );
        settings.max_bytes = MAX_OBJECT_BYTES + 1;
        assert!(settings.check().unwrap_err().contains("5368709120"));
    }

    #[tokio::test]
    async fn a_local_store_writes_once_by_digest_and_checks_what_it_reads() {
        let dir = std::env::temp_dir().join(format!("cairn-artifacts-{}", uuid::Uuid::new_v4()));
        let store =
            ArtifactStore::open(&ArtifactSettings::new(format!("file://{}", dir.display())))
                .unwrap();
        let bytes = Bytes::from_static(b"{\"report\": 1}");
        let artifact = ArtifactRef::of(&bytes, "application/json");
        store.put("team-a", &artifact, bytes.clone()).await.unwrap();
        store.put("team-a", &artifact, bytes.clone()).await.unwrap();
        assert_eq!(store.get("team-a", &artifact).await.unwrap(), bytes);
        assert!(matches!(
            store.get("team-b", &artifact).await,
            Err(ArtifactError::Missing(_))
        ));
        let hex = artifact.digest.trim_start_matches("sha256:");
        std::fs::write(dir.join("team-a/sha256").join(hex), b"{\"report\": 2}").unwrap();
        assert!(matches!(
            store.get("team-a", &artifact).await,
            Err(ArtifactError::Corrupt(_))
        ));
        store.delete("team-a", &artifact.digest).await.unwrap();
        store.delete("team-a", &artifact.digest).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
