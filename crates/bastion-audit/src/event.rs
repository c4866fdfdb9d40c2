//! What one audit record says.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How what was asked ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Tried, and failed (the server's error, a timeout, a missing secret).
    Error,
    /// Refused by Bastion: authentication, access, a limit.
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Outcome, String> {
        match s {
            "ok" => Ok(Outcome::Ok),
            "error" => Ok(Outcome::Error),
            "denied" => Ok(Outcome::Denied),
            _ => Err(format!("unknown outcome {s:?}: ok, error or denied")),
        }
    }
}

/// One audit record. Absent fields are left out of the JSON.
///
/// `kind` says what happened: `mcp.request` for every MCP request (its
/// `method`, and for a call its `server` and `tool`), `auth.failure` for a
/// refused credential, `key.create`, `secret.set`… for operations on the
/// store. Values a caller sent are never kept, only `args_digest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened (RFC 3339, microseconds, UTC).
    #[serde(with = "micros")]
    pub ts: DateTime<Utc>,
    pub kind: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How the user was authenticated: `api_key`, `oidc`, `mtls`, `cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The tool, prompt or resource asked for, as the server names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// A keyed digest of the arguments ([`crate::AuditKey::digest_arguments`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_digest: Option<String>,
    /// What decided a denial (a built-in rule or a policy's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The JSON-RPC error code of an error or a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Why, in words Bastion chose (never a value the caller sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Anything else the kind of event carries (the target of an admin
    /// change, data-guard hits…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl Event {
    /// An event of `kind` now, with nothing else said.
    pub fn new(kind: impl Into<String>, outcome: Outcome) -> Event {
        Event::at(Utc::now(), kind, outcome)
    }

    /// An event of `kind` at `ts` (kept to the microsecond, as stored).
    pub fn at(ts: DateTime<Utc>, kind: impl Into<String>, outcome: Outcome) -> Event {
        let mut e = Fields::at(ts, "", outcome).to_event();
        e.kind = kind.into();
        e
    }

    /// The record's stored text: the event's JSON, exactly as its
    /// `Serialize` writes it (see [`Event::write_body`]).
    pub fn to_body(&self) -> String {
        let mut out = String::with_capacity(384);
        self.write_body(&mut out);
        out
    }

    /// Appends the record's stored text to `out` (see [`Fields::write_body`]).
    pub fn write_body(&self, out: &mut String) {
        self.fields().write_body(out);
    }

    /// The event's fields, borrowed.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            ts: self.ts,
            kind: &self.kind,
            outcome: self.outcome,
            user: self.user.as_deref(),
            auth: self.auth.as_deref(),
            client_ip: self.client_ip.as_deref(),
            session: self.session.as_deref(),
            request_id: self.request_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
            method: self.method.as_deref(),
            server: self.server.as_deref(),
            tool: self.tool.as_deref(),
            args_digest: self.args_digest.as_deref(),
            policy: self.policy.as_deref(),
            error_code: self.error_code,
            reason: self.reason.as_deref(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_us: self.duration_us,
            detail: self.detail.as_ref(),
        }
    }

    /// Reads a stored text.
    pub fn from_body(body: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// The event written as the text it will be sealed as.
    pub fn entry(&self) -> Entry {
        self.fields().entry()
    }

    /// The time as stored in the searchable column: microseconds since the
    /// epoch.
    pub fn ts_micros(&self) -> i64 {
        self.ts.timestamp_micros()
    }
}

/// An event's fields, borrowed: what the request path writes a call's
/// record from without making an [`Event`], whose dozen strings would be
/// allocated and freed again for every call. Field for field an
/// [`Event`]; see there.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub ts: DateTime<Utc>,
    pub kind: &'a str,
    pub outcome: Outcome,
    pub user: Option<&'a str>,
    pub auth: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub session: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub method: Option<&'a str>,
    pub server: Option<&'a str>,
    pub tool: Option<&'a str>,
    pub args_digest: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub error_code: Option<i64>,
    pub reason: Option<&'a str>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub duration_us: Option<u64>,
    pub detail: Option<&'a Value>,
}

impl<'a> Fields<'a> {
    /// The fields of an event of `kind` now, nothing else said.
    pub fn new(kind: &'a str, outcome: Outcome) -> Fields<'a> {
        Fields::at(Utc::now(), kind, outcome)
    }

    /// The fields of an event of `kind` at `ts` (kept to the microsecond,
    /// as stored), nothing else said.
    pub fn at(ts: DateTime<Utc>, kind: &'a str, outcome: Outcome) -> Fields<'a> {
        use chrono::SubsecRound as _;
        Fields {
            ts: ts.trunc_subsecs(6),
            kind,
            outcome,
            user: None,
            auth: None,
            client_ip: None,
            session: None,
            request_id: None,
            trace_id: None,
            method: None,
            server: None,
            tool: None,
            args_digest: None,
            policy: None,
            error_code: None,
            reason: None,
            bytes_in: None,
            bytes_out: None,
            duration_us: None,
            detail: None,
        }
    }

    /// The record written as the text it will be sealed as.
    pub fn entry(&self) -> Entry {
        let mut out = String::with_capacity(384);
        self.write_body(&mut out);
        Entry { ts: self.ts.timestamp_micros(), body: out }
    }

    /// An event with these fields, owned.
    pub fn to_event(&self) -> Event {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Event {
            ts: self.ts,
            kind: self.kind.to_owned(),
            outcome: self.outcome,
            user: owned(self.user),
            auth: owned(self.auth),
            client_ip: owned(self.client_ip),
            session: owned(self.session),
            request_id: owned(self.request_id),
            trace_id: owned(self.trace_id),
            method: owned(self.method),
            server: owned(self.server),
            tool: owned(self.tool),
            args_digest: owned(self.args_digest),
            policy: owned(self.policy),
            error_code: self.error_code,
            reason: owned(self.reason),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_us: self.duration_us,
            detail: self.detail.cloned(),
        }
    }

    /// Appends the record's stored text to `out`: the same text as
    /// `serde_json::to_writer(out, &event)` for the event with these
    /// fields, written field by field: the
    /// request path writes one record per call, and serde's general path
    /// spends most of its time escaping keys Bastion chose and formatting
    /// the time through `fmt`. A string with nothing to escape is copied
    /// as it is; one with something to escape, and `detail`, go to
    /// serde_json. A unit test holds the two to the same bytes. Written
    /// into a `String`, so that neither the record nor the batch it joins
    /// is checked for UTF-8 again.
    pub fn write_body(&self, out: &mut String) {
        // Each key is written with its punctuation as one literal, so that
        // the copy is of a length known here rather than a call.
        macro_rules! text {
            ($name:literal, $value:expr) => {
                if let Some(v) = $value {
                    text_field(out, concat!(",\"", $name, "\":"), v);
                }
            };
        }
        macro_rules! number {
            ($name:literal, $value:expr) => {
                if let Some(n) = $value {
                    out.push_str(concat!(",\"", $name, "\":"));
                    out.push_str(itoa::Buffer::new().format(n));
                }
            };
        }
        out.push_str("{\"ts\":\"");
        match micros::rfc3339(&self.ts) {
            Some(text) => out.push_str(std::str::from_utf8(&text).expect("digits are ASCII")),
            None => out.push_str(&self.ts.to_rfc3339_opts(SecondsFormat::Micros, true)),
        }
        out.push('"');
        text!("kind", Some(self.kind));
        text!("outcome", Some(self.outcome.as_str()));
        text!("user", self.user);
        text!("auth", self.auth);
        text!("client_ip", self.client_ip);
        text!("session", self.session);
        text!("request_id", self.request_id);
        text!("trace_id", self.trace_id);
        text!("method", self.method);
        text!("server", self.server);
        text!("tool", self.tool);
        text!("args_digest", self.args_digest);
        text!("policy", self.policy);
        number!("error_code", self.error_code);
        text!("reason", self.reason);
        number!("bytes_in", self.bytes_in);
        number!("bytes_out", self.bytes_out);
        number!("duration_us", self.duration_us);
        if let Some(detail) = self.detail {
            out.push_str(",\"detail\":");
            serde_json::to_writer(Text(out), detail).expect("a JSON value always serializes");
        }
        out.push('}');
    }
}

mod micros {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Rfc3339(ts))
    }

    /// RFC 3339 to the microsecond, `Z` for UTC, written where it goes
    /// rather than made as a string first; what chrono writes for the rest
    /// (years of other than four digits, a leap second).
    pub(super) struct Rfc3339<'a>(pub &'a DateTime<Utc>);

    impl std::fmt::Display for Rfc3339<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match rfc3339(self.0) {
                Some(text) => f.write_str(std::str::from_utf8(&text).expect("digits are ASCII")),
                None => f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Micros, true)),
            }
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, digit by digit; `None` for what
    /// chrono is left to write (a year of other than four digits, a leap
    /// second).
    pub(super) fn rfc3339(ts: &DateTime<Utc>) -> Option<[u8; 27]> {
        use chrono::{Datelike as _, Timelike as _};
        let nanos = ts.nanosecond();
        let year = ts.year();
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return None;
        }
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut digits = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        digits(0, 4, year as u32);
        digits(5, 2, ts.month());
        digits(8, 2, ts.day());
        digits(11, 2, ts.hour());
        digits(14, 2, ts.minute());
        digits(17, 2, ts.second());
        digits(20, 6, nanos / 1000);
        Some(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

/// serde_json writing into a `String`. It writes whole characters and
/// escapes, so every piece is UTF-8 (and is checked: this is the path of
/// the rare value with something to escape, and of `detail`).
struct Text<'a>(&'a mut String);

impl std::io::Write for Text<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push_str(std::str::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `,"name":"value"`, the value escaped as serde_json escapes it; `key`
/// is `,"name":` (names are Bastion's own and need no escaping).
#[inline(always)]
fn text_field(out: &mut String, key: &'static str, value: &str) {
    out.push_str(key);
    // Every byte looked at, none skipped early: the loop the compiler
    // makes wide. Most values (names, addresses, digests) escape nothing.
    let plain = !value.bytes().fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if plain {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        serde_json::to_writer(Text(out), value).expect("a string always serializes");
    }
}

/// An event already written as the text it will be sealed as, with its
/// time: what the request path hands to the writer. One string crosses
/// from the thread that built the event to the one that seals it, instead
/// of the event's many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its time, in microseconds since the epoch.
    pub ts: i64,
    /// Its text ([`Event::to_body`]).
    pub body: String,
}

/// What a record is sealed from: its time, and the text it is stored as.
pub trait Sealable {
    /// Its time, in microseconds since the epoch.
    fn ts_micros(&self) -> i64;
    /// Appends its text to `out`.
    fn write_body(&self, out: &mut String);
    /// About how long its text is: what a batch reserves for it, so that
    /// the batch's text is not moved while it is written.
    fn body_len_hint(&self) -> usize {
        448
    }
}

impl Sealable for Event {
    fn ts_micros(&self) -> i64 {
        Event::ts_micros(self)
    }

    fn write_body(&self, out: &mut String) {
        Event::write_body(self, out);
    }
}

impl Sealable for Entry {
    fn ts_micros(&self) -> i64 {
        self.ts
    }

    fn write_body(&self, out: &mut String) {
        out.push_str(&self.body);
    }

    fn body_len_hint(&self) -> usize {
        self.body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_leave_absent_fields_out() {
        let mut e = Event::new("mcp.request", Outcome::Denied);
        e.user = Some("alice".into());
        e.duration_us = Some(42);
        let body = e.to_body();
        assert!(!body.contains("server") && body.contains("\"outcome\":\"denied\""), "{body}");
        let back = Event::from_body(&body).unwrap();
        assert_eq!(back, e, "an event is its stored text");
        assert_eq!(back.to_body(), body);
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        use chrono::TimeZone as _;
        let times = [
            Utc.with_ymd_and_hms(2026, 12, 7, 4, 5, 6).unwrap() + chrono::Duration::microseconds(7),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() + chrono::Duration::microseconds(999_999),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap(),
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_micro_opt(23, 59, 59, 1_500_000)
                .unwrap()
                .and_utc(),
        ];
        for ts in times {
            let e = Event::at(ts, "x", Outcome::Ok);
            let body = e.to_body();
            let expected = e.ts.to_rfc3339_opts(SecondsFormat::Micros, true);
            assert!(body.starts_with(&format!("{{\"ts\":\"{expected}\",")), "{body}");
        }
    }

    fn text() -> impl proptest::strategy::Strategy<Value = Option<String>> {
        use proptest::prelude::*;
        // Plain names, and text with quotes, backslashes, control
        // characters, DEL and non-ASCII.
        proptest::option::of(prop_oneof!["[a-z0-9._/-]{0,24}", "(?s).{0,24}", "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀]{0,8}"])
    }

    proptest::proptest! {
        #[test]
        fn bodies_are_what_serde_writes(
            kind in "[a-z.]{1,16}|(?s).{0,8}",
            outcome in 0u8..3,
            texts in proptest::collection::vec(text(), 12),
            numbers in proptest::collection::vec(proptest::option::of(proptest::num::u64::ANY), 3),
            code in proptest::option::of(proptest::num::i64::ANY),
            micros in -62_135_596_800_000_000i64..253_402_300_799_999_999,
            detail in proptest::option::of("(?s).{0,12}"),
        ) {
            let ts = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            let outcome = [Outcome::Ok, Outcome::Error, Outcome::Denied][outcome as usize];
            let mut e = Event::at(ts, kind, outcome);
            let mut t = texts.into_iter();
            for field in [
                &mut e.user, &mut e.auth, &mut e.client_ip, &mut e.session, &mut e.request_id, &mut e.trace_id,
                &mut e.method, &mut e.server, &mut e.tool, &mut e.args_digest, &mut e.policy, &mut e.reason,
            ] {
                *field = t.next().unwrap();
            }
            (e.bytes_in, e.bytes_out, e.duration_us) = (numbers[0], numbers[1], numbers[2]);
            e.error_code = code;
            e.detail = detail.map(|d| serde_json::json!({"guard": [{"kind": d, "at": [1, 2.5, null, true]}]}));
            let expected = serde_json::to_string(&e).unwrap();
            proptest::prop_assert_eq!(e.to_body(), expected);
            proptest::prop_assert_eq!(&e.fields().to_event(), &e, "borrowed fields are the event's");
        }
    }
}
