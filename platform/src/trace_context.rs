//! W3C trace context (`traceparent`) across process hops.
//!
//! Outgoing calls copy the current span's context into headers ([`current_headers`]); incoming
//! requests and messages make their span a child of the caller's ([`set_parent`]). Spans get ids
//! whether or not they are exported (see `telemetry`), so one journey keeps one trace id across hops;
//! exported spans, the gateway's error `traceId`, event headers and the `trace.id` field of log lines
//! inside request spans carry it.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as `traceparent`/`tracestate` pairs.
pub fn current_headers() -> HashMap<String, String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier
}

/// Makes `span` a child of the context found in `carrier`, if any, and records the resulting trace id
/// in the span's `trace.id` field when it declares one, so JSON log lines inside it carry the id.
pub fn set_parent(span: &tracing::Span, carrier: &dyn Extractor) -> Option<String> {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id == opentelemetry::trace::TraceId::INVALID {
        return None;
    }
    let trace_id = trace_id.to_string();
    span.record("trace.id", trace_id.as_str());
    Some(trace_id)
}

/// Adapts an HTTP header map for extraction and injection.
pub struct HeaderCarrier<'a>(pub &'a mut axum::http::HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (axum::http::HeaderName::from_bytes(key.as_bytes()), axum::http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// Read-only view of an HTTP header map.
pub struct HeaderExtractor<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Copies the current trace context into an outgoing HTTP header map.
pub fn inject_into(headers: &mut axum::http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderCarrier(headers));
    });
}
