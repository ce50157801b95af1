//! Cairn's flow SDK.
//!
//! A flow is an async function `fn(Ctx, Input) -> anyhow::Result<Output>`. Its expensive or
//! side-effecting parts are [`Ctx::step`]s, checkpointed in Postgres: when the process stops
//! (it waits for an event, sleeps, joins children, or crashes) a new process re-enters the
//! flow from the top, completed steps return their stored values at once, and the flow
//! carries on where it was. Code between steps may run again; steps never do.
//!
//! ```ignore
//! async fn research(ctx: Ctx, input: Topic) -> anyhow::Result<Report> {
//!     let plan: Plan = ctx.step("plan", || async { llm::plan(&input).await }).await?;
//!     let approved: bool = ctx.wait_for_event(&format!("approve-{}", ctx.run_name()))
//!         .question("Publish this report?")
//!         .await?;
//!     Ok(Report { plan, approved })
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
pub use ctx::{ChildRun, Ctx, PendingStep, RetryPolicy, Step, StepStart, Wait, WaitWithTimeout};
pub use error::{Interrupted, Permanent, is_permanent, permanent};
pub use runner::{Runner, RunnerEnv};
pub use usage::{Usage, record_usage};
