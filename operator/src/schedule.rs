//! When a FlowSchedule's runs are due (pure): its cron expression in its time zone, the slots
//! passed since it last started one (bounded by the catch-up limit and the starting deadline,
//! as a CronJob's are), the next slot, and a slot's jitter. Kubernetes' CronJob controller and
//! Temporal's schedules are the models: a slot is named by its nominal time, so it starts once;
//! jitter moves when it starts, never which slots start.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Slots looked at when counting the missed ones: past this many, "more than" is enough.
const COUNT_MISSED_UP_TO: usize = 1000;

/// A parsed schedule.
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

/// What is wrong with a schedule, for its condition (reason, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// The slots due now, oldest first, and what else there is to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub slots: Vec<Timestamp>,
    /// Slots passed that will not start: older than the starting deadline, or beyond the
    /// catch-up limit (counted up to 1000).
    pub missed: usize,
    /// The first slot after now.
    pub next: Option<Timestamp>,
    /// The latest slot passed (started or not).
    pub latest: Option<Timestamp>,
}

impl Schedule {
    /// `expression`: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds
    /// first, or a nickname (`@hourly`, `@daily`...). `zone`: an IANA name; none is UTC.
    pub fn parse(expression: &str, zone: Option<&str>) -> Result<Schedule, Invalid> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|e| Invalid {
                reason: "InvalidSchedule",
                message: format!(
                    "spec.schedule {expression:?} is not a cron expression ({e}); write 5 fields \
                     (minute hour day-of-month month day-of-week), 6 with seconds first, or \
                     @hourly, @daily, @weekly, @monthly, @yearly"
                ),
            })?;
        let zone = match zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| Invalid {
                reason: "UnknownTimeZone",
                message: format!(
                    "spec.timeZone {name:?} is not a time zone Cairn knows; use an IANA name \
                     such as \"Europe/Berlin\" or \"America/New_York\""
                ),
            })?,
        };
        Ok(Schedule { cron, zone })
    }

    /// The first slot after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(next.timestamp())
    }

    /// The slot at or before `t`.
    pub fn at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let zoned = t.to_zoned(self.zone.clone());
        let previous = self.cron.find_previous_occurrence(&zoned, true).ok()?;
        Some(previous.timestamp())
    }

    /// The slots after `since` and up to `now` to start: at most `catch_up` (the latest ones),
    /// none older than `now - deadline`.
    pub fn due(
        &self,
        since: Timestamp,
        now: Timestamp,
        deadline: Option<Duration>,
        catch_up: usize,
    ) -> Due {
        let earliest = deadline
            .and_then(|d| SignedDuration::try_from(d).ok())
            .and_then(|d| now.checked_sub(d).ok())
            .map_or(since, |cutoff| cutoff.max(since));
        let mut slots = Vec::new();
        let mut latest = None;
        let mut passed = 0;
        let mut cursor = now;
        while passed < catch_up + COUNT_MISSED_UP_TO {
            let Some(slot) = self.at_or_before(cursor) else {
                break;
            };
            if slot <= since {
                break;
            }
            passed += 1;
            latest = latest.or(Some(slot));
            if slot >= earliest && slots.len() < catch_up {
                slots.push(slot);
            }
            let Ok(before) = slot.checked_sub(SignedDuration::from_nanos(1)) else {
                break;
            };
            cursor = before;
        }
        slots.reverse();
        Due {
            missed: passed - slots.len(),
            slots,
            next: self.next_after(now),
            latest,
        }
    }
}

/// The name of the run of `schedule`'s slot at `slot`, or of a run triggered by hand with the
/// annotation value `trigger`.
pub fn run_name(schedule: &str, slot: Option<Timestamp>, trigger: &str) -> String {
    let name = match slot {
        Some(at) => format!("{schedule}-{}", at.as_second()),
        None => {
            let hash = cairn_engine::names::fnv1a(trigger.as_bytes());
            format!("{schedule}-manual-{:08x}", hash as u32)
        }
    };
    cairn_engine::names::fit(&name, 253)
}

/// How long after its nominal time slot `slot` of schedule `uid` starts: the same every time
/// it is asked (a hash), in `[0, min(max, gap))` where `gap` is the time to the next slot.
pub fn jitter(uid: &str, slot: Timestamp, max: Duration, gap: Duration) -> Duration {
    let bound = max.min(gap).as_millis() as u64;
    if bound == 0 {
        return Duration::ZERO;
    }
    let seed = format!("{uid}/{}", slot.as_second());
    Duration::from_millis(cairn_engine::names::fnv1a(seed.as_bytes()) % bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn hours(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * 3600))
    }

    #[test]
    fn bad_expressions_and_zones_say_what_to_write() {
        let bad = Schedule::parse("61 * * * *", None).err().unwrap();
        assert_eq!(bad.reason, "InvalidSchedule");
        assert!(bad.message.contains("write 5 fields"), "{}", bad.message);
        let zone = Schedule::parse("0 * * * *", Some("Mars/Base"))
            .err()
            .unwrap();
        assert_eq!(zone.reason, "UnknownTimeZone");
        assert!(zone.message.contains("\"Mars/Base\""), "{}", zone.message);
        assert!(Schedule::parse("@daily", Some("Asia/Tokyo")).is_ok());
    }

    #[test]
    fn the_next_slot_keeps_to_the_wall_clock_of_its_zone_across_daylight_saving() {
        let daily = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:30 does not exist on 29 March 2026 in Berlin: the slot moves to 03:00 (01:00 UTC).
        let next = daily.next_after(at("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next, at("2026-03-29T01:00:00Z"));
        // In October 02:30 happens twice; a daily job runs once.
        let first = daily.next_after(at("2026-10-24T12:00:00Z")).unwrap();
        let second = daily.next_after(first).unwrap();
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        assert_eq!(second, at("2026-10-26T01:30:00Z"));
        let seconds = Schedule::parse("*/5 * * * * *", None).unwrap();
        assert_eq!(
            seconds.next_after(at("2026-01-01T00:00:01Z")),
            Some(at("2026-01-01T00:00:05Z"))
        );
    }

    #[test]
    fn after_a_gap_only_the_latest_slots_within_the_limits_start() {
        let hourly = Schedule::parse("0 * * * *", None).unwrap();
        let since = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-01T05:30:00Z");
        // One slot (CronJob's behaviour): the latest; four missed.
        let due = hourly.due(since, now, None, 1);
        assert_eq!(due.slots, [at("2026-01-01T05:00:00Z")]);
        assert_eq!(due.missed, 4);
        assert_eq!(due.next, Some(at("2026-01-01T06:00:00Z")));
        // Catching up three, oldest first.
        let due = hourly.due(since, now, None, 3);
        assert_eq!(
            due.slots,
            [
                at("2026-01-01T03:00:00Z"),
                at("2026-01-01T04:00:00Z"),
                at("2026-01-01T05:00:00Z")
            ]
        );
        assert_eq!(due.missed, 2);
        // The deadline drops slots older than 2 hours.
        let due = hourly.due(since, now, hours(2), 10);
        assert_eq!(
            due.slots,
            [at("2026-01-01T04:00:00Z"), at("2026-01-01T05:00:00Z")]
        );
        assert_eq!(due.missed, 3);
        // Nothing passed since the last slot started.
        let due = hourly.due(at("2026-01-01T05:00:00Z"), now, None, 1);
        assert!(due.slots.is_empty() && due.missed == 0);
        // A slot exactly now is due.
        let due = hourly.due(since, at("2026-01-01T01:00:00Z"), None, 1);
        assert_eq!(due.slots, [at("2026-01-01T01:00:00Z")]);
        // Down for a year with a schedule every second: bounded work, "more than" missed.
        let every_second = Schedule::parse("* * * * * *", None).unwrap();
        let due = every_second.due(since, at("2027-01-01T00:00:00Z"), None, 1);
        assert_eq!(due.slots.len(), 1);
        assert_eq!(due.missed, COUNT_MISSED_UP_TO);
    }

    #[test]
    fn jitter_is_stable_and_stays_before_the_next_slot() {
        let slot = at("2026-01-01T05:00:00Z");
        let minute = Duration::from_secs(60);
        let once = jitter("uid-1", slot, minute, Duration::from_secs(3600));
        assert_eq!(
            once,
            jitter("uid-1", slot, minute, Duration::from_secs(3600))
        );
        assert!(once < minute);
        assert!(jitter("uid-1", slot, minute, Duration::from_secs(5)) < Duration::from_secs(5));
        assert_eq!(
            jitter("uid-1", slot, Duration::ZERO, minute),
            Duration::ZERO
        );
    }
}
