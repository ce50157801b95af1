//! Cairn's flow SDK.
//!
//! A flow is an async function `fn(Ctx, Input) -> anyhow::Result<Output>`. Its expensive or
//! side-effecting parts are [`Ctx::step`]s, checkpointed in Postgres: when the process stops
//! (it waits for an event, sleeps, joins children, or crashes) a new process re-enters the
//! flow from the top, completed steps return their stored values at once, and the flow
//! carries on where it was. Code between steps may run again; steps never do.
//!
//! ```no_run
//! use cairn::{Ctx, JsonSchema};
//! use serde::{Deserialize, Serialize};
//!
//! /// What a person answers. Its JSON schema (the SDK's re-export of schemars: no dependency of
//! /// your own) is shown with the question and checked when the answer is emitted.
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! #[schemars(crate = "cairn::schemars")]
//! struct Review {
//!     approved: bool,
//!     note: Option<String>,
//! }
//!
//! async fn research(ctx: Ctx, topic: String) -> anyhow::Result<String> {
//!     let plan: String = ctx.step("plan", || async { Ok(format!("plan for {topic}")) }).await?;
//!     let review: Review = ctx
//!         .wait_for_event(&format!("review-{}", ctx.run_name()))
//!         .question("Publish this plan?")
//!         .await?;
//!     Ok(if review.approved { plan } else { review.note.unwrap_or_default() })
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     cairn::Runner::new().flow("research", research).run().await
//! }
//! ```

mod conn;
mod ctx;
mod error;
mod runner;
mod usage;

pub use cairn_engine::protocol::{Exit, RUNNER_PROTOCOL, env};
pub use conn::Pooler;
pub use ctx::{
    Artifact, ArtifactContent, ChildRun, Ctx, PendingStep, RetryPolicy, Step, StepStart, Wait,
    WaitWithTimeout,
};
pub use error::{Interrupted, Permanent, is_permanent, permanent};
pub use runner::{Runner, RunnerEnv};
pub use usage::{Usage, record_usage};

/// The JSON Schema derive a struct payload of [`Ctx::wait_for_event`] needs, re-exported so a
/// flow needs no `schemars` dependency of its own: derive [`JsonSchema`] and add
/// `#[schemars(crate = "cairn::schemars")]`.
pub use schemars::{self, JsonSchema};

/// The README's examples compile (`cargo test --doc -p cairn-sdk`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// So do those of the skill file for coding agents.
#[cfg(doctest)]
#[doc = include_str!("../../skills/cairn/SKILL.md")]
struct SkillExamples;
