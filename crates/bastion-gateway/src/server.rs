//! Serving: the accept loop and the connections. Takes an already-bound
//! listener and a shutdown signal, so tests run the real server on
//! `127.0.0.1:0`.
//!
//! Each connection is HTTP/1.1 or HTTP/2 with prior knowledge (h2c), told
//! apart by its first bytes, and is held to the limits of `http.*` read
//! from the configuration current when it was accepted:
//!
//! - at most `max_connections` are served at once; further ones wait in the
//!   listen backlog, not accepted;
//! - a request head (HTTP/1.1) must arrive whole within
//!   `header_read_timeout` of its first byte — or, for a connection's first
//!   request, of the connection's acceptance — else the connection is
//!   dropped before anything reads the request;
//! - a connection with no request in progress for `idle_connection_timeout`
//!   is closed gracefully. A request is in progress until its response body
//!   has been sent to the end, so open event streams keep their connection;
//! - request heads larger than `max_header_bytes` are refused (431), HTTP/2
//!   connections carry at most `http2_max_concurrent_streams` streams;
//! - an HTTP/1.1 answer given before the request body was read (a refusal)
//!   says `Connection: close`: the rest of the body is not read, so the
//!   connection ends after the answer.
//!
//! With `tls` configured, every connection is TLS first ([`crate::tls`]):
//! the handshake runs in the connection's own task, within
//! `header_read_timeout`, and HTTP/1.1 or HTTP/2 (ALPN) runs on top. The
//! head clock starts when the connection is accepted, so the handshake
//! counts against the first request's head. The identity of a verified
//! client certificate goes on every request of its connection as a
//! [`ClientCert`] extension; nothing a client sends can put it there.
//!
//! With `metrics.listen`, [`run_metrics`] serves `/metrics` alone on a
//! listener of its own, with the same connection handling (plain HTTP).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bastion_core::config::HttpConfig;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::ClientCert;
use crate::descriptors::Descriptors;
use crate::gateway::Gateway;
use crate::http::{HostPolicy, router};
use crate::tls::Tls;

/// hyper's smallest HTTP/1 read buffer; `max_header_bytes` below it is
/// enforced by the edge alone.
const MIN_HTTP1_BUFFER: usize = 8192;
/// HTTP/2 pings on every connection, so a peer that vanished without a
/// word does not hold its streams forever.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a client may open and reset before they are handled (the
/// "rapid reset" attack), and streams the gateway may reset because of a
/// client's protocol errors (the "made you reset" attack), per connection.
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// While the connection limit is reached, how often a changed limit is
/// looked for.
const LIMIT_RECHECK: Duration = Duration::from_secs(1);

/// Serves until `shutdown` resolves, then shuts down gracefully within
/// the config's `shutdown_grace`:
///
/// 1. stops accepting connections and starting requests (a request that
///    still arrives on an open connection gets 503, see [`crate::drain`]);
///    event streams that carry no answers (GET, `subscriptions/listen`) end;
/// 2. lets the calls in flight finish — answers included, on legacy SSE
///    streams too — until little of the grace period is left;
/// 3. answers the calls still running with a shutdown error, ends every
///    stream once what it has queued is written, closes the connections
///    (HTTP/1.1 after their response in progress, HTTP/2 with GOAWAY);
/// 4. stops the upstream servers (their process groups are killed), in
///    what is left of the grace period.
///
/// With `tls`, the listener serves HTTPS.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let app = router(gw.clone(), HostPolicy::new(local, gw.clone()));
    let mut limit = ConnectionLimit::new(gw.runtime().config.http.max_connections);
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    let descriptors = gw.descriptors.clone();
    // Refusals hold a descriptor each for a moment: a few at a time.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = limit.acquire(|| gw.runtime().config.http.max_connections) => permit,
        };
        let Some((tcp, remote)) = accept(&listener, shutdown.as_mut()).await else { break };
        if !descriptors.admit(gw.runtime().config.http.descriptor_headroom) {
            drop(permit);
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    crate::descriptors::refuse(tcp).await;
                    drop(slot);
                });
            }
            continue;
        }
        let settings = Settings::new(&gw.runtime().config.http);
        let held = (permit, Admitted(descriptors.clone()));
        connections.spawn(serve_connection(tcp, remote, tls.clone(), app.clone(), settings, draining.clone(), held));
    }
    drop(listener);
    drain(&gw, connections, draining).await;
    Ok(())
}

/// Connections the metrics listener serves at once; more wait to be
/// accepted.
const METRICS_CONNECTIONS: usize = 16;

/// Serves `/metrics` alone on the listener of `metrics.listen` (plain
/// HTTP), under the same connection timers and head limit as the main
/// listener, until `shutdown` resolves; then its connections are closed
/// (a scrape in progress is answered first).
pub async fn run_metrics(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let app = crate::http::metrics_router(gw.clone(), HostPolicy::for_metrics(local, gw.clone()));
    let permits = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    let descriptors = gw.descriptors.clone();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let Some((tcp, remote)) = accept(&listener, shutdown.as_mut()).await else { break };
        // Near the open-file limit a scrape is simply not served.
        if !descriptors.admit(gw.runtime().config.http.descriptor_headroom) {
            continue;
        }
        let settings = Settings::new(&gw.runtime().config.http);
        let held = (permit, Admitted(descriptors.clone()));
        connections.spawn(serve_connection(tcp, remote, None, app.clone(), settings, draining.clone(), held));
    }
    drop(listener);
    connections.close();
    draining.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    Ok(())
}

/// The shutdown sequence of [`run`] after the listener is closed.
async fn drain(gw: &Gateway, connections: TaskTracker, draining: CancellationToken) {
    let started = Instant::now();
    let grace = gw.runtime().config.shutdown_grace;
    // What the upstream servers get at the end to stop.
    let stop_budget = (grace / 4).min(Duration::from_secs(2));
    gw.drain.begin();
    tracing::info!(
        calls_in_flight = gw.drain.in_flight(),
        sessions = gw.sessions.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new requests; calls in flight may finish"
    );
    // A parked stateless call waits for a request that is no longer taken.
    let parked = gw.continuations.clear();
    if parked > 0 {
        tracing::info!(parked, "calls waiting for their clients' input dropped");
    }
    // Legacy streams carry answers: they end after the calls.
    for s in gw.sessions.all() {
        if !s.legacy {
            s.finish_stream();
        }
    }
    // Open connections stay open while calls finish: a request that comes
    // on one is told 503, rather than finding the connection closed.
    connections.close();
    if tokio::time::timeout_at(started + grace - stop_budget, gw.drain.settled()).await.is_err() {
        tracing::warn!(
            calls_in_flight = gw.drain.in_flight(),
            "shutdown grace period over: the calls still in flight are answered with an error"
        );
        gw.drain.expire();
        let _ = tokio::time::timeout(stop_budget / 4, gw.drain.settled()).await;
    }
    for s in gw.sessions.all() {
        s.finish_stream();
    }
    draining.cancel();
    // Answers are written; streams end once their queue is.
    let flushed = tokio::time::timeout(stop_budget / 4, connections.wait()).await.is_ok();
    gw.sessions.close_all();
    if !flushed {
        tracing::info!("connections still open at shutdown are closed");
    }
    let left = (started + grace).saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    if tokio::time::timeout(left, gw.shutdown()).await.is_err() {
        tracing::warn!("upstream servers did not stop within the grace period; they are killed");
    }
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "shutdown complete");
}

/// Connections being answered 503 at once, at most.
const MAX_REFUSALS: usize = 32;

/// A connection counted by [`Descriptors`], until it ends.
struct Admitted(Arc<Descriptors>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A failed `accept`: a connection that went away before it was accepted is
/// nothing; anything else (out of file descriptors…) is logged and waited
/// out, so the loop does not spin.
/// The next connection, with TCP_NODELAY set (streams are written frame
/// by frame: without it, Nagle's algorithm and delayed ACKs would hold
/// each one back ~40 ms); `None` once `shutdown` resolves. Failed accepts
/// are waited out.
async fn accept(
    listener: &TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return None,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, remote));
                }
                Err(e) => accept_failed(e).await,
            },
        }
    }
}

async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The connection settings of `http.*`, as they were when a connection was
/// accepted.
#[derive(Debug, Clone, Copy)]
struct Settings {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
    h2_max_streams: u32,
}

impl Settings {
    fn new(http: &HttpConfig) -> Settings {
        Settings {
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_connection_timeout,
            max_header_bytes: http.max_header_bytes,
            h2_max_streams: http.http2_max_concurrent_streams,
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        // hyper's own header timeout also runs while a kept-alive
        // connection waits for its next request, which would cut idle
        // connections at `header_read_timeout`: the clock is kept here
        // instead (`Activity`), started by a request's first byte.
        // A head that does not fit the read buffer gets 431.
        b.http1()
            .keep_alive(true)
            .header_read_timeout(None::<Duration>)
            .max_buf_size(self.max_header_bytes.max(MIN_HTTP1_BUFFER));
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        b
    }
}

/// Serves one connection to its end, holding its `permit` of the connection
/// limit until then.
async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<Arc<Tls>>,
    app: Router,
    settings: Settings,
    draining: CancellationToken,
    _held: (OwnedSemaphorePermit, Admitted),
) {
    // Made before the handshake: its head clock starts at acceptance.
    let activity = Arc::new(Activity::new());
    let Some(tls) = tls else {
        return serve_http(tcp, None, remote, app, settings, draining, activity).await;
    };
    let handshake = tokio::select! {
        biased;
        () = draining.cancelled() => return,
        done = tokio::time::timeout(settings.header_read_timeout, tls.accept(tcp)) => done,
    };
    match handshake {
        Ok(Ok((stream, cert))) => serve_http(stream, cert, remote, app, settings, draining, activity).await,
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "connection dropped: TLS handshake not completed in time"),
    }
}

/// Serves HTTP on a connection (plain, or TLS once its handshake is done).
async fn serve_http<S>(
    stream: S,
    cert: Option<ClientCert>,
    remote: SocketAddr,
    app: Router,
    settings: Settings,
    draining: CancellationToken,
    activity: Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            // Until the response body has been sent (or the request given
            // up), the connection is busy.
            let busy = activity.begin(req.version());
            let http1 = req.version() < http::Version::HTTP_2;
            let (mut req, body_read) = ReadToEnd::wrap(req);
            // What `into_make_service_with_connect_info::<SocketAddr>` adds.
            req.extensions_mut().insert(ConnectInfo(remote));
            // Whatever the client sent, only this puts a certificate on a
            // request, and only one still valid now: a connection outlives
            // its certificate.
            if let Some(c) = &cert
                && c.not_after > chrono::Utc::now().timestamp()
            {
                req.extensions_mut().insert(c.clone());
            } else {
                req.extensions_mut().remove::<ClientCert>();
            }
            let app = app.clone();
            async move {
                let mut resp = tower::ServiceExt::oneshot(app, req).await.unwrap_or_else(|e| match e {});
                // An answer given before the request body was read (a
                // refusal): hyper drops what is left of the body by closing
                // the connection, so the client is told, rather than sending
                // its next request into a connection about to close.
                if http1 && !body_read.load(Ordering::Acquire) {
                    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp.map(move |body| {
                    body.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    })
                }))
            }
        })
    };
    let builder = settings.builder();
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = draining.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            expiry = activity.expired(&settings, !closing) => match expiry {
                Expiry::Head => {
                    tracing::debug!(%remote, "connection dropped: request head not received in time");
                    return;
                }
                Expiry::Idle => {
                    tracing::debug!(%remote, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            },
        }
    }
}

/// A request body that notes when it has been read to its end.
struct ReadToEnd {
    inner: Incoming,
    ended: Arc<AtomicBool>,
}

impl ReadToEnd {
    /// The request with its body wrapped, and the flag raised once the body
    /// has been read to its end (at once for a request without a body).
    fn wrap(req: http::Request<Incoming>) -> (http::Request<ReadToEnd>, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let flag = ended.clone();
        (req.map(|inner| ReadToEnd { inner, ended }), flag)
    }
}

impl hyper::body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// Connection timers
// ---------------------------------------------------------------------------

/// "No such moment" in the millisecond clocks of [`Activity`].
const NEVER: u64 = u64::MAX;

/// What a connection is doing, for its timers. Times are milliseconds since
/// the connection was accepted.
struct Activity {
    accepted: Instant,
    /// Requests whose response has not been sent to the end.
    in_flight: AtomicUsize,
    /// When the last request in flight ended (0: the connection's start).
    waiting_since: AtomicU64,
    /// When the bytes of a request head started coming with no request in
    /// flight, or [`NEVER`]. A new connection starts with its first head
    /// pending.
    head_since: AtomicU64,
    /// An HTTP/2 connection: frames that are no request (pings, window
    /// updates) arrive at any time, so bytes do not start the head clock.
    h2: AtomicBool,
    changed: Notify,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head took longer than `header_read_timeout`.
    Head,
    /// No request for `idle_connection_timeout`.
    Idle,
}

/// One look at a connection's state.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    in_flight: usize,
    waiting_since: Duration,
    head_since: Option<Duration>,
    h2: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing can expire until the state changes.
    Wait,
    /// Look again after this long (or on a change).
    CheckAfter(Duration),
    Expired(Expiry),
}

/// The timers' rule: a request in progress holds both clocks; a pending
/// HTTP/1 head has `header_read_timeout`; otherwise the connection is idle
/// and has `idle_timeout` (only while `idle_applies`).
fn verdict(s: Snapshot, now: Duration, settings: &Settings, idle_applies: bool) -> Verdict {
    if s.in_flight > 0 {
        return Verdict::Wait;
    }
    let (since, limit, expiry) = match s.head_since.filter(|_| !s.h2) {
        Some(since) => (since, settings.header_read_timeout, Expiry::Head),
        None if idle_applies => (s.waiting_since, settings.idle_timeout, Expiry::Idle),
        None => return Verdict::Wait,
    };
    let deadline = since.saturating_add(limit);
    if now >= deadline { Verdict::Expired(expiry) } else { Verdict::CheckAfter(deadline - now) }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn snapshot(&self) -> Snapshot {
        let head = self.head_since.load(Ordering::Acquire);
        Snapshot {
            in_flight: self.in_flight.load(Ordering::Acquire),
            waiting_since: Duration::from_millis(self.waiting_since.load(Ordering::Acquire)),
            head_since: (head != NEVER).then(|| Duration::from_millis(head)),
            h2: self.h2.load(Ordering::Acquire),
        }
    }

    /// A request's head has been read.
    fn begin(self: &Arc<Self>, version: http::Version) -> Busy {
        if version == http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NEVER, Ordering::Release);
        Busy(self.clone())
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Acquire)
            && self.head_since.load(Ordering::Acquire) == NEVER
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection's time runs out.
    async fn expired(&self, settings: &Settings, idle_applies: bool) -> Expiry {
        loop {
            let now = self.accepted.elapsed();
            match verdict(self.snapshot(), now, settings, idle_applies) {
                Verdict::Expired(e) => return e,
                Verdict::CheckAfter(d) => {
                    let _ = tokio::time::timeout(d, self.changed.notified()).await;
                }
                Verdict::Wait => self.changed.notified().await,
            }
        }
    }
}

/// A request in progress; dropped with its response body.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.waiting_since.store(a.now_ms(), Ordering::Release);
            a.changed.notify_one();
        }
    }
}

/// The client's socket (or its TLS stream), telling its [`Activity`] when
/// bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// Connection limit
// ---------------------------------------------------------------------------

/// `max_connections` as a semaphore whose size follows the configuration.
/// A lowered limit takes its permits back as connections end.
struct ConnectionLimit {
    permits: Arc<Semaphore>,
    size: usize,
    /// Permits to take back before any is handed out again.
    owed: usize,
    saturated: bool,
}

impl ConnectionLimit {
    fn new(size: usize) -> ConnectionLimit {
        let size = size.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit { permits: Arc::new(Semaphore::new(size)), size, owed: 0, saturated: false }
    }

    fn resize(&mut self, target: usize) {
        let target = target.clamp(1, Semaphore::MAX_PERMITS);
        if target > self.size {
            let more = target - self.size;
            let forgiven = more.min(self.owed);
            self.owed -= forgiven;
            self.permits.add_permits(more - forgiven);
        } else if target < self.size {
            let fewer = self.size - target;
            self.owed += fewer - self.permits.forget_permits(fewer);
        }
        self.size = target;
    }

    /// A permit for one connection, under the limit `target` returns.
    async fn acquire(&mut self, target: impl Fn() -> usize) -> OwnedSemaphorePermit {
        loop {
            self.resize(target());
            if self.owed == 0
                && let Ok(p) = self.permits.clone().try_acquire_owned()
            {
                self.saturated = false;
                return p;
            }
            if !self.saturated && self.owed == 0 {
                tracing::warn!(limit = self.size, "connection limit reached: new connections wait to be accepted");
                self.saturated = true;
            }
            tokio::select! {
                biased;
                p = self.permits.clone().acquire_owned() => {
                    let p = p.expect("the semaphore is never closed");
                    if self.owed > 0 {
                        p.forget();
                        self.owed -= 1;
                        continue;
                    }
                    return p;
                }
                () = tokio::time::sleep(LIMIT_RECHECK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            h2_max_streams: 128,
        }
    }

    fn s(in_flight: usize, waiting_since: u64, head_since: Option<u64>, h2: bool) -> Snapshot {
        Snapshot {
            in_flight,
            waiting_since: Duration::from_secs(waiting_since),
            head_since: head_since.map(Duration::from_secs),
            h2,
        }
    }

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_for_its_first_request() {
        let st = settings();
        assert_eq!(verdict(s(0, 0, Some(0), false), secs(3), &st, true), Verdict::CheckAfter(secs(7)));
        assert_eq!(verdict(s(0, 0, Some(0), false), secs(10), &st, true), Verdict::Expired(Expiry::Head));
        // Also while the connection is being closed.
        assert_eq!(verdict(s(0, 0, Some(0), false), secs(11), &st, false), Verdict::Expired(Expiry::Head));
    }

    #[test]
    fn a_request_in_progress_holds_both_clocks() {
        let st = settings();
        assert_eq!(verdict(s(1, 0, None, false), secs(3600), &st, true), Verdict::Wait);
        assert_eq!(verdict(s(3, 0, None, true), secs(3600), &st, true), Verdict::Wait);
    }

    #[test]
    fn a_kept_alive_connection_is_idle_until_a_head_starts() {
        let st = settings();
        // The last response ended at 100 s.
        assert_eq!(verdict(s(0, 100, None, false), secs(130), &st, true), Verdict::CheckAfter(secs(30)));
        assert_eq!(verdict(s(0, 100, None, false), secs(160), &st, true), Verdict::Expired(Expiry::Idle));
        // The next head started at 150 s: 10 s from then, not the idle clock.
        assert_eq!(verdict(s(0, 100, Some(150), false), secs(155), &st, true), Verdict::CheckAfter(secs(5)));
        assert_eq!(verdict(s(0, 100, Some(150), false), secs(160), &st, true), Verdict::Expired(Expiry::Head));
        // A closing connection has no idle clock.
        assert_eq!(verdict(s(0, 100, None, false), secs(500), &st, false), Verdict::Wait);
    }

    #[test]
    fn http2_connections_have_only_the_idle_clock_once_they_carried_a_request() {
        let st = settings();
        assert_eq!(verdict(s(0, 100, Some(101), true), secs(150), &st, true), Verdict::CheckAfter(secs(10)));
        assert_eq!(verdict(s(0, 100, Some(101), true), secs(160), &st, true), Verdict::Expired(Expiry::Idle));
    }

    #[tokio::test]
    async fn activity_follows_requests_and_bytes() {
        let a = Arc::new(Activity::new());
        assert_eq!(a.snapshot().head_since, Some(Duration::ZERO), "the first head is pending from the start");
        let busy = a.begin(http::Version::HTTP_11);
        assert_eq!(a.snapshot().in_flight, 1);
        assert_eq!(a.snapshot().head_since, None);
        a.received(); // the request's body
        assert_eq!(a.snapshot().head_since, None);
        let second = a.begin(http::Version::HTTP_11);
        drop(busy);
        assert_eq!(a.snapshot().in_flight, 1);
        drop(second);
        assert_eq!(a.snapshot().in_flight, 0);
        a.received(); // the next head's first bytes
        assert!(a.snapshot().head_since.is_some());

        let h2 = Arc::new(Activity::new());
        drop(h2.begin(http::Version::HTTP_2));
        h2.received(); // a ping
        assert_eq!(h2.snapshot().head_since, None);
        assert!(h2.snapshot().h2);
    }

    #[tokio::test]
    async fn an_idle_connection_expires_and_a_busy_one_does_not() {
        let idle = Duration::from_millis(200);
        let st = Settings { idle_timeout: idle, ..settings() };
        let a = Arc::new(Activity::new());
        drop(a.begin(http::Version::HTTP_11));
        // Activity is kept in whole milliseconds: the end may be read up to
        // one earlier than measured here.
        let ended = a.accepted.elapsed().saturating_sub(Duration::from_millis(1));
        assert_eq!(a.expired(&st, true).await, Expiry::Idle);
        assert!(a.accepted.elapsed() >= ended + idle);

        let b = Arc::new(Activity::new());
        let busy = b.begin(http::Version::HTTP_11);
        let waiting = tokio::time::timeout(4 * idle, b.expired(&st, true)).await;
        assert!(waiting.is_err(), "a request in progress never expires");
        drop(busy);
        let ended = b.accepted.elapsed().saturating_sub(Duration::from_millis(1));
        assert_eq!(b.expired(&st, true).await, Expiry::Idle);
        assert!(b.accepted.elapsed() >= ended + idle);
    }

    #[test]
    fn the_connection_limit_follows_the_configuration() {
        let mut l = ConnectionLimit::new(2);
        let a = l.permits.clone().try_acquire_owned().unwrap();
        let b = l.permits.clone().try_acquire_owned().unwrap();
        assert!(l.permits.clone().try_acquire_owned().is_err());
        // Lowered below what is in use: the difference is owed.
        l.resize(1);
        assert_eq!(l.owed, 1);
        drop(a);
        assert_eq!(l.permits.available_permits(), 1, "until the debt is taken back");
        l.resize(3);
        assert_eq!(l.owed, 0);
        assert_eq!(l.permits.available_permits(), 2);
        drop(b);
        assert_eq!(l.permits.available_permits(), 3);
        l.resize(1);
        assert_eq!((l.permits.available_permits(), l.owed), (1, 0));
        l.resize(0);
        assert_eq!(l.size, 1, "never below one");
    }

    #[tokio::test]
    async fn a_lowered_limit_takes_its_permits_back_first() {
        let mut l = ConnectionLimit::new(2);
        let a = l.acquire(|| 2).await;
        let b = l.acquire(|| 2).await;
        l.resize(1);
        drop(a);
        drop(b);
        let only = l.acquire(|| 1).await;
        assert_eq!(l.owed, 0);
        assert!(tokio::time::timeout(Duration::from_millis(50), l.acquire(|| 1)).await.is_err());
        drop(only);
        let _again = l.acquire(|| 1).await;
    }
}
