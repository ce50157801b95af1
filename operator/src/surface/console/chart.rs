//! Charts as inline SVG rendered here: no JS library, no canvas. Step lines of a run's
//! completed steps and cumulative cost, one dot per step (its tooltip a `<title>`), on axes
//! with a few ticks. They ride along in the run page's live updates.

use cairn_engine::read_api::RunDetail;
use maud::{Markup, html};

const W: f64 = 640.0;
const H: f64 = 180.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 24.0;
const PAD_T: f64 = 10.0;
const PAD_R: f64 = 10.0;

/// A point of the line: x, y, and what its dot's tooltip says.
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// The run's completed steps and their cumulative cost against seconds since it started (a
/// step counts, and its cost lands, when it ends): two charts, the cost one only once
/// something was paid.
pub fn over_time(detail: &RunDetail) -> Markup {
    let start = detail.run.created_at;
    let mut ends: Vec<(f64, f64, &str)> = detail
        .steps
        .iter()
        .filter(|step| step.status == "completed")
        .map(|step| {
            let began = (step.started_at - start).num_milliseconds() as f64 / 1000.0;
            let end = began.max(0.0) + step.duration_ms / 1000.0;
            (end, step.usd.unwrap_or(0.0), step.key.as_str())
        })
        .collect();
    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let origin = || Point {
        x: 0.0,
        y: 0.0,
        label: "start".into(),
    };
    let (mut steps, mut cost) = (vec![origin()], vec![origin()]);
    let mut total = 0.0;
    for (n, (end, usd, key)) in ends.into_iter().enumerate() {
        total += usd;
        let label = format!("{key}: step {}, ${total:.4} after {end:.1} s", n + 1);
        steps.push(Point {
            x: end,
            y: (n + 1) as f64,
            label: label.clone(),
        });
        cost.push(Point {
            x: end,
            y: total,
            label,
        });
    }
    html! {
        div .charts {
            figure { figcaption { "steps completed" } (step_line(&steps, "s", "")) }
            figure {
                figcaption { "cost (US dollars)" }
                @if total > 0.0 { (step_line(&cost, "s", "$")) } @else { p .empty { "nothing paid yet" } }
            }
        }
    }
}

/// A tick's label: as many decimals as a scale up to `max` needs.
fn tick(value: f64, max: f64) -> String {
    let decimals = match max {
        m if m >= 10.0 => 0,
        m if m >= 1.0 => 1,
        m if m >= 0.01 => 3,
        _ => 5,
    };
    format!("{value:.decimals$}")
}

/// `points` with x ascending, as a step line.
pub fn step_line(points: &[Point], x_unit: &str, y_unit: &str) -> Markup {
    let max_x = points.iter().map(|p| p.x).fold(1e-9, f64::max);
    let max_y = points.iter().map(|p| p.y).fold(1e-9, f64::max);
    let x = |v: f64| PAD_L + (W - PAD_L - PAD_R) * v / max_x;
    let y = |v: f64| H - PAD_B - (H - PAD_B - PAD_T) * v / max_y;
    let mut path = String::new();
    for (i, p) in points.iter().enumerate() {
        if i == 0 {
            path += &format!("M{:.1},{:.1}", x(p.x), y(p.y));
        } else {
            // Along, then up: the cost lands when the step ends.
            path += &format!(" H{:.1} V{:.1}", x(p.x), y(p.y));
        }
    }
    let ticks = |max: f64| (0..=4).map(move |i| max * f64::from(i) / 4.0);
    html! {
        svg .chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}")) role="img"
            aria-label="over time" width="100%" preserveAspectRatio="xMinYMin meet" {
            @for t in ticks(max_y) {
                line .grid x1=(PAD_L) x2=(W - PAD_R) y1=(format!("{:.1}", y(t))) y2=(format!("{:.1}", y(t))) {}
                text .tick x=(PAD_L - 4.0) y=(format!("{:.1}", y(t) + 4.0)) text-anchor="end" { (y_unit) (tick(t, max_y)) }
            }
            @for t in ticks(max_x) {
                text .tick x=(format!("{:.1}", x(t))) y=(H - 6.0) text-anchor="middle" { (tick(t, max_x)) (x_unit) }
            }
            path .line d=(path) {}
            @for p in points.iter().skip(1) {
                circle .dot cx=(format!("{:.1}", x(p.x))) cy=(format!("{:.1}", y(p.y))) r="3.5" { title { (p.label) } }
            }
        }
    }
}
