//! Newline-delimited messages into a child's stdin, written by the caller.
//!
//! A call writes its line straight into the pipe from its own task — one
//! system call, no hand-off to a writer task and no wake-up of another
//! thread. Only when the pipe is full (the server is not reading) are the
//! remaining bytes queued, in order, for a flusher task that waits until
//! the pipe can take them; while anything is queued, later lines queue
//! behind it so lines never interleave. Each line is written or queued
//! whole under one lock, so a caller that is cancelled never leaves half a
//! line behind.
//!
//! The queue is bounded: past [`BACKLOG_LIMIT`] bytes, [`LineWriter::send`]
//! waits for room (back-pressure on callers). Small control messages
//! (cancellations, answers to the server's own requests) go through
//! [`LineWriter::try_send`], which never waits.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Queued bytes past which `send` waits for the server to read.
const BACKLOG_LIMIT: usize = 8 << 20;

/// The pipe is closed: the server is gone or is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

struct State {
    /// `None` once closed; dropping the last handle closes the child's stdin.
    pipe: Option<Arc<pipe::Sender>>,
    /// Bytes not yet written, oldest first.
    queued: BytesMut,
    /// No more lines are taken; stdin closes once `queued` is written.
    closing: bool,
}

impl State {
    fn accepting(&self) -> bool {
        self.pipe.is_some() && !self.closing
    }

    /// Drops the pipe now, with whatever is still queued.
    fn shut(&mut self) {
        self.pipe = None;
        self.queued.clear();
        self.closing = true;
    }
}

pub(crate) struct LineWriter {
    state: Mutex<State>,
    /// Wakes the flusher when bytes are queued.
    work: Notify,
    /// Wakes senders waiting for room in the queue.
    room: Notify,
}

impl LineWriter {
    /// Takes over a child's stdin and starts its flusher, which ends (and
    /// closes stdin) when `stop` is cancelled or the pipe breaks.
    pub fn start(stdin: tokio::process::ChildStdin, stop: CancellationToken) -> io::Result<Arc<LineWriter>> {
        let pipe = pipe::Sender::from_owned_fd(stdin.into_owned_fd()?)?;
        let writer = Arc::new(LineWriter {
            state: Mutex::new(State { pipe: Some(Arc::new(pipe)), queued: BytesMut::new(), closing: false }),
            work: Notify::new(),
            room: Notify::new(),
        });
        tokio::spawn(writer.clone().flush_loop(stop));
        Ok(writer)
    }

    pub fn is_closed(&self) -> bool {
        !self.state.lock().expect("poisoned").accepting()
    }

    /// Writes one line, waiting while the queue is over its limit.
    pub async fn send(&self, line: &str) -> Result<(), Closed> {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.state.lock().expect("poisoned");
                if !st.accepting() {
                    return Err(Closed);
                }
                if st.queued.len() < BACKLOG_LIMIT {
                    return self.push(&mut st, line);
                }
            }
            room.await;
        }
    }

    /// Writes one line now, whatever the queue holds.
    pub fn try_send(&self, line: &str) -> Result<(), Closed> {
        let mut st = self.state.lock().expect("poisoned");
        self.push(&mut st, line)
    }

    /// Takes no more lines and closes stdin once what is queued is
    /// written: the polite way to ask a stdio server to exit. Cancelling
    /// the `stop` token given to [`LineWriter::start`] closes it at once.
    pub fn close(&self) {
        let mut st = self.state.lock().expect("poisoned");
        st.closing = true;
        if st.queued.is_empty() {
            st.shut();
        }
        drop(st);
        self.room.notify_waiters();
        self.work.notify_one();
    }

    /// Closes stdin now, dropping whatever is queued: the connection is
    /// over (the server's stdout ended, or it is being killed).
    pub fn abort(&self) {
        self.shut();
        self.work.notify_one();
    }

    /// The pipe broke or the writer was stopped.
    fn shut(&self) {
        self.state.lock().expect("poisoned").shut();
        self.room.notify_waiters();
    }

    fn push(&self, st: &mut State, line: &str) -> Result<(), Closed> {
        if !st.accepting() {
            return Err(Closed);
        }
        let pipe = st.pipe.as_ref().ok_or(Closed)?;
        let mut written = 0;
        if st.queued.is_empty() {
            let bufs = [IoSlice::new(line.as_bytes()), IoSlice::new(b"\n")];
            match pipe.try_write_vectored(&bufs) {
                Ok(n) if n == line.len() + 1 => return Ok(()),
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, "upstream stdin closed");
                    st.shut();
                    self.room.notify_waiters();
                    return Err(Closed);
                }
            }
        }
        let was_empty = st.queued.is_empty();
        if written < line.len() {
            st.queued.extend_from_slice(&line.as_bytes()[written..]);
        }
        st.queued.extend_from_slice(b"\n");
        if was_empty {
            self.work.notify_one();
        }
        Ok(())
    }

    async fn flush_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.work.notified() => {}
            }
            // Write what is queued; wait for the pipe whenever it is full.
            loop {
                let pipe = {
                    let mut st = self.state.lock().expect("poisoned");
                    let Some(pipe) = st.pipe.clone() else { return };
                    if st.queued.is_empty() {
                        if st.closing {
                            st.shut();
                            return;
                        }
                        break;
                    }
                    match pipe.try_write(&st.queued) {
                        Ok(n) => {
                            st.queued.advance(n);
                            self.room.notify_waiters();
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe,
                        Err(e) => {
                            tracing::debug!(error = %e, "upstream stdin closed");
                            drop(st);
                            self.shut();
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {
                        self.shut();
                        return;
                    }
                    ready = pipe.writable() => if ready.is_err() {
                        self.shut();
                        return;
                    },
                    // Closed meanwhile: the next pass sees it.
                    _ = self.work.notified() => {}
                }
            }
        }
        self.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::process::Command;

    fn cat() -> tokio::process::Child {
        Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cat")
    }

    #[tokio::test]
    async fn lines_arrive_whole_and_in_order_past_a_full_pipe() {
        let mut child = cat();
        let stop = CancellationToken::new();
        let w = LineWriter::start(child.stdin.take().unwrap(), stop.clone()).unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        // Far more than a pipe holds (64 KiB), written before anything is read.
        let line = "x".repeat(10_000);
        for i in 0..100 {
            w.send(&format!("{i} {line}")).await.unwrap();
        }
        for i in 0..100 {
            assert_eq!(out.next_line().await.unwrap().unwrap(), format!("{i} {line}"));
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn close_ends_stdin_and_refuses_more() {
        let mut child = cat();
        let w = LineWriter::start(child.stdin.take().unwrap(), CancellationToken::new()).unwrap();
        w.send("last").await.unwrap();
        w.close();
        assert!(w.is_closed());
        assert_eq!(w.send("more").await, Err(Closed));
        assert_eq!(w.try_send("more"), Err(Closed));
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "last\n");
    }

    #[tokio::test]
    async fn a_dead_reader_closes_the_writer() {
        let mut child = cat();
        let w = LineWriter::start(child.stdin.take().unwrap(), CancellationToken::new()).unwrap();
        child.kill().await.unwrap();
        let mut refused = false;
        for _ in 0..100 {
            if w.send("anyone?").await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused && w.is_closed());
    }
}
