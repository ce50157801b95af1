//! `approve RUN --budget USD`: raising the spend budget a run is parked at. On Kubernetes it is
//! the FlowRun's `spec.budget.usd` (so RBAC's `patch flowruns` decides who may), of the run whose
//! budget was passed: RUN's own, or a parent's, as the wait names it.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::client::{Kube, kube_error};
use super::{input, logic};
use crate::lifecycle::Phase;

/// A budget as given on the command line: a non-negative decimal of US dollars, in the form
/// the CRD keeps (at most 6 decimals).
pub fn parse_budget(text: &str) -> anyhow::Result<(f64, String)> {
    let usd: f64 = text
        .trim()
        .trim_start_matches('$')
        .parse()
        .ok()
        .filter(|usd: &f64| usd.is_finite() && *usd >= 0.0 && *usd < 1e9)
        .ok_or_else(|| {
            input(format!(
                "--budget {text:?} is not an amount of US dollars (e.g. 5 or 2.50)"
            ))
        })?;
    let exact = format!("{usd:.6}");
    let exact = exact.trim_end_matches('0').trim_end_matches('.').to_owned();
    Ok((usd, exact))
}

/// Refuses a budget below what was spent, saying both.
pub fn check_above_spent(run: &str, usd: f64, spent: f64) -> anyhow::Result<()> {
    if usd < spent {
        return Err(input(format!(
            "a budget of ${usd:.2} for {run} is below what it has already spent (${spent:.4}); give more than that"
        )));
    }
    Ok(())
}

impl Kube {
    /// `approve RUN --budget USD`.
    pub async fn raise_budget(
        &self,
        name: &str,
        budget: &str,
        wait: Option<Duration>,
    ) -> anyhow::Result<()> {
        let (usd, exact) = parse_budget(budget)?;
        let run = self.get_run(name).await?;
        let over = run
            .status
            .as_ref()
            .and_then(|s| s.waiting_for.as_ref())
            .and_then(|w| w.budget.clone());
        let owner = match &over {
            Some(over) if over.run != name => self.get_run(&over.run).await?,
            _ => run,
        };
        let owner_name = owner.metadata.name.clone().unwrap_or_default();
        // The owner's status may lag its children's spending; the wait says what it was when
        // RUN parked. The operator refuses (with a Warning) whatever is still too low.
        let spent_when_parked = over.as_ref().and_then(|o| o.spent_usd.parse().ok());
        let spent = owner
            .status
            .as_ref()
            .and_then(|s| s.cost_usd.as_deref())
            .and_then(|c| c.parse().ok())
            .into_iter()
            .chain(spent_when_parked)
            .fold(0.0, f64::max);
        check_above_spent(&owner_name, usd, spent)?;
        self.runs()
            .patch(
                &owner_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "budget": { "usd": exact } } })),
            )
            .await
            .map_err(|e| kube_error(e, "patch FlowRuns"))?;
        self.say(format!(
            "{owner_name}: budget set to ${usd:.2} (its tree spent ${spent:.4})"
        ));
        let mut phase = logic::phase(&owner);
        if let (Some(timeout), Some(_)) = (wait, &over) {
            let resumed = self
                .watch_until(
                    self.runs(),
                    name,
                    timeout,
                    "go on past its budget",
                    logic::describe,
                    |run| {
                        let Some(run) = run else {
                            anyhow::bail!("FlowRun {name} was deleted");
                        };
                        let parked = logic::phase(run) == Some(Phase::Waiting)
                            && run
                                .status
                                .as_ref()
                                .and_then(|s| s.waiting_for.as_ref())
                                .is_some_and(|w| w.budget.is_some());
                        Ok((!parked).then(|| run.clone()))
                    },
                )
                .await?;
            phase = logic::phase(&resumed);
            self.say(format!(
                "{name}: goes on; now {}",
                logic::describe(&resumed)
            ));
        }
        if self.json {
            self.print_json(&json!({
                "run": name, "budgetOf": owner_name, "budgetUsd": exact, "spentUsd": spent, "phase": phase,
            }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_as_dollars_and_refuse_what_is_not() {
        assert_eq!(parse_budget("5").unwrap(), (5.0, "5".into()));
        assert_eq!(parse_budget("$2.50").unwrap(), (2.5, "2.5".into()));
        assert_eq!(parse_budget("0.1234567").unwrap().1, "0.123457");
        for bad in ["-1", "five", "NaN", "1e12", ""] {
            let error = parse_budget(bad).unwrap_err().to_string();
            assert!(error.contains("not an amount"), "{bad}: {error}");
        }
        let below = check_above_spent("r", 1.0, 1.5).unwrap_err().to_string();
        assert!(
            below.contains("$1.00") && below.contains("$1.5000"),
            "{below}"
        );
        assert!(check_above_spent("r", 2.0, 1.5).is_ok());
    }
}
