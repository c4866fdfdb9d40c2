//! Downstream sessions of the session-based protocol versions (and of the
//! legacy HTTP+SSE transport).
//!
//! A session id is 32 bytes from the OS CSPRNG, and a session is bound to
//! the principal that created it: anyone else presenting the id is told it
//! does not exist (404), exactly as for an unknown id. A session ends when
//! its client deletes it, when it has been idle too long, when it reaches
//! its maximum lifetime, or when the credential that opened it is revoked
//! or expires; [`crate::gateway::Gateway::end_session`] then releases what
//! it held upstream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bastion_core::apikey::random_token;
use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::load::Slot;
use crate::outbox::{Budget, Coalesce, Outbox, Refused};
use crate::upstream::NO_LEVEL;

/// What an endpoint exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `/mcp`: every server the caller may use, names prefixed.
    All,
    /// `/mcp/{group}`: the group's servers, names prefixed.
    Group(String),
    /// `/mcp/{server}`: one server, names unchanged.
    Server(String),
}

impl Scope {
    /// Whether names are prefixed with the server's name.
    pub fn prefixed(&self) -> bool {
        !matches!(self, Scope::Server(_))
    }
}

/// What a stateless client's `subscriptions/listen` stream asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenFilter {
    /// The id of the `subscriptions/listen` request; tags every notification.
    pub subscription_id: Value,
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
}

impl ListenFilter {
    /// Whether a server notification belongs on this stream.
    pub fn wants(&self, method: &str) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            // further filtered by the subscribed URIs
            "notifications/resources/updated" => true,
            _ => false,
        }
    }
}

pub struct Session {
    pub id: String,
    pub principal: Principal,
    pub scope: Scope,
    pub protocol_version: String,
    client_capabilities: Mutex<Value>,
    /// Set by `notifications/initialized`.
    pub initialized: AtomicBool,
    /// True for legacy HTTP+SSE sessions, where every answer goes on the stream.
    pub legacy: bool,
    /// Set for the internal session behind a stateless `subscriptions/listen`
    /// stream; such a session has no id a client knows.
    pub listen: Option<ListenFilter>,
    /// The queue of the open GET (or legacy SSE, or listen) stream, if any.
    outbound: Mutex<Option<Arc<Outbox>>>,
    budget: Arc<Budget>,
    /// Requests Bastion relayed to the client, waiting for its answer.
    server_requests: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
    next_server_request: AtomicU64,
    /// Requests in flight, by the client's id, to cancel on request.
    in_flight: Mutex<HashMap<String, CancellationToken>>,
    /// Resource URIs (as the client sees them) the client subscribed to.
    pub subscriptions: Mutex<HashSet<String>>,
    /// The level of `logging/setLevel` ([`NO_LEVEL`] until the client sets one).
    log_level: AtomicU8,
    created: Instant,
    last_seen: Mutex<Instant>,
    /// Unix seconds at which the latest credential that used the session
    /// expires (`i64::MAX`: one that does not); the session ends then.
    credential_expires: std::sync::atomic::AtomicI64,
    /// This session's place under the principal's session cap.
    slot: Mutex<Option<Slot>>,
    pub closed: CancellationToken,
}

impl Session {
    /// Whether this is a session a client holds the id of, for the
    /// Streamable HTTP session endpoints.
    pub fn is_client_session(&self) -> bool {
        !self.legacy && self.listen.is_none()
    }

    /// Whether every credential that used the session has expired.
    pub fn credential_expired(&self, now: i64) -> bool {
        self.credential_expires.load(Ordering::Relaxed) <= now
    }

    pub fn touch(&self) {
        *self.last_seen.lock().expect("poisoned") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen.lock().expect("poisoned").elapsed()
    }

    pub fn set_log_level(&self, rank: u8) {
        self.log_level.store(rank, Ordering::Relaxed);
    }

    /// The level the client asked for with `logging/setLevel`, if any.
    pub fn log_level(&self) -> Option<u8> {
        Some(self.log_level.load(Ordering::Relaxed)).filter(|l| *l != NO_LEVEL)
    }

    /// Ends the session: its streams and requests in flight stop, and its
    /// place under the session cap is given back.
    fn close(&self) {
        self.closed.cancel();
        if let Some(o) = self.outbound.lock().expect("poisoned").take() {
            o.abort();
        }
        self.slot.lock().expect("poisoned").take();
    }

    /// Whether the client declared a capability (`sampling`, `elicitation`, `roots`).
    pub fn client_supports(&self, capability: &str) -> bool {
        self.client_capabilities.lock().expect("poisoned").get(capability).is_some_and(|c| !c.is_null())
    }

    /// Legacy SSE sessions exist before `initialize` says what the client can do.
    pub fn set_client_capabilities(&self, caps: Value) {
        *self.client_capabilities.lock().expect("poisoned") = caps;
    }

    /// Opens the stream of unsolicited messages; `None` if one is already open.
    pub fn open_stream(&self) -> Option<Arc<Outbox>> {
        let mut out = self.outbound.lock().expect("poisoned");
        if out.as_ref().is_some_and(|o| !o.is_closed()) {
            return None;
        }
        let outbox = Outbox::new(self.budget.clone());
        *out = Some(outbox.clone());
        Some(outbox)
    }

    /// The open stream's queue, if any.
    pub fn outbox(&self) -> Option<Arc<Outbox>> {
        self.outbound.lock().expect("poisoned").clone().filter(|o| !o.is_closed())
    }

    /// Offers a notification to the open stream; false if none is open or
    /// it did not fit (see [`Outbox::offer`]).
    pub fn push(&self, msg: Value) -> bool {
        let coalesce = msg.get("method").and_then(Value::as_str).and_then(Coalesce::of);
        self.push_frame(crate::outbox::sse_frame(&msg), coalesce)
    }

    /// Offers an encoded notification (shared between sessions) to the open stream.
    pub fn push_frame(&self, frame: axum::body::Bytes, coalesce: Option<Coalesce>) -> bool {
        match self.outbox() {
            Some(o) => o.offer(frame, coalesce).is_ok(),
            None => false,
        }
    }

    /// Queues an answer or a server request on the open stream, waiting for
    /// room; false only if no stream is open (or it ended meanwhile).
    pub async fn send(&self, msg: &Value) -> bool {
        match self.outbox() {
            Some(o) => o.send(crate::outbox::sse_frame(msg)).await != Err(Refused::Closed),
            None => false,
        }
    }

    pub fn has_stream(&self) -> bool {
        self.outbox().is_some()
    }

    /// Lets the open stream deliver what is queued, then end (shutdown).
    pub fn finish_stream(&self) {
        if let Some(o) = self.outbound.lock().expect("poisoned").as_ref() {
            o.finish();
        }
    }

    /// Requests of this session in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.lock().expect("poisoned").len()
    }

    /// Registers a relayed server request and returns the id the client sees.
    pub fn register_server_request(&self, reply: oneshot::Sender<Result<Value, Value>>) -> String {
        let n = self.next_server_request.fetch_add(1, Ordering::Relaxed);
        let id = format!("bastion-{n}");
        self.server_requests.lock().expect("poisoned").insert(format!("\"{id}\""), reply);
        id
    }

    /// Delivers the client's answer to a relayed request. False if there
    /// was no such request.
    pub fn answer_server_request(&self, id_key: &str, outcome: Result<Value, Value>) -> bool {
        match self.server_requests.lock().expect("poisoned").remove(id_key) {
            Some(tx) => {
                let _ = tx.send(outcome);
                true
            }
            None => false,
        }
    }

    pub fn start_request(&self, id_key: String) -> CancellationToken {
        let token = self.closed.child_token();
        self.in_flight.lock().expect("poisoned").insert(id_key, token.clone());
        token
    }

    pub fn finish_request(&self, id_key: &str) {
        self.in_flight.lock().expect("poisoned").remove(id_key);
    }

    /// Cancels an in-flight request (`notifications/cancelled`).
    pub fn cancel_request(&self, id_key: &str) {
        if let Some(t) = self.in_flight.lock().expect("poisoned").remove(id_key) {
            t.cancel();
        }
    }
}

/// Parameters of a new session.
pub struct NewSession {
    pub principal: Principal,
    pub scope: Scope,
    pub protocol_version: String,
    pub client_capabilities: Value,
    pub legacy: bool,
    pub listen: Option<ListenFilter>,
}

/// All live sessions.
pub struct Sessions {
    map: DashMap<String, Arc<Session>>,
    /// This replica's name, which starts every session id it makes
    /// (`NAME.` then the random part) so that a load balancer can send a
    /// session's requests back to it (`serve --replica`).
    replica: std::sync::OnceLock<String>,
    /// What the sessions' stream queues hold together.
    pub budget: Arc<Budget>,
}

impl Default for Sessions {
    fn default() -> Self {
        let http = bastion_core::config::HttpConfig::default();
        Sessions::new(Budget::new(http.stream_queue_bytes, http.stream_queue_total_bytes))
    }
}

impl Sessions {
    pub fn new(budget: Arc<Budget>) -> Self {
        Sessions { map: DashMap::new(), replica: std::sync::OnceLock::new(), budget }
    }

    /// Names this replica in the session ids it makes from now on; the
    /// first name given stays.
    pub fn set_replica(&self, name: &str) {
        let _ = self.replica.set(name.to_string());
    }

    /// The queues of the open streams.
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.map.iter().filter_map(|e| e.value().outbox()).collect()
    }

    /// A new session, holding `slot` (its place under the principal's
    /// session cap; `None` for the internal session of a stateless
    /// `subscriptions/listen` stream, which the stream caps count instead).
    pub fn create(&self, s: NewSession, slot: Option<Slot>) -> Arc<Session> {
        let expires = s.principal.expires_at.unwrap_or(i64::MAX);
        let session = Arc::new(Session {
            id: match self.replica.get() {
                Some(r) => format!("{r}.{}", random_token(32)),
                None => random_token(32),
            },
            principal: s.principal,
            scope: s.scope,
            protocol_version: s.protocol_version,
            client_capabilities: Mutex::new(s.client_capabilities),
            initialized: AtomicBool::new(false),
            legacy: s.legacy,
            listen: s.listen,
            outbound: Mutex::new(None),
            budget: self.budget.clone(),
            server_requests: Mutex::new(HashMap::new()),
            next_server_request: AtomicU64::new(1),
            in_flight: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashSet::new()),
            log_level: AtomicU8::new(NO_LEVEL),
            created: Instant::now(),
            last_seen: Mutex::new(Instant::now()),
            credential_expires: std::sync::atomic::AtomicI64::new(expires),
            slot: Mutex::new(slot),
            closed: CancellationToken::new(),
        });
        self.map.insert(session.id.clone(), session.clone());
        session
    }

    /// The session with this id, if it exists and belongs to `principal`.
    pub fn get(&self, id: &str, principal: &Principal) -> Option<Arc<Session>> {
        let s = self.map.get(id)?.clone();
        if s.principal.user != principal.user {
            tracing::warn!(owner = %s.principal.user, caller = %principal.user, "session presented by another principal");
            return None;
        }
        s.touch();
        // A client that renews its token keeps its session.
        s.credential_expires.fetch_max(principal.expires_at.unwrap_or(i64::MAX), Ordering::Relaxed);
        Some(s)
    }

    /// Whether a session with this id exists and is another principal's.
    pub fn is_foreign(&self, id: &str, principal: &Principal) -> bool {
        self.map.get(id).is_some_and(|s| s.principal.user != principal.user)
    }

    /// Removes and closes a session of `principal`; `None` if it has no
    /// such session.
    pub fn remove(&self, id: &str, principal: &Principal) -> Option<Arc<Session>> {
        self.get(id, principal)?;
        let (_, s) = self.map.remove(id)?;
        s.close();
        Some(s)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Removes and closes every session `pred` picks.
    pub fn remove_where(&self, pred: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        let ids: Vec<String> = self.map.iter().filter(|e| pred(e.value())).map(|e| e.key().clone()).collect();
        let mut removed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((_, s)) = self.map.remove(&id) {
                s.close();
                removed.push(s);
            }
        }
        removed
    }

    /// Ends every session, and so every open stream (shutdown).
    pub fn close_all(&self) -> Vec<Arc<Session>> {
        self.remove_where(|_| true)
    }

    /// Closes sessions idle for longer than `idle` (an open stream counts
    /// as activity) and sessions older than `lifetime`, however active.
    pub fn expire(&self, idle: Duration, lifetime: Duration) -> Vec<Arc<Session>> {
        self.remove_where(|s| s.created.elapsed() > lifetime || (!s.has_stream() && s.idle_for() > idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(user: &str) -> Principal {
        Principal::from_key(user, "k", None)
    }

    fn slot() -> Slot {
        let load = crate::load::PrincipalLoad::default();
        load.acquire(&"t".into(), crate::load::Kind::Session, &Default::default()).unwrap()
    }

    fn new(sessions: &Sessions, user: &str) -> Arc<Session> {
        sessions.create(
            NewSession {
                principal: p(user),
                scope: Scope::All,
                protocol_version: "2025-11-25".into(),
                client_capabilities: serde_json::json!({"sampling": {}}),
                legacy: false,
                listen: None,
            },
            Some(slot()),
        )
    }

    #[test]
    fn sessions_are_bound_to_their_principal() {
        let sessions = Sessions::default();
        let s = new(&sessions, "alice");
        assert!(s.id.len() >= 43);
        assert!(sessions.get(&s.id, &p("alice")).is_some());
        assert!(sessions.get(&s.id, &p("mallory")).is_none());
        assert!(sessions.remove(&s.id, &p("mallory")).is_none());
        assert!(sessions.remove(&s.id, &p("alice")).is_some());
        assert!(s.closed.is_cancelled());
        assert!(sessions.get(&s.id, &p("alice")).is_none());
    }

    #[test]
    fn ids_are_unique() {
        let sessions = Sessions::default();
        let ids: HashSet<String> = (0..1000).map(|_| new(&sessions, "a").id.clone()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn one_stream_at_a_time() {
        let sessions = Sessions::default();
        let s = new(&sessions, "a");
        let rx = s.open_stream().unwrap();
        assert!(s.open_stream().is_none());
        assert!(s.push(serde_json::json!({})));
        rx.abort();
        assert!(s.open_stream().is_some());
    }

    #[test]
    fn server_request_answers_reach_the_waiter() {
        let sessions = Sessions::default();
        let s = new(&sessions, "a");
        let (tx, mut rx) = oneshot::channel();
        let id = s.register_server_request(tx);
        let key = bastion_core::jsonrpc::id_key(&Value::from(id));
        assert!(s.answer_server_request(&key, Ok(Value::from(1))));
        assert_eq!(rx.try_recv().unwrap(), Ok(Value::from(1)));
        assert!(!s.answer_server_request(&key, Ok(Value::from(1))));
    }

    #[test]
    fn idle_sessions_expire() {
        let sessions = Sessions::default();
        let s = new(&sessions, "a");
        std::thread::sleep(Duration::from_millis(2));
        let hour = Duration::from_secs(3600);
        assert!(sessions.expire(hour, hour).is_empty());
        assert_eq!(sessions.expire(Duration::ZERO, hour).len(), 1);
        assert!(s.closed.is_cancelled());
        assert!(sessions.is_empty());
    }

    #[test]
    fn sessions_end_at_their_maximum_lifetime_even_with_a_stream() {
        let sessions = Sessions::default();
        let s = new(&sessions, "a");
        let _rx = s.open_stream().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let hour = Duration::from_secs(3600);
        assert!(sessions.expire(Duration::ZERO, hour).is_empty());
        assert_eq!(sessions.expire(hour, Duration::from_millis(1)).len(), 1);
        assert!(s.closed.is_cancelled());
    }
}
