//! JSON-RPC over one ordered message channel, shared by many callers.
//!
//! Used for stdio servers and legacy HTTP+SSE servers, where requests and
//! responses travel on one stream. Each call gets a fresh numeric id (the
//! caller's own id never reaches the server, so two sessions' ids cannot
//! collide); the response is matched back by that id. A progress token is
//! rewritten the same way, so progress reaches the call it belongs to.
//!
//! Messages the server sends on its own are routed:
//! - responses → the waiting call;
//! - `notifications/progress` → the call whose token it names;
//! - `ping` and `roots/list` → answered by Bastion (roots from the config:
//!   the process is shared, so no client's own roots may reach it);
//! - other requests (sampling, elicitation) and log messages → a call in
//!   flight, only when every call pending on the connection belongs to one
//!   principal (stdio carries no better association; `owning_sink`).
//!   Every pending call counts, whatever its kind: calls that cannot
//!   receive messages (batch items, subscriptions made for a stateless
//!   stream), Bastion's own list fetches, and stateless calls parked while
//!   their client answers a multi round-trip request. When the owner is not
//!   unique, or none of its calls can receive the message, a request is
//!   refused and a log message dropped rather than risk handing one user's
//!   data to another;
//! - list changes and resource updates → the fan-out; other notifications
//!   about no call are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bastion_core::jsonrpc::{self, Message, error_object};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::lines::LineWriter;
use super::{CallError, Caller, ConnContext, EventSink, ServerNotification, UpstreamEvent, is_broadcast};

/// Where the multiplexer's outgoing messages go.
#[derive(Clone)]
pub(crate) enum Outbound {
    /// A task that delivers each message in order (legacy SSE: one POST each).
    Channel(mpsc::Sender<Outgoing>),
    /// A child's stdin, written by the caller itself.
    Pipe(Arc<LineWriter>),
}

/// A message for the delivering task, with the trace context of the span
/// that sent it (when tracing is on): its POST carries it.
pub(crate) struct Outgoing {
    pub line: String,
    pub trace: Option<crate::telemetry::TraceHeaders>,
}

impl Outbound {
    async fn send(&self, msg: String) -> Result<(), ()> {
        match self {
            Outbound::Channel(tx) => {
                tx.send(Outgoing { line: msg, trace: crate::telemetry::outgoing() }).await.map_err(|_| ())
            }
            Outbound::Pipe(w) => w.send(&msg).await.map_err(|_| ()),
        }
    }

    /// Sends without waiting for room; for small control messages.
    fn try_send(&self, msg: String) {
        let _ = match self {
            Outbound::Channel(tx) => tx.try_send(Outgoing { line: msg, trace: None }).map_err(|_| ()),
            Outbound::Pipe(w) => w.try_send(&msg).map_err(|_| ()),
        };
    }

    fn is_closed(&self) -> bool {
        match self {
            Outbound::Channel(tx) => tx.is_closed(),
            Outbound::Pipe(w) => w.is_closed(),
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Result<Value, CallError>>,
    caller: Caller,
    /// The caller's progress token, restored on progress notifications.
    progress_token: Option<Value>,
}

pub(crate) struct Mux {
    ctx: ConnContext,
    out: Outbound,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    alive: AtomicBool,
}

/// Removes a call that was abandoned (timeout, client gone) and tells the
/// server to stop working on it.
struct CallGuard<'a> {
    mux: &'a Mux,
    id: u64,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending = self.mux.pending.lock().expect("poisoned").remove(&self.id).is_some();
        if was_pending && self.mux.is_alive() {
            let msg = json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": self.id, "reason": "cancelled by the client or timed out"}
            });
            self.mux.out.try_send(msg.to_string());
        }
    }
}

impl Mux {
    pub fn new(ctx: ConnContext, out: Outbound) -> Self {
        Mux { ctx, out, pending: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), alive: AtomicBool::new(true) }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.out.is_closed()
    }

    pub async fn call(&self, method: &str, params: Option<Value>, caller: Caller) -> Result<Value, CallError> {
        if !self.is_alive() {
            return Err(CallError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut params = params;
        let progress_token = rewrite_progress_token(params.as_mut(), id);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("poisoned").insert(id, Pending { reply: tx, caller, progress_token });
        let mut guard = CallGuard { mux: self, id, done: false };
        let mut msg = Map::with_capacity(4);
        msg.insert("jsonrpc".into(), "2.0".into());
        msg.insert("id".into(), id.into());
        msg.insert("method".into(), method.into());
        if let Some(p) = params {
            msg.insert("params".into(), p);
        }
        let line = Value::Object(msg).to_string();
        if self.out.send(line).await.is_err() {
            guard.done = true;
            self.pending.lock().expect("poisoned").remove(&id);
            return Err(CallError::Closed);
        }
        let result = rx.await.unwrap_or(Err(CallError::Closed));
        guard.done = true;
        result
    }

    pub async fn notify(&self, method: &str, params: Option<Value>) {
        let msg = match params {
            Some(p) => json!({"jsonrpc": "2.0", "method": method, "params": p}),
            None => json!({"jsonrpc": "2.0", "method": method}),
        };
        let _ = self.out.send(msg.to_string()).await;
    }

    /// Handles one message read from the server.
    pub fn on_message(&self, value: Value) {
        let msg = match Message::from_value(value) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(server = %self.ctx.server, error = %e, "upstream sent an invalid JSON-RPC message");
                return;
            }
        };
        match msg {
            Message::Response(r) => {
                let Some(id) = r.id.as_u64() else {
                    tracing::warn!(server = %self.ctx.server, id = %r.id, "response to an id Bastion never sent");
                    return;
                };
                let pending = self.pending.lock().expect("poisoned").remove(&id);
                match pending {
                    Some(p) => {
                        let _ = p.reply.send(r.outcome.map_err(CallError::Rpc));
                    }
                    None => tracing::debug!(server = %self.ctx.server, id, "late response dropped"),
                }
            }
            Message::Notification(n) => self.on_notification(n.method, n.params),
            Message::Request(r) => self.on_request(r.id, r.method, r.params),
        }
    }

    fn on_notification(&self, method: String, mut params: Option<Value>) {
        if method == "notifications/progress" {
            let token = params.as_ref().and_then(|p| p.get("progressToken")).and_then(Value::as_u64);
            let target = token.and_then(|t| {
                let pending = self.pending.lock().expect("poisoned");
                pending.get(&t).and_then(|p| Some((p.caller.sink()?.clone(), p.progress_token.clone()?)))
            });
            if let (Some((sink, original)), Some(p)) = (target, params.as_mut()) {
                p["progressToken"] = original;
                let _ = sink.try_send(UpstreamEvent::Notification { method, params });
            }
            return;
        }
        if method == "notifications/message" {
            match self.owning_sink() {
                Some(sink) if sink.admits_log(params.as_ref(), self.ctx.log_level()) => {
                    let _ = sink.try_send(UpstreamEvent::Notification { method, params });
                }
                Some(_) => {}
                None => tracing::debug!(server = %self.ctx.server, "log message with no single owner dropped"),
            }
            return;
        }
        if is_broadcast(&method) {
            let _ = self.ctx.notifications.send(ServerNotification {
                server: self.ctx.server.clone(),
                user: self.ctx.user.clone(),
                method,
                params,
            });
        }
    }

    fn on_request(&self, id: Value, method: String, mut params: Option<Value>) {
        let out = self.out.clone();
        let respond = move |outcome: Result<Value, Value>| {
            let msg = match outcome {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
            };
            out.try_send(msg.to_string());
        };
        if let Some(answer) = self.ctx.answer_locally(&method) {
            respond(answer);
            return;
        }
        let Some(sink) = self.owning_sink() else {
            tracing::warn!(server = %self.ctx.server, %method, "server request refused: no single client owns the calls in flight");
            respond(Err(error_object(
                jsonrpc::INTERNAL_ERROR,
                format!("{method} refused: the gateway cannot tell which client this request is for"),
            )));
            return;
        };
        let owner: Arc<str> = Arc::from(sink.owner());
        if let Err(refusal) = crate::inspect::server_request(&self.ctx, Some(&owner), &method, &mut params) {
            respond(Err(refusal));
            return;
        }
        let (tx, rx) = oneshot::channel();
        if sink.try_send(UpstreamEvent::Request { method: method.clone(), params, reply: tx }).is_err() {
            respond(Err(error_object(jsonrpc::INTERNAL_ERROR, "the client is not reading")));
            return;
        }
        let timeout = self.ctx.call_timeout;
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut outcome = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => Err(error_object(jsonrpc::INTERNAL_ERROR, "the client went away")),
                Err(_) => Err(error_object(jsonrpc::REQUEST_TIMEOUT, "the client did not answer in time")),
            };
            crate::inspect::client_answer(&ctx, Some(&owner), &method, &mut outcome);
            respond(outcome);
        });
    }

    /// See [`super::owning_sink`].
    fn owning_sink(&self) -> Option<EventSink> {
        let pending = self.pending.lock().expect("poisoned");
        super::owning_sink(pending.iter().map(|(id, p)| (*id, &p.caller)))
    }

    /// Fails the call `id` with `error` (its answer could not be read).
    /// False when no call with that id is waiting.
    pub fn fail(&self, id: u64, error: CallError) -> bool {
        let pending = self.pending.lock().expect("poisoned").remove(&id);
        match pending {
            Some(p) => {
                let _ = p.reply.send(Err(error));
                true
            }
            None => false,
        }
    }

    /// The connection ended: every waiting call fails.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
        let drained: Vec<Pending> = self.pending.lock().expect("poisoned").drain().map(|(_, p)| p).collect();
        for p in drained {
            let _ = p.reply.send(Err(CallError::Closed));
        }
    }
}

/// Replaces `params._meta.progressToken` with the upstream id and returns
/// the original.
fn rewrite_progress_token(params: Option<&mut Value>, id: u64) -> Option<Value> {
    let meta = params?.get_mut("_meta")?.as_object_mut()?;
    let token = meta.get_mut("progressToken")?;
    Some(std::mem::replace(token, Value::from(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mux() -> (Arc<Mux>, mpsc::Receiver<String>, mpsc::UnboundedReceiver<ServerNotification>) {
        let (out_tx, mut outgoing) = mpsc::channel::<Outgoing>(16);
        let (lines_tx, out_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(o) = outgoing.recv().await {
                if lines_tx.send(o.line).await.is_err() {
                    break;
                }
            }
        });
        let (n_tx, n_rx) = mpsc::unbounded_channel();
        let ctx = ConnContext {
            server: "s".into(),
            notifications: n_tx,
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 1 << 20,
            roots: Arc::new(json!([{"uri": "file:///srv/data"}])),
            log_level: Arc::new(std::sync::atomic::AtomicU8::new(crate::upstream::NO_LEVEL)),
            user: None,
            guard: None,
            audit: None,
        };
        (Arc::new(Mux::new(ctx, Outbound::Channel(out_tx))), out_rx, n_rx)
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_responses() {
        let (m, mut out, _n) = mux();
        let a = tokio::spawn({
            let m = m.clone();
            async move { m.call("tools/call", Some(json!({"name": "a"})), Caller::Gateway).await }
        });
        let b = tokio::spawn({
            let m = m.clone();
            async move { m.call("tools/call", Some(json!({"name": "b"})), Caller::Gateway).await }
        });
        let mut sent = vec![];
        for _ in 0..2 {
            sent.push(serde_json::from_str::<Value>(&out.recv().await.unwrap()).unwrap());
        }
        // answer in reverse order, echoing the name
        for req in sent.iter().rev() {
            m.on_message(json!({"jsonrpc": "2.0", "id": req["id"], "result": {"name": req["params"]["name"]}}));
        }
        assert_eq!(a.await.unwrap().unwrap()["name"], "a");
        assert_eq!(b.await.unwrap().unwrap()["name"], "b");
    }

    #[tokio::test]
    async fn progress_token_is_rewritten_and_restored() {
        let (m, mut out, _n) = mux();
        let (sink, mut events) = EventSink::new("a");
        let call = tokio::spawn({
            let m = m.clone();
            async move {
                m.call("tools/call", Some(json!({"_meta": {"progressToken": "client-tok"}})), Caller::Client(sink))
                    .await
            }
        });
        let req: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        let upstream_token = req["params"]["_meta"]["progressToken"].clone();
        assert_ne!(upstream_token, json!("client-tok"));
        m.on_message(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken": upstream_token, "progress": 1}}));
        match events.recv().await.unwrap() {
            UpstreamEvent::Notification { params, .. } => assert_eq!(params.unwrap()["progressToken"], "client-tok"),
            other => panic!("{other:?}"),
        }
        m.on_message(json!({"jsonrpc":"2.0","id": req["id"],"result":{}}));
        call.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn server_requests_reach_the_call_and_the_answer_goes_back() {
        let (m, mut out, _n) = mux();
        let (sink, mut events) = EventSink::new("a");
        let _call = tokio::spawn({
            let m = m.clone();
            async move { m.call("tools/call", None, Caller::Client(sink)).await }
        });
        let _req = out.recv().await.unwrap();
        m.on_message(json!({"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}));
        match events.recv().await.unwrap() {
            UpstreamEvent::Request { method, reply, .. } => {
                assert_eq!(method, "sampling/createMessage");
                reply.send(Ok(json!({"ok": true}))).unwrap();
            }
            other => panic!("{other:?}"),
        }
        let answer: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        assert_eq!(answer["id"], "srv-1");
        assert_eq!(answer["result"]["ok"], true);
    }

    #[tokio::test]
    async fn server_requests_never_cross_clients() {
        let (m, mut out, _n) = mux();
        let (alice, mut alice_events) = EventSink::new("alice");
        let (bob, mut bob_events) = EventSink::new("bob");
        for sink in [alice, bob] {
            let m = m.clone();
            tokio::spawn(async move { m.call("tools/call", None, Caller::Client(sink)).await });
            let _ = out.recv().await.unwrap();
        }
        m.on_message(json!({"jsonrpc":"2.0","id":"s","method":"sampling/createMessage","params":{}}));
        let answer: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        assert_eq!(answer["id"], "s");
        assert!(answer["error"].is_object());
        m.on_message(json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}));
        assert!(alice_events.try_recv().is_err());
        assert!(bob_events.try_recv().is_err());
    }

    /// Starts a call for `caller` and waits until it was written.
    async fn start(m: &Arc<Mux>, out: &mut mpsc::Receiver<String>, caller: Caller) {
        let mux = m.clone();
        tokio::spawn(async move { mux.call("tools/call", None, caller).await });
        let _ = out.recv().await.unwrap();
    }

    async fn refused(m: &Arc<Mux>, out: &mut mpsc::Receiver<String>, method: &str) -> bool {
        m.on_message(json!({"jsonrpc":"2.0","id":"s","method": method,"params":{}}));
        let answer: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        answer["id"] == "s" && answer["error"].is_object()
    }

    #[tokio::test]
    async fn parked_calls_count_as_owners() {
        let (m, mut out, _n) = mux();
        let (parked, mut parked_events) = EventSink::new("alice-stateless");
        let (active, mut active_events) = EventSink::new("bob");
        parked.set_parked(true);
        start(&m, &mut out, Caller::Client(parked)).await;
        // Alone, the parked call still gets what its server asks next.
        m.on_message(json!({"jsonrpc":"2.0","id":"e2","method":"elicitation/create","params":{}}));
        let first = parked_events.recv().await;
        assert!(matches!(first, Some(UpstreamEvent::Request { .. })));
        start(&m, &mut out, Caller::Client(active)).await;
        assert!(refused(&m, &mut out, "elicitation/create").await);
        assert!(active_events.try_recv().is_err());
    }

    #[tokio::test]
    async fn one_users_running_call_is_preferred_to_its_parked_one() {
        let (m, mut out, _n) = mux();
        let (parked, mut parked_events) = EventSink::new("alice");
        let (running, mut running_events) = EventSink::new("alice");
        start(&m, &mut out, Caller::Client(running)).await;
        parked.set_parked(true);
        start(&m, &mut out, Caller::Client(parked)).await;
        m.on_message(json!({"jsonrpc":"2.0","id":"s","method":"elicitation/create","params":{}}));
        let got = running_events.recv().await;
        assert!(matches!(got, Some(UpstreamEvent::Request { .. })));
        assert!(parked_events.try_recv().is_err());
    }

    #[tokio::test]
    async fn calls_without_a_sink_count_as_owners() {
        for quiet in [Caller::Quiet("bob".into()), Caller::Gateway] {
            let (m, mut out, _n) = mux();
            let (alice, mut alice_events) = EventSink::new("alice");
            start(&m, &mut out, Caller::Client(alice)).await;
            start(&m, &mut out, quiet).await;
            assert!(refused(&m, &mut out, "sampling/createMessage").await);
            m.on_message(
                json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"error","data":"x"}}),
            );
            assert!(alice_events.try_recv().is_err());
        }
        // The only owner cannot receive: refused, never sent elsewhere.
        let (m, mut out, _n) = mux();
        start(&m, &mut out, Caller::Quiet("bob".into())).await;
        assert!(refused(&m, &mut out, "sampling/createMessage").await);
    }

    #[tokio::test]
    async fn one_owner_with_several_calls_gets_requests_on_its_newest_call() {
        let (m, mut out, _n) = mux();
        let (older, mut older_events) = EventSink::new("alice");
        let (newer, mut newer_events) = EventSink::new("alice");
        start(&m, &mut out, Caller::Client(older)).await;
        start(&m, &mut out, Caller::Quiet("alice".into())).await;
        start(&m, &mut out, Caller::Client(newer)).await;
        m.on_message(json!({"jsonrpc":"2.0","id":"s","method":"sampling/createMessage","params":{}}));
        assert!(matches!(newer_events.recv().await, Some(UpstreamEvent::Request { .. })));
        assert!(older_events.try_recv().is_err());
    }

    #[tokio::test]
    async fn log_messages_follow_the_session_level() {
        let (m, mut out, _n) = mux();
        let (sink, mut events) = EventSink::new("alice");
        start(&m, &mut out, Caller::Client(sink.with_log_level(crate::upstream::log_rank("warning")))).await;
        for level in ["debug", "info", "error"] {
            m.on_message(
                json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level": level,"data": level}}),
            );
        }
        match events.recv().await.unwrap() {
            UpstreamEvent::Notification { params, .. } => assert_eq!(params.unwrap()["level"], "error"),
            other => panic!("{other:?}"),
        }
        assert!(events.try_recv().is_err());
    }

    #[tokio::test]
    async fn roots_and_ping_are_answered_by_bastion_and_only_broadcasts_fan_out() {
        let (m, mut out, mut n) = mux();
        let (alice, mut alice_events) = EventSink::new("alice");
        start(&m, &mut out, Caller::Client(alice)).await;
        m.on_message(json!({"jsonrpc":"2.0","id":9,"method":"roots/list"}));
        let answer: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        assert_eq!(answer["result"]["roots"], json!([{"uri": "file:///srv/data"}]));
        assert!(alice_events.try_recv().is_err());
        m.on_message(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken": 999}}));
        m.on_message(json!({"jsonrpc":"2.0","method":"notifications/something_else"}));
        m.on_message(json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}));
        assert_eq!(n.recv().await.unwrap().method, "notifications/tools/list_changed");
        assert!(n.try_recv().is_err());
    }

    #[tokio::test]
    async fn unsolicited_requests_are_refused() {
        let (m, mut out, _n) = mux();
        assert!(refused(&m, &mut out, "sampling/createMessage").await);
    }

    #[tokio::test]
    async fn fail_ends_one_call_and_leaves_the_others() {
        let (m, mut out, _n) = mux();
        let call = |name: &'static str| {
            let m = m.clone();
            tokio::spawn(async move { m.call("tools/call", Some(json!({"name": name})), Caller::Gateway).await })
        };
        let (a, b) = (call("a"), call("b"));
        let mut ids = HashMap::new();
        for _ in 0..2 {
            let req: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
            ids.insert(req["params"]["name"].as_str().unwrap().to_string(), req["id"].as_u64().unwrap());
        }
        assert!(m.fail(ids["a"], CallError::Protocol("too large".into())));
        assert!(!m.fail(ids["a"], CallError::Protocol("again".into())), "already failed");
        assert!(!m.fail(999, CallError::Protocol("unknown".into())));
        assert!(matches!(a.await.unwrap(), Err(CallError::Protocol(m)) if m == "too large"));
        // No cancellation is sent for a call whose answer came.
        assert!(out.try_recv().is_err());
        assert!(m.is_alive());
        m.on_message(json!({"jsonrpc": "2.0", "id": ids["b"], "result": {"ok": true}}));
        assert_eq!(b.await.unwrap().unwrap()["ok"], true);
    }

    #[tokio::test]
    async fn close_fails_pending_calls_and_abandoned_calls_are_cancelled() {
        let (m, mut out, _n) = mux();
        let call = tokio::spawn({
            let m = m.clone();
            async move { tokio::time::timeout(Duration::from_millis(50), m.call("slow", None, Caller::Gateway)).await }
        });
        let req: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        assert!(call.await.unwrap().is_err());
        let cancel: Value = serde_json::from_str(&out.recv().await.unwrap()).unwrap();
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], req["id"]);

        let call = tokio::spawn({
            let m = m.clone();
            async move { m.call("x", None, Caller::Gateway).await }
        });
        let _ = out.recv().await.unwrap();
        m.close();
        assert!(matches!(call.await.unwrap(), Err(CallError::Closed)));
    }
}
