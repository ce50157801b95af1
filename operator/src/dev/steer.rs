//! `cairn dev emit`, `approve`, `cancel`, `delete` and `wait`: answering, stopping, removing and
//! waiting for runs in the database, the local counterparts of `kubectl cairn`'s commands.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use cairn_engine::launcher as engine;
use cairn_engine::read::{self, RunRecord};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::kubectl::{Until, budget, input};
use crate::lifecycle::Phase;
use cairn_engine::Wait;

/// `emit`: an event; the runs waiting for it wake up.
pub async fn emit(event: &str, payload: &Value, namespace: &str) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let mut conn = pool.acquire().await?;
    let emitted = engine::emit(&mut conn, namespace, event, payload)
        .await
        .map_err(super::explain)?;
    if emitted.duplicate {
        println!("event {event} was already emitted with this payload (nothing changed)");
    } else {
        println!("event {event} emitted; {} run(s) woken", emitted.woken);
    }
    Ok(ExitCode::SUCCESS)
}

/// `approve`: answers the event the run waits for (the payload checked against its schema).
pub async fn approve(run: &str, payload: &Value, namespace: &str) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    println!("{}", answer(&pool, run, payload, namespace).await?);
    Ok(ExitCode::SUCCESS)
}

/// Answers the event run `run` waits for (the payload checked against its schema); says what
/// was done.
pub async fn answer(
    pool: &PgPool,
    run: &str,
    payload: &Value,
    namespace: &str,
) -> anyhow::Result<String> {
    let record = read::find(pool, namespace, run).await?;
    if let Some(Wait::Budget {
        run: owner,
        spent,
        limit,
        ..
    }) = record.wait()
    {
        bail!(
            "{run} is parked at the spend budget of {owner} (${spent:.4} spent of ${limit:.2}): \
             raise it with `cairn dev approve {run} --budget <USD>`"
        );
    }
    let Some(event) = record.wait().and_then(|w| w.event().map(str::to_owned)) else {
        bail!(
            "{run} is {} and waits for no event: nothing to approve (`cairn dev inspect {run}` \
             shows where it is)",
            record.phase
        );
    };
    // For this run alone: a later run reusing the name is not answered by it.
    let to = engine::Addressing {
        run: Some(record.id),
        sent_at: None,
    };
    let emitted = engine::emit_to(&mut *pool.acquire().await?, namespace, &event, payload, to)
        .await
        .map_err(super::explain)?;
    Ok(match emitted.duplicate {
        true => format!("{run}: event {event} was already emitted with this payload"),
        false => format!(
            "{run}: approved (event {event}, payload {payload}); {}",
            who_carries_on(pool).await
        ),
    })
}

/// `approve RUN --budget USD`: sets the budget of the run whose budget RUN is parked at (its
/// own, or a parent's), waking what it lets go on.
pub async fn raise_budget(run: &str, budget: &str, namespace: &str) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    println!("{}", set_budget(&pool, run, budget, namespace).await?);
    Ok(ExitCode::SUCCESS)
}

/// Sets the budget run `run` is parked at (its own, or a parent's) to `budget` (US dollars);
/// says what it let go on.
pub async fn set_budget(
    pool: &PgPool,
    run: &str,
    budget: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let (usd, _) = budget::parse_budget(budget)?;
    let record = read::find(pool, namespace, run).await?;
    let owner = match record.wait() {
        Some(Wait::Budget { run: owner, .. }) if owner != record.name => {
            read::find(pool, namespace, &owner).await?
        }
        _ => record,
    };
    budget::check_above_spent(&owner.name, usd, owner.tree_usd)?;
    let woken = engine::set_budget(&mut *pool.acquire().await?, owner.id, Some(usd))
        .await
        .map_err(super::explain)?;
    Ok(format!(
        "{}: budget set to ${usd:.2} (its tree spent ${:.4}); {}",
        owner.name,
        owner.tree_usd,
        match woken {
            0 => "nothing was parked at it".to_owned(),
            n => format!("{n} run(s) go on; {}", who_carries_on(pool).await),
        }
    ))
}

/// Who carries a woken run on: the local server if one is up, else a `cairn dev run`.
pub(crate) async fn who_carries_on(pool: &sqlx::PgPool) -> String {
    match super::server::find(pool).await {
        Ok(Some(server)) => format!("the dev server (pid {}) carries it on", server.pid),
        _ => "it resumes under the `cairn dev run` that supervises it (or `cairn dev up`, or \
              `cairn dev resume`)"
            .into(),
    }
}

/// `delete`: the run with its children, steps and attempts. One not finished is refused, or
/// with `force` cancelled first (so nothing of it is left waiting or scheduled).
pub async fn delete(run: &str, namespace: &str, force: bool) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    let record = read::find(&pool, namespace, run).await?;
    if !record.phase.is_terminal() {
        if !force {
            bail!(
                "{run} is {} (not finished): cancel it first (`cairn dev cancel {run}`), or \
                 delete it anyway with --force",
                record.phase
            );
        }
        engine::cancel_run(&mut *pool.acquire().await?, record.id)
            .await
            .map_err(super::explain)?;
    }
    read::delete_run(&pool, record.id).await?;
    println!("{run}: deleted (was {})", record.phase);
    Ok(ExitCode::SUCCESS)
}

/// `cancel`: a parked run ends now, a running one at its next step boundary.
pub async fn cancel(run: &str, namespace: &str) -> anyhow::Result<ExitCode> {
    let pool = super::open().await?;
    println!("{}", cancel_run(&pool, run, namespace).await?);
    Ok(ExitCode::SUCCESS)
}

/// Cancels run `run`; says what was done.
pub async fn cancel_run(pool: &PgPool, run: &str, namespace: &str) -> anyhow::Result<String> {
    let record = read::find(pool, namespace, run).await?;
    let state = engine::cancel_run(&mut *pool.acquire().await?, record.id)
        .await
        .map_err(super::explain)?;
    Ok(match state {
        Phase::Running => format!(
            "{}: cancellation requested; it stops at its next step boundary",
            record.name
        ),
        other => format!("{}: {}", record.name, other.as_db()),
    })
}

/// `wait`: until the run is where `until` says (a phase, `finished` as with `kubectl cairn
/// wait`, or `created`: until it exists, like `kubectl wait --for=create`).
pub async fn wait(
    run: &str,
    namespace: &str,
    until: &str,
    event: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let goal = match until {
        "created" => None,
        other => Some(
            other
                .parse::<Until>()
                .map_err(|e| input(format!("{e}, or created")))?,
        ),
    };
    let pool = super::open().await?;
    let record = tokio::time::timeout(timeout, wait_for(&pool, namespace, run, goal, event))
        .await
        .map_err(|_| {
            anyhow!(
                "timed out after {} waiting for {run} to be {until}",
                humantime::format_duration(timeout)
            )
        })??;
    println!("{} is {}", record.name, record.phase);
    Ok(ExitCode::SUCCESS)
}

/// Waits on the engine's notifications for the run to get where `goal` says (`None`: to
/// exist). Otherwise an unknown run is an error at once (exit code 2), as with `kubectl wait`.
pub async fn wait_for(
    pool: &PgPool,
    namespace: &str,
    run: &str,
    goal: Option<Until>,
    event: Option<&str>,
) -> anyhow::Result<RunRecord> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("cairn_runs").await?;
    loop {
        let record = match (read::find(pool, namespace, run).await, goal) {
            (Err(e), None) if e.is::<read::NotFound>() => {
                listener.try_recv().await?;
                continue;
            }
            (found, _) => found?,
        };
        let waits_for_event =
            |name: &str| record.wait().as_ref().and_then(|w| w.event()) == Some(name);
        let reached = match goal {
            None => true,
            Some(Until::Phase(phase)) => record.phase == phase && event.is_none_or(waits_for_event),
            Some(Until::Finished) => record.phase.is_terminal(),
            Some(Until::Input) => {
                record.phase.is_terminal()
                    || (record.phase == Phase::Waiting
                        && matches!(
                            record.wait(),
                            Some(Wait::Event { .. } | Wait::Budget { .. })
                        ))
            }
        };
        if reached {
            return Ok(record);
        }
        if let Some(Until::Phase(phase)) = goal
            && record.phase.is_terminal()
        {
            bail!(
                "{} finished as {} and will never be {phase}",
                record.name,
                record.phase
            );
        }
        listener.try_recv().await?;
    }
}
