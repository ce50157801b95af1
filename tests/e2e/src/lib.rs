//! The end-to-end harness: scenarios on the real test cluster (`tests/cluster/up.sh`), each in a
//! namespace of its own with, where it needs them, its own database and operator. The tests in
//! tests/ use it; so does the benchmark (`tests/bench`) for the cluster, images, databases and
//! operators.
//!
//! The tests are `#[ignore]`d (plain `cargo test` has no cluster): `make test-cluster` runs them
//! with `cargo test -p cairn-e2e -- --ignored`, after `make static-bins`.

pub mod cluster;
pub mod explain;
pub mod flows;
pub mod kubectl;
pub mod operator;
pub mod scenario;
pub mod setup;

pub use cairn_crds::Phase;
pub use cluster::Cluster;
pub use scenario::Scenario;
