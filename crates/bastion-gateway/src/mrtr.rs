//! Multi round-trip requests (2026-07-28) for stateless clients of
//! session-based servers.
//!
//! A session-based server asks for sampling, elicitation or roots by sending
//! a request in the middle of a call. A stateless client cannot receive one:
//! it expects an `InputRequiredResult` and retries the call with
//! `inputResponses`. Bastion bridges the two: the upstream call keeps
//! running in a task; the server's requests are handed to the client as
//! `inputRequests` with a `requestState` token; the retry's responses answer
//! the waiting server requests, and the same call continues.
//!
//! The token is 256 random bits naming server-side state, bound to the
//! principal and to the request it came from (method and name or URI),
//! usable once, and short-lived. A parked call holds one of its principal's
//! `limits.per_principal.parked_calls` slots, and ends when the key that
//! started it is revoked or expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bastion_core::apikey::random_token;
use bastion_core::jsonrpc::{self, Request, error_object};
use dashmap::DashMap;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::proxy::Outcome;
use crate::upstream::UpstreamEvent;

/// How long a continuation waits for the client's retry.
pub const TTL: Duration = Duration::from_secs(600);
const STATE_PREFIX: &str = "bastion-mrtr.";
/// Methods that may answer with `InputRequiredResult`.
pub const SUPPORTED: &[&str] = &["tools/call", "prompts/get", "resources/read"];

/// Aborts the upstream call's task when the last owner lets go.
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A call in flight: its events and its eventual outcome.
pub struct Running {
    /// The call's own sink, to mark it parked while the client is away.
    pub sink: crate::upstream::EventSink,
    pub events: mpsc::Receiver<UpstreamEvent>,
    pub outcome: oneshot::Receiver<Outcome>,
    pub task: AbortOnDrop,
}

struct Continuation {
    user: Arc<str>,
    /// The key the call was made with.
    credential: Arc<str>,
    _slot: crate::load::Slot,
    fingerprint: String,
    pending: Vec<(String, oneshot::Sender<Result<Value, Value>>)>,
    running: Running,
    expires: Instant,
}

#[derive(Default)]
pub struct Continuations {
    map: DashMap<String, Continuation>,
}

/// What identifies "the same request" across retries.
pub fn fingerprint(req: &Request) -> String {
    let p = req.params.as_ref();
    let name = p.and_then(|p| p.get("name").or_else(|| p.get("uri"))).and_then(Value::as_str).unwrap_or("");
    format!("{}\u{0}{}", req.method, name)
}

/// Splits `requestState` and `inputResponses` off a retry.
pub fn take_retry_fields(req: &mut Request) -> (Option<Value>, Option<Map<String, Value>>) {
    let Some(Value::Object(p)) = req.params.as_mut() else { return (None, None) };
    let state = p.remove("requestState");
    let responses = match p.remove("inputResponses") {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    (state, responses)
}

impl Continuations {
    /// Parks a call that needs input and returns the `requestState` token.
    pub fn park(
        &self,
        principal: &crate::auth::Principal,
        slot: crate::load::Slot,
        fingerprint: String,
        pending: Vec<(String, oneshot::Sender<Result<Value, Value>>)>,
        running: Running,
    ) -> String {
        let token = format!("{STATE_PREFIX}{}", random_token(32));
        running.sink.set_parked(true);
        let c = Continuation {
            user: principal.user.clone(),
            credential: principal.credential.clone(),
            _slot: slot,
            fingerprint,
            pending,
            running,
            expires: Instant::now() + TTL,
        };
        self.map.insert(token.clone(), c);
        token
    }

    /// Drops the parked calls made with these credentials (revoked or
    /// expired keys); their upstream calls are cancelled.
    pub fn drop_credentials(&self, credentials: &[String]) -> usize {
        let before = self.map.len();
        self.map.retain(|_, c| !credentials.iter().any(|k| *k == *c.credential));
        before - self.map.len()
    }

    /// Resumes a parked call with the client's answers. Errors are JSON-RPC
    /// error objects for the client.
    pub fn resume(
        &self,
        token: &Value,
        user: &str,
        fingerprint: &str,
        responses: Option<Map<String, Value>>,
    ) -> Result<Running, Value> {
        let invalid = || {
            error_object(
                jsonrpc::INVALID_PARAMS,
                "Invalid params: requestState is unknown, expired or not for this request",
            )
        };
        let token = token.as_str().filter(|t| t.starts_with(STATE_PREFIX)).ok_or_else(invalid)?;
        // Removing first makes the token single-use, even for a wrong caller.
        let (_, c) = self.map.remove(token).ok_or_else(invalid)?;
        if &*c.user != user || c.fingerprint != fingerprint || c.expires < Instant::now() {
            return Err(invalid());
        }
        let responses = responses.unwrap_or_default();
        c.running.sink.set_parked(false);
        for (key, reply) in c.pending {
            let answer = match responses.get(&key) {
                Some(v) => Ok(v.clone()),
                None => Err(error_object(
                    jsonrpc::INVALID_PARAMS,
                    format!("the client did not answer input request {key:?}"),
                )),
            };
            let _ = reply.send(answer);
        }
        Ok(c.running)
    }

    /// Drops continuations whose client never came back; their calls are
    /// cancelled upstream.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let before = self.map.len();
        self.map.retain(|_, c| c.expires > now);
        before - self.map.len()
    }

    /// Drops every parked call (shutdown: their clients could not come
    /// back with the input); their upstream calls are cancelled.
    pub fn clear(&self) -> usize {
        let n = self.map.len();
        self.map.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The capability a server request needs from the client.
pub fn required_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// The `InputRequiredResult` for a set of server requests.
pub fn input_required(requests: &[(String, String, Option<Value>)], token: &str) -> Value {
    let mut input = Map::new();
    for (key, method, params) in requests {
        let mut r = json!({"method": method});
        if let Some(p) = params {
            r["params"] = p.clone();
        }
        input.insert(key.clone(), r);
    }
    json!({"resultType": "input_required", "inputRequests": input, "requestState": token})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(user: &str) -> crate::auth::Principal {
        crate::auth::Principal::from_key(user, &format!("key-{user}"), None)
    }

    fn slot() -> crate::load::Slot {
        let load = crate::load::PrincipalLoad::default();
        load.acquire(&"t".into(), crate::load::Kind::Parked, &Default::default()).unwrap()
    }

    fn running() -> (Running, mpsc::Sender<UpstreamEvent>, oneshot::Sender<Outcome>) {
        let (etx, erx) = mpsc::channel(4);
        let (otx, orx) = oneshot::channel();
        let task = tokio::spawn(async {});
        let (sink, _rx) = crate::upstream::EventSink::new("test");
        (Running { sink, events: erx, outcome: orx, task: AbortOnDrop(task.abort_handle()) }, etx, otx)
    }

    #[tokio::test]
    async fn resume_answers_pending_requests_once() {
        let c = Continuations::default();
        let (r, _e, _o) = running();
        let (tx, rx) = oneshot::channel();
        let token = c.park(&principal("alice"), slot(), "tools/call\u{0}t".into(), vec![("k".into(), tx)], r);
        let mut answers = Map::new();
        answers.insert("k".into(), json!({"action": "accept"}));
        assert!(c.resume(&Value::from(token.clone()), "alice", "tools/call\u{0}t", Some(answers.clone())).is_ok());
        assert_eq!(rx.await.unwrap(), Ok(json!({"action": "accept"})));
        assert!(c.resume(&Value::from(token), "alice", "tools/call\u{0}t", Some(answers)).is_err());
    }

    #[tokio::test]
    async fn state_is_bound_to_principal_and_request() {
        let c = Continuations::default();
        let (r, _e, _o) = running();
        let token = c.park(&principal("alice"), slot(), "tools/call\u{0}t".into(), vec![], r);
        assert!(c.resume(&Value::from(token.clone()), "mallory", "tools/call\u{0}t", None).is_err());
        // and the attempt burned it
        assert!(c.resume(&Value::from(token), "alice", "tools/call\u{0}t", None).is_err());
        let (r, _e, _o) = running();
        let token = c.park(&principal("alice"), slot(), "tools/call\u{0}t".into(), vec![], r);
        assert!(c.resume(&Value::from(token), "alice", "tools/call\u{0}other", None).is_err());
        assert!(c.resume(&json!("forged"), "alice", "tools/call\u{0}t", None).is_err());
    }

    #[tokio::test]
    async fn revoked_credentials_drop_their_parked_calls() {
        let c = Continuations::default();
        let (r, _e, _o) = running();
        let token = c.park(&principal("alice"), slot(), "tools/call\u{0}t".into(), vec![], r);
        let (r, _e2, _o2) = running();
        c.park(&principal("bob"), slot(), "tools/call\u{0}t".into(), vec![], r);
        assert_eq!(c.drop_credentials(&["key-alice".to_string()]), 1);
        assert_eq!(c.len(), 1);
        assert!(c.resume(&Value::from(token), "alice", "tools/call\u{0}t", None).is_err());
    }

    #[test]
    fn retry_fields_are_split_off() {
        let mut req = Request {
            id: json!(2),
            method: "tools/call".into(),
            params: Some(json!({"name": "t", "requestState": "s", "inputResponses": {"k": {}}})),
        };
        let (s, r) = take_retry_fields(&mut req);
        assert_eq!(s, Some(json!("s")));
        assert!(r.unwrap().contains_key("k"));
        assert_eq!(req.params, Some(json!({"name": "t"})));
    }
}
