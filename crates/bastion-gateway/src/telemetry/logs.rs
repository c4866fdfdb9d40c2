//! The log and the traces together: the global subscriber when tracing is
//! on. Two layers share it, each with its own filter:
//!
//! - the log (text or JSON lines on stderr), filtered as always
//!   (`BASTION_LOG`, `log.level`), which never shows the gateway's spans
//!   themselves but puts `trace_id` and `span_id` on every line written
//!   within one (`trace_id=…` at the end of a text line, top-level fields
//!   of a JSON line);
//! - OpenTelemetry, which takes the gateway's spans (target
//!   [`super::TARGET`]) and, as span events, the gateway's own log lines
//!   at `info` and above written within them — never another crate's.

use std::fmt::Write as _;

use bastion_core::config::TracingConfig;
use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::{Pipeline, TARGET};

/// Installs the global subscriber with tracing on: the log as `filter` and
/// `json` say, and the OpenTelemetry layer over `config`'s pipeline. Must
/// run on the Tokio runtime (the export task starts on it).
pub fn install(config: &TracingConfig, filter: EnvFilter, json: bool, ansi: bool) -> Result<Pipeline, String> {
    let pipeline = Pipeline::start(config)?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(pipeline.tracer())
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(for_traces));
    let log_filter = filter.and(filter_fn(|m: &Metadata<'_>| !is_own_span(m)));
    let base = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(otel);
    let installed = if json {
        let log = base
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .map_event_format(|f| WithTraceIds { inner: f, json: true });
        registry.with(log.with_filter(log_filter)).try_init()
    } else {
        let log = base.with_ansi(ansi).map_event_format(|f| WithTraceIds { inner: f, json: false });
        registry.with(log.with_filter(log_filter)).try_init()
    };
    installed.map_err(|e| format!("cannot install the log: {e}"))?;
    super::set_enabled();
    Ok(pipeline)
}

fn is_own_span(m: &Metadata<'_>) -> bool {
    m.is_span() && m.target() == TARGET
}

/// What the OpenTelemetry layer takes: the gateway's spans, and the
/// gateway's own events at `info` and above (as events of those spans).
fn for_traces(m: &Metadata<'_>) -> bool {
    if m.is_span() {
        return m.target() == TARGET;
    }
    *m.level() <= Level::INFO && m.target().starts_with("bastion")
}

/// The ids of the span being run: the OpenTelemetry context entered with
/// it (`None` outside the gateway's spans).
pub fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// A log line's format with the trace and span ids added.
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(&line, &trace_id, &span_id, self.json))
    }
}

/// A formatted line with the ids added: first fields of a JSON object,
/// last fields of a text line.
fn with_ids(line: &str, trace_id: &str, span_id: &str, json: bool) -> String {
    let mut out = String::with_capacity(line.len() + 80);
    if json && let Some(rest) = line.strip_prefix('{') {
        let _ = write!(out, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"");
        if !rest.trim_start().starts_with('}') {
            out.push(',');
        }
        out.push_str(rest);
        return out;
    }
    let (body, end) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let _ = write!(out, "{body} trace_id={trace_id} span_id={span_id}{end}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_first_in_json_and_last_in_text() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let s = "00f067aa0ba902b7";
        let json = with_ids("{\"level\":\"INFO\",\"message\":\"hi\"}\n", t, s, true);
        assert_eq!(
            json,
            format!("{{\"trace_id\":\"{t}\",\"span_id\":\"{s}\",\"level\":\"INFO\",\"message\":\"hi\"}}\n")
        );
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["trace_id"], t);
        assert_eq!(v["message"], "hi");
        assert_eq!(with_ids("{}\n", t, s, true), format!("{{\"trace_id\":\"{t}\",\"span_id\":\"{s}\"}}\n"));
        let text = with_ids("2026-01-01T00:00:00Z  INFO bastion: hi user=a\n", t, s, false);
        assert_eq!(text, format!("2026-01-01T00:00:00Z  INFO bastion: hi user=a trace_id={t} span_id={s}\n"));
    }

    #[test]
    fn the_layers_take_what_is_theirs() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level: Level, kind: Kind| {
            Metadata::new("x", target, level, None, None, None, FieldSet::new(&[], Identifier(&SITE)), kind)
        };
        assert!(for_traces(&meta(TARGET, Level::INFO, Kind::SPAN)));
        assert!(!for_traces(&meta("hyper::proto", Level::INFO, Kind::SPAN)));
        assert!(for_traces(&meta("bastion_gateway::proxy", Level::WARN, Kind::EVENT)));
        assert!(!for_traces(&meta("bastion_gateway::proxy", Level::DEBUG, Kind::EVENT)));
        assert!(!for_traces(&meta("reqwest::connect", Level::INFO, Kind::EVENT)));
        assert!(is_own_span(&meta(TARGET, Level::INFO, Kind::SPAN)));
        assert!(!is_own_span(&meta(TARGET, Level::INFO, Kind::EVENT)));
    }
}
