//! The keyed hash chain: sealing records and verifying a stored chain.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::event::Event;

type HmacSha256 = Hmac<Sha256>;

/// A record's MAC.
pub type Mac = [u8; 32];

/// What the first record of a chain is chained to.
pub const GENESIS: Mac = [0; 32];

const DOMAIN: &[u8] = b"bastion-audit-v1";

/// The audit key: the chain's MAC key and the arguments' digest key, both
/// derived from one 256-bit secret. Wiped on drop; `Debug` shows nothing.
pub struct AuditKey {
    chain: Keyed,
    args: Keyed,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    Keyed::new(key).mac(parts)
}

/// An HMAC keyed once: each MAC starts from a copy of it, which spares
/// hashing the key's two padded blocks again for every record. The state
/// stands for the key, so it is overwritten when dropped.
struct Keyed(HmacSha256);

impl Keyed {
    fn new(key: &[u8]) -> Keyed {
        Keyed(HmacSha256::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// A MAC begun from the key, for text given piece by piece.
    fn start(&self) -> HmacSha256 {
        self.0.clone()
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.start();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

impl Drop for Keyed {
    fn drop(&mut self) {
        // Assigning writes over the state in place; `black_box` keeps the
        // write from being optimised away as dead.
        self.0 = HmacSha256::new_from_slice(&[]).expect("HMAC takes any key length");
        std::hint::black_box(&mut self.0);
    }
}

impl AuditKey {
    /// The key derived from a 256-bit secret.
    pub fn from_bytes(root: &[u8; 32]) -> AuditKey {
        let chain = Zeroizing::new(hmac(root, &[b"bastion audit chain"]));
        let args = Zeroizing::new(hmac(root, &[b"bastion audit arguments"]));
        AuditKey { chain: Keyed::new(&chain[..]), args: Keyed::new(&args[..]) }
    }

    /// The MAC of record `seq` of `chain`, whose text is `body`, following
    /// the record whose MAC is `prev`.
    pub fn seal(&self, chain: &str, seq: u64, prev: &Mac, body: &str) -> Mac {
        self.seal_bytes(chain, seq, prev, body.as_bytes())
    }

    pub(crate) fn seal_bytes(&self, chain: &str, seq: u64, prev: &Mac, body: &[u8]) -> Mac {
        let chain_len = (chain.len() as u64).to_be_bytes();
        self.chain.mac(&[DOMAIN, &chain_len, chain.as_bytes(), &seq.to_be_bytes(), prev, body])
    }

    /// A keyed digest of a call's arguments: 128 bits, hex. Objects are
    /// read with their keys sorted, so the same arguments sent in another
    /// order give the same digest.
    pub fn digest_arguments(&self, args: &Value) -> String {
        self.arguments_digest(args).as_str().to_owned()
    }

    /// [`AuditKey::digest_arguments`], kept in place rather than in a new
    /// string.
    pub fn arguments_digest(&self, args: &Value) -> ArgumentsDigest {
        // The canonical text goes into the MAC as it is written: no copy of
        // the arguments is made, not even briefly.
        let mut mac = self.args.start();
        canonical(args, &mut Feed(&mut mac)).expect("a MAC takes any text");
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        let mut text = [0u8; 32];
        hex::encode_to_slice(&digest[..16], &mut text).expect("16 bytes are 32 hex digits");
        ArgumentsDigest(text)
    }
}

/// A keyed digest of a call's arguments, as hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgumentsDigest([u8; 32]);

impl ArgumentsDigest {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// Writes into a MAC.
struct Feed<'a>(&'a mut HmacSha256);

impl std::io::Write for Feed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON text with object keys sorted, without spaces.
fn canonical<W: std::io::Write>(v: &Value, out: &mut W) -> std::io::Result<()> {
    match v {
        Value::Object(m) => {
            out.write_all(b"{")?;
            // One key needs no sorting, and spares the list sorted.
            if m.len() < 2 {
                for (k, v) in m {
                    member(out, false, k, v)?;
                }
            } else {
                let mut sorted: Vec<(&String, &Value)> = m.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    member(out, i > 0, k, v)?;
                }
            }
            out.write_all(b"}")
        }
        Value::Array(a) => {
            out.write_all(b"[")?;
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                canonical(v, out)?;
            }
            out.write_all(b"]")
        }
        other => write_json(out, other),
    }
}

/// `"key":value` of an object, after a comma unless it is the first.
fn member<W: std::io::Write>(out: &mut W, comma: bool, k: &str, v: &Value) -> std::io::Result<()> {
    if comma {
        out.write_all(b",")?;
    }
    write_json(out, k)?;
    out.write_all(b":")?;
    canonical(v, out)
}

/// A key or a scalar as JSON text, appended.
fn write_json<W: std::io::Write, T: Serialize + ?Sized>(out: &mut W, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(out, v).map_err(std::io::Error::other)
}

/// A record as read back from the store: its number, text and MAC, and
/// the fields searches go by, read from its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub body: String,
    pub mac: Vec<u8>,
    /// Microseconds since the epoch.
    pub ts: i64,
    pub kind: String,
    pub user: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub outcome: String,
}

/// A chain's head as the store keeps it: its last record, and the last
/// record pruned (`0` and [`GENESIS`] when none was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub mac: Mac,
    pub anchor_seq: u64,
    pub anchor_mac: Mac,
}

/// A record's number and MAC, kept apart from the store: the chain must
/// still hold that record with that MAC (or have pruned past it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: u64,
    /// Hex.
    pub mac: String,
    /// When it was taken (RFC 3339).
    pub ts: String,
}

/// Where a chain fails to verify, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record at which it shows.
    pub seq: u64,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}", self.seq, self.what)
    }
}

impl std::error::Error for Problem {}

/// What a verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    /// The first record kept (after the last one pruned).
    pub first: u64,
    /// The last record (the head).
    pub last: u64,
    /// Checkpoints found in the chain with their MAC.
    pub checkpoints: usize,
    /// Checkpoints older than the records kept, which could not be checked.
    pub pruned_checkpoints: usize,
}

/// Checks a chain record by record, in order of `seq`.
pub struct Verifier<'k> {
    key: &'k AuditKey,
    chain: String,
    anchor: u64,
    next: u64,
    prev: Mac,
    records: u64,
    checkpoints: BTreeMap<u64, Mac>,
    matched: usize,
    pruned: usize,
}

impl<'k> Verifier<'k> {
    /// A verifier for `chain` whose records start after `head`'s anchor.
    pub fn new(key: &'k AuditKey, chain: &str, head: &Head) -> Verifier<'k> {
        Verifier {
            key,
            chain: chain.to_string(),
            anchor: head.anchor_seq,
            next: head.anchor_seq + 1,
            prev: head.anchor_mac,
            records: 0,
            checkpoints: BTreeMap::new(),
            matched: 0,
            pruned: 0,
        }
    }

    /// Adds a checkpoint the chain must agree with. An unreadable one, or
    /// one of another chain, is an error.
    pub fn expect(&mut self, cp: &Checkpoint) -> Result<(), String> {
        if cp.chain != self.chain {
            return Err(format!("the checkpoint is of chain {:?}, not {:?}", cp.chain, self.chain));
        }
        let mac: Mac = hex::decode(&cp.mac)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "the checkpoint's mac is not 64 hex characters".to_string())?;
        if cp.seq < self.anchor {
            self.pruned += 1;
        } else if cp.seq == self.anchor && cp.seq > 0 {
            if mac != self.prev {
                return Err(format!("record {}: the last record pruned does not match the checkpoint", cp.seq));
            }
            self.matched += 1;
        } else {
            self.checkpoints.insert(cp.seq, mac);
        }
        Ok(())
    }

    /// Checks the next record.
    pub fn feed(&mut self, r: &Stored) -> Result<(), Problem> {
        let problem = |what: String| Problem { seq: r.seq, what };
        if r.seq > self.next {
            let missing = if r.seq - self.next == 1 {
                format!("record {} is missing (deleted)", self.next)
            } else {
                format!("records {} to {} are missing (deleted)", self.next, r.seq - 1)
            };
            return Err(Problem { seq: self.next, what: missing });
        }
        if r.seq < self.next {
            return Err(problem(format!("appears again after record {} (inserted or reordered)", self.next - 1)));
        }
        let mac = self.key.seal(&self.chain, r.seq, &self.prev, &r.body);
        if r.mac.as_slice() != mac.as_slice() {
            return Err(problem("does not match its MAC: changed, inserted, reordered or renumbered".into()));
        }
        Event::from_body(&r.body).map_err(|e| problem(format!("its text is not a record ({e})")))?;
        if let Some(expected) = self.checkpoints.remove(&r.seq) {
            if expected != mac {
                return Err(problem("differs from the checkpoint kept for it (the trail was rewritten)".into()));
            }
            self.matched += 1;
        }
        self.prev = mac;
        self.next += 1;
        self.records += 1;
        Ok(())
    }

    /// Checks the records of one stored batch, in order, then the batch's
    /// bounds (which searches go by) against them: its first and last
    /// number, and its oldest and newest time.
    pub fn batch(
        &mut self,
        first: u64,
        last: u64,
        ts_min: i64,
        ts_max: i64,
        records: &[Stored],
    ) -> Result<(), Problem> {
        let Some((head, tail)) = records.first().zip(records.last()) else {
            return Err(Problem { seq: first, what: "a stored batch holds no record".into() });
        };
        for r in records {
            self.feed(r)?;
        }
        if head.seq != first {
            return Err(Problem {
                seq: head.seq.min(first),
                what: format!(
                    "its batch says it begins at record {first}, but it begins at {} (the batch was changed)",
                    head.seq
                ),
            });
        }
        if tail.seq < last {
            return Err(Problem {
                seq: tail.seq + 1,
                what: format!("is missing (deleted): its batch says it ends at record {last}"),
            });
        }
        if tail.seq > last {
            return Err(Problem {
                seq: last + 1,
                what: format!("is past the end its batch states, record {last} (inserted, or the batch was changed)"),
            });
        }
        let lo = records.iter().map(|r| r.ts).min().unwrap_or(ts_min);
        let hi = records.iter().map(|r| r.ts).max().unwrap_or(ts_max);
        if (lo, hi) != (ts_min, ts_max) {
            return Err(Problem {
                seq: first,
                what: "its batch's times differ from its records' (the batch was changed)".into(),
            });
        }
        Ok(())
    }

    /// Checks that the records fed end where the chain's head says, and
    /// that no checkpoint was left unmet.
    pub fn finish(self, head: &Head) -> Result<Verified, Problem> {
        let last = self.next - 1;
        if head.seq > last {
            return Err(Problem {
                seq: last + 1,
                what: format!(
                    "records {} to {} are missing (deleted): the head says the chain ends at {}",
                    last + 1,
                    head.seq,
                    head.seq
                ),
            });
        }
        if head.seq < last {
            return Err(Problem {
                seq: head.seq + 1,
                what: format!(
                    "the head says the chain ends at {}, but records follow (inserted, or the head was set back)",
                    head.seq
                ),
            });
        }
        if head.mac != self.prev {
            return Err(Problem {
                seq: last,
                what: "the head's MAC is not this record's (the head was changed)".into(),
            });
        }
        if let Some((&seq, _)) = self.checkpoints.iter().next() {
            return Err(Problem {
                seq,
                what: format!("a checkpoint names this record, but the chain ends at {last} (its tail was cut)"),
            });
        }
        Ok(Verified {
            records: self.records,
            first: self.anchor + 1,
            last,
            checkpoints: self.matched,
            pruned_checkpoints: self.pruned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Outcome;
    use proptest::prelude::*;
    use serde_json::json;

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[7; 32])
    }

    /// A chain of `n` records, with its head.
    fn chain(key: &AuditKey, n: u64) -> (Vec<Stored>, Head) {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 1..=n {
            let mut e = Event::new("mcp.request", if seq % 3 == 0 { Outcome::Denied } else { Outcome::Ok });
            e.user = Some(format!("user{}", seq % 2));
            e.server = Some("github".into());
            e.tool = Some(format!("tool{seq}"));
            let body = e.to_body();
            let mac = key.seal("main", seq, &prev, &body);
            out.push(Stored {
                seq,
                body,
                mac: mac.to_vec(),
                ts: e.ts_micros(),
                kind: e.kind.clone(),
                user: e.user.clone(),
                server: e.server.clone(),
                tool: e.tool.clone(),
                outcome: e.outcome.as_str().into(),
            });
            prev = mac;
        }
        (out, Head { seq: n, mac: prev, anchor_seq: 0, anchor_mac: GENESIS })
    }

    fn verify(key: &AuditKey, records: &[Stored], head: &Head, cps: &[Checkpoint]) -> Result<Verified, Problem> {
        let mut v = Verifier::new(key, "main", head);
        for cp in cps {
            v.expect(cp).map_err(|what| Problem { seq: cp.seq, what })?;
        }
        for r in records {
            v.feed(r)?;
        }
        v.finish(head)
    }

    fn checkpoint(records: &[Stored], seq: u64) -> Checkpoint {
        let r = &records[seq as usize - 1];
        Checkpoint { chain: "main".into(), seq, mac: hex::encode(&r.mac), ts: String::new() }
    }

    #[test]
    fn an_intact_chain_verifies() {
        let k = key();
        let (records, head) = chain(&k, 10);
        let v = verify(&k, &records, &head, &[checkpoint(&records, 4)]).unwrap();
        assert_eq!((v.records, v.first, v.last, v.checkpoints), (10, 1, 10, 1));
        let empty = Head { seq: 0, mac: GENESIS, anchor_seq: 0, anchor_mac: GENESIS };
        assert_eq!(verify(&k, &[], &empty, &[]).unwrap().records, 0);
    }

    #[test]
    fn macs_and_digests_are_the_published_hmac_construction() {
        // Worked out apart from this code: HMAC-SHA-256 with keys derived
        // from the root, over the domain, the chain's length and name, the
        // number, the previous MAC and the text. Stores written by earlier
        // versions verify only while this holds.
        let k = key();
        let mac = k.seal("main", 3, &GENESIS, r#"{"kind":"x"}"#);
        assert_eq!(hex::encode(mac), "874aa8e39f5fe9dc3c098705944517da889ecf6ec9bb380cb10395fb482d585f");
        let args = serde_json::json!({"b": [true, null], "a": 1});
        assert_eq!(k.digest_arguments(&args), "a377b948db3554d1c190523dc0579f1b");
        // The digest is the MAC of the canonical text, however it is fed.
        let one = serde_json::json!({"m": {"x": [1, "\u{e9}"]}});
        assert_eq!(
            k.digest_arguments(&one),
            hex::encode(&k.args.mac(&["{\"m\":{\"x\":[1,\"\u{e9}\"]}}".as_bytes()])[..16])
        );
        assert_eq!(k.seal("main", 3, &GENESIS, r#"{"kind":"x"}"#), mac, "a keyed state is reused, not used up");
    }

    #[test]
    fn another_key_does_not_verify() {
        let (records, head) = chain(&key(), 3);
        let err = verify(&AuditKey::from_bytes(&[8; 32]), &records, &head, &[]).unwrap_err();
        assert_eq!(err.seq, 1);
    }

    #[test]
    fn a_changed_body_is_found_where_it_is() {
        let k = key();
        let (mut records, head) = chain(&k, 10);
        records[5].body = records[5].body.replace("\"tool6\"", "\"tool7\"");
        let err = verify(&k, &records, &head, &[]).unwrap_err();
        assert_eq!(err.seq, 6, "{err}");
        assert!(err.what.contains("MAC"), "{err}");
    }

    #[test]
    fn a_batch_s_changed_bounds_are_found() {
        let k = key();
        let (records, head) = chain(&k, 6);
        let (lo, hi) = (records[3].ts, records[5].ts);
        let run = |first: u64, last: u64, ts_min: i64, ts_max: i64| {
            let mut v = Verifier::new(&k, "main", &head);
            v.batch(1, 3, records[0].ts, records[2].ts, &records[..3])?;
            v.batch(first, last, ts_min, ts_max, &records[3..])?;
            v.finish(&head)
        };
        assert_eq!(run(4, 6, lo, hi).unwrap().records, 6);
        for (first, last, ts_min, ts_max, at, says) in [
            (4, 7, lo, hi, 7, "missing"),
            (4, 5, lo, hi, 6, "past the end"),
            (3, 6, lo, hi, 3, "begins at"),
            (4, 6, lo + 1, hi, 4, "times"),
            (4, 6, lo, hi - 1, 4, "times"),
        ] {
            let err = run(first, last, ts_min, ts_max).unwrap_err();
            assert!(err.seq == at && err.what.contains(says), "{err}");
        }
        let mut v = Verifier::new(&k, "main", &head);
        assert!(v.batch(1, 1, 0, 0, &[]).unwrap_err().what.contains("no record"));
    }

    #[test]
    fn a_deleted_record_is_found() {
        let k = key();
        let (mut records, head) = chain(&k, 10);
        records.remove(4);
        let err = verify(&k, &records, &head, &[]).unwrap_err();
        assert_eq!(err.seq, 5, "{err}");
        assert!(err.what.contains("missing"), "{err}");
        // renumbered to close the gap: the MAC breaks instead
        let (mut records, head) = chain(&k, 10);
        records.remove(4);
        for r in records.iter_mut().skip(4) {
            r.seq -= 1;
        }
        assert_eq!(verify(&k, &records, &head, &[]).unwrap_err().seq, 5);
    }

    #[test]
    fn an_inserted_record_is_found() {
        let k = key();
        let (mut records, head) = chain(&k, 10);
        let mut forged = records[3].clone();
        forged.body = forged.body.replace("tool4", "tool4b");
        records.insert(4, forged);
        let err = verify(&k, &records, &head, &[]).unwrap_err();
        assert_eq!(err.seq, 4, "{err}");
    }

    #[test]
    fn reordered_records_are_found() {
        let k = key();
        let (mut records, head) = chain(&k, 10);
        records.swap(6, 7);
        assert_eq!(verify(&k, &records, &head, &[]).unwrap_err().seq, 7);
        // with their numbers swapped too
        let (mut records, head) = chain(&k, 10);
        records.swap(6, 7);
        records[6].seq = 7;
        records[7].seq = 8;
        assert_eq!(verify(&k, &records, &head, &[]).unwrap_err().seq, 7);
    }

    #[test]
    fn a_cut_tail_is_found_by_the_head_or_a_checkpoint() {
        let k = key();
        let (records, head) = chain(&k, 10);
        let err = verify(&k, &records[..8], &head, &[]).unwrap_err();
        assert_eq!(err.seq, 9, "{err}");
        // the head set back too: only a checkpoint kept elsewhere finds it
        let short_head = Head { seq: 8, mac: records[7].mac.clone().try_into().unwrap(), ..head };
        let cp = checkpoint(&records, 9);
        assert!(verify(&k, &records[..8], &short_head, &[]).is_ok());
        let err = verify(&k, &records[..8], &short_head, &[cp]).unwrap_err();
        assert_eq!(err.seq, 9, "{err}");
    }

    #[test]
    fn a_chain_rewritten_with_the_key_differs_from_its_checkpoint() {
        let k = key();
        let (records, _) = chain(&k, 10);
        let cp = checkpoint(&records, 5);
        // the same number of records, made afresh (other times, other tools)
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (rewritten, head) = chain(&k, 10);
        let err = verify(&k, &rewritten, &head, &[cp]).unwrap_err();
        assert_eq!(err.seq, 5, "{err}");
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_anchor() {
        let k = key();
        let (records, head) = chain(&k, 10);
        let anchor = Head { anchor_seq: 4, anchor_mac: records[3].mac.clone().try_into().unwrap(), ..head };
        let v = verify(&k, &records[4..], &anchor, &[checkpoint(&records, 2), checkpoint(&records, 4)]).unwrap();
        assert_eq!((v.records, v.first, v.checkpoints, v.pruned_checkpoints), (6, 5, 1, 1));
        // one more record removed than the anchor says
        assert_eq!(verify(&k, &records[5..], &anchor, &[]).unwrap_err().seq, 5);
    }

    #[test]
    fn argument_digests_ignore_key_order_and_depend_on_the_key() {
        let k = key();
        let a = k.digest_arguments(&json!({"b": 1, "a": {"y": [1, "x"], "x": null}}));
        let b = k.digest_arguments(&json!({"a": {"x": null, "y": [1, "x"]}, "b": 1}));
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert_ne!(a, k.digest_arguments(&json!({"b": 2, "a": {"y": [1, "x"], "x": null}})));
        assert_ne!(
            a,
            AuditKey::from_bytes(&[9; 32]).digest_arguments(&json!({"b": 1, "a": {"y": [1, "x"], "x": null}}))
        );
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    /// The text digested is part of the stored trail: digests of the same
    /// arguments must stay comparable across versions.
    #[test]
    fn the_canonical_text_is_sorted_compact_json() {
        let mut out = Vec::new();
        let v = json!({"é\"k": [1.5, -2, true, null, "a\nb"], "B": {"z": {}, "a": []}, "a": "ü", "c": {"o\"ne": [{"x": 1}]}});
        canonical(&v, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"B":{"a":[],"z":{}},"a":"ü","c":{"o\"ne":[{"x":1}]},"é\"k":[1.5,-2,true,null,"a\nb"]}"#
        );
    }

    proptest! {
        /// Whatever single record is changed, removed or moved, the
        /// verification fails, and never later than where it happened.
        #[test]
        fn any_single_tampering_is_found(n in 2u64..20, at in 0usize..20, how in 0u8..3) {
            let k = key();
            let (mut records, head) = chain(&k, n);
            let at = at % records.len();
            let first_touched = match how {
                0 => { records[at].body.push(' '); at as u64 + 1 }
                1 => { records.remove(at); at as u64 + 1 }
                _ => {
                    let other = (at + 1) % records.len();
                    records.swap(at, other);
                    at.min(other) as u64 + 1
                }
            };
            let err = verify(&k, &records, &head, &[]).unwrap_err();
            prop_assert!(err.seq <= first_touched + 1 && err.seq >= first_touched.min(n), "{} for {} at {}", err, how, first_touched);
        }
    }
}
