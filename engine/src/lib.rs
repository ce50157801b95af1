//! Cairn's durable engine. The rules live in SQL (`sql/schema/`, built into databases by
//! `sql/migrations/`); this crate is their one typed front door:
//!
//! - pure types shared by everyone: [`Phase`], the parsed [`Wait`], the [`protocol`]
//!   between launchers and flow processes (environment, exit codes, versions), the
//!   [`read_api`]'s wire types (what the operator serves and `kubectl cairn` reads), and
//!   the [`names`] derived from a run's name (pods, labels, children) within Kubernetes' limits;
//! - [`runner`] (feature `runner`): the calls a flow process makes, the runner protocol. The
//!   SDK depends on this side only; flow processes log in as a role that can do nothing else;
//!   with it, the [`checkpoint`] forms and the [`artifacts`] kept in object storage;
//! - [`launcher`], [`read`] and [`schema`] (feature `launcher`): creating, claiming, waking and
//!   steering runs, the read queries behind the CLI and the read API, and migrations with the
//!   compatibility checks that make upgrades and rollbacks safe. The operator and `cairn dev`.

pub mod names;
pub mod phase;
pub mod protocol;
pub mod read_api;
pub mod wait;

pub use phase::Phase;
pub use wait::Wait;

#[cfg(feature = "runner")]
pub mod artifacts;
#[cfg(feature = "runner")]
pub mod checkpoint;
#[cfg(feature = "runner")]
pub mod error;
#[cfg(feature = "runner")]
pub mod runner;
#[cfg(feature = "runner")]
pub mod traces;

#[cfg(feature = "launcher")]
pub mod launcher;
#[cfg(feature = "launcher")]
pub mod read;
#[cfg(feature = "launcher")]
pub mod schema;

#[cfg(feature = "runner")]
pub use error::{EngineError, Result};
