//! The figures as data (written as JSON for the chart) and as the Markdown report.

use std::fmt::Write as _;

use serde::Serialize;

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub system: String,
    /// How it was measured, in a few words.
    pub how: String,
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(system: &str, how: &str, mut samples: Vec<f64>) -> Latency {
        assert!(!samples.is_empty(), "no samples for {system}");
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Latency {
            system: system.into(),
            how: how.into(),
            n: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: samples[samples.len() - 1],
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }
}

/// A throughput: `count` things in `seconds`.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub system: String,
    pub how: String,
    pub count: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// CPU microseconds per item: the client process (when it is this one) and Postgres.
    pub cpu_client_us: Option<f64>,
    pub cpu_server_us: Option<f64>,
    /// Each round's rate, when several rounds were combined.
    pub rounds: Vec<f64>,
}

impl Rate {
    pub fn of(system: &str, how: &str, count: u64, seconds: f64) -> Rate {
        Rate {
            system: system.into(),
            how: how.into(),
            count,
            seconds,
            per_second: count as f64 / seconds,
            cpu_client_us: None,
            cpu_server_us: None,
            rounds: vec![],
        }
    }

    /// Rounds of one measurement: the median rate; counts, seconds and CPU summed.
    pub fn combine(rounds: Vec<Rate>) -> Rate {
        let mut rates: Vec<f64> = rounds.iter().map(|r| r.per_second).collect();
        let in_order = rates.clone();
        rates.sort_by(f64::total_cmp);
        let count: u64 = rounds.iter().map(|r| r.count).sum();
        let weighted = |f: fn(&Rate) -> Option<f64>| {
            rounds
                .iter()
                .map(|r| f(r).map(|v| v * r.count as f64))
                .sum::<Option<f64>>()
                .map(|total| total / count as f64)
        };
        Rate {
            system: rounds[0].system.clone(),
            how: rounds[0].how.clone(),
            count,
            seconds: rounds.iter().map(|r| r.seconds).sum(),
            per_second: rates[rates.len() / 2],
            cpu_client_us: weighted(|r| r.cpu_client_us),
            cpu_server_us: weighted(|r| r.cpu_server_us),
            rounds: in_order,
        }
    }
}

/// One target of the issue, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub figure: u8,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Figure 5: the operator's footprint with many FlowRuns present.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub flowruns: usize,
    pub waiting: usize,
    pub rss_mb: f64,
    pub rss_peak_mb: f64,
    /// CPU seconds per wall second (1.0 = one core), while idle with the runs present.
    pub cpu_idle: f64,
    /// The same while the runs were being admitted.
    pub cpu_admitting: f64,
    pub idle_seconds: f64,
}

/// Figure 7: one event waking many waiting runs.
#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    pub runs: usize,
    /// Until the last pod was created (NaN when not all were).
    pub pods_created_s: f64,
    pub pods_created: usize,
    /// How long the benchmark watched.
    pub waited_s: f64,
    pub all_finished_s: f64,
    pub finished: usize,
    pub lost: usize,
    pub max_running_pods: usize,
}

/// Figure 8: flow pods deleted gracefully mid-step.
#[derive(Debug, Clone, Serialize)]
pub struct Drains {
    /// The whole (delete → the next attempt's process runs), then its parts.
    pub latencies: Vec<Latency>,
    pub runs: usize,
    pub succeeded: usize,
    /// Runs whose step finished before the drain and had its work done again.
    pub work_repeated: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub header: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub fig1: Vec<Latency>,
    pub fig2: Vec<Rate>,
    pub fig3: Vec<Latency>,
    pub fig4: Vec<Latency>,
    pub fig5: Option<Footprint>,
    /// The API server alone (the floor), then Cairn.
    pub fig6: Vec<Rate>,
    pub fig7: Option<FanOut>,
    pub fig8: Option<Drains>,
    /// Until the standby holds the Lease, then until a new FlowRun has its first attempt.
    pub fig9: Vec<Latency>,
    /// A raw copy of the rows (the floor), then Cairn's fork.
    pub fig10: Vec<Latency>,
    /// A raw 1 MB row (the floor), then Cairn's step with a 1 MB result inline and offloaded.
    pub fig11: Vec<Latency>,
    /// Cairn's step untraced (the baseline), then traced.
    pub fig12: Vec<Latency>,
    pub notes: Vec<String>,
    pub not_measured: Vec<String>,
    pub targets: Vec<Target>,
}

fn ratio(x: f64, base: f64) -> String {
    format!("{:.2}×", x / base)
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# Cairn benchmark (`make bench`)\n");
        for (k, v) in &self.header {
            let _ = writeln!(w, "- **{k}**: {v}");
        }
        let _ = writeln!(w, "\nVersions:\n");
        let _ = writeln!(w, "| component | version |\n|---|---|");
        for (k, v) in &self.versions {
            let _ = writeln!(w, "| {k} | {v} |");
        }

        if !self.fig1.is_empty() {
            let base = &self.fig1[0];
            let _ = writeln!(
                w,
                "\n## 1. Per-step checkpoint overhead (one run of trivial steps)\n"
            );
            let _ = writeln!(
                w,
                "| system | how | samples | p50 | p99 | p50 ÷ raw p50 | p99 ÷ raw p99 |\n|---|---|---:|---:|---:|---:|---:|"
            );
            for l in &self.fig1 {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.3} ms | {:.3} ms | {} | {} |",
                    l.system,
                    l.how,
                    l.n,
                    l.p50,
                    l.p99,
                    ratio(l.p50, base.p50),
                    ratio(l.p99, base.p99)
                );
            }
        }
        if !self.fig2.is_empty() {
            let base = &self.fig2[0];
            let _ = writeln!(w, "\n## 2. Steps per second, 16 runs in parallel\n");
            let _ = writeln!(
                w,
                "| system | how | steps | seconds | steps/s | ÷ raw | CPU µs/step: client | CPU µs/step: Postgres | steps/s per round |\n|---|---|---:|---:|---:|---:|---:|---:|---|"
            );
            let us = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.0}"));
            for r in &self.fig2 {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {} |",
                    r.system,
                    r.how,
                    r.count,
                    r.seconds,
                    r.per_second,
                    ratio(r.per_second, base.per_second),
                    us(r.cpu_client_us),
                    us(r.cpu_server_us),
                    r.rounds
                        .iter()
                        .map(|v| format!("{v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        if !self.fig3.is_empty() {
            let base = &self.fig3[0];
            let _ = writeln!(
                w,
                "\n## 3. Suspend → resume on one machine (emit → the flow's next line)\n"
            );
            latency_table(w, &self.fig3, base);
        }
        if !self.fig4.is_empty() {
            let base = &self.fig4[0];
            let _ = writeln!(
                w,
                "\n## 4. Suspend → resume on the cluster (event → the resumed flow pod runs its next step)\n"
            );
            latency_table(w, &self.fig4, base);
        }
        if let Some(f) = &self.fig5 {
            let _ = writeln!(
                w,
                "\n## 5. Operator footprint with {} FlowRuns present ({} Waiting)\n",
                f.flowruns, f.waiting
            );
            let _ = writeln!(
                w,
                "| RSS | peak RSS | CPU while idle with them | CPU while admitting them |\n|---:|---:|---:|---:|"
            );
            let _ = writeln!(
                w,
                "| {:.1} MB | {:.1} MB | {:.1}% of a core (over {:.0} s) | {:.0}% of a core |",
                f.rss_mb,
                f.rss_peak_mb,
                f.cpu_idle * 100.0,
                f.idle_seconds,
                f.cpu_admitting * 100.0
            );
        }
        if !self.fig6.is_empty() {
            let base = &self.fig6[0];
            let _ = writeln!(
                w,
                "\n## 6. FlowRuns admitted per second (created, and registered in Postgres)\n"
            );
            let _ = writeln!(
                w,
                "| system | how | FlowRuns | seconds | FlowRuns/s | ÷ floor |\n|---|---|---:|---:|---:|---:|"
            );
            for r in &self.fig6 {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.2} | {:.0} | {} |",
                    r.system,
                    r.how,
                    r.count,
                    r.seconds,
                    r.per_second,
                    ratio(r.per_second, base.per_second)
                );
            }
        }
        if let Some(f) = &self.fig7 {
            let _ = writeln!(w, "\n## 7. One event waking {} waiting runs\n", f.runs);
            let _ = writeln!(
                w,
                "| runs | every pod created | every run finished | finished | lost | most flow pods active at once |\n|---:|---:|---:|---:|---:|---:|"
            );
            let or_not = |t: f64, what: String| {
                if t.is_nan() {
                    what
                } else {
                    format!("{t:.1} s")
                }
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                f.runs,
                or_not(
                    f.pods_created_s,
                    format!(
                        "not within {:.0} s ({} created)",
                        f.waited_s, f.pods_created
                    )
                ),
                or_not(
                    f.all_finished_s,
                    format!("not within {:.0} s ({} finished)", f.waited_s, f.finished)
                ),
                f.finished,
                f.lost,
                f.max_running_pods
            );
        }
        if let Some(d) = &self.fig8 {
            let _ = writeln!(
                w,
                "\n## 8. Drain: a flow pod deleted mid-step → the next attempt's process runs\n"
            );
            spread_table(w, &d.latencies);
            let _ = writeln!(
                w,
                "\n{} of {} runs succeeded; {} ran their finished step's work again.",
                d.succeeded, d.runs, d.work_repeated
            );
        }
        if !self.fig9.is_empty() {
            let _ = writeln!(
                w,
                "\n## 9. Leader handover: the leading operator SIGKILLed, a standby takes over\n"
            );
            spread_table(w, &self.fig9);
        }
        if let Some(floor) = self.fig10.first() {
            let _ = writeln!(w, "\n## 10. A fork of a run of 1,000 steps\n");
            latency_table(w, &self.fig10, floor);
        }
        if let Some(floor) = self.fig11.first() {
            let _ = writeln!(
                w,
                "\n## 11. A step with a 1 MB result: inline against offloaded\n"
            );
            latency_table(w, &self.fig11, floor);
            if let [_, inline, offloaded] = &self.fig11[..] {
                let _ = writeln!(
                    w,
                    "\nOffloaded against inline (p50): {}",
                    ratio(offloaded.p50, inline.p50)
                );
            }
        }
        if let Some(untraced) = self.fig12.first() {
            let _ = writeln!(w, "\n## 12. A step, untraced against traced\n");
            latency_table(w, &self.fig12, untraced);
        }
        if !self.not_measured.is_empty() {
            let _ = writeln!(w, "\n## Not measured in this run\n");
            for n in &self.not_measured {
                let _ = writeln!(w, "- {n}");
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(w, "\n## Targets\n");
            let _ = writeln!(w, "| figure | target | measured | |\n|---:|---|---|---|");
            for t in &self.targets {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} |",
                    t.figure,
                    t.target,
                    t.measured,
                    if t.met { "met" } else { "**missed**" }
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(w, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(w, "- {n}");
            }
        }
        md
    }
}

/// Latencies without a floor, in seconds, with their spread (figures 8 and 9: few samples).
fn spread_table(w: &mut String, rows: &[Latency]) {
    let _ = writeln!(
        w,
        "| what | how | samples | p50 | p90 | max |\n|---|---|---:|---:|---:|---:|"
    );
    for l in rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} s | {:.2} s | {:.2} s |",
            l.system,
            l.how,
            l.n,
            l.p50 / 1000.0,
            l.p90 / 1000.0,
            l.max / 1000.0
        );
    }
}

fn latency_table(w: &mut String, rows: &[Latency], base: &Latency) {
    let _ = writeln!(
        w,
        "| system | how | samples | p50 | p99 | p50 ÷ floor p50 |\n|---|---|---:|---:|---:|---:|"
    );
    for l in rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {} |",
            l.system,
            l.how,
            l.n,
            l.p50,
            l.p99,
            ratio(l.p50, base.p50)
        );
    }
}
