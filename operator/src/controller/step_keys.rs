//! The master step keys on Kubernetes: a Secret in the operator's namespace (key `keys`), made
//! by the first operator that finds none. Each namespace's flow pods get that namespace's keys,
//! derived from them (`checkpoint::StepKeys::for_namespace`), in the runner Secret the operator
//! keeps there, so a tenant who may read its own Secrets can open its own sensitive values and
//! no one else's. Rotation: put a new key first in `keys` (the old ones after it) and restart
//! the operator; values sealed before stay readable while their key is listed.

use anyhow::Context as _;
use cairn_engine::checkpoint::StepKeys;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;

/// The key of the master keys in their Secret.
pub const MASTER_KEY: &str = "keys";
/// The key of a namespace's keys in its runner Secret (pods get it as `CAIRN_STEP_KEYS`).
pub const NAMESPACE_KEY: &str = "step-keys";

/// Reads the master keys, making the Secret when there is none.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<StepKeys> {
    let secrets = Api::<Secret>::namespaced(client, namespace);
    let where_ = format!("Secret {namespace}/{name}");
    let secret = match secrets
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read {where_}"))?
    {
        Some(secret) => secret,
        None => {
            let new = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(BTreeMap::from([(
                        cairn_crds::LABEL_MANAGED.into(),
                        cairn_crds::MANAGED_BY_OPERATOR.into(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    MASTER_KEY.into(),
                    ByteString(StepKeys::generate().encode().into_bytes()),
                )])),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &new).await {
                Ok(created) => {
                    tracing::info!("made the master step keys in {where_}");
                    created
                }
                // Another replica made it first: use theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => secrets
                    .get(name)
                    .await
                    .with_context(|| format!("cannot read {where_}"))?,
                Err(e) => return Err(e).with_context(|| format!("cannot create {where_}")),
            }
        }
    };
    parse(&secret).with_context(|| format!("{where_}, key {MASTER_KEY}"))
}

fn parse(secret: &Secret) -> anyhow::Result<StepKeys> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(MASTER_KEY))
        .ok_or_else(|| anyhow::anyhow!("missing"))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| anyhow::anyhow!("not text"))?;
    StepKeys::parse(text).map_err(|e| {
        anyhow::anyhow!("{e}; it holds base64 keys of 32 bytes, the one that seals first")
    })
}
