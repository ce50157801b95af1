//! Stage "observe pods" (I/O): the run's pods, from the watch cache, or from the API server
//! when a decision must not rest on a cache that may trail it; and the image digest the run is
//! pinned to (the one its first pod ran).

use cairn_crds::FlowRun;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};

use crate::controller::pod;
use crate::controller::{Context, Error};
use cairn_crds::LABEL_RUN;
use cairn_engine::read::RunRecord;
use k8s_openapi::api::core::v1::Pod;

pub struct Observed {
    pub pods: Vec<Pod>,
    /// The digest every pod of this run uses once the first one ran.
    pub pinned: Option<String>,
}

/// The run's pods as the watch cache of its scope has them.
pub fn cached(cache: &Store<Pod>, run: &FlowRun, record: &RunRecord) -> Observed {
    let namespace = run.namespace().unwrap_or_default();
    let run_id = record.id.to_string();
    let pods: Vec<Pod> = cache
        .state()
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && p.labels().get(LABEL_RUN) == Some(&run_id)
        })
        .map(|p| Pod::clone(p))
        .collect();
    let pinned = run
        .status
        .as_ref()
        .and_then(|s| s.image_digest.clone())
        .or_else(|| pods.iter().find_map(pod::pinned_image));
    Observed { pods, pinned }
}

/// The run's pods as the API server has them now.
pub async fn listed(ctx: &Context, run: &FlowRun, record: &RunRecord) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let selector = format!("{LABEL_RUN}={}", record.id);
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}
