//! How runs look in a terminal: tables, colours (only on a terminal, never with `NO_COLOR`),
//! durations, money and ages; `inspect` has its own module. Pure: everything renders to
//! strings, so it is unit-tested.

mod inspect;
mod step;

pub use inspect::{Answer, AnswerHint, Header, Inspect, KubeView, WaitLines, inspect_text};
pub use step::step_text;

/// A run's artifacts: name, size, type, digest (`artifacts RUN`).
pub fn artifacts_table(items: &[cairn_engine::read_api::Artifact], ui: &Ui) -> String {
    if items.is_empty() {
        return ui.dim("(no artifacts)\n");
    }
    let mut table = ui.table(&["NAME", "STEP", "SIZE", "TYPE", "DIGEST"]);
    for a in items {
        let kind = if a.sensitive {
            ui.dim("(sensitive)")
        } else {
            a.content_type.clone()
        };
        let digest = a.digest.trim_start_matches("sha256:");
        table.add_row(vec![
            Cell::new(&a.name),
            Cell::new(&a.step),
            Cell::new(a.size).set_alignment(CellAlignment::Right),
            Cell::new(kind),
            Cell::new(&digest[..digest.len().min(12)]),
        ]);
    }
    format!("{table}\n")
}

use std::collections::BTreeMap;

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Utc};
use comfy_table::{Attribute, Cell, CellAlignment, Color, Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

use crate::lifecycle::Phase;
use cairn_engine::read_api::{Attempt, RunSummary, Step};

/// Whether to colour what goes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ui {
    pub color: bool,
}

impl Ui {
    /// Colours only on a terminal, and not with `NO_COLOR` (or `CLICOLOR=0`, `TERM=dumb`);
    /// `CLICOLOR_FORCE` forces them.
    pub fn detect() -> Ui {
        let choice = anstream::AutoStream::choice(&std::io::stdout());
        Ui {
            color: choice != anstream::ColorChoice::Never,
        }
    }

    pub fn plain() -> Ui {
        Ui { color: false }
    }

    fn paint(&self, text: &str, style: Style) -> String {
        if self.color && !text.is_empty() {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint(text, Style::new().bold())
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint(text, Style::new().dimmed())
    }

    pub fn phase(&self, phase: Option<Phase>) -> String {
        let text = phase_text(phase);
        match phase_color(phase) {
            Some(color) => self.paint(&text, Style::new().fg_color(Some(color.into())).bold()),
            None => text,
        }
    }

    pub fn error(&self, text: &str) -> String {
        self.paint(text, Style::new().fg_color(Some(AnsiColor::Red.into())))
    }

    /// A table with a bold header, coloured only when colours are on.
    pub fn table(&self, header: &[&str]) -> Table {
        let mut table = Table::new();
        table.load_style(UTF8_BORDERS_ONLY);
        if self.color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        table.set_header(
            header
                .iter()
                .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
        );
        table
    }

    fn phase_cell(&self, phase: Option<Phase>) -> Cell {
        let cell = Cell::new(phase_text(phase));
        match phase_color(phase) {
            Some(color) if self.color => cell.fg(table_color(color)),
            _ => cell,
        }
    }
}

fn phase_text(phase: Option<Phase>) -> String {
    phase.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}

fn phase_color(phase: Option<Phase>) -> Option<AnsiColor> {
    Some(match phase? {
        Phase::Succeeded => AnsiColor::Green,
        Phase::Failed => AnsiColor::Red,
        Phase::Cancelled => AnsiColor::Magenta,
        Phase::Waiting | Phase::Sleeping => AnsiColor::Yellow,
        Phase::Running => AnsiColor::Cyan,
        Phase::Retrying => AnsiColor::Red,
        Phase::Pending => return None,
    })
}

fn table_color(color: AnsiColor) -> Color {
    match color {
        AnsiColor::Green => Color::Green,
        AnsiColor::Red => Color::Red,
        AnsiColor::Magenta => Color::Magenta,
        AnsiColor::Yellow => Color::Yellow,
        AnsiColor::Cyan => Color::Cyan,
        _ => Color::Reset,
    }
}

fn right(text: String) -> Cell {
    Cell::new(text).set_alignment(CellAlignment::Right)
}

// ---- small formats --------------------------------------------------------------------------

/// Dollars with four decimals (LLM calls cost fractions of a cent).
pub fn money(usd: f64) -> String {
    format!("${usd:.4}")
}

/// `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`.
pub fn duration(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        return format!("{ms:.0} ms");
    }
    let secs = ms / 1000.0;
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let secs = secs.round() as u64;
    if secs < 3600 {
        return format!("{}m {:02}s", secs / 60, secs % 60);
    }
    format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
}

/// Like kubectl's AGE column: `45s`, `12m`, `3h`, `6d`.
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - since).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A timestamp with how long ago (or how far ahead) it is.
pub fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let stamp = at.format("%Y-%m-%d %H:%M:%SZ");
    if at <= now {
        format!("{stamp} ({} ago)", age(at, now))
    } else {
        format!("{stamp} (in {})", age(now, at))
    }
}

fn tokens(tokens_in: Option<i64>, tokens_out: Option<i64>) -> String {
    match (tokens_in, tokens_out) {
        (None, None) => String::new(),
        (i, o) => format!("{}/{}", i.unwrap_or(0), o.unwrap_or(0)),
    }
}

// ---- runs ----------------------------------------------------------------------------------------

/// One line of `runs`, from a FlowRun or from the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub namespace: String,
    pub name: String,
    pub flow: String,
    pub phase: Option<Phase>,
    /// Executions so far, and how many of them crashed.
    pub execution: Option<i32>,
    pub crashes: Option<i32>,
    pub steps: Option<i64>,
    pub usd: Option<f64>,
    pub waiting: String,
    pub created: Option<DateTime<Utc>>,
    /// The parent run's name (same namespace), for child runs.
    pub parent: Option<String>,
}

impl From<&RunSummary> for RunRow {
    fn from(run: &RunSummary) -> RunRow {
        RunRow {
            namespace: run.namespace.clone(),
            name: run.name.clone(),
            flow: run.flow.clone(),
            phase: Some(run.phase),
            execution: Some(run.attempt),
            crashes: Some(run.crashes),
            steps: Some(run.steps),
            // The tree's cost, as a FlowRun's status shows it.
            usd: Some(run.tree_usd.unwrap_or(run.usd)),
            waiting: run.waiting.clone().unwrap_or_default(),
            created: Some(run.created_at),
            parent: run.parent.clone(),
        }
    }
}

/// Rows in tree order: each run followed by its children (depth-first), oldest first at each
/// level; a child whose parent is not among the rows is shown as a root.
pub fn tree_order(rows: &[RunRow]) -> Vec<(usize, &RunRow)> {
    let key = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
    let present: std::collections::HashSet<(String, String)> =
        rows.iter().map(|r| key(&r.namespace, &r.name)).collect();
    let mut children: BTreeMap<(String, String), Vec<&RunRow>> = BTreeMap::new();
    let mut roots = Vec::new();
    for row in rows {
        match &row.parent {
            Some(parent) if present.contains(&key(&row.namespace, parent)) => children
                .entry(key(&row.namespace, parent))
                .or_default()
                .push(row),
            _ => roots.push(row),
        }
    }
    let by_age = |a: &&RunRow, b: &&RunRow| {
        (&a.namespace, a.created, &a.name).cmp(&(&b.namespace, b.created, &b.name))
    };
    roots.sort_by(by_age);
    for list in children.values_mut() {
        list.sort_by(by_age);
    }
    fn walk<'a>(
        row: &'a RunRow,
        depth: usize,
        children: &BTreeMap<(String, String), Vec<&'a RunRow>>,
        out: &mut Vec<(usize, &'a RunRow)>,
    ) {
        out.push((depth, row));
        // A cycle cannot happen (names are unique and parents older), but stay finite anyway.
        if depth > 32 {
            return;
        }
        if let Some(kids) = children.get(&(row.namespace.clone(), row.name.clone())) {
            for kid in kids {
                walk(kid, depth + 1, children, out);
            }
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for root in roots {
        walk(root, 0, &children, &mut out);
    }
    out
}

/// The `runs` table; child runs are indented under their parent.
pub fn runs_table(rows: &[RunRow], with_namespace: bool, ui: &Ui, now: DateTime<Utc>) -> Table {
    let columns = [
        "NAMESPACE",
        "NAME",
        "FLOW",
        "PHASE",
        "EXECUTION",
        "CRASHES",
        "STEPS",
        "COST",
        "WAITING FOR",
        "AGE",
    ];
    let mut table = ui.table(&columns[usize::from(!with_namespace)..]);
    for (depth, row) in tree_order(rows) {
        let name = if depth == 0 {
            row.name.clone()
        } else {
            format!("{}└ {}", "  ".repeat(depth - 1), row.name)
        };
        let mut cells = Vec::new();
        if with_namespace {
            cells.push(Cell::new(&row.namespace));
        }
        cells.extend([
            Cell::new(name),
            Cell::new(&row.flow),
            ui.phase_cell(row.phase),
            right(row.execution.map(|a| a.to_string()).unwrap_or_default()),
            right(row.crashes.map(|c| c.to_string()).unwrap_or_default()),
            right(row.steps.map(|s| s.to_string()).unwrap_or_default()),
            right(row.usd.map(money).unwrap_or_default()),
            Cell::new(&row.waiting),
            Cell::new(row.created.map(|c| age(c, now)).unwrap_or_default()),
        ]);
        table.add_row(cells);
    }
    table
}

// ---- one run -------------------------------------------------------------------------------

pub fn steps_table(steps: &[Step], ui: &Ui) -> Table {
    let mut table = ui.table(&[
        "STEP",
        "KIND",
        "STATUS",
        "EXECUTION",
        "TRIES",
        "DURATION",
        "TOKENS IN/OUT",
        "COST",
        "MODEL",
        "OUTPUT",
    ]);
    for step in steps {
        let status = Cell::new(&step.status);
        let status = match step.status.as_str() {
            "waiting" if ui.color => status.fg(Color::Yellow),
            "failed" if ui.color => status.fg(Color::Red),
            _ => status,
        };
        table.add_row([
            Cell::new(&step.key),
            Cell::new(&step.kind),
            status,
            // A fork's reused (or set) checkpoint was made by no execution of its own.
            right(match &step.origin {
                Some(origin) => origin.clone(),
                None => step.attempt.map(|a| a.to_string()).unwrap_or_default(),
            }),
            right(step.tries.map(|t| t.to_string()).unwrap_or_default()),
            right(duration(step.duration_ms)),
            right(tokens(step.tokens_in, step.tokens_out)),
            right(step.usd.map(money).unwrap_or_default()),
            Cell::new(step.model.clone().unwrap_or_default()),
            step::output_cell(step, ui),
        ]);
    }
    table
}

/// Attempts with their outcome; `pods` names the pod of each attempt, when known.
pub fn attempts_table(attempts: &[Attempt], pods: &BTreeMap<i32, String>, ui: &Ui) -> Table {
    let mut table = if pods.is_empty() {
        ui.table(&["#", "STARTED", "DURATION", "OUTCOME", "DETAIL"])
    } else {
        ui.table(&["#", "POD", "STARTED", "DURATION", "OUTCOME", "DETAIL"])
    };
    for a in attempts {
        let outcome = a.outcome.clone().unwrap_or_else(|| "running".into());
        let outcome_cell = Cell::new(&outcome);
        let outcome_cell = match outcome.as_str() {
            "crashed" | "failed" if ui.color => outcome_cell.fg(Color::Red),
            "completed" if ui.color => outcome_cell.fg(Color::Green),
            "running" if ui.color => outcome_cell.fg(Color::Cyan),
            _ => outcome_cell,
        };
        let took = a
            .ended_at
            .map(|end| duration((end - a.started_at).num_milliseconds() as f64))
            .unwrap_or_default();
        let mut cells = vec![right(a.attempt.to_string())];
        if !pods.is_empty() {
            cells.push(Cell::new(pods.get(&a.attempt).cloned().unwrap_or_default()));
        }
        cells.extend([
            Cell::new(a.started_at.format("%Y-%m-%d %H:%M:%SZ").to_string()),
            right(took),
            outcome_cell,
            Cell::new(a.detail.clone().unwrap_or_default()),
        ]);
        table.add_row(cells);
    }
    table
}

/// A schema for people: without its `$schema` meta-schema URL (it says nothing about the answer).
pub fn schema_text(schema: &Value) -> String {
    match schema {
        Value::Object(fields) if fields.contains_key("$schema") => {
            let mut fields = fields.clone();
            fields.remove("$schema");
            compact_json(&Value::Object(fields))
        }
        other => compact_json(other),
    }
}

/// JSON on one line when short, pretty (indented under the label) when long.
pub fn compact_json(value: &Value) -> String {
    let one_line = value.to_string();
    if one_line.len() <= 100 {
        return one_line;
    }
    let pretty = serde_json::to_string_pretty(value).unwrap_or(one_line);
    pretty.replace('\n', &format!("\n{}", " ".repeat(11)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn row(name: &str, parent: Option<&str>, created: i64) -> RunRow {
        RunRow {
            namespace: "ns".into(),
            name: name.into(),
            flow: "research".into(),
            phase: Some(Phase::Running),
            execution: Some(1),
            crashes: Some(0),
            steps: Some(2),
            usd: Some(0.0012),
            waiting: String::new(),
            created: Some(t(created)),
            parent: parent.map(str::to_owned),
        }
    }

    #[test]
    fn formats() {
        assert_eq!(money(0.00123), "$0.0012");
        assert_eq!(duration(12.4), "12 ms");
        assert_eq!(duration(1234.0), "1.2 s");
        assert_eq!(duration(245_000.0), "4m 05s");
        assert_eq!(duration(7_380_000.0), "2h 03m");
        assert_eq!(age(t(0), t(59)), "59s");
        assert_eq!(age(t(0), t(600)), "10m");
        assert_eq!(age(t(0), t(3 * 3600)), "3h");
        assert_eq!(age(t(0), t(5 * 86_400)), "5d");
        assert_eq!(age(t(10), t(0)), "0s");
        assert_eq!(when(t(0), t(60)), "2023-11-14 22:13:20Z (60s ago)");
        assert_eq!(when(t(600), t(0)), "2023-11-14 22:23:20Z (in 10m)");
    }

    #[test]
    fn children_are_listed_under_their_parent() {
        let rows = vec![
            row("b", None, 5),
            row("a-child-2", Some("a"), 3),
            row("a", None, 0),
            row("a-child-1", Some("a"), 2),
            row("orphan", Some("gone"), 1),
            row("a-grandchild", Some("a-child-1"), 4),
        ];
        let order: Vec<(usize, &str)> = tree_order(&rows)
            .into_iter()
            .map(|(d, r)| (d, r.name.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, "a"),
                (1, "a-child-1"),
                (2, "a-grandchild"),
                (1, "a-child-2"),
                (0, "orphan"),
                (0, "b"),
            ]
        );
        let text = runs_table(&rows, false, &Ui::plain(), t(120)).to_string();
        assert!(text.contains("└ a-child-1"), "{text}");
        assert!(text.contains("  └ a-grandchild"), "{text}");
        assert!(text.contains("$0.0012"), "{text}");
        assert!(!text.contains('\u{1b}'), "no colours when plain: {text}");
        let header = text.lines().nth(1).unwrap();
        assert!(
            header.contains("NAME") && !header.contains("NAMESPACE"),
            "{header}"
        );
        let all = runs_table(&rows, true, &Ui::plain(), t(120)).to_string();
        assert!(all.lines().nth(1).unwrap().contains("NAMESPACE"), "{all}");
    }

    #[test]
    fn schemas_are_shown_without_their_meta_schema() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "boolean",
            "type": "boolean",
        });
        assert_eq!(
            schema_text(&schema),
            r#"{"title":"boolean","type":"boolean"}"#
        );
        let long =
            json!({ "type": "object", "properties": { "a".repeat(120): { "type": "string" } } });
        assert!(
            schema_text(&long).contains("\n           "),
            "long schemas are indented"
        );
    }

    #[test]
    fn colours_only_when_asked() {
        let rows = vec![row("a", None, 0)];
        let coloured = runs_table(&rows, false, &Ui { color: true }, t(1)).to_string();
        assert!(coloured.contains('\u{1b}'), "{coloured}");
        assert_eq!(Ui::plain().phase(Some(Phase::Failed)), "Failed");
        assert!(
            Ui { color: true }
                .phase(Some(Phase::Failed))
                .contains("Failed\u{1b}")
        );
    }
}
