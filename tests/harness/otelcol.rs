//! A real OTLP receiver for the trace tests: the OpenTelemetry Collector (built with its
//! builder by `tests/install-deps.sh test`), receiving OTLP over HTTP on 127.0.0.1 and writing
//! every span it gets to a file as OTLP JSON, which the test reads back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::servers::{cached_binary, free_port, wait_until_listening};

/// One collector; killed when dropped.
pub struct Collector {
    child: Child,
    port: u16,
    spans: PathBuf,
}

/// One span as received: ids in hex, attributes as plain JSON values.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root.
    pub parent_span_id: String,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, Value>,
    /// `STATUS_CODE_ERROR` and its message, for a failed span.
    pub error: Option<String>,
}

impl Collector {
    /// Starts a collector keeping its config, log and spans under `dir`.
    pub fn start(dir: &Path) -> Collector {
        let binary = cached_binary(
            "CAIRN_OTELCOL",
            "otelcol-0.161.0/otelcol-cairn",
            "the OpenTelemetry Collector",
        );
        std::fs::create_dir_all(dir).expect("the collector's directory");
        let port = free_port();
        let spans = dir.join("spans.jsonl");
        let config = dir.join("otelcol.yaml");
        // Its own telemetry off, so that it binds no port but the receiver's.
        std::fs::write(
            &config,
            format!(
                r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {spans}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#,
                spans = spans.display()
            ),
        )
        .expect("the collector's config");
        let log_path = dir.join("otelcol.log");
        let log = std::fs::File::create(&log_path).expect("the collector's log");
        let mut child = Command::new(&binary)
            .arg(format!("--config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the collector's log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        wait_until_listening(&mut child, port, &log_path, "the OpenTelemetry Collector");
        Collector { child, port, spans }
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` is set to for it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received and written so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        read_spans(&self.spans)
    }
}

/// The spans a collector's file exporter wrote to `path` so far (OTLP JSON, a batch a line).
pub fn read_spans(path: &Path) -> Vec<ReceivedSpan> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut spans = Vec::new();
    // A line being written is incomplete: it is read on the next call.
    for batch in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        for resource in array(&batch["resourceSpans"]) {
            let service = attributes(&resource["resource"]["attributes"])
                .remove("service.name")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            for scope in array(&resource["scopeSpans"]) {
                for span in array(&scope["spans"]) {
                    spans.push(received(&service, span));
                }
            }
        }
    }
    spans
}

/// A trace as an indented tree of spans (name, service, milliseconds from its root's start,
/// what it used or how it ended), for messages and notes.
pub fn render_tree(trace: &[ReceivedSpan]) -> String {
    fn add(out: &mut String, trace: &[ReceivedSpan], span: &ReceivedSpan, t0: u64, depth: usize) {
        let ms = |ns: u64| ns.saturating_sub(t0) / 1_000_000;
        let shown: Vec<String> = [
            "cairn.attempt.outcome",
            "cairn.run.phase",
            "gen_ai.request.model",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "cairn.cost_usd",
        ]
        .iter()
        .filter_map(|k| span.attributes.get(*k).map(|v| format!("{k}={v}")))
        .collect();
        let error = span
            .error
            .as_ref()
            .map(|e| format!(" ERROR {e:?}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:indent$}{} [{}] {}..{} ms {}{error}\n",
            "",
            span.name,
            span.service,
            ms(span.start_ns),
            ms(span.end_ns),
            shown.join(" "),
            indent = depth * 2
        ));
        let mut children: Vec<&ReceivedSpan> = trace
            .iter()
            .filter(|s| s.parent_span_id == span.span_id)
            .collect();
        children.sort_by_key(|s| s.start_ns);
        for child in children {
            add(out, trace, child, t0, depth + 1);
        }
    }
    let mut out = String::new();
    for root in trace.iter().filter(|s| s.parent_span_id.is_empty()) {
        add(&mut out, trace, root, root.start_ns, 0);
    }
    out
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn received(service: &str, span: &Value) -> ReceivedSpan {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let nanos = |v: &Value| text(v).parse().unwrap_or_default();
    let status = &span["status"];
    ReceivedSpan {
        service: service.to_owned(),
        trace_id: text(&span["traceId"]),
        span_id: text(&span["spanId"]),
        parent_span_id: text(&span["parentSpanId"]),
        name: text(&span["name"]),
        start_ns: nanos(&span["startTimeUnixNano"]),
        end_ns: nanos(&span["endTimeUnixNano"]),
        attributes: attributes(&span["attributes"]),
        error: (status["code"] == 2 || status["code"] == "STATUS_CODE_ERROR")
            .then(|| text(&status["message"])),
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// OTLP's `[{key, value: {stringValue | intValue | doubleValue | boolValue}}]` as a map.
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    array(list)
        .iter()
        .filter_map(|kv| {
            let value = kv["value"].as_object()?.values().next()?.clone();
            // OTLP JSON writes 64-bit integers as strings.
            let value = match (kv["value"].get("intValue"), &value) {
                (Some(_), Value::String(s)) => s.parse::<i64>().map(Value::from).unwrap_or(value),
                _ => value,
            };
            Some((kv["key"].as_str()?.to_owned(), value))
        })
        .collect()
}
