//! `kubectl cairn approve` and `emit`: FlowEvents, created only after their payload passed the
//! schema of the waits it answers (so a mistake is an input error, not a refused event later).

use std::time::Duration;

use anyhow::bail;
use cairn_crds::{FlowEvent, FlowEventSpec, FlowRunRef, LABEL_MANAGED, MANAGED_BY_KUBECTL};
use kube::ResourceExt;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

use super::client::{Kube, kube_error};
use super::{input, logic};
use crate::lifecycle::Phase;

impl Kube {
    /// `approve`: answers the event the run waits for, after checking the payload.
    pub async fn approve(
        &self,
        name: &str,
        payload: Value,
        wait: Option<Duration>,
    ) -> anyhow::Result<()> {
        let run = self.get_run(name).await?;
        let waiting = run.status.as_ref().and_then(|s| s.waiting_for.as_ref());
        let Some(event) = waiting.and_then(|w| w.event.clone()) else {
            bail!(logic::not_waiting_for_event(&run));
        };
        let schema = waiting.and_then(|w| w.schema.as_ref());
        logic::check_payload(name, &event, schema, &payload).map_err(input)?;
        // For this FlowRun alone: a later one reusing the name is not answered by it.
        let this_run = FlowRunRef {
            name: name.to_owned(),
            uid: run.uid().unwrap_or_default(),
        };
        let (object, created) = self.create_event(&event, &payload, Some(this_run)).await?;
        self.say(format!(
            "{name}: {} event {event} with payload {payload} (FlowEvent {object})",
            if created {
                "approved"
            } else {
                "already approved"
            }
        ));
        let mut phase = logic::phase(&run);
        if let Some(timeout) = wait {
            self.wait_delivered(&object, timeout).await?;
            let resumed = self
                .watch_until(
                    self.runs(),
                    name,
                    timeout,
                    &format!("resume after event {event}"),
                    logic::describe,
                    |run| {
                        let Some(run) = run else {
                            bail!("FlowRun {name} was deleted");
                        };
                        let still = logic::phase(run) == Some(Phase::Waiting)
                            && run
                                .status
                                .as_ref()
                                .and_then(|s| s.waiting_for.as_ref())
                                .and_then(|w| w.event.as_deref())
                                == Some(event.as_str());
                        Ok((!still).then(|| run.clone()))
                    },
                )
                .await?;
            phase = logic::phase(&resumed);
            self.say(format!(
                "{name}: resumed; now {}",
                logic::describe(&resumed)
            ));
        }
        if self.json {
            self.print_json(&json!({
                "run": name,
                "event": event,
                "payload": payload,
                "flowEvent": object,
                "created": created,
                "phase": phase,
            }))?;
        }
        Ok(())
    }

    /// `emit`: creates a FlowEvent, after checking the payload against every run waiting for it.
    pub async fn emit(&self, event: &str, payload: Value) -> anyhow::Result<()> {
        if event.is_empty() {
            return Err(input("the event name is empty"));
        }
        let runs = self
            .runs()
            .list(&ListParams::default())
            .await
            .map_err(|e| kube_error(e, "list FlowRuns"))?
            .items;
        let mut waiting = Vec::new();
        for run in &runs {
            let wait = run.status.as_ref().and_then(|s| s.waiting_for.as_ref());
            if wait.and_then(|w| w.event.as_deref()) == Some(event) {
                logic::check_payload(
                    &run.name_any(),
                    event,
                    wait.and_then(|w| w.schema.as_ref()),
                    &payload,
                )
                .map_err(input)?;
                waiting.push(run.name_any());
            }
        }
        let (object, created) = self.create_event(event, &payload, None).await?;
        if self.json {
            return self.print_json(&json!({
                "event": event,
                "payload": payload,
                "flowEvent": object,
                "created": created,
                "waiting": waiting,
            }));
        }
        let verb = if created {
            "emitted"
        } else {
            "was already emitted with this payload"
        };
        let who = if waiting.is_empty() {
            "no run waits for it now (events are kept: a run that waits for it later gets it)"
                .to_owned()
        } else {
            format!("waiting for it: {}", waiting.join(", "))
        };
        println!("event {event} {verb} (FlowEvent {object}); {who}");
        Ok(())
    }

    /// Creates the FlowEvent for `event`, for the namespace or for one FlowRun; an identical
    /// one already there is fine (events are write-once). Returns its name and whether it was
    /// created now.
    async fn create_event(
        &self,
        event: &str,
        payload: &Value,
        flow_run: Option<FlowRunRef>,
    ) -> anyhow::Result<(String, bool)> {
        let object = logic::flowevent_name(event, flow_run.as_ref());
        let mut flowevent = FlowEvent::new(
            &object,
            FlowEventSpec {
                event: event.to_owned(),
                payload: Some(payload.clone()),
                flow_run,
            },
        );
        flowevent
            .labels_mut()
            .insert(LABEL_MANAGED.into(), MANAGED_BY_KUBECTL.into());
        match self
            .events()
            .create(&PostParams::default(), &flowevent)
            .await
        {
            Ok(_) => Ok((object, true)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = self
                    .events()
                    .get(&object)
                    .await
                    .map_err(|e| kube_error(e, "read FlowEvents"))?;
                let same = existing.spec.event == event
                    && existing.spec.payload.clone().unwrap_or(Value::Null) == *payload;
                if !same {
                    return Err(input(format!(
                        "FlowEvent {object} already exists with {} (events are write-once): \
                         `kubectl -n {} get flowevent {object} -o yaml` shows it",
                        if existing.spec.event == event {
                            format!(
                                "another payload, {}",
                                existing.spec.payload.clone().unwrap_or(Value::Null)
                            )
                        } else {
                            format!("event {}", existing.spec.event)
                        },
                        self.namespace
                    )));
                }
                if let Some(status) = &existing.status
                    && status.delivered == Some(false)
                {
                    bail!(
                        "FlowEvent {object} exists but was refused: {}",
                        status.message.as_deref().unwrap_or("no reason given")
                    );
                }
                Ok((object, false))
            }
            Err(e) => Err(kube_error(e, "create FlowEvents")),
        }
    }

    /// Waits for the operator to deliver a FlowEvent (or refuse it, saying why).
    async fn wait_delivered(&self, object: &str, timeout: Duration) -> anyhow::Result<()> {
        self.watch_until(
            self.events(),
            object,
            timeout,
            "be delivered",
            |e: &FlowEvent| match e.status.as_ref().and_then(|s| s.delivered) {
                Some(true) => "delivered".into(),
                Some(false) => "refused".into(),
                None => "not delivered yet".into(),
            },
            |event| {
                let Some(event) = event else {
                    bail!("FlowEvent {object} was deleted before it was delivered");
                };
                match event.status.as_ref().and_then(|s| s.delivered) {
                    Some(true) => Ok(Some(())),
                    Some(false) => bail!(
                        "the operator refused FlowEvent {object}: {}",
                        event
                            .status
                            .as_ref()
                            .and_then(|s| s.message.as_deref())
                            .unwrap_or("no reason given")
                    ),
                    None => Ok(None),
                }
            },
        )
        .await
    }
}
