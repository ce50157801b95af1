//! Who is asking, and may they. The API server's front proxy forwards each user's identity in
//! request headers; they are trusted only on a connection whose client certificate proved it is
//! that proxy (`tls.rs`). Whether the user may read a run is the API server's decision: a
//! SubjectAccessReview for `get` (one run) or `list` (a namespace's runs) on `flowruns.cairn.dev`,
//! so RBAC on FlowRuns is RBAC on their steps, outputs and errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// How long an answer is reused: `kubectl cairn inspect --watch` polls, and RBAC changes are
/// seen within this (the API server's own webhook authorizer caches denials as long).
const DECISION_TTL: Duration = Duration::from_secs(10);
/// Past this many cached answers, the cache starts over (a bound, not an eviction policy).
const DECISIONS_KEPT: usize = 10_000;

/// The headers the front proxy puts a user in (ConfigMap kube-system/extension-apiserver-authentication).
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityHeaders {
    pub user: Vec<String>,
    pub groups: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user: vec!["X-Remote-User".into()],
            groups: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }
}

/// A user as the API server authenticated them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl IdentityHeaders {
    /// The caller the headers name, or `None` when they name nobody (the API server's own
    /// availability checks, or a request that did not come through it).
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        };
        let user = self
            .user
            .iter()
            .find_map(|h| values(h).into_iter().find(|u| !u.is_empty()))?;
        let groups = self.groups.iter().flat_map(|h| values(h)).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str(); // lower case
            let Some(key) = self
                .extra_prefixes
                .iter()
                .find_map(|p| name.strip_prefix(p.to_ascii_lowercase().as_str()))
            else {
                continue;
            };
            // Keys travel percent-encoded (they may hold '/', as in authentication.kubernetes.io/...).
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_lowercase();
            if let Ok(value) = value.to_str() {
                extra.entry(key).or_default().push(value.to_owned());
            }
        }
        Some(Caller {
            user,
            groups,
            extra,
        })
    }
}

/// What a request reads: `get` of one run, or `list` of a namespace's runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub namespace: String,
    pub name: Option<String>,
}

impl Access {
    pub fn get(namespace: &str, name: &str) -> Access {
        Access {
            verb: "get",
            namespace: namespace.to_owned(),
            name: Some(name.to_owned()),
        }
    }

    pub fn list(namespace: &str) -> Access {
        Access {
            verb: "list",
            namespace: namespace.to_owned(),
            name: None,
        }
    }

    /// In the words of RBAC, for messages.
    pub fn describe(&self) -> String {
        let what = match &self.name {
            Some(name) => format!("flowruns.cairn.dev \"{name}\""),
            None => "flowruns.cairn.dev".to_owned(),
        };
        format!("{} {what} in namespace \"{}\"", self.verb, self.namespace)
    }

    fn review(&self, caller: &Caller) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(cairn_crds::GROUP.to_owned()),
                    resource: Some("flowruns".to_owned()),
                    verb: Some(self.verb.to_owned()),
                    namespace: Some(self.namespace.clone()),
                    name: self.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Answers given lately: whether the caller may, and when that was asked.
type Decisions = HashMap<(Caller, Access), (bool, Instant)>;

/// Decides whether a caller may read, by asking the API server.
#[derive(Clone)]
pub struct Authorizer {
    decide: Decide,
    decisions: Arc<Mutex<Decisions>>,
}

#[derive(Clone)]
enum Decide {
    Review(Client),
    /// Unit tests: the same answer for everyone.
    #[cfg(test)]
    Fixed(bool),
}

impl Authorizer {
    pub fn new(client: Client) -> Authorizer {
        Authorizer::with(Decide::Review(client))
    }

    #[cfg(test)]
    pub fn fixed(allowed: bool) -> Authorizer {
        Authorizer::with(Decide::Fixed(allowed))
    }

    fn with(decide: Decide) -> Authorizer {
        Authorizer {
            decide,
            decisions: Arc::default(),
        }
    }

    pub async fn allows(&self, caller: &Caller, access: &Access) -> kube::Result<bool> {
        let key = (caller.clone(), access.clone());
        if let Some((allowed, at)) = self.lock().get(&key)
            && at.elapsed() < DECISION_TTL
        {
            return Ok(*allowed);
        }
        let allowed = match &self.decide {
            Decide::Review(client) => {
                let asked = Api::<SubjectAccessReview>::all(client.clone())
                    .create(&PostParams::default(), &access.review(caller))
                    .await?;
                asked.status.is_some_and(|s| s.allowed)
            }
            #[cfg(test)]
            Decide::Fixed(allowed) => *allowed,
        };
        let mut decisions = self.lock();
        if decisions.len() >= DECISIONS_KEPT {
            decisions.clear();
        }
        decisions.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Decisions> {
        self.decisions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_front_proxys_headers_name_the_caller() {
        let caller = IdentityHeaders::default()
            .caller(&headers(&[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "team-a"),
                ("X-Remote-Group", "system:authenticated"),
                ("X-Remote-Extra-Scopes", "read"),
                ("X-Remote-Extra-Scopes", "write"),
                (
                    "X-Remote-Extra-authentication.kubernetes.io%2fpod-name",
                    "p",
                ),
                ("X-Other", "ignored"),
            ]))
            .unwrap();
        assert_eq!(caller.user, "alice");
        assert_eq!(caller.groups, ["team-a", "system:authenticated"]);
        assert_eq!(caller.extra["scopes"], ["read", "write"]);
        assert_eq!(caller.extra["authentication.kubernetes.io/pod-name"], ["p"]);
        assert_eq!(caller.extra.len(), 2);
    }

    #[test]
    fn no_user_header_is_no_caller() {
        let names = IdentityHeaders::default();
        assert_eq!(names.caller(&headers(&[("X-Remote-Group", "g")])), None);
        assert_eq!(names.caller(&headers(&[("X-Remote-User", "")])), None);
    }

    #[test]
    fn a_review_asks_about_flowruns_in_the_namespace() {
        let caller = Caller {
            user: "bob".into(),
            groups: vec!["g".into()],
            extra: BTreeMap::new(),
        };
        let review = Access::get("team-b", "run-1").review(&caller);
        let attributes = review.spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some("cairn.dev"));
        assert_eq!(attributes.resource.as_deref(), Some("flowruns"));
        assert_eq!(attributes.verb.as_deref(), Some("get"));
        assert_eq!(attributes.namespace.as_deref(), Some("team-b"));
        assert_eq!(attributes.name.as_deref(), Some("run-1"));
        assert_eq!(review.spec.user.as_deref(), Some("bob"));
        let list = Access::list("team-b").review(&caller);
        assert_eq!(list.spec.resource_attributes.unwrap().name, None);
        assert_eq!(
            Access::get("a", "r").describe(),
            "get flowruns.cairn.dev \"r\" in namespace \"a\""
        );
    }
}
