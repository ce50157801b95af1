//! `make bench`: Cairn next to the physical limit and its peers, on one machine, in one run.
//!
//! Figures (see the issue, and the report this writes):
//! 1. per-step checkpoint overhead (p50, p99) in one run of trivial steps;
//! 2. steps per second with 16 runs in parallel;
//! 3. suspend → resume on one machine (`cairn dev`, Absurd's worker, DBOS's recv);
//! 4. suspend → resume on the cluster, next to a bare pod's create → running;
//! 5. the operator's RSS and CPU with 10,000 FlowRuns present;
//! 6. FlowRuns admitted per second;
//! 7. one event waking 1,000 waiting runs;
//! 8. drain: a flow pod deleted mid-step → the next attempt's process runs (and no finished
//!    step done again);
//! 9. leader handover: the leading operator SIGKILLed → a standby holds the Lease, and a new
//!    FlowRun gets its first attempt.
//!
//! Figures 1–3 run on a private Postgres started for the benchmark (the same server and
//! settings for every system); 4–9 on the test cluster (`tests/cluster/up.sh`). The peers
//! (Absurd, DBOS) are the Python programs in `bench/peers/`, run in the virtual environment
//! `make bench` installs (`target/bench-venv`, pinned by `bench/requirements.txt`).
//!
//! Writes `<out>/bench.md` (also printed), `<out>/bench.json` and `<out>/bench.png`.

mod cluster;
// The lines figure 8's flow prints (shared with the `bench-flows` binary).
#[path = "../drain_lines.rs"]
mod drain_lines;
mod forks;
mod large_results;
mod local;
mod peers;
mod pg;
mod recovery;
mod report;
mod traced_steps;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;

use crate::peers::Peers;
use crate::report::{Latency, Rate, Results, Target};

#[derive(Parser, Clone)]
#[command(about = "Cairn next to the physical limit and its peers (see `make bench`)")]
pub struct Args {
    /// Small sizes everywhere: checks the harness end to end in a minute or two.
    #[arg(long)]
    smoke: bool,
    /// Where the report, the JSON and the chart go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The virtual environment with the peers' packages (`make bench` creates it).
    #[arg(long, default_value = "target/bench-venv")]
    venv: PathBuf,
    /// Figure 1: rounds of (raw, Cairn, Absurd, DBOS, raw from Python), samples pooled.
    #[arg(long)]
    rounds: Option<usize>,
    /// Skip figures 4–9 (the cluster).
    #[arg(long)]
    local_only: bool,
    /// Skip figures 1–3 (local).
    #[arg(long)]
    cluster_only: bool,
    /// Local figures to run (default: all of 1,2,3,10,11,12).
    #[arg(long, value_delimiter = ',')]
    local_figures: Option<Vec<u8>>,
    /// Figure 6: FlowRuns to admit (default 1,000).
    #[arg(long)]
    admit: Option<usize>,
    /// Figure 7: runs one event wakes (default 1,000).
    #[arg(long)]
    fanout: Option<usize>,
    /// Figure 5: FlowRuns present in all (default 10,000).
    #[arg(long)]
    flowruns: Option<usize>,
    /// Cluster figures to run (default: all of 4,5,6,7,8,9).
    #[arg(long, value_delimiter = ',')]
    cluster_figures: Option<Vec<u8>>,
}

/// Sizes of one benchmark run.
#[derive(Clone, Copy)]
struct Sizes {
    steps: u64,
    rounds: usize,
    parallel_runs: usize,
    parallel_steps: u64,
    resumes: u32,
    settle: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sizes = if args.smoke {
        Sizes {
            steps: 200,
            rounds: 1,
            parallel_runs: 16,
            parallel_steps: 50,
            resumes: 5,
            settle: Duration::from_millis(100),
        }
    } else {
        Sizes {
            steps: 2000,
            rounds: 3,
            parallel_runs: 16,
            parallel_steps: 500,
            resumes: 40,
            settle: Duration::from_millis(100),
        }
    };
    let sizes = Sizes {
        rounds: args.rounds.unwrap_or(sizes.rounds),
        ..sizes
    };
    std::fs::create_dir_all(args.out.join("logs"))?;
    let out = std::fs::canonicalize(&args.out)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no directory for the benchmark binary")?
        .to_owned();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = std::fs::canonicalize(&repo).unwrap_or(repo);

    let mut results = Results::default();
    let command: Vec<String> = std::env::args().collect();
    let header = &mut results.header;
    header.push((
        "command".into(),
        format!(
            "`{}`{}",
            std::env::var("CAIRN_BENCH_COMMAND").unwrap_or_else(|_| command.join(" ")),
            if std::env::var("CAIRN_BENCH_COMMAND").is_ok() {
                format!(" (runs `{}`)", command.join(" "))
            } else {
                String::new()
            }
        ),
    ));
    header.push(("started".into(), shell("date -u '+%Y-%m-%d %H:%M:%S UTC'")));
    header.push(("machine".into(), machine()));
    progress("measuring the machine's load before starting anything (5 s)");
    let busy = cpu_busy(Duration::from_secs(5)).await?;
    header.push((
        "load before the run".into(),
        format!(
            "CPU {:.0}% busy over 5 s (all cores, other users' work), load average {}",
            busy * 100.0,
            loadavg()
        ),
    ));
    results.versions.push(("cairn".into(), git_version(&repo)));
    results.versions.push(("rustc".into(), shell("rustc -V")));

    let python = args.venv.join("bin/python");
    let peers = Peers {
        // Absolute but not canonical: the venv's python is a symlink that must stay one.
        python: std::path::absolute(&python)
            .ok()
            .filter(|p| p.exists())
            .with_context(|| {
                format!(
                    "no Python virtual environment at {} (`make bench` creates it)",
                    args.venv.display()
                )
            })?,
        dir: repo.join("bench/peers"),
        logs: out.join("logs"),
    };

    OUT.set(out.clone()).expect("set once");
    if !args.cluster_only {
        let figures = args
            .local_figures
            .clone()
            .unwrap_or(vec![1, 2, 3, 10, 11, 12]);
        // On Ctrl-C the figures' future is dropped: the private Postgres stops with it.
        tokio::select! {
            done = local_figures(&mut results, &figures, sizes, &peers, &bin_dir, &out) => done?,
            _ = interrupted() => anyhow::bail!("interrupted"),
        }
        write_outputs(&mut results)?;
    }
    if args.local_only {
        results
            .not_measured
            .push("Figures 4–9 (the cluster): skipped (`--local-only`).".into());
    } else {
        let figures = args
            .cluster_figures
            .clone()
            .unwrap_or(vec![4, 5, 6, 7, 8, 9]);
        let asked = cluster::Asked {
            admit: args.admit,
            fanout: args.fanout,
            flowruns: args.flowruns,
        };
        cluster::figures(&mut results, &figures, args.smoke, asked, &bin_dir, &out).await?;
    }
    results.header.push((
        "load at the end".into(),
        format!("load average {}", loadavg()),
    ));
    let json_path = out.join("bench.json");
    let png = out.join("bench.png");
    let _ = std::fs::remove_file(&png);
    if !results.fig1.is_empty() || !results.fig2.is_empty() || !results.fig3.is_empty() {
        write_outputs(&mut results)?;
        let chart = Command::new(&peers.python)
            .arg(repo.join("bench/chart.py"))
            .arg(&json_path)
            .arg(&png)
            .status();
        if chart.as_ref().is_ok_and(|s| s.success()) {
            results
                .header
                .push(("chart".into(), format!("`{}` (figures 1–3)", png.display())));
        } else {
            results
                .notes
                .push(format!("The chart could not be drawn ({chart:?})."));
        }
    }
    write_outputs(&mut results)?;
    let md_path = out.join("bench.md");
    println!("{}", std::fs::read_to_string(&md_path)?);
    progress(&format!(
        "wrote {} and {}{}",
        md_path.display(),
        json_path.display(),
        if png.exists() {
            format!(" and {}", png.display())
        } else {
            String::new()
        }
    ));
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn local_figures(
    results: &mut Results,
    figures: &[u8],
    sizes: Sizes,
    peers: &Peers,
    bin_dir: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    progress("starting the benchmark's Postgres");
    let pg = pg::Postgres::start()?;
    pg.create_database("absurd")?;
    let cairn_url = pg.url("cairn_bench");
    pg.create_database("cairn_bench")?;
    let absurd_url = pg.url("absurd");
    let dbos_url = pg.url("dbos_bench"); // DBOS creates it
    let pool =
        cairn_engine::schema::connect_with(&cairn_url, 8, cairn_engine::schema::Migrations::Apply)
            .await?;
    let server: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    let mut settings = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "shared_buffers",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&pool)
            .await?;
        settings.push(format!("{name}={value}"));
    }
    results.header.push((
        "Postgres (figures 1–3)".into(),
        format!(
            "a private server started for this run (initdb in a temporary directory, {}), \
             every system over its Unix socket (TCP on 127.0.0.1:{} also open); {}; Cairn, \
             Absurd and DBOS each in their own database of that server",
            pg.bin_dir().display(),
            pg.port(),
            settings.join(", ")
        ),
    ));
    results.versions.push(("PostgreSQL".into(), server));
    results.versions.push((
        "Python".into(),
        shell(&format!("{} -V", peers.python.display())),
    ));
    for (script, log) in [
        ("absurd_peer.py", "absurd-versions"),
        ("dbos_peer.py", "dbos-versions"),
    ] {
        let versions = peers.run(script, "-", &["versions"], log).await?;
        for (k, v) in versions.as_object().into_iter().flatten() {
            if !results.versions.iter().any(|(name, _)| name == k) {
                results
                    .versions
                    .push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    results.versions.push((
        "matplotlib".into(),
        shell(&format!(
            "{} -c 'import matplotlib; print(matplotlib.__version__)'",
            peers.python.display()
        )),
    ));

    progress("installing Absurd's schema with absurdctl");
    for args in [vec!["init"], vec!["create-queue", "bench"]] {
        let status = Command::new(peers.tool("absurdctl"))
            .args(&args)
            .args(["-d", &absurd_url])
            .env("PATH", path_with(pg.bin_dir()))
            .status()?;
        anyhow::ensure!(status.success(), "absurdctl {} failed", args.join(" "));
    }

    if figures.contains(&1) {
        figure1(
            results,
            sizes,
            peers,
            &pool,
            &cairn_url,
            &absurd_url,
            &dbos_url,
        )
        .await?;
    }
    if figures.contains(&2) {
        figure2(
            results,
            sizes,
            peers,
            &pg,
            &pool,
            &cairn_url,
            &absurd_url,
            &dbos_url,
        )
        .await?;
    }
    if figures.contains(&3) {
        figure3(
            results,
            sizes,
            peers,
            &pool,
            &cairn_url,
            &absurd_url,
            &dbos_url,
            bin_dir,
            out,
        )
        .await?;
    }
    if figures.contains(&10) {
        progress("figure 10: forks of a run of 1,000 steps");
        let (floor, fork) = forks::fork_creation(&pool, 1000, 20).await?;
        results.fig10 = vec![floor, fork];
        write_outputs(results)?;
    }
    if figures.contains(&11) {
        progress("figure 11: steps with a 1 MB result, inline and offloaded to S3");
        results.fig11 = large_results::one_megabyte_results(&pool, &cairn_url, out, 30).await?;
        write_outputs(results)?;
    }
    if figures.contains(&12) {
        progress("figure 12: steps untraced and traced (spans to an OpenTelemetry Collector)");
        results.fig12 = traced_steps::traced_steps(&pool, &cairn_url, out, 500).await?;
        write_outputs(results)?;
    }
    drop(pool);
    drop(pg);
    Ok(())
}

/// Figure 1, in rounds; every system's samples are pooled over the rounds.
async fn figure1(
    results: &mut Results,
    sizes: Sizes,
    peers: &Peers,
    pool: &sqlx::PgPool,
    cairn_url: &str,
    absurd_url: &str,
    dbos_url: &str,
) -> anyhow::Result<()> {
    let n = sizes.steps.to_string();
    let (mut raw, mut cairn, mut absurd, mut dbos, mut raw_absurd, mut raw_dbos) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=sizes.rounds {
        progress(&format!(
            "figure 1, round {round}/{}: {} steps each (Cairn, Absurd, DBOS), each step after a raw INSERT",
            sizes.rounds, sizes.steps
        ));
        let (steps, floor) = local::cairn_steps(pool, cairn_url, sizes.steps).await?;
        cairn.extend(steps);
        raw.extend(floor);
        let r = peers
            .run(
                "absurd_peer.py",
                absurd_url,
                &["steps", "--n", &n],
                "absurd-steps",
            )
            .await?;
        absurd.extend(peers::samples(&r, "samples_ms")?);
        raw_absurd.extend(peers::samples(&r, "raw_ms")?);
        let r = peers
            .run(
                "dbos_peer.py",
                dbos_url,
                &["steps", "--n", &n],
                "dbos-steps",
            )
            .await?;
        dbos.extend(peers::samples(&r, "samples_ms")?);
        raw_dbos.extend(peers::samples(&r, "raw_ms")?);
    }
    results.fig1 = vec![
        local::raw_latency(raw),
        Latency::of(
            "Cairn",
            "`ctx.step` through the SDK's run loop (Rust)",
            cairn,
        ),
        Latency::of(
            "Absurd",
            "`ctx.step`, task run by `work_batch` (Python)",
            absurd,
        ),
        Latency::of("DBOS", "`@DBOS.step` in a `@DBOS.workflow` (Python)", dbos),
        Latency::of(
            "raw INSERT+COMMIT from Python, beside Absurd",
            "psycopg autocommit, one before each of Absurd's steps: the floor as its client sees it",
            raw_absurd,
        ),
        Latency::of(
            "raw INSERT+COMMIT from Python, beside DBOS",
            "the same, before each of DBOS's steps",
            raw_dbos,
        ),
    ];
    results.notes.push(format!(
        "Figure 1: {} round(s), each one run of {} steps per system in turn (Cairn, Absurd, DBOS), \
         samples pooled; every step is preceded by a raw INSERT + COMMIT on another connection, \
         so each system's floor is sampled at the same moments as its steps.",
        sizes.rounds, sizes.steps
    ));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn figure2(
    results: &mut Results,
    sizes: Sizes,
    peers: &Peers,
    pg: &pg::Postgres,
    pool: &sqlx::PgPool,
    cairn_url: &str,
    absurd_url: &str,
    dbos_url: &str,
) -> anyhow::Result<()> {
    let (runs, per) = (sizes.parallel_runs, sizes.parallel_steps);
    progress(&format!("figure 2: {runs} runs × {per} steps in parallel"));
    let runs_s = runs.to_string();
    let per_s = per.to_string();
    let parallel = [
        "parallel",
        "--runs",
        runs_s.as_str(),
        "--steps",
        per_s.as_str(),
    ];
    // CPU per step, for the rows this process drives (client) and for Postgres (server).
    let cpu = || (pg::own_cpu_seconds(), pg.cpu_seconds());
    let with_cpu = |mut rate: Rate, (client0, server0): (f64, f64), ours: bool| {
        let (client1, server1) = cpu();
        let per = |d: f64| Some(d * 1e6 / rate.count as f64);
        if ours {
            rate.cpu_client_us = per(client1 - client0);
        }
        rate.cpu_server_us = per(server1 - server0);
        rate
    };
    let mut rounds: Vec<Vec<Rate>> = vec![];
    for round in 1..=sizes.rounds {
        progress(&format!(
            "figure 2, round {round}/{}: {runs} runs × {per} steps in parallel, each system in turn",
            sizes.rounds
        ));
        // Each row with the CPU its measurement used (`$rate` is evaluated inside).
        macro_rules! measured {
            ($ours:expr, $rate:expr) => {{
                let before = cpu();
                let rate = $rate;
                with_cpu(rate, before, $ours)
            }};
        }
        let this = vec![
            measured!(true, local::raw_parallel(cairn_url, runs, per).await?),
            measured!(
                true,
                local::cairn_parallel(pool, cairn_url, runs, per).await?
            ),
            measured!(
                false,
                peer_rate(
                    "Absurd",
                    &format!(
                        "{runs} worker processes (`start_worker`, concurrency 1) × {per}-step tasks"
                    ),
                    &peers
                        .run("absurd_peer.py", absurd_url, &parallel, "absurd-parallel")
                        .await?,
                )?
            ),
            measured!(
                false,
                peer_rate(
                    "DBOS",
                    &format!("{runs} workflows via `DBOS.start_workflow`, one process"),
                    &peers
                        .run("dbos_peer.py", dbos_url, &parallel, "dbos-parallel")
                        .await?,
                )?
            ),
            measured!(
                true,
                local::steps_table_parallel(cairn_url, runs, per).await?
            ),
            measured!(
                true,
                local::engine_parallel(pool, cairn_url, runs, per).await?
            ),
        ];
        rounds.push(this);
    }
    results.fig2 = (0..rounds[0].len())
        .map(|i| Rate::combine(rounds.iter().map(|r| r[i].clone()).collect()))
        .collect();
    results.notes.push(format!(
        "Figure 2: {} round(s), the systems in turn within each; steps/s is the median of the \
         rounds (each round's in the last column), steps and seconds are summed.",
        sizes.rounds
    ));
    results.notes.push(
        "Figure 2: CPU per step is the CPU time used during the measurement divided by the \
         steps: the client column for the rows this process drives (Rust), the Postgres column \
         for the whole server (all its processes), which includes the runs' start and end."
            .into(),
    );

    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn figure3(
    results: &mut Results,
    sizes: Sizes,
    peers: &Peers,
    pool: &sqlx::PgPool,
    cairn_url: &str,
    absurd_url: &str,
    dbos_url: &str,
    bin_dir: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let count = sizes.resumes;
    let settle = sizes.settle;
    progress(&format!("figure 3: {count} suspend → resume cycles each"));
    let floor = local::notify_floor(cairn_url, count as usize, settle).await?;
    let cairn = local::cairn_resume(
        pool,
        cairn_url,
        bin_dir,
        &out.join("logs/cairn-dev-resume.log"),
        count,
        settle,
    )
    .await?;
    let count_s = count.to_string();
    let settle_s = settle.as_millis().to_string();
    let resume = [
        "resume",
        "--count",
        count_s.as_str(),
        "--settle-ms",
        settle_s.as_str(),
    ];
    let absurd = peers::samples(
        &peers
            .run("absurd_peer.py", absurd_url, &resume, "absurd-resume")
            .await?,
        "samples_ms",
    )?;
    let dbos = peers::samples(
        &peers
            .run("dbos_peer.py", dbos_url, &resume, "dbos-resume")
            .await?,
        "samples_ms",
    )?;
    results.fig3 = vec![
        Latency::of(
            "NOTIFY → LISTEN (floor)",
            "a committed pg_notify until another connection receives it",
            floor,
        ),
        Latency::of(
            "Cairn",
            "`cairn dev run`: the process exits while waiting; NOTIFY → supervisor → new process → replay → next line",
            cairn.total,
        ),
        Latency::of(
            "Absurd",
            "one worker, `start_worker()` defaults (polls every 0.25 s); the task is re-claimed and replayed",
            absurd,
        ),
        Latency::of(
            "DBOS",
            "`DBOS.send` → `DBOS.recv`; the workflow stays in memory, woken by LISTEN/NOTIFY",
            dbos,
        ),
    ];
    results.fig3.push(Latency::of(
        "Cairn, part 1",
        "emit → the relaunched process runs its first line (supervisor reacts, spawns it)",
        cairn.to_process,
    ));
    results.fig3.push(Latency::of(
        "Cairn, part 2",
        "the process's first line → the flow's line after the wait (connect, load, replay)",
        cairn.in_process,
    ));
    results.notes.push(format!(
        "Figure 3: each event is emitted {} ms after the waiter is parked (Cairn: run `waiting`; \
         Absurd: run `sleeping` on that event; DBOS: the workflow reached `recv`); the sample \
         runs from just before the emit call to the wall-clock time the flow's next line \
         recorded.",
        settle.as_millis()
    ));
    results.notes.push(
        "Every per-step and per-resume time is taken inside the program that makes the call \
         (Rust `Instant`, Python `time.perf_counter`), around the call, so client-side costs \
         (the SDK, the language runtime, the database driver) are part of what is measured."
            .into(),
    );
    Ok(())
}

fn peer_rate(system: &str, how: &str, r: &Value) -> anyhow::Result<Rate> {
    Ok(Rate::of(
        system,
        how,
        r["steps"]
            .as_u64()
            .context("no steps in the peer's result")?,
        r["seconds"]
            .as_f64()
            .context("no seconds in the peer's result")?,
    ))
}

fn evaluate_targets(results: &mut Results) {
    let mut targets = Vec::new();
    let find = |rows: &[Latency], name: &str| rows.iter().find(|l| l.system == name).cloned();
    if let (Some(raw), Some(cairn)) = (results.fig1.first(), find(&results.fig1, "Cairn")) {
        let r = cairn.p50 / raw.p50;
        targets.push(Target {
            figure: 1,
            target: "per-step p50 ≤ 1.3× the raw insert".into(),
            measured: format!("{:.3} ms vs {:.3} ms: {r:.2}×", cairn.p50, raw.p50),
            met: r <= 1.3,
        });
        for (peer, limit) in [("Absurd", 0.4), ("DBOS", 0.2)] {
            if let Some(p) = find(&results.fig1, peer) {
                let r = cairn.p50 / p.p50;
                targets.push(Target {
                    figure: 1,
                    target: format!("per-step p50 ≤ {limit}× {peer}"),
                    measured: format!("{:.3} ms vs {:.3} ms: {r:.2}×", cairn.p50, p.p50),
                    met: r <= limit,
                });
            }
        }
    }
    if let (Some(raw), Some(cairn)) = (
        results.fig2.first(),
        results.fig2.iter().find(|r| r.system == "Cairn"),
    ) {
        let r = cairn.per_second / raw.per_second;
        targets.push(Target {
            figure: 2,
            target: "parallel steps/s ≥ 0.7× the raw insert rate at the same concurrency".into(),
            measured: format!(
                "{:.0}/s vs {:.0}/s: {r:.2}×",
                cairn.per_second, raw.per_second
            ),
            met: r >= 0.7,
        });
    }
    if let Some(cairn) = find(&results.fig3, "Cairn") {
        targets.push(Target {
            figure: 3,
            target: "local resume p50 ≤ 50 ms".into(),
            measured: format!("{:.1} ms", cairn.p50),
            met: cairn.p50 <= 50.0,
        });
    }
    cluster::targets(results, &mut targets);
    results.targets = targets;
}

/// Where the outputs go (set once at the start).
static OUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Writes `bench.json` and `bench.md` with what is measured so far (called after every figure,
/// so an interrupted run keeps its figures).
pub fn write_outputs(results: &mut Results) -> anyhow::Result<()> {
    let out = OUT.get().context("no output directory")?;
    evaluate_targets(results);
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(out.join("bench.md"), results.markdown())?;
    Ok(())
}

pub fn progress(message: &str) {
    eprintln!("[bench {}] {message}", shell("date +%H:%M:%S"));
}

/// A shell command's trimmed stdout ("?" when it fails).
pub fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0);
    let disk = shell("df -hT / | awk 'NR==2 {print $2 \" on \" $1}'");
    format!(
        "{cpus} logical CPUs ({model}), {:.1} GiB RAM, {}, root filesystem {disk}, {}",
        mem_kb as f64 / 1024.0 / 1024.0,
        shell("uname -sr"),
        shell("systemd-detect-virt 2>/dev/null || echo 'virtualisation unknown'")
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The whole machine's CPU busy fraction (all cores) over `window`, from /proc/stat.
pub async fn cpu_busy(window: Duration) -> anyhow::Result<f64> {
    fn sample() -> anyhow::Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
        Ok((fields.iter().sum(), idle))
    }
    let (total0, idle0) = sample()?;
    tokio::time::sleep(window).await;
    let (total1, idle1) = sample()?;
    let total = (total1 - total0).max(1) as f64;
    Ok(1.0 - (idle1 - idle0) as f64 / total)
}

fn git_version(repo: &Path) -> String {
    let dir = repo.display();
    let commit = shell(&format!("git -C {dir} rev-parse --short HEAD"));
    let dirty = shell(&format!(
        "git -C {dir} status --porcelain --untracked-files=no | wc -l"
    ));
    if dirty != "0" && dirty != "?" {
        format!("{commit} + uncommitted changes in {dirty} files")
    } else {
        commit
    }
}
