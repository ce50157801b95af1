//! Stage "dereference" (I/O): the Flow and the ResourceProfile a FlowRun names, from the watch
//! caches. A miss asks the API server: one created a moment before the FlowRun naming it (one
//! `kubectl apply` of both) may not be cached yet, and a run must not be told it names an
//! unknown Flow for that.

use cairn_crds::{Flow, FlowRun, ResourceProfile};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use super::Scope;
use crate::controller::Error;

/// What a FlowRun names, where it exists.
pub struct Referenced {
    /// Its `spec.flowRef`, or for a child run the Flow its pods take their settings from.
    pub flow: Option<Flow>,
    pub profile: Option<ResourceProfile>,
}

pub async fn fetch(run: &FlowRun, scope: &Scope) -> Result<Referenced, Error> {
    let namespace = run.namespace().unwrap_or_default();
    let client = &scope.ctx.client;
    let flow = match run.pod_settings_flow() {
        Some(flow_ref) => {
            cached_or_get(
                &scope.flows,
                Api::namespaced(client.clone(), &namespace),
                ObjectRef::new(flow_ref).within(&namespace),
            )
            .await?
        }
        None => None,
    };
    // Only a Flow the run references gives it a profile: the Flow a child takes its pod
    // settings from gives it none (the child's spec carries its profile).
    let template = flow.as_ref().filter(|_| run.spec.flow_ref.is_some());
    let profile_name = run
        .spec
        .profile
        .as_ref()
        .or_else(|| template.and_then(|f| f.spec.profile.as_ref()));
    let profile = match profile_name {
        Some(name) => {
            cached_or_get(
                &scope.profiles,
                Api::all(client.clone()),
                ObjectRef::new(name),
            )
            .await?
        }
        None => None,
    };
    Ok(Referenced { flow, profile })
}

async fn cached_or_get<K>(
    cache: &Store<K>,
    api: Api<K>,
    key: ObjectRef<K>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match cache.get(&key) {
        Some(object) => Ok(Some(K::clone(&object))),
        None => Ok(api.get_opt(&key.name).await?),
    }
}
