//! The statuses this operator just wrote, outranking the watch cache for a few seconds.

use std::collections::HashMap;
use std::time::Duration;

use cairn_crds::{FlowRun, FlowRunStatus};

/// The status each FlowRun (by uid) was last given, for a few seconds. Right after a status
/// write, the watch cache still shows the one before: a reconcile in between (a pod's change,
/// the engine's notification) must neither write the same status again, nor restart its
/// conditions' transition times, nor compute its patch from the older one. The cache has the
/// last word once it shows the written status, or after a few seconds.
#[derive(Default)]
pub struct WrittenStatuses(std::sync::Mutex<HashMap<String, (std::time::Instant, FlowRunStatus)>>);

impl WrittenStatuses {
    /// How long a written status outranks the watch cache's (which normally shows it within
    /// milliseconds).
    const MEMORY: Duration = Duration::from_secs(10);

    /// The status `run` has on the API server as far as this operator knows.
    pub fn seen(&self, run: &FlowRun) -> Option<FlowRunStatus> {
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let uid = run.metadata.uid.as_deref().unwrap_or_default();
        match written.get(uid) {
            Some((at, status))
                if at.elapsed() < Self::MEMORY && run.status.as_ref() != Some(status) =>
            {
                Some(status.clone())
            }
            Some(_) => {
                written.remove(uid);
                run.status.clone()
            }
            None => run.status.clone(),
        }
    }

    pub fn wrote(&self, run: &FlowRun, status: &FlowRunStatus) {
        let mut written = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() >= 1024 {
            written.retain(|_, (at, _)| at.elapsed() < Self::MEMORY);
        }
        let uid = run.metadata.uid.clone().unwrap_or_default();
        written.insert(uid, (std::time::Instant::now(), status.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_just_written_outranks_the_cache_until_the_cache_shows_it() {
        let run = |uid: &str, phase: Option<&str>| {
            let mut run = FlowRun::new(
                "r",
                serde_json::from_value(json!({ "image": "i", "flow": "f" })).unwrap(),
            );
            run.metadata.uid = Some(uid.into());
            run.status = phase.map(|p| FlowRunStatus {
                phase: Some(serde_json::from_value(json!(p)).unwrap()),
                ..Default::default()
            });
            run
        };
        let written = WrittenStatuses::default();
        let running = run("u1", Some("Running")).status.unwrap();
        written.wrote(&run("u1", None), &running);
        // The cache trails: what was written counts.
        assert_eq!(
            written.seen(&run("u1", Some("Pending"))),
            Some(running.clone())
        );
        assert_eq!(written.seen(&run("u1", None)), Some(running.clone()));
        // Another FlowRun (or the same name created again) has its own.
        assert_eq!(written.seen(&run("u2", None)), None);
        // Once the cache shows it, the cache has the last word again.
        assert_eq!(written.seen(&run("u1", Some("Running"))), Some(running));
        let later = run("u1", Some("Succeeded"));
        assert_eq!(written.seen(&later), later.status);
    }
}
