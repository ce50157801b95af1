//! What wakes reconciles besides the watches: the engine's `cairn_runs` notifications (routed
//! to the controller of the run's namespace, and to runs queued for a freed slot), its
//! `cairn_admit` ones (a run whose turn in its Flow's concurrency limits may have come) and the
//! engine's timers, by the database clock. Nothing here polls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_crds::FlowRun;
use cairn_engine::launcher as engine;
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::Context;

/// Turns the engine's `cairn_runs` notifications into reconciles of the FlowRuns concerned (by
/// the controller of their namespace). Also tells the timer task when a run parks with a timer,
/// and when a run stops running, wakes the runs waiting longest for its slot.
pub async fn forward_notifications(
    ctx: Arc<Context>,
    wakers: HashMap<Option<String>, UnboundedSender<ObjectRef<FlowRun>>>,
    timers: Arc<Notify>,
) {
    #[derive(Deserialize)]
    struct Changed {
        id: uuid::Uuid,
        root_id: uuid::Uuid,
        namespace: String,
        name: String,
        state: String,
        attempt: i32,
        from: Option<String>,
    }
    #[derive(Deserialize)]
    struct Named {
        namespace: String,
        name: String,
    }
    let wake = |run: ObjectRef<FlowRun>| send(&wakers, run);
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&ctx.pool).await?;
            listener.listen_all(["cairn_runs", "cairn_admit"]).await?;
            // Anything may have changed while not listening.
            timers.notify_one();
            loop {
                let notification = listener.recv().await?;
                if notification.channel() == "cairn_admit" {
                    if let Ok(turn) = serde_json::from_str::<Named>(notification.payload()) {
                        wake(ObjectRef::new(&turn.name).within(&turn.namespace));
                    }
                    continue;
                }
                let Ok(changed) = serde_json::from_str::<Changed>(notification.payload()) else {
                    continue;
                };
                if matches!(changed.state.as_str(), "sleeping" | "retrying" | "waiting") {
                    timers.notify_one();
                }
                if changed.from.as_deref() == Some("running") {
                    let chosen = next_for_slot(
                        &ctx.waiting_for_slot
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()),
                        &changed.namespace,
                    );
                    chosen.into_iter().for_each(wake);
                }
                if !made_by_a_reconcile(changed.from.as_deref(), &changed.state) {
                    wake(ObjectRef::new(&changed.name).within(&changed.namespace));
                }
                // Off this loop: its queries must not hold up the notifications behind it.
                if changed.from.as_deref() == Some("running") {
                    tokio::spawn(execution_ended(
                        ctx.clone(),
                        wakers.clone(),
                        (changed.id, changed.attempt),
                        changed.id != changed.root_id,
                    ));
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = listening.await {
            tracing::warn!(error = %e, "lost the engine's notifications; reconnecting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Routes a FlowRun to the controller of its namespace (or the one of all namespaces).
fn send(
    wakers: &HashMap<Option<String>, UnboundedSender<ObjectRef<FlowRun>>>,
    run: ObjectRef<FlowRun>,
) {
    let scope = run.namespace.clone();
    if let Some(waker) = wakers.get(&scope).or_else(|| wakers.get(&None)) {
        let _ = waker.unbounded_send(run);
    }
}

/// An execution ended: what its steps spent goes to the metrics, once; and for a child run,
/// its ancestors' trees spent more, so their statuses (and a budget a child parked at) are
/// looked at again.
async fn execution_ended(
    ctx: Arc<Context>,
    wakers: HashMap<Option<String>, UnboundedSender<ObjectRef<FlowRun>>>,
    (run_id, attempt): (uuid::Uuid, i32),
    is_child: bool,
) {
    match cairn_engine::read::attempt_usage(&ctx.pool, run_id, attempt).await {
        Ok(Some(usage)) => ctx.metrics.spent(&usage),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read what an execution spent"),
    }
    if is_child {
        match cairn_engine::read::ancestors(&ctx.pool, run_id).await {
            Ok(above) => above
                .into_iter()
                .for_each(|(ns, name)| send(&wakers, ObjectRef::new(&name).within(&ns))),
            Err(e) => tracing::warn!(error = %e, "cannot read a child run's ancestors"),
        }
    }
}

/// Changes the operator makes in a reconcile of that very FlowRun (registering its run, starting
/// an attempt for the pod it creates) need no further look at it: waking it again would only
/// repeat the reconcile, one more for every run in a burst of thousands.
fn made_by_a_reconcile(from: Option<&str>, state: &str) -> bool {
    from.is_none() || state == "running"
}

/// Who gets a freed slot a look: the two runs waiting longest, and the one waiting longest in
/// the namespace where the slot freed (it may be held back by its namespace's cap). They leave
/// the queue when they launch.
fn next_for_slot(queue: &VecDeque<ObjectRef<FlowRun>>, namespace: &str) -> Vec<ObjectRef<FlowRun>> {
    let mut chosen: Vec<ObjectRef<FlowRun>> = queue.iter().take(2).cloned().collect();
    if let Some(local) = queue
        .iter()
        .find(|run| run.namespace.as_deref() == Some(namespace))
        && !chosen.contains(local)
    {
        chosen.push(local.clone());
    }
    chosen
}

/// The engine's timers (sleeps, retry backoffs, wait deadlines): one task sleeps until the
/// next one is due, by the database clock, and makes due runs runnable; the engine's NOTIFY
/// then brings their reconciles. New timers cut the sleep short through `poke`.
pub async fn wake_timers(pool: PgPool, poke: Arc<Notify>) {
    loop {
        let next = async {
            let mut conn = pool.acquire().await?;
            engine::wake_due(&mut conn).await?;
            engine::next_wake_ms(&mut conn).await
        }
        .await;
        let pause = match next {
            Ok(Some(ms)) => Duration::from_millis(ms.max(0) as u64),
            // Nothing scheduled: only a poke (or the hourly safety check) wakes this task.
            Ok(None) => Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the engine's timers; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = poke.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(runs: &[(&str, &str)]) -> VecDeque<ObjectRef<FlowRun>> {
        runs.iter()
            .map(|(namespace, name)| ObjectRef::new(name).within(namespace))
            .collect()
    }

    fn names(chosen: Vec<ObjectRef<FlowRun>>) -> Vec<String> {
        chosen.into_iter().map(|run| run.name).collect()
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_runs_and_the_oldest_of_its_namespace() {
        let queue = queued(&[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
        ]);
        // The two oldest overall, plus b's oldest (a namespace cap may hold a's back).
        assert_eq!(names(next_for_slot(&queue, "b")), ["a1", "a2", "b1"]);
        // Its namespace's oldest is already among them: no one twice.
        assert_eq!(names(next_for_slot(&queue, "a")), ["a1", "a2"]);
        assert!(next_for_slot(&VecDeque::new(), "a").is_empty());
    }
}
