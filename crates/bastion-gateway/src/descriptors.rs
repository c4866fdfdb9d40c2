//! File descriptors: the gateway's open-file limit, and refusing client
//! connections before the descriptors run out.
//!
//! Every client connection, upstream process pipe, connection to a remote
//! server and store file takes a descriptor. Running out silently would
//! stall everything at once (the store, new upstream processes, even
//! `/healthz`), so client connections are refused — with a 503 the client
//! can read — while `http.descriptor_headroom` descriptors are still free.
//!
//! Counting the open descriptors means listing `/proc/self/fd`; that is
//! done at most every [`MEASURE_EVERY`], and between two counts the
//! connections opened and closed since are added to the last one.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest time between two counts of the open descriptors.
const MEASURE_EVERY: Duration = Duration::from_millis(100);
/// Longest a refused connection is kept to read its request and write the 503.
const REFUSAL_TIME: Duration = Duration::from_millis(500);
/// How often refusals are logged while they go on.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open-file limit to the hard limit; returns the limits
/// in force (soft, hard).
pub fn raise_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        return Ok((hard, hard));
    }
    Ok((soft, hard))
}

/// The soft open-file limit now in force.
fn current_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft)
}

/// Counts this process's open descriptors.
fn count_open() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64)
}

/// Decides whether a new client connection may be served.
pub struct Descriptors {
    limit: Option<u64>,
    count: fn() -> Option<u64>,
    /// Open when last counted, and when that was.
    measured: Mutex<(u64, Instant)>,
    /// Connections opened minus closed since the last count.
    since: AtomicI64,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Default for Descriptors {
    fn default() -> Self {
        Descriptors::new()
    }
}

impl Descriptors {
    pub fn new() -> Descriptors {
        Descriptors::with(current_limit(), count_open)
    }

    fn with(limit: Option<u64>, count: fn() -> Option<u64>) -> Descriptors {
        Descriptors {
            limit,
            count,
            measured: Mutex::new((count().unwrap_or(0), Instant::now())),
            since: AtomicI64::new(0),
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }
    }

    /// Connections refused so far (for metrics).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether a connection just accepted may be served, keeping `headroom`
    /// descriptors free. A connection served must be reported to
    /// [`Descriptors::closed`] when it ends.
    pub fn admit(&self, headroom: usize) -> bool {
        let Some(limit) = self.limit else { return true };
        let open = {
            let mut m = self.measured.lock().expect("poisoned");
            if m.1.elapsed() >= MEASURE_EVERY
                && let Some(n) = (self.count)()
            {
                *m = (n, Instant::now());
                self.since.store(0, Ordering::Relaxed);
            }
            m.0.saturating_add_signed(self.since.load(Ordering::Relaxed))
        };
        if open + headroom as u64 >= limit {
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_log.lock().expect("poisoned");
            if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!(
                    open,
                    limit,
                    headroom,
                    refused_total = n,
                    "descriptor headroom reached: new connections are refused with 503 \
                     (raise the open-file limit or lower http.max_connections)"
                );
            }
            return false;
        }
        self.since.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A connection admitted by [`Descriptors::admit`] ended.
    pub fn closed(&self) {
        self.since.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a connection that cannot be served: reads what the client sent
/// (briefly, so closing does not reset the connection under its answer),
/// writes a 503 with a JSON-RPC error, and closes.
pub async fn refuse(mut tcp: TcpStream) {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": bastion_core::jsonrpc::LIMIT_REACHED,
            "message": "the gateway cannot take more connections now; retry later"
        }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        let mut buf = [0u8; 4096];
        // The request head, or whatever came within a moment.
        let _ = tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await;
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_the_headroom_is_reached() {
        // 100 open of 1000: with 898 kept free, two more connections fit.
        let d = Descriptors::with(Some(1000), || Some(100));
        assert!(d.admit(898));
        assert!(d.admit(898));
        assert!(!d.admit(898), "a third would leave less than the headroom");
        assert_eq!(d.refused(), 1);
        d.closed();
        assert!(d.admit(898));
    }

    #[test]
    fn counts_this_process() {
        assert!(count_open().is_some_and(|n| n >= 3));
        assert!(Descriptors::new().admit(0));
    }
}
