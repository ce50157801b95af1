//! What a step returned, for people: a short preview in the steps table, and the whole value
//! of one step (`inspect RUN --step KEY`). A sensitive step's value is never shown: the engine
//! holds it sealed, and says only that it is sensitive.

use comfy_table::{Cell, Color};

use super::Ui;
use cairn_engine::read_api::{Step, StepOutput};

/// The longest preview a table cell shows.
const CELL_CHARS: usize = 40;

/// The steps table's OUTPUT cell: the start of the value, `(sensitive)`, or a failed step's
/// error.
pub fn output_cell(step: &Step, ui: &Ui) -> Cell {
    if step.sensitive {
        return Cell::new(ui.dim("(sensitive)"));
    }
    if let Some(error) = &step.error {
        let cell = Cell::new(cut(error, CELL_CHARS));
        return if ui.color { cell.fg(Color::Red) } else { cell };
    }
    Cell::new(
        step.preview
            .as_deref()
            .map(|p| cut(p, CELL_CHARS))
            .unwrap_or_default(),
    )
}

/// `text` on one line, cut to `max` characters with `…`.
fn cut(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// One step's whole value, pretty-printed, or why it is not shown.
pub fn step_text(step: &StepOutput, ui: &Ui) -> String {
    let mut out = format!(
        "{} {}  ({} {}, run {})\n",
        ui.bold("Step:"),
        step.key,
        step.kind,
        step.status,
        step.run
    );
    if let Some(error) = &step.error {
        out.push_str(&format!("{} {error}\n", ui.bold("Error:")));
    }
    match (&step.output, step.sensitive) {
        (_, true) => out.push_str(&ui.dim(
            "(sensitive: its value is stored sealed with the namespace's step key and is never shown)\n",
        )),
        (None, false) if step.artifact.is_some() => {
            let artifact = step.artifact.as_ref().expect("checked");
            out.push_str(&format!(
                "{} {} bytes, {} ({}); download it with `artifacts {} get {}`\n",
                ui.bold("In the artifact store:"),
                artifact.size,
                artifact.content_type,
                artifact.digest,
                step.run,
                artifact.name
            ));
        }
        (Some(value), false) => {
            let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
            out.push_str(&pretty);
            out.push('\n');
        }
        (None, false) => out.push_str(&ui.dim("(no value yet)\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(sensitive: bool, value: Option<serde_json::Value>) -> StepOutput {
        StepOutput {
            run: "r".into(),
            key: "plan#2".into(),
            kind: "step".into(),
            status: "completed".into(),
            sensitive,
            output: value,
            artifact: None,
            error: None,
        }
    }

    #[test]
    fn a_value_is_shown_whole_and_a_sensitive_one_never() {
        let shown = step_text(
            &output(false, Some(json!({"plan": ["a", "b"]}))),
            &Ui::plain(),
        );
        assert!(
            shown.contains("Step: plan#2  (step completed, run r)"),
            "{shown}"
        );
        assert!(shown.contains("\"plan\": [\n"), "{shown}");
        let hidden = step_text(&output(true, None), &Ui::plain());
        assert!(
            hidden.contains("sensitive") && !hidden.contains("null"),
            "{hidden}"
        );
    }

    #[test]
    fn previews_are_cut_to_one_short_line() {
        assert_eq!(cut("\"line one\nline two\"", 40), "\"line one line two\"");
        let long = "x".repeat(100);
        assert_eq!(cut(&long, 40).chars().count(), 41);
    }
}
