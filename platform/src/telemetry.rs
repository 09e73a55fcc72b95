//! Structured logs and optional OpenTelemetry export.
//!
//! `LOG_FORMAT=pretty|json` picks the format (JSON for production), `RUST_LOG` the filter, and
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, when set, exports spans over OTLP/gRPC. W3C trace context is the
//! process-wide propagator either way, so trace ids cross HTTP, gRPC and AMQP hops.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub format: LogFormat,
    /// `RUST_LOG`-style directives.
    pub filter: String,
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    pub fn from_env(env: &Env<'_>, service_name: &str) -> Result<Self, ConfigError> {
        let format = match env.string("LOG_FORMAT", "pretty").to_ascii_lowercase().as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::new("LOG_FORMAT", "pretty or json", other)),
        };
        let filter = env.string("RUST_LOG", "info,sqlx=warn,lapin=warn,tower_http=info");
        if EnvFilter::try_new(&filter).is_err() {
            return Err(ConfigError::new("RUST_LOG", "valid tracing filter directives", filter));
        }
        let otlp_endpoint = env.optional("OTEL_EXPORTER_OTLP_ENDPOINT");
        Ok(Self { service_name: service_name.to_owned(), format, filter, otlp_endpoint })
    }
}

/// Flushes exported spans when dropped; keep it alive for the life of `main`.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {error}");
        }
    }
}

/// Span ids for every span; exported over OTLP only when an endpoint is configured.
fn tracer_provider(config: &TelemetryConfig) -> anyhow::Result<SdkTracerProvider> {
    let resource =
        opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter =
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(&config.filter)?;
    let fmt_layer = match config.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };

    // The OpenTelemetry layer runs even without an exporter: it is what gives spans W3C trace and span
    // ids, so `traceparent` is propagated across HTTP, gRPC and AMQP whether or not spans are exported.
    let provider = tracer_provider(config)?;
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(config.service_name.clone()));

    tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer).try_init()?;
    Ok(TelemetryGuard { provider: Some(provider) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_carry_a_w3c_trace_context_without_an_exporter() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let config = TelemetryConfig {
            service_name: "test".into(),
            format: LogFormat::Json,
            filter: "info".into(),
            otlp_endpoint: None,
        };
        let provider = tracer_provider(&config).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            let _entered = span.enter();
            let headers = crate::trace_context::current_headers();
            let traceparent = headers.get("traceparent").cloned().unwrap_or_default();
            assert!(
                traceparent.starts_with("00-") && !traceparent.contains("00000000000000000000000000000000"),
                "{traceparent:?}"
            );

            let incoming: std::collections::HashMap<String, String> = [(
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            )]
            .into();
            let child = tracing::info_span!("child", trace.id = tracing::field::Empty);
            let recorded = crate::trace_context::set_parent(&child, &incoming);
            assert_eq!(
                recorded.as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "the caller's trace continues"
            );
        });
    }
}
