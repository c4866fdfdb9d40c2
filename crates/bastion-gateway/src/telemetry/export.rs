//! Getting finished spans to the collector without ever holding a request
//! up: a span that ends goes into a bounded queue without waiting (a full
//! queue drops it and counts it), and one task takes them out in batches
//! and posts them over OTLP/HTTP (protobuf). A slow or absent collector
//! costs spans, never time on the request path; what was lost is logged at
//! most once a minute. At shutdown, what is queued is sent within a grace
//! period.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bastion_core::config::TracingConfig;
use bastion_core::template::{Source, Template};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

/// Spans sent in one export, at most.
const BATCH: usize = 512;
/// How often what is queued is sent, however little.
const INTERVAL: Duration = Duration::from_secs(1);
/// Losses (dropped spans, failed exports) are logged at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The tracer behind the spans, and the way out to the collector.
pub struct Pipeline {
    provider: SdkTracerProvider,
    queue: Option<QueueHandle>,
}

impl Pipeline {
    /// Builds the tracer for `config`; with `otlp`, starts the export
    /// task (on the current Tokio runtime). Errors name the key at fault
    /// and never quote a header's value.
    pub fn start(config: &TracingConfig) -> Result<Pipeline, String> {
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let mut builder = SdkTracerProvider::builder().with_sampler(sampler).with_resource(resource.clone());
        let mut queue = None;
        if let Some(endpoint) = config.traces_endpoint() {
            let headers = collector_headers(&config.headers)?;
            let client = reqwest::Client::builder()
                .connect_timeout(config.timeout.min(Duration::from_secs(5)))
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("tracing: cannot build the HTTP client: {e}"))?;
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(config.timeout)
                .with_headers(headers)
                .build()
                .map_err(|e| format!("tracing.otlp: {}", shown_error(&e.to_string(), &endpoint)))?;
            exporter.set_resource(&resource);
            let (processor, handle) = start_queue(exporter, config.queue, config.timeout, endpoint);
            builder = builder.with_span_processor(processor);
            queue = Some(handle);
        }
        Ok(Pipeline { provider: builder.build(), queue })
    }

    /// The tracer for the OpenTelemetry layer.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("bastion")
    }

    /// Sends what is queued, waiting at most `within`; then ends the tracer.
    pub async fn shutdown(self, within: Duration) {
        if let Some(queue) = &self.queue
            && !queue.flush(within).await
        {
            tracing::warn!(
                waiting = queue.depth(),
                "spans still waiting for the collector at exit; they were not sent"
            );
        }
        let provider = self.provider;
        // Ending the provider does not wait on the collector (the queue
        // is already flushed), but it is a blocking call: off the runtime.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// The collector's headers with their `${env.NAME}` references filled in.
fn collector_headers(headers: &std::collections::BTreeMap<String, String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (name, value) in headers {
        let key = format!("tracing.headers.{name}");
        let template = Template::parse(value).map_err(|e| format!("{key}: {e}"))?;
        let rendered = template.render(|r| match r.source {
            Source::Env => std::env::var(&r.name)
                .map(zeroize::Zeroizing::new)
                .map_err(|_| format!("{key}: {r} is not set in the gateway's environment")),
            _ => Err(format!("{key}: only `${{env.NAME}}` may be used here")),
        })?;
        if http::HeaderValue::from_str(&rendered).is_err() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{key}: not a valid HTTP header once filled in"));
        }
        out.insert(name.clone(), rendered.to_string());
    }
    Ok(out)
}

/// An export error with the collector's URL shown without what may be a
/// credential in it.
fn shown_error(message: &str, endpoint: &str) -> String {
    message.replace(endpoint, &bastion_core::redact::url(endpoint))
}

/// What happened to the spans, counted.
#[derive(Debug, Default)]
struct Counts {
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    queued: AtomicU64,
}

/// The span processor: hands each sampled span to the queue, never waiting.
#[derive(Debug)]
struct Enqueue {
    tx: mpsc::Sender<SpanData>,
    counts: Arc<Counts>,
    /// Wakes the task when a whole batch is waiting.
    wake: Arc<tokio::sync::Notify>,
}

impl SpanProcessor for Enqueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(span) {
            Ok(()) => {
                self.counts.queued.fetch_add(1, Ordering::Relaxed);
                if self.tx.max_capacity() - self.tx.capacity() >= BATCH {
                    self.wake.notify_one();
                }
            }
            Err(_) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Flushing waits on the network: [`Pipeline::shutdown`] does it, on the
    /// runtime, within a deadline.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The pipeline's side of the export task.
struct QueueHandle {
    flush: mpsc::Sender<oneshot::Sender<()>>,
    counts: Arc<Counts>,
}

impl QueueHandle {
    /// Asks the task to send everything queued; whether it did within `within`.
    async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.flush.send(tx).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
    }

    /// Spans queued and not yet sent or given up.
    fn depth(&self) -> u64 {
        let c = &self.counts;
        c.queued
            .load(Ordering::Relaxed)
            .saturating_sub(c.exported.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed))
    }
}

fn start_queue<E: SpanExporter + 'static>(
    exporter: E,
    capacity: usize,
    timeout: Duration,
    endpoint: String,
) -> (Enqueue, QueueHandle) {
    let (tx, rx) = mpsc::channel(capacity);
    let (flush_tx, flush_rx) = mpsc::channel(4);
    let counts = Arc::new(Counts::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    let task = ExportTask {
        exporter,
        spans: rx,
        flushes: flush_rx,
        wake: wake.clone(),
        counts: counts.clone(),
        timeout,
        endpoint,
        reports: Reports::default(),
    };
    tokio::spawn(task.run());
    (Enqueue { tx, counts: counts.clone(), wake }, QueueHandle { flush: flush_tx, counts })
}

struct ExportTask<E> {
    exporter: E,
    spans: mpsc::Receiver<SpanData>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    wake: Arc<tokio::sync::Notify>,
    counts: Arc<Counts>,
    timeout: Duration,
    endpoint: String,
    reports: Reports,
}

impl<E: SpanExporter> ExportTask<E> {
    /// Spans stay in the bounded queue until they are sent: taken out a
    /// batch at a time every [`INTERVAL`], as soon as a whole batch waits,
    /// and on a flush.
    async fn run(mut self) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.wake.clone();
        loop {
            tokio::select! {
                biased;
                flush = self.flushes.recv() => {
                    self.send_waiting(usize::MAX).await;
                    match flush {
                        Some(done) => { let _ = done.send(()); }
                        None => return,
                    }
                }
                () = wake.notified() => self.send_waiting(1).await,
                _ = tick.tick() => {
                    // What waits now, not what keeps coming in meanwhile.
                    let batches = self.spans.len().div_ceil(BATCH);
                    self.send_waiting(batches).await;
                    self.report_drops();
                    if self.spans.is_closed() && self.spans.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends up to `batches` batches of what is queued.
    async fn send_waiting(&mut self, batches: usize) {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..batches {
            while batch.len() < BATCH {
                match self.spans.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            self.export(&mut batch).await;
        }
    }

    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(BATCH));
        // The exporter has its own deadline; this one holds whatever it does.
        let outcome = tokio::time::timeout(self.timeout + Duration::from_secs(1), self.exporter.export(spans)).await;
        match outcome {
            Ok(Ok(())) => {
                self.counts.exported.fetch_add(n, Ordering::Relaxed);
                if let Some(lost) = self.reports.recovered() {
                    tracing::info!(lost_spans = lost, "traces reach the collector again");
                }
            }
            Ok(Err(e)) => {
                self.counts.failed.fetch_add(n, Ordering::Relaxed);
                self.failed(n, &e.to_string());
            }
            Err(_) => {
                self.counts.failed.fetch_add(n, Ordering::Relaxed);
                self.failed(n, "timed out");
            }
        }
    }

    fn failed(&mut self, n: u64, reason: &str) {
        if let Some(lost) = self.reports.failure(n, Instant::now()) {
            tracing::warn!(
                collector = %bastion_core::redact::url(&self.endpoint),
                lost_spans = lost,
                error = %shown_error(reason, &self.endpoint),
                "traces could not be sent to the collector; requests are not affected"
            );
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.counts.dropped.load(Ordering::Relaxed);
        if let Some(new) = self.reports.drops(dropped, Instant::now()) {
            tracing::warn!(
                dropped_spans = new,
                total_dropped = dropped,
                "spans dropped: the export queue was full (raise tracing.queue, or check the collector)"
            );
        }
    }
}

/// When losses were last logged, and what was lost since.
#[derive(Debug, Default)]
struct Reports {
    /// Spans in failed exports since the last report of failures.
    failed_since: u64,
    /// Whether the last export failed.
    failing: bool,
    /// Spans lost in the current run of failures.
    lost_in_outage: u64,
    last_failure_report: Option<Instant>,
    dropped_reported: u64,
    last_drop_report: Option<Instant>,
}

impl Reports {
    /// A failed export of `n` spans: the spans lost since the last report,
    /// when it is time to log again.
    fn failure(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.failing = true;
        self.failed_since += n;
        self.lost_in_outage += n;
        let due = self.last_failure_report.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if !due {
            return None;
        }
        self.last_failure_report = Some(now);
        Some(std::mem::take(&mut self.failed_since))
    }

    /// A successful export: after failures, the spans they lost (once).
    fn recovered(&mut self) -> Option<u64> {
        if !self.failing {
            return None;
        }
        self.failing = false;
        self.failed_since = 0;
        self.last_failure_report = None;
        Some(std::mem::take(&mut self.lost_in_outage))
    }

    /// The drop counter now: the spans dropped since the last report, when
    /// there are any and it is time to log again.
    fn drops(&mut self, total: u64, now: Instant) -> Option<u64> {
        if total <= self.dropped_reported {
            return None;
        }
        if self.last_drop_report.is_some_and(|at| now.duration_since(at) < REPORT_EVERY) {
            return None;
        }
        self.last_drop_report = Some(now);
        let new = total - self.dropped_reported;
        self.dropped_reported = total;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _};
    use opentelemetry_sdk::error::OTelSdkError;
    use std::sync::Mutex;

    /// An exporter that keeps what it gets, fails, or never answers.
    #[derive(Debug, Clone, Default)]
    struct Fake {
        got: Arc<Mutex<Vec<String>>>,
        fail: bool,
        hang: bool,
    }

    impl SpanExporter for Fake {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if self.fail {
                return Err(OTelSdkError::InternalFailure("connection refused".into()));
            }
            self.got.lock().unwrap().extend(batch.into_iter().map(|s| s.name.into_owned()));
            Ok(())
        }
    }

    fn provider(processor: Enqueue, ratio: f64) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_sampler(Sampler::TraceIdRatioBased(ratio))
            .with_span_processor(processor)
            .build()
    }

    fn spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("test");
        for i in 0..n {
            tracer.start(format!("span-{i}")).end();
        }
    }

    #[tokio::test]
    async fn finished_spans_reach_the_exporter_on_flush() {
        let fake = Fake::default();
        let (processor, handle) = start_queue(fake.clone(), 100, Duration::from_secs(5), "http://c".into());
        let provider = provider(processor, 1.0);
        spans(&provider, 3);
        assert!(handle.flush(Duration::from_secs(30)).await);
        assert_eq!(*fake.got.lock().unwrap(), ["span-0", "span-1", "span-2"]);
        assert_eq!(handle.depth(), 0);
    }

    #[tokio::test]
    async fn unsampled_spans_are_not_queued() {
        let fake = Fake::default();
        let (processor, handle) = start_queue(fake.clone(), 100, Duration::from_secs(5), "http://c".into());
        let provider = provider(processor, 0.0);
        spans(&provider, 5);
        assert!(handle.flush(Duration::from_secs(30)).await);
        assert!(fake.got.lock().unwrap().is_empty());
        assert_eq!(handle.counts.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // No task empties this queue: the third span on finds it full.
        let (tx, _rx) = mpsc::channel(2);
        let counts = Arc::new(Counts::default());
        let provider = provider(Enqueue { tx, counts: counts.clone(), wake: Default::default() }, 1.0);
        spans(&provider, 5);
        assert_eq!(counts.queued.load(Ordering::Relaxed), 2);
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_failing_collector_costs_spans_not_time() {
        let fake = Fake { fail: true, ..Default::default() };
        let (processor, handle) = start_queue(fake, 100, Duration::from_secs(5), "http://c".into());
        let provider = provider(processor, 1.0);
        spans(&provider, 4);
        assert!(handle.flush(Duration::from_secs(30)).await);
        assert_eq!(handle.counts.failed.load(Ordering::Relaxed), 4);
        assert_eq!(handle.depth(), 0);
    }

    #[tokio::test]
    async fn a_hung_collector_does_not_hold_the_flush_past_its_deadline() {
        let fake = Fake { hang: true, ..Default::default() };
        let (processor, handle) = start_queue(fake, 100, Duration::from_millis(100), "http://c".into());
        let provider = provider(processor, 1.0);
        spans(&provider, 2);
        // The export never ends by itself: the flush gives up at its deadline.
        assert!(!handle.flush(Duration::from_millis(50)).await);
        // The export's own deadline gives the spans up; a later flush completes.
        assert!(handle.flush(Duration::from_secs(60)).await);
        assert_eq!(handle.counts.failed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn losses_are_reported_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut r = Reports::default();
        assert_eq!(r.failure(10, t0), Some(10));
        assert_eq!(r.failure(5, t0 + Duration::from_secs(1)), None);
        assert_eq!(r.failure(5, t0 + Duration::from_secs(30)), None);
        assert_eq!(r.failure(1, t0 + REPORT_EVERY), Some(11));
        assert_eq!(r.recovered(), Some(21));
        assert_eq!(r.recovered(), None);
        // After a recovery, the next failure is told at once.
        assert_eq!(r.failure(2, t0 + REPORT_EVERY + Duration::from_secs(1)), Some(2));

        assert_eq!(r.drops(0, t0), None);
        assert_eq!(r.drops(7, t0), Some(7));
        assert_eq!(r.drops(9, t0 + Duration::from_secs(10)), None);
        assert_eq!(r.drops(9, t0 + REPORT_EVERY), Some(2));
        assert_eq!(r.drops(9, t0 + REPORT_EVERY * 3), None);
    }

    #[test]
    fn collector_headers_take_the_environment_and_never_show_values() {
        let mut h = std::collections::BTreeMap::new();
        h.insert("x-tenant".to_string(), "blue".to_string());
        assert_eq!(collector_headers(&h).unwrap()["x-tenant"], "blue");
        h.insert("x-api-key".to_string(), "${env.BASTION_TEST_SURELY_UNSET_VARIABLE}".to_string());
        let err = collector_headers(&h).unwrap_err();
        assert!(err.contains("tracing.headers.x-api-key") && err.contains("not set"), "{err}");
        let path = std::env::var("PATH").unwrap();
        let mut h = std::collections::BTreeMap::new();
        h.insert("x-path".to_string(), "${env.PATH}".to_string());
        assert_eq!(collector_headers(&h).unwrap()["x-path"], path);
    }

    #[test]
    fn errors_do_not_show_credentials_in_the_url() {
        let shown = shown_error("failed: http://u:s3cret@c:4318/v1/traces refused", "http://u:s3cret@c:4318/v1/traces");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
