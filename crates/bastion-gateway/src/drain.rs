//! Graceful shutdown of the request path.
//!
//! Shutdown goes through three states:
//!
//! 1. **Serving.**
//! 2. **Stopping** ([`Drain::begin`]): no new request is started — a
//!    request that arrives on a connection still open is answered 503 with
//!    JSON-RPC error [`SHUTTING_DOWN`](bastion_core::jsonrpc::SHUTTING_DOWN)
//!    — while the calls in flight run on. Answers from clients (to sampling,
//!    elicitation) and cancellations are still taken, since calls in flight
//!    may wait for them.
//! 3. **Expired** ([`Drain::expire`]): the grace period ran out; every
//!    call still running is answered with that error on its own channel.
//!
//! [`Drain::call`] marks a call in flight from the moment the request path
//! takes it until its outcome is known; [`Drain::settled`] resolves when
//! none is left.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bastion_core::jsonrpc::{self, error_object};
use serde_json::Value;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

#[derive(Default)]
pub struct Drain {
    stopping: CancellationToken,
    expired: CancellationToken,
    calls: TaskTracker,
}

/// The error a call gets when the gateway stops before it ends.
pub fn shutting_down() -> Value {
    error_object(jsonrpc::SHUTTING_DOWN, "the gateway is shutting down; retry the request")
}

impl Drain {
    /// Stops starting requests.
    pub fn begin(&self) {
        self.stopping.cancel();
        self.calls.close();
    }

    /// Fails the calls still running.
    pub fn expire(&self) {
        self.begin();
        self.expired.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stopping.clone().cancelled_owned()
    }

    /// Resolves when the grace period has run out.
    pub fn expired(&self) -> impl Future<Output = ()> + Send + 'static {
        self.expired.clone().cancelled_owned()
    }

    /// Marks a call in flight until the token is dropped.
    pub fn call(&self) -> TaskTrackerToken {
        self.calls.token()
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Resolves once shutdown has begun and no call is in flight.
    pub async fn settled(&self) {
        self.calls.wait().await
    }

    /// Runs `work`, unless the grace period runs out first: then its
    /// outcome is the shutdown error (and dropping `work` cancels it
    /// upstream). `work` is polled first, then the grace period.
    ///
    /// A future, not an `async fn`: an `async fn` would keep `work` twice
    /// in its state (the argument, and the copy being awaited), and the
    /// request path's futures are large.
    pub fn run<T, F: Future<Output = Result<T, Value>>>(&self, work: F) -> Run<F> {
        Run { work, expired: self.expired.clone().cancelled_owned(), _call: self.call() }
    }
}

pin_project_lite::pin_project! {
    /// A call in flight: see [`Drain::run`].
    pub struct Run<F> {
        #[pin]
        work: F,
        #[pin]
        expired: WaitForCancellationFutureOwned,
        _call: TaskTrackerToken,
    }
}

impl<T, F: Future<Output = Result<T, Value>>> Future for Run<F> {
    type Output = Result<T, Value>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.work.poll(cx) {
            return Poll::Ready(outcome);
        }
        this.expired.poll(cx).map(|()| Err(shutting_down()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn calls_run_on_while_stopping_and_fail_when_expired() {
        let d = std::sync::Arc::new(Drain::default());
        let slow = {
            let d = d.clone();
            tokio::spawn(async move {
                d.run(async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, Value>(1)
                })
                .await
            })
        };
        let quick = {
            let d = d.clone();
            tokio::spawn(async move {
                d.run(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, Value>(2)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        d.begin();
        assert!(d.is_stopping());
        assert_eq!(quick.await.unwrap(), Ok(2), "a call in flight ends normally");
        assert_eq!(d.in_flight(), 1);
        d.expire();
        let err = slow.await.unwrap().unwrap_err();
        assert_eq!(err["code"], jsonrpc::SHUTTING_DOWN);
        tokio::time::timeout(Duration::from_secs(1), d.settled()).await.expect("settled");
    }
}
