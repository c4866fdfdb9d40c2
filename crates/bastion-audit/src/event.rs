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
        use chrono::SubsecRound as _;
        Event {
            ts: ts.trunc_subsecs(6),
            kind: kind.into(),
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

    /// The record's stored text.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }

    /// Reads a stored text.
    pub fn from_body(body: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// The event written as the text it will be sealed as.
    pub fn entry(&self) -> Entry {
        Entry { ts: self.ts_micros(), body: self.to_body() }
    }

    /// The time as stored in the searchable column: microseconds since the
    /// epoch.
    pub fn ts_micros(&self) -> i64 {
        self.ts.timestamp_micros()
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
            use chrono::{Datelike as _, Timelike as _};
            let ts = self.0;
            let nanos = ts.nanosecond();
            if !(0..=9999).contains(&ts.year()) || nanos >= 1_000_000_000 {
                return f.write_str(&ts.to_rfc3339_opts(SecondsFormat::Micros, true));
            }
            write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                ts.year(),
                ts.month(),
                ts.day(),
                ts.hour(),
                ts.minute(),
                ts.second(),
                nanos / 1000
            )
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
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
    fn write_body(&self, out: &mut Vec<u8>);
}

impl Sealable for Event {
    fn ts_micros(&self) -> i64 {
        Event::ts_micros(self)
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("an event always serializes");
    }
}

impl Sealable for Entry {
    fn ts_micros(&self) -> i64 {
        self.ts
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.body.as_bytes());
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
}
