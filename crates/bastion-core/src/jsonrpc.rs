//! The JSON-RPC 2.0 envelope, kept as close to the wire as possible.
//!
//! Bastion is a transparent proxy: parameters, results and unknown fields are
//! carried as [`serde_json::Value`] and never re-modelled, so whatever a
//! client or server puts in a message reaches the other side unchanged except
//! where Bastion deliberately rewrites it (ids, names, cursors).

use serde_json::{Map, Value, json};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// The upstream server could not be reached, started, or crashed.
pub const UPSTREAM_UNAVAILABLE: i64 = -32000;
/// The request timed out (the code the official SDKs use for timeouts).
pub const REQUEST_TIMEOUT: i64 = -32001;
/// The caller is authenticated but not allowed to do this.
pub const FORBIDDEN: i64 = -32003;
/// The request carried a protocol version Bastion does not serve (2026-07-28).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// An HTTP header disagrees with the body (2026-07-28).
pub const HEADER_MISMATCH: i64 = -32020;
/// The request needs a client capability the client did not declare (2026-07-28).
pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
/// The caller reached one of its limits (HTTP 429, with `Retry-After`).
pub const LIMIT_REACHED: i64 = -32029;
/// The gateway is shutting down: the request was not started, or its grace
/// period ran out (HTTP 503 when no response has begun).
pub const SHUTTING_DOWN: i64 = -32030;

/// A JSON-RPC id: a string or a number. Kept as the exact JSON value so that
/// it round-trips byte for byte.
pub type Id = Value;

/// One classified JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Notification(Notification),
    Response(Response),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Id,
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: Id,
    /// `Ok(result)` or `Err(error object)`.
    pub outcome: Result<Value, Value>,
}

/// Why a JSON value is not a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMessage(pub &'static str);

impl Message {
    /// Classifies one JSON value (not an array) as a request, notification or
    /// response.
    pub fn from_value(value: Value) -> Result<Self, InvalidMessage> {
        let Value::Object(mut obj) = value else {
            return Err(InvalidMessage("a JSON-RPC message must be an object"));
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(InvalidMessage("\"jsonrpc\" must be \"2.0\""));
        }
        let id = obj.remove("id");
        if let Some(id) = &id
            && !(id.is_string() || id.is_i64() || id.is_u64() || id.is_null())
        {
            return Err(InvalidMessage("\"id\" must be a string or an integer"));
        }
        match obj.remove("method") {
            Some(Value::String(method)) => {
                let params = obj.remove("params");
                if let Some(p) = &params
                    && !(p.is_object() || p.is_array())
                {
                    return Err(InvalidMessage("\"params\" must be an object or an array"));
                }
                match id {
                    None => Ok(Message::Notification(Notification { method, params })),
                    Some(Value::Null) => Err(InvalidMessage("a request id must not be null")),
                    Some(id) => Ok(Message::Request(Request { id, method, params })),
                }
            }
            Some(_) => Err(InvalidMessage("\"method\" must be a string")),
            None => {
                let id = id.ok_or(InvalidMessage("a response needs an \"id\""))?;
                match (obj.remove("result"), obj.remove("error")) {
                    (Some(result), None) => Ok(Message::Response(Response { id, outcome: Ok(result) })),
                    (None, Some(error)) if error.is_object() => {
                        Ok(Message::Response(Response { id, outcome: Err(error) }))
                    }
                    _ => Err(InvalidMessage("a response needs exactly one of \"result\" and \"error\"")),
                }
            }
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Message::Request(r) => r.to_value(),
            Message::Notification(n) => n.to_value(),
            Message::Response(r) => r.to_value(),
        }
    }
}

impl Request {
    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(4);
        m.insert("jsonrpc".into(), Value::from("2.0"));
        m.insert("id".into(), self.id.clone());
        m.insert("method".into(), Value::from(self.method.clone()));
        if let Some(p) = &self.params {
            m.insert("params".into(), p.clone());
        }
        Value::Object(m)
    }
}

impl Notification {
    pub fn new(method: impl Into<String>, params: Option<Value>) -> Self {
        Notification { method: method.into(), params }
    }

    pub fn to_value(&self) -> Value {
        let mut m = Map::with_capacity(3);
        m.insert("jsonrpc".into(), Value::from("2.0"));
        m.insert("method".into(), Value::from(self.method.clone()));
        if let Some(p) = &self.params {
            m.insert("params".into(), p.clone());
        }
        Value::Object(m)
    }
}

impl Response {
    pub fn to_value(&self) -> Value {
        match &self.outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": self.id, "result": result}),
            Err(error) => json!({"jsonrpc": "2.0", "id": self.id, "error": error}),
        }
    }
}

/// A JSON-RPC error object.
pub fn error_object(code: i64, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

/// A whole JSON-RPC error response; `id` is `null` when the request's id is
/// not known (parse errors, rejected batches).
pub fn error_response(id: Option<&Id>, code: i64, message: impl Into<String>) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": error_object(code, message),
    })
}

/// A stable string key for an id, for maps keyed by request id. Strings and
/// numbers never collide because strings keep their quotes.
pub fn id_key(id: &Id) -> String {
    id.to_string()
}

/// The `_meta` object of a request's params, if any.
pub fn params_meta(params: Option<&Value>) -> Option<&Map<String, Value>> {
    params?.get("_meta")?.as_object()
}

/// The progress token a request asked for, if any.
pub fn progress_token(params: Option<&Value>) -> Option<&Value> {
    params_meta(params)?.get("progressToken")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, InvalidMessage> {
        Message::from_value(serde_json::from_str(s).unwrap())
    }

    #[test]
    fn classifies_the_three_kinds() {
        assert!(matches!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Ok(Message::Request(_))));
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Message::Notification(_))
        ));
        assert!(matches!(parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#), Ok(Message::Response(_))));
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#),
            Ok(Message::Response(Response { outcome: Err(_), .. }))
        ));
    }

    #[test]
    fn rejects_malformed_envelopes() {
        for bad in [
            r#"[]"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":""}}"#,
            r#"{"jsonrpc":"2.0","result":1}"#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn round_trips_unknown_param_fields() {
        let raw = r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"a","zzz":{"k":[1,2]},"_meta":{"progressToken":7}}}"#;
        let msg = parse(raw).unwrap();
        assert_eq!(msg.to_value(), serde_json::from_str::<Value>(raw).unwrap());
        let Message::Request(r) = msg else { panic!() };
        assert_eq!(progress_token(r.params.as_ref()), Some(&Value::from(7)));
    }

    #[test]
    fn id_keys_distinguish_strings_from_numbers() {
        assert_ne!(id_key(&Value::from(1)), id_key(&Value::from("1")));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from), // NaN and infinities become null
                ".{0,12}".prop_map(Value::from),
                Just(Value::from("2.0")),
            ]
        }

        /// Any JSON value, nested a few levels.
        fn any_json() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Objects made of the envelope's own keys, with any values: the
        /// inputs that reach every branch of the classification.
        fn envelope_like() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("jsonrpc"),
                Just("id"),
                Just("method"),
                Just("params"),
                Just("result"),
                Just("error"),
                Just("extra"),
            ];
            let value = prop_oneof![3 => Just(Value::from("2.0")), 10 => any_json()];
            prop::collection::btree_map(key, value, 0..7)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        }

        fn id() -> impl Strategy<Value = Id> {
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                ".{0,16}".prop_map(Value::from)
            ]
        }

        fn params() -> impl Strategy<Value = Option<Value>> {
            prop::option::of(prop_oneof![
                prop::collection::btree_map(".{0,8}", any_json(), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                prop::collection::vec(any_json(), 0..4).prop_map(Value::Array),
            ])
        }

        fn message() -> impl Strategy<Value = Message> {
            prop_oneof![
                (id(), ".{0,16}", params()).prop_map(|(id, method, params)| Message::Request(Request {
                    id,
                    method,
                    params
                })),
                (".{0,16}", params())
                    .prop_map(|(method, params)| Message::Notification(Notification { method, params })),
                (id(), any_json()).prop_map(|(id, result)| Message::Response(Response { id, outcome: Ok(result) })),
                (id(), any::<i64>(), ".{0,16}").prop_map(|(id, code, message)| {
                    Message::Response(Response { id, outcome: Err(error_object(code, message)) })
                }),
            ]
        }

        fn id_is_string_or_integer(id: &Value) -> bool {
            id.is_string() || id.is_i64() || id.is_u64()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn classifying_any_value_never_panics(v in any_json()) {
                let _ = Message::from_value(v);
            }

            /// Whatever is accepted has a well-formed id, and round-trips.
            #[test]
            fn what_is_accepted_is_well_formed(v in envelope_like()) {
                if let Ok(msg) = Message::from_value(v) {
                    match &msg {
                        Message::Request(r) => prop_assert!(id_is_string_or_integer(&r.id), "{:?}", r.id),
                        // null only for errors about a request whose id could not be read
                        Message::Response(r) => prop_assert!(id_is_string_or_integer(&r.id) || r.id.is_null()),
                        Message::Notification(_) => {}
                    }
                    if let Message::Request(Request { params: Some(p), .. })
                    | Message::Notification(Notification { params: Some(p), .. }) = &msg
                    {
                        prop_assert!(p.is_object() || p.is_array());
                    }
                    prop_assert_eq!(Message::from_value(msg.to_value()), Ok(msg));
                }
            }

            #[test]
            fn valid_messages_round_trip(msg in message()) {
                prop_assert_eq!(Message::from_value(msg.to_value()), Ok(msg));
            }

            #[test]
            fn ids_of_other_types_are_refused(
                id in prop_oneof![
                    any::<bool>().prop_map(Value::from),
                    (-1e9f64..1e9).prop_filter("not whole", |f| f.fract() != 0.0).prop_map(Value::from),
                    Just(json!([1])),
                    Just(json!({"a": 1})),
                ],
                request in any::<bool>(),
            ) {
                let v = if request {
                    json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "result": {}})
                };
                prop_assert!(Message::from_value(v).is_err());
            }
        }
    }
}
