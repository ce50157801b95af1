//! A Flow's concurrency limits (`spec.concurrency`): how many of its runs may be under way at
//! once, in all and per key. The engine decides admissions (`cairn.start_attempt_within`), so
//! the limits hold across operator restarts and leader changes.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// At most `max` runs of this Flow at once, and at most `maxPerKey` of those with the same
/// `key`. A run takes its place on its first launch and keeps it until it finishes, through its
/// waits; runs over a limit stay Pending (condition `ConcurrencyLimit`) and start in creation
/// order as places free. Child runs are not counted (a parent would otherwise wait for ever for
/// its own child's place).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.key) == has(self.maxPerKey)")
    .message("concurrency.key and concurrency.maxPerKey go together: the key says what maxPerKey counts per"))]
#[x_kube(validation = Rule::new("has(self.max) || has(self.maxPerKey)")
    .message("concurrency needs max, or key with maxPerKey"))]
pub struct Concurrency {
    /// Runs of this Flow under way at once, whatever their key.
    #[schemars(range(min = 1, max = 100000))]
    pub max: Option<i32>,
    /// A CEL expression over the run's input, e.g. `input.customer`; its value (a string, a
    /// number or a boolean) is the run's key. Computed once, when the run is created.
    #[schemars(length(min = 1, max = 1024))]
    pub key: Option<String>,
    /// Runs with the same key under way at once.
    #[schemars(range(min = 1, max = 100000))]
    pub max_per_key: Option<i32>,
}
