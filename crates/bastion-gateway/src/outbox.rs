//! The queue behind a session's long-lived stream (GET, legacy SSE,
//! `subscriptions/listen`), bounded in bytes per stream and in total.
//!
//! Messages are queued as finished SSE frames ([`Bytes`]), so one
//! notification fanned out to thousands of sessions is encoded once and
//! shared. What a queue may hold:
//!
//! - **Notifications** ([`Outbox::offer`]) are dropped when the stream's
//!   queue is over `http.stream_queue_bytes` or all queues together are
//!   over `http.stream_queue_total_bytes`; each drop is counted, and logged
//!   once per episode. A `list_changed` notification already waiting is not
//!   queued twice: the client re-lists once either way.
//! - **Answers and server requests** ([`Outbox::send`]) are never dropped
//!   while the stream lives: the sender waits for room instead
//!   (back-pressure), and [`Outbox::wait_room`] lets a transport hold back
//!   new work (legacy `POST /messages`) while the queue is full.
//!
//! When the total is exceeded, [`Budget::shed`] ends the streams with the
//! most bytes waiting first, so one slow consumer cannot take the memory
//! of the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// A message as one SSE event.
pub fn sse_frame(msg: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

/// What the gateway's stream queues hold together, against their limits.
#[derive(Debug)]
pub struct Budget {
    /// Bytes waiting on all streams.
    queued: AtomicUsize,
    per_stream: AtomicUsize,
    total: AtomicUsize,
    /// Notifications dropped because a queue was full (for metrics).
    pub dropped: AtomicU64,
    /// Streams ended because they were the slowest when the total ran out.
    pub disconnected: AtomicU64,
    /// Wakes the task that sheds the slowest streams.
    over: Notify,
}

impl Budget {
    pub fn new(per_stream: usize, total: usize) -> Arc<Budget> {
        Arc::new(Budget {
            queued: AtomicUsize::new(0),
            per_stream: AtomicUsize::new(per_stream),
            total: AtomicUsize::new(total),
            dropped: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            over: Notify::new(),
        })
    }

    /// Applies changed limits (config reload).
    pub fn set_limits(&self, per_stream: usize, total: usize) {
        self.per_stream.store(per_stream, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn total_limit(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn per_stream(&self) -> usize {
        self.per_stream.load(Ordering::Relaxed)
    }

    fn over_total(&self) -> bool {
        self.queued() > self.total_limit()
    }

    /// Resolves when the total may have been exceeded.
    pub async fn exceeded(&self) {
        self.over.notified().await
    }

    /// Ends the streams with the most waiting, largest first, until the
    /// total is back under 90 % of its limit. Returns how many were ended.
    pub fn shed(&self, mut outboxes: Vec<Arc<Outbox>>) -> usize {
        let target = self.total_limit() / 10 * 9;
        if self.queued() <= target {
            return 0;
        }
        outboxes.sort_by_key(|o| std::cmp::Reverse(o.queued_bytes()));
        let mut ended = 0;
        for o in outboxes {
            if self.queued() <= target || o.queued_bytes() == 0 {
                break;
            }
            let bytes = o.queued_bytes();
            o.abort();
            ended += 1;
            self.disconnected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                queued_bytes = bytes,
                total_bytes = self.queued(),
                limit = self.total_limit(),
                "slow stream disconnected: the stream queues are over their total"
            );
        }
        ended
    }
}

/// Which `list_changed` notification a frame is, for coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coalesce {
    Tools = 1,
    Prompts = 2,
    Resources = 4,
}

impl Coalesce {
    pub fn of(method: &str) -> Option<Coalesce> {
        match method {
            "notifications/tools/list_changed" => Some(Coalesce::Tools),
            "notifications/prompts/list_changed" => Some(Coalesce::Prompts),
            "notifications/resources/list_changed" => Some(Coalesce::Resources),
            _ => None,
        }
    }
}

/// Largest chunk [`Outbox::recv`] puts together from queued frames.
const MAX_CHUNK: usize = 64 * 1024;

/// What a queued frame counts for: its bytes, and its place in the queue.
const ENTRY_COST: usize = 64;

fn cost(frame: &Bytes) -> usize {
    frame.len() + ENTRY_COST
}

struct Frame {
    bytes: Bytes,
    coalesce: Option<Coalesce>,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// `Coalesce` bits of the frames waiting.
    waiting: u8,
    /// No more frames; the reader ends once `frames` is empty.
    finishing: bool,
    /// Ended: nothing more is read or written.
    closed: bool,
    /// Notifications are being dropped (logged once per episode).
    dropping: bool,
}

/// One stream's queue.
pub struct Outbox {
    state: Mutex<State>,
    budget: Arc<Budget>,
    /// Wakes the reader.
    ready: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The stream has ended.
    Closed,
    /// A notification did not fit (it was dropped).
    Full,
}

impl Outbox {
    pub fn new(budget: Arc<Budget>) -> Arc<Outbox> {
        Arc::new(Outbox { state: Mutex::new(State::default()), budget, ready: Notify::new(), room: Notify::new() })
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().expect("poisoned").bytes
    }

    pub fn is_closed(&self) -> bool {
        let st = self.state.lock().expect("poisoned");
        st.closed || st.finishing
    }

    /// Queues a notification, unless it does not fit or the same
    /// `list_changed` is already waiting (then it is not needed).
    pub fn offer(&self, bytes: Bytes, coalesce: Option<Coalesce>) -> Result<(), Refused> {
        let mut st = self.state.lock().expect("poisoned");
        if st.closed || st.finishing {
            return Err(Refused::Closed);
        }
        if let Some(c) = coalesce
            && st.waiting & c as u8 != 0
        {
            return Ok(());
        }
        let full = st.bytes + cost(&bytes) > self.budget.per_stream();
        if full || self.budget.over_total() {
            self.budget.dropped.fetch_add(1, Ordering::Relaxed);
            if !st.dropping {
                st.dropping = true;
                tracing::warn!(
                    queued_bytes = st.bytes,
                    limit = self.budget.per_stream(),
                    total_bytes = self.budget.queued(),
                    "notifications dropped: a stream's client reads too slowly (stream queue full)"
                );
            }
            if !full {
                self.budget.over.notify_one();
            }
            return Err(Refused::Full);
        }
        self.push(&mut st, bytes, coalesce);
        Ok(())
    }

    /// Queues an answer or a server request, waiting while the stream's
    /// queue is full. Fails only when the stream has ended.
    pub async fn send(&self, bytes: Bytes) -> Result<(), Refused> {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.state.lock().expect("poisoned");
                if st.closed || st.finishing {
                    return Err(Refused::Closed);
                }
                // An empty queue takes a message of any size.
                if st.bytes == 0 || st.bytes + cost(&bytes) <= self.budget.per_stream() {
                    self.push(&mut st, bytes, None);
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Resolves once the queue is under its limit (or the stream ended).
    pub async fn wait_room(&self) -> Result<(), Refused> {
        loop {
            let room = self.room.notified();
            {
                let st = self.state.lock().expect("poisoned");
                if st.closed || st.finishing {
                    return Err(Refused::Closed);
                }
                if st.bytes < self.budget.per_stream() {
                    return Ok(());
                }
            }
            room.await;
        }
    }

    fn push(&self, st: &mut State, bytes: Bytes, coalesce: Option<Coalesce>) {
        st.bytes += cost(&bytes);
        self.budget.queued.fetch_add(cost(&bytes), Ordering::Relaxed);
        if let Some(c) = coalesce {
            st.waiting |= c as u8;
        }
        st.frames.push_back(Frame { bytes, coalesce });
        if self.budget.over_total() {
            self.budget.over.notify_one();
        }
        self.ready.notify_one();
    }

    /// What is queued, as one chunk of at most [`MAX_CHUNK`] bytes (or one
    /// frame, if larger), so a stream that fell behind catches up in few
    /// writes; `None` once the stream has ended (and, when finishing,
    /// everything queued was taken).
    pub async fn recv(&self) -> Option<Bytes> {
        loop {
            let ready = self.ready.notified();
            {
                let mut st = self.state.lock().expect("poisoned");
                if st.closed {
                    return None;
                }
                if let Some(first) = st.frames.pop_front() {
                    let mut taken = cost(&first.bytes);
                    let mut waiting = st.waiting;
                    if let Some(c) = first.coalesce {
                        waiting &= !(c as u8);
                    }
                    let chunk = if st.frames.front().is_some_and(|f| first.bytes.len() + f.bytes.len() <= MAX_CHUNK) {
                        let mut chunk = bytes::BytesMut::with_capacity(MAX_CHUNK.min(st.bytes));
                        chunk.extend_from_slice(&first.bytes);
                        while st.frames.front().is_some_and(|f| chunk.len() + f.bytes.len() <= MAX_CHUNK)
                            && let Some(f) = st.frames.pop_front()
                        {
                            chunk.extend_from_slice(&f.bytes);
                            taken += cost(&f.bytes);
                            if let Some(c) = f.coalesce {
                                waiting &= !(c as u8);
                            }
                        }
                        chunk.freeze()
                    } else {
                        first.bytes
                    };
                    st.waiting = waiting;
                    st.bytes -= taken;
                    self.budget.queued.fetch_sub(taken, Ordering::Relaxed);
                    if st.bytes < self.budget.per_stream() / 2 {
                        st.dropping = false;
                    }
                    drop(st);
                    self.room.notify_waiters();
                    return Some(chunk);
                }
                if st.finishing {
                    st.closed = true;
                    return None;
                }
            }
            ready.await;
        }
    }

    /// Takes nothing more; the reader gets what is queued, then the end.
    pub fn finish(&self) {
        self.state.lock().expect("poisoned").finishing = true;
        self.ready.notify_one();
        self.room.notify_waiters();
    }

    /// Ends the stream now, dropping what is queued.
    pub fn abort(&self) {
        let mut st = self.state.lock().expect("poisoned");
        st.closed = true;
        let bytes = std::mem::take(&mut st.bytes);
        st.frames.clear();
        st.waiting = 0;
        drop(st);
        self.budget.queued.fetch_sub(bytes, Ordering::Relaxed);
        self.ready.notify_one();
        self.room.notify_waiters();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.state.get_mut().expect("poisoned").bytes);
        self.budget.queued.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A frame that counts for `n` bytes.
    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n - ENTRY_COST])
    }

    #[tokio::test]
    async fn notifications_past_the_stream_bound_are_dropped_and_counted() {
        let budget = Budget::new(1000, 1 << 20);
        let o = Outbox::new(budget.clone());
        for _ in 0..10 {
            o.offer(frame(100), None).unwrap();
        }
        assert_eq!(o.offer(frame(100), None), Err(Refused::Full));
        assert_eq!(budget.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(budget.queued(), 1000);
        assert_eq!(o.recv().await.unwrap().len(), 10 * (100 - ENTRY_COST), "what was queued, in one chunk");
        assert_eq!(budget.queued(), 0);
        o.offer(frame(100), None).unwrap();
        drop(o);
        assert_eq!(budget.queued(), 0, "a dropped queue gives its bytes back");
    }

    #[tokio::test]
    async fn list_changed_waits_at_most_once() {
        let budget = Budget::new(1 << 20, 1 << 20);
        let o = Outbox::new(budget);
        for _ in 0..100 {
            o.offer(frame(100), Some(Coalesce::Tools)).unwrap();
            o.offer(frame(100), Some(Coalesce::Resources)).unwrap();
        }
        assert_eq!(o.queued_bytes(), 200);
        o.recv().await.unwrap();
        assert_eq!(o.queued_bytes(), 0);
        o.offer(frame(100), Some(Coalesce::Tools)).unwrap();
        o.offer(frame(100), Some(Coalesce::Tools)).unwrap();
        assert_eq!(o.queued_bytes(), 100, "taken by the reader: may be queued again, once");
    }

    #[tokio::test]
    async fn answers_wait_for_room_and_are_never_dropped() {
        let budget = Budget::new(1000, 1 << 20);
        let o = Outbox::new(budget);
        o.send(frame(900)).await.unwrap();
        let sender = {
            let o = o.clone();
            tokio::spawn(async move { o.send(frame(900)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_finished(), "waits while the queue is full");
        assert_eq!(cost(&o.recv().await.unwrap()), 900);
        assert_eq!(sender.await.unwrap(), Ok(()));
        assert_eq!(cost(&o.recv().await.unwrap()), 900);
        // Frames too large to join go one at a time.
        let o = Outbox::new(Budget::new(1 << 20, 1 << 20));
        o.send(Bytes::from(vec![b'y'; MAX_CHUNK])).await.unwrap();
        o.offer(frame(100), None).unwrap();
        assert_eq!(o.recv().await.unwrap().len(), MAX_CHUNK);
        assert_eq!(o.recv().await.unwrap().len(), 100 - ENTRY_COST);
    }

    #[tokio::test]
    async fn finishing_delivers_what_is_queued_then_ends() {
        let o = Outbox::new(Budget::new(1 << 20, 1 << 20));
        o.send(frame(100)).await.unwrap();
        o.finish();
        assert_eq!(o.offer(frame(100), None), Err(Refused::Closed));
        assert!(o.recv().await.is_some());
        assert!(o.recv().await.is_none());
    }

    #[tokio::test]
    async fn shedding_ends_the_fullest_streams_first() {
        let budget = Budget::new(10_000, 15_000);
        let big = Outbox::new(budget.clone());
        let small = Outbox::new(budget.clone());
        for _ in 0..9 {
            big.offer(frame(1000), None).unwrap();
        }
        for _ in 0..7 {
            small.offer(frame(1000), None).unwrap();
        }
        assert!(budget.queued() > budget.total_limit());
        assert_eq!(budget.shed(vec![small.clone(), big.clone()]), 1);
        assert!(big.recv().await.is_none(), "the fullest stream ended");
        assert_eq!(small.queued_bytes(), 7000);
        assert_eq!(budget.queued(), 7000);
        assert_eq!(budget.disconnected.load(Ordering::Relaxed), 1);
    }
}
