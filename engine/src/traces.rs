//! OpenTelemetry traces of runs. Each run is one trace, whatever number of processes it takes:
//!
//! - the run's span context is made once, at its first launch with tracing on, and kept in the
//!   engine (`runs.traceparent`); a child run's trace is its parent's, its span a child of the
//!   parent run's;
//! - every attempt's process is given `TRACEPARENT` naming its attempt's span, whose id is
//!   derived from the run's span and the attempt number ([`RunTrace::attempt`]): the launcher
//!   that launches it and the one that exports it later agree without storing it;
//! - the flow process exports a span for each step it executes (steps answered from checkpoints
//!   were paid for by an earlier attempt and have their span there), as it completes;
//! - once the run finished, a launcher exports the spans only the engine saw whole: the run's,
//!   its attempts' (a crashed process never ended its own) and its waits'.
//!
//! Spans go out over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set;
//! otherwise none of this costs anything.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::InstrumentationScope;
pub use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use sha2::Digest;

/// A span's place in a trace, as W3C Trace Context writes it (`00-<trace>-<span>-01`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl TraceParent {
    /// A new trace, with a new span at its root.
    pub fn random() -> TraceParent {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).expect("the system's random source");
        TraceParent {
            trace_id: TraceId::from_bytes(bytes[..16].try_into().expect("16 bytes")),
            span_id: SpanId::from_bytes(bytes[16..].try_into().expect("8 bytes")),
        }
    }

    /// A traceparent of version 00 with ids that are not all zeros; anything else is `None`.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || version != "00" || !hex(trace, 32) || !hex(span, 16) {
            return None;
        }
        if !hex(flags, 2) {
            return None;
        }
        let parsed = TraceParent {
            trace_id: TraceId::from_hex(trace).ok()?,
            span_id: SpanId::from_hex(span).ok()?,
        };
        (parsed.trace_id != TraceId::INVALID && parsed.span_id != SpanId::INVALID).then_some(parsed)
    }

    /// The header's text, sampled (Cairn records every run).
    pub fn encode(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// A span of the same trace, here the span of a run's attempt `number`, derived from the
    /// run's span so that every launcher makes the same one.
    pub fn attempt(&self, number: i32) -> TraceParent {
        self.derived(&number.to_be_bytes())
    }

    /// The span of the run's step `key` that only the engine saw whole (a wait), derived so
    /// that exporting it again gives the same span.
    pub fn step(&self, key: &str) -> TraceParent {
        self.derived(format!("step:{key}").as_bytes())
    }

    fn derived(&self, what: &[u8]) -> TraceParent {
        let digest = sha2::Sha256::new()
            .chain_update(self.span_id.to_bytes())
            .chain_update(what)
            .finalize();
        let mut id: [u8; 8] = digest[..8].try_into().expect("8 bytes");
        if id == [0; 8] {
            id[7] = 1;
        }
        TraceParent {
            trace_id: self.trace_id,
            span_id: SpanId::from_bytes(id),
        }
    }

    /// A new span of the same trace.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            ..TraceParent::random()
        }
    }
}

/// What a flow process needs to send its steps' spans: its attempt's span (the parent of
/// theirs) and where spans go.
#[derive(Debug, Clone)]
pub struct AttemptTracing {
    pub attempt: TraceParent,
    pub exporter: std::sync::Arc<Exporter>,
}

impl AttemptTracing {
    /// From `TRACEPARENT` and the `OTEL_*` variables, spans being of service `flow` (unless
    /// `OTEL_SERVICE_NAME`); `None` without both. A setting that cannot work is an error
    /// saying so; the process then sends no spans.
    pub fn from_env(flow: &str) -> Result<Option<AttemptTracing>, String> {
        let name = crate::protocol::env::TRACEPARENT;
        let Ok(given) = std::env::var(name) else {
            return Ok(None);
        };
        let attempt = TraceParent::parse(&given).ok_or_else(|| {
            format!("{name}={given:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
        })?;
        Ok(Exporter::from_env(flow)?.map(|exporter| AttemptTracing {
            attempt,
            exporter: std::sync::Arc::new(exporter),
        }))
    }
}

/// One finished span, as Cairn describes it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub context: TraceParent,
    pub parent: Option<SpanId>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The span failed, saying why.
    pub error: Option<String>,
}

/// The attributes of what a step or run used: the GenAI semantic conventions' model and token
/// counts, and its cost in US dollars (`cairn.cost_usd`). Absent values are left out.
pub fn usage_attributes(
    model: Option<&str>,
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
    usd: Option<f64>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::new();
    if let Some(model) = model {
        attributes.push(KeyValue::new("gen_ai.request.model", model.to_owned()));
    }
    if let Some(tokens) = tokens_in {
        attributes.push(KeyValue::new("gen_ai.usage.input_tokens", tokens));
    }
    if let Some(tokens) = tokens_out {
        attributes.push(KeyValue::new("gen_ai.usage.output_tokens", tokens));
    }
    if let Some(usd) = usd {
        attributes.push(KeyValue::new("cairn.cost_usd", usd));
    }
    attributes
}

/// Where spans go: OTLP over HTTP, configured by the standard `OTEL_*` variables.
pub struct Exporter {
    otlp: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// Whether the environment asks for traces: an OTLP endpoint is set, and traces are not
/// turned off (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`).
pub fn enabled_by_env() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// A file holding the exporter's headers, as `OTEL_EXPORTER_OTLP_HEADERS` writes them
/// (`key=value,key=value`, values percent-encoded): a backend's credentials stay out of the
/// environment, which leaks more easily (crash reports, /proc/<pid>/environ, child processes).
pub const HEADERS_FILE_ENV: &str = "CAIRN_OTLP_HEADERS_FILE";

/// The headers of [`HEADERS_FILE_ENV`]'s format; a pair without `=` is an error naming it.
fn parse_headers(text: &str) -> Result<std::collections::HashMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                let key = pair.chars().take(20).collect::<String>();
                format!("{key:?}... is not a key=value pair")
            })?;
            let key = key.trim();
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|e| format!("the value of {key:?} is not UTF-8: {e}"))?;
            // The exporter drops what HTTP cannot carry without a word: refuse it here.
            reqwest::header::HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("{key:?} is not an HTTP header name"))?;
            reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of {key:?} is not an HTTP header value"))?;
            Ok((key.to_owned(), value.into_owned()))
        })
        .collect()
}

/// How long one export may take: a collector that is down costs a step this much, once (the
/// process then stops tracing).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

impl Exporter {
    /// The exporter the environment configures, `None` when it asks for no traces. Spans are
    /// of service `OTEL_SERVICE_NAME`, else `service`. A setting that cannot work (a gRPC
    /// protocol: this build speaks OTLP over HTTP) is an error saying so.
    pub fn from_env(service: &str) -> Result<Option<Exporter>, String> {
        if !enabled_by_env() {
            return Ok(None);
        }
        Self::build(service, None).map(Some)
    }

    /// An exporter to the OTLP/HTTP traces URL `traces_url` (`http://host:4318/v1/traces`),
    /// with the rest of its settings from the environment.
    pub fn to_url(traces_url: &str, service: &str) -> Result<Exporter, String> {
        Self::build(service, Some(traces_url))
    }

    fn build(service: &str, traces_url: Option<&str>) -> Result<Exporter, String> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let protocol = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().map(|value| (name, value)));
        if let Some((name, value)) = protocol.filter(|(_, v)| v.trim() != "http/protobuf") {
            return Err(format!(
                "{name}={value:?} cannot be used: Cairn exports OTLP over HTTP (usually port \
                 4318), so OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or unset"
            ));
        }
        // reqwest is built without a TLS provider of its own: ring, the build's only one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = crate::artifacts::trusted_roots()
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok());
        let client = reqwest::Client::builder()
            .tls_certs_only(roots)
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make the OTLP client: {e}"))?;
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(url) = traces_url {
            builder = builder.with_endpoint(url);
        }
        if let Some(path) = std::env::var_os(HEADERS_FILE_ENV) {
            let bad = |why: String| format!("{HEADERS_FILE_ENV}={}: {why}", path.display());
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            builder = builder.with_headers(parse_headers(&text).map_err(bad)?);
        }
        let mut otlp = builder
            .build()
            .map_err(|e| format!("the OTEL_EXPORTER_OTLP_* settings cannot be used: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service.to_owned());
        }
        otlp.set_resource(&resource.build());
        Ok(Exporter {
            otlp,
            scope: InstrumentationScope::builder("cairn")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Sends spans, within a bound; the error says why they were not taken.
    pub async fn export(&self, spans: Vec<Span>) -> Result<(), String> {
        if spans.is_empty() {
            return Ok(());
        }
        let batch = spans.into_iter().map(|s| self.span_data(s)).collect();
        match tokio::time::timeout(EXPORT_TIMEOUT, self.otlp.export(batch)).await {
            Ok(result) => result.map_err(|e| format!("the OTLP endpoint refused spans: {e}")),
            Err(_) => Err(format!(
                "the OTLP endpoint did not answer within {EXPORT_TIMEOUT:?}"
            )),
        }
    }

    fn span_data(&self, span: Span) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                span.context.trace_id,
                span.context.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: span.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(span.name),
            start_time: span.start,
            end_time: span.end.max(span.start),
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match span.error {
                Some(message) => Status::error(message),
                None => Status::Ok,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

#[cfg(feature = "launcher")]
mod finished;
#[cfg(feature = "launcher")]
pub use finished::{export_finished, run_trace};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_refused() {
        let made = TraceParent::random();
        assert_eq!(TraceParent::parse(&made.encode()), Some(made));
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(good).unwrap().encode(), good);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn attempt_spans_are_derived_the_same_way_every_time_and_differ_per_attempt() {
        let run = TraceParent::random();
        assert_eq!(run.step("event:ok"), run.step("event:ok"));
        assert_ne!(run.step("event:ok").span_id, run.step("sleep:x").span_id);
        assert_eq!(run.attempt(1), run.attempt(1));
        assert_ne!(run.attempt(1).span_id, run.attempt(2).span_id);
        assert_ne!(run.attempt(1).span_id, run.span_id);
        assert_eq!(run.attempt(3).trace_id, run.trace_id);
    }

    #[test]
    fn headers_are_read_as_the_otlp_variable_writes_them_and_bad_ones_named_without_values() {
        let headers = parse_headers("api-key = s%20cret, x-team=a=b ,\n").unwrap();
        assert_eq!(headers["api-key"], "s cret");
        assert_eq!(headers["x-team"], "a=b");
        let newline = parse_headers("api-key=a%0Ab").unwrap_err();
        assert!(newline.contains("not an HTTP header value"), "{newline}");
        assert!(!newline.contains("a\nb"), "{newline}");
        let bad = parse_headers("authorization Bearer-secret-token").unwrap_err();
        assert!(bad.contains("is not a key=value pair"), "{bad}");
        assert!(!bad.contains("token"), "no secret in the message: {bad}");
    }

    #[test]
    fn usage_attributes_follow_the_genai_conventions_and_leave_out_what_is_absent() {
        let all = usage_attributes(Some("gpt-x"), Some(10), Some(20), Some(0.5));
        let keys: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "gen_ai.request.model",
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.output_tokens",
                "cairn.cost_usd"
            ]
        );
        assert!(usage_attributes(None, None, None, None).is_empty());
    }
}
