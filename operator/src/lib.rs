//! The `cairn` command: the local supervisor (`cairn dev`), run inspection and steering, and
//! (next) the Kubernetes operator. Both launchers share `lifecycle`, the pure decision module.

pub mod cli;
pub mod controller;
pub mod dev;
pub mod expr;
pub mod kubectl;
pub mod lifecycle;
pub mod localdb;
pub mod schedule;
pub mod settings;
pub mod supervisor;
pub mod surface;
