//! `fork RUN --from-step KEY`: a new run from another's checkpoints. On Kubernetes it is a new
//! FlowRun with the source's spec and `spec.forkOf` (so RBAC's `create flowruns` decides who
//! may), which the operator makes from the source's checkpoints completed before KEY; locally
//! (`cairn dev fork`) the engine makes it directly. The source is never changed.

use std::time::Duration;

use cairn_crds::{FlowRun, ForkOf};
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::{Map, Value, json};

use super::client::{Kube, kube_error};
use super::{input, logic, parse_json};
use crate::lifecycle::Phase;

/// What to fork, as the command line gives it.
#[derive(Debug, Clone, clap::Args)]
pub struct ForkArgs {
    /// The run to fork (it is not changed).
    pub run: String,
    /// The step to run again (its key, as `inspect` shows it), with everything after it; the
    /// steps completed before it are reused, not paid again.
    #[arg(long, value_name = "KEY")]
    pub from_step: String,
    /// The fork's input (JSON); default: the source's.
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,
    /// Another value for a step before KEY, replayed instead of the source's (repeatable).
    #[arg(long = "set-output", value_name = "KEY=JSON")]
    pub set_output: Vec<String>,
    /// An event sent to the fork alone, answering its wait for it when reached (repeatable).
    #[arg(long, value_name = "EVENT=JSON")]
    pub answer: Vec<String>,
    /// The fork's name (default: `<run>-fork-<5 random hex digits>`).
    #[arg(long)]
    pub name: Option<String>,
}

/// What a fork changes, parsed: the input (if new), outputs and answers as JSON objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ForkPlan {
    pub name: String,
    pub input: Option<Value>,
    pub outputs: Value,
    pub answers: Value,
}

impl ForkArgs {
    pub fn plan(&self) -> anyhow::Result<ForkPlan> {
        let input = match &self.input {
            Some(text) => Some(parse_json(text, "--input")?),
            None => None,
        };
        Ok(ForkPlan {
            name: self.name.clone().unwrap_or_else(|| default_name(&self.run)),
            input,
            outputs: pairs(&self.set_output, "--set-output", "KEY")?,
            answers: pairs(&self.answer, "--answer", "EVENT")?,
        })
    }
}

/// `<run>-fork-<5 hex digits>`, the run's part fitted so the whole is a valid name.
fn default_name(run: &str) -> String {
    let suffix = format!("-fork-{}", &uuid::Uuid::new_v4().simple().to_string()[..5]);
    let room = cairn_engine::names::MAX_NAME - suffix.len();
    format!("{}{suffix}", cairn_engine::names::fit(run, room))
}

/// `NAME=JSON` items as one object; a name given twice is refused.
fn pairs(items: &[String], flag: &str, what: &str) -> anyhow::Result<Value> {
    let mut object = Map::new();
    for item in items {
        let Some((name, text)) = item.split_once('=').filter(|(name, _)| !name.is_empty()) else {
            return Err(input(format!("{flag} {item:?} is not {what}=JSON")));
        };
        let value = parse_json(text, &format!("{flag} {name}"))?;
        if object.insert(name.to_owned(), value).is_some() {
            return Err(input(format!("{flag} names {name} twice")));
        }
    }
    Ok(Value::Object(object))
}

impl Kube {
    /// `fork`: creates the fork's FlowRun and waits until the operator made its run (or says
    /// why it cannot), then, with `--wait`, until it finishes.
    pub async fn fork(&self, args: &ForkArgs, wait: Option<Duration>) -> anyhow::Result<()> {
        let plan = args.plan()?;
        let source = self.get_run(&args.run).await?;
        let mut spec = source.spec.clone();
        spec.cancel = false;
        if let Some(input) = plan.input.clone() {
            spec.input = Some(input);
        }
        spec.fork_of = Some(ForkOf {
            run: args.run.clone(),
            step: args.from_step.clone(),
            outputs: Some(plan.outputs.clone()),
            answers: Some(plan.answers.clone()),
        });
        let mut fork = FlowRun::new(&plan.name, spec);
        fork.metadata.labels = source.metadata.labels.clone().map(|mut labels| {
            labels.retain(|key, _| !key.starts_with("cairn.dev/"));
            labels
        });
        self.runs()
            .create(&PostParams::default(), &fork)
            .await
            .map_err(|e| kube_error(e, "create FlowRuns"))?;
        // The operator checks the fork point against the source's checkpoints; a fork it
        // refuses is deleted again, so a mistake leaves nothing behind.
        let admitted: Result<FlowRun, String> = self
            .watch_until(
                self.runs(),
                &plan.name,
                Duration::from_secs(60),
                "be made from its source",
                logic::describe,
                |run| {
                    let Some(run) = run else {
                        anyhow::bail!("FlowRun {} was deleted", plan.name);
                    };
                    let status = run.status.clone().unwrap_or_default();
                    let refused = status
                        .conditions
                        .iter()
                        .find(|c| c.status == "False" && c.reason.starts_with("Fork"));
                    if let Some(refused) = refused {
                        return Ok(Some(Err(refused.message.clone())));
                    }
                    Ok(status.run_id.is_some().then(|| Ok(run.clone())))
                },
            )
            .await?;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                let _ = self.runs().delete(&plan.name, &Default::default()).await;
                return Err(input(format!("cannot fork {}: {why}", args.run)));
            }
        };
        self.say(format!(
            "{}: forked from {} at step {} (`{} inspect {}` shows what was reused)",
            plan.name,
            args.run,
            args.from_step,
            super::program(),
            plan.name
        ));
        let mut phase = logic::phase(&admitted);
        if let Some(timeout) = wait {
            let done = self
                .wait_run(&plan.name, logic::Until::Finished, None, timeout)
                .await?;
            phase = logic::phase(&done);
            self.say(format!("{} is {}", plan.name, logic::describe(&done)));
            if phase != Some(Phase::Succeeded) {
                anyhow::bail!("fork {} finished as {}", plan.name, logic::describe(&done));
            }
        }
        if self.json {
            self.print_json(&json!({
                "run": plan.name, "forkOf": args.run, "step": args.from_step,
                "uid": admitted.uid(), "phase": phase,
            }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fork: ForkArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<ForkPlan> {
        let mut all = vec!["fork"];
        all.extend(args);
        Cli::try_parse_from(all).unwrap().fork.plan()
    }

    #[test]
    fn outputs_and_answers_are_named_json_values() {
        let plan = plan(&[
            "research-1",
            "--from-step",
            "draft",
            "--set-output",
            r#"plan={"outline":["a"]}"#,
            "--answer",
            "approve-x=true",
            "--name",
            "f",
        ])
        .unwrap();
        assert_eq!(plan.outputs, json!({ "plan": { "outline": ["a"] } }));
        assert_eq!(plan.answers, json!({ "approve-x": true }));
        assert_eq!((plan.name.as_str(), plan.input), ("f", None));
        let named = plan_name("research-1");
        assert!(
            named.starts_with("research-1-fork-") && named.len() == 21,
            "{named}"
        );
        assert!(plan_name(&"x".repeat(253)).len() <= 253);
    }

    fn plan_name(run: &str) -> String {
        plan(&[run, "--from-step", "s"]).unwrap().name
    }

    #[test]
    fn malformed_pairs_say_what_was_expected() {
        for (args, expected) in [
            (vec!["--set-output", "plan"], "is not KEY=JSON"),
            (vec!["--set-output", "=1"], "is not KEY=JSON"),
            (
                vec!["--set-output", "plan={"],
                "--set-output plan is not valid JSON",
            ),
            (vec!["--answer", "a=1", "--answer", "a=2"], "names a twice"),
            (vec!["--input", "nope"], "--input is not valid JSON"),
        ] {
            let mut all = vec!["r", "--from-step", "s"];
            all.extend(args);
            let error = plan(&all).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
