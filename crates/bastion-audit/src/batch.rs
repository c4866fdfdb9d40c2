//! How sealed records are laid out for the store: in batches, one row of
//! text per batch written, each record one line of it:
//!
//! ```text
//! <seq> <body> <mac, 64 hex digits>
//! ```
//!
//! A row per batch rather than per record is what keeps writing the trail
//! cheap: the store's indexes and per-row work are paid once for hundreds
//! of records, and what remains is writing their text.
//!
//! A stored batch spans at most [`SPAN_MICROS`] of time (a longer one, as
//! records spooled through an outage, is cut into several). Searches by
//! time rely on it: the records of a moment are in the batches that began
//! at most that long before it.

use crate::chain::{AuditKey, Mac, Stored};
use crate::event::{Event, Sealable};

/// The longest time one stored batch spans: from its oldest record's time
/// to its newest's, in microseconds.
pub const SPAN_MICROS: i64 = 1_000_000;

/// What a record's line holds besides its text: its number (up to 20
/// digits), two spaces, its MAC in hex and the line's end.
const LINE_EXTRA: usize = 20 + 2 + 64 + 1;

/// A batch of sealed records, as one row of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The number of its first record, and of its last.
    pub first: u64,
    pub last: u64,
    /// The oldest and the newest of its records' times (microseconds since
    /// the epoch).
    pub ts_min: i64,
    pub ts_max: i64,
    /// Its records, one line each.
    pub text: String,
}

impl AuditKey {
    /// Seals `events` as records `first`, `first + 1`… of `chain`, the first
    /// chained to `prev`, and lays them out in batches of at most
    /// [`SPAN_MICROS`]. Returns the batches and the last record's MAC
    /// (`prev` when there is none).
    pub fn seal_batches<E: Sealable>(&self, chain: &str, first: u64, prev: Mac, events: &[E]) -> (Vec<Batch>, Mac) {
        let mut batches = Vec::new();
        let mut prev = prev;
        let mut text = String::new();
        let mut open: Option<(u64, i64, i64)> = None;
        // What the records not yet written will take, counted once.
        let mut left: usize = events.iter().map(|e| e.body_len_hint() + LINE_EXTRA).sum();
        for (i, e) in events.iter().enumerate() {
            let seq = first + i as u64;
            let ts = e.ts_micros();
            if let Some((start, lo, hi)) = open
                && (hi.max(ts) - lo.min(ts) > SPAN_MICROS)
            {
                batches.push(close(start, seq - 1, lo, hi, std::mem::take(&mut text)));
                open = None;
            }
            open = Some(match open {
                Some((start, lo, hi)) => {
                    text.push('\n');
                    (start, lo.min(ts), hi.max(ts))
                }
                None => {
                    // Room for every record left (a batch cut short by its
                    // span keeps some unused): growing the text would move
                    // what is written so far, and touch fresh memory.
                    text.reserve(left);
                    (seq, ts, ts)
                }
            });
            // The body is written in place and sealed where it lies.
            text.push_str(itoa::Buffer::new().format(seq));
            text.push(' ');
            let at = text.len();
            e.write_body(&mut text);
            let mac = self.seal_bytes(chain, seq, &prev, &text.as_bytes()[at..]);
            text.push(' ');
            let mut hex = [0u8; 64];
            hex::encode_to_slice(mac, &mut hex).expect("32 bytes are 64 hex digits");
            text.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
            prev = mac;
            left -= e.body_len_hint() + LINE_EXTRA;
        }
        if let Some((start, lo, hi)) = open {
            batches.push(close(start, first + (events.len() as u64 - 1), lo, hi, text));
        }
        (batches, prev)
    }
}

fn close(first: u64, last: u64, ts_min: i64, ts_max: i64, text: String) -> Batch {
    Batch { first, last, ts_min, ts_max, text }
}

/// A batch's text read back as records, with their searchable fields read
/// from their bodies. A line not of the form `<seq> <body> <mac>` is read
/// as the record after the one before it, with the whole line as its body
/// and no MAC, so that verification fails there.
pub fn read_batch(text: &str, first: u64) -> Vec<Stored> {
    let mut next = first;
    text.split('\n')
        .map(|line| {
            let r = read_line(line, next);
            next = r.seq.saturating_add(1);
            r
        })
        .collect()
}

fn read_line(line: &str, expected: u64) -> Stored {
    let parsed = line.split_once(' ').and_then(|(seq, rest)| {
        let (body, mac) = rest.rsplit_once(' ')?;
        let seq = seq.parse::<u64>().ok()?;
        let mac = hex::decode(mac).ok().filter(|m| m.len() == 32)?;
        Some((seq, body, mac))
    });
    let (seq, body, mac) = parsed.unwrap_or((expected, line, Vec::new()));
    let event = Event::from_body(body).ok();
    Stored {
        seq,
        body: body.to_string(),
        mac,
        ts: event.as_ref().map_or(0, Event::ts_micros),
        kind: event.as_ref().map(|e| e.kind.clone()).unwrap_or_default(),
        outcome: event.as_ref().map(|e| e.outcome.as_str().to_string()).unwrap_or_default(),
        user: event.as_ref().and_then(|e| e.user.clone()),
        server: event.as_ref().and_then(|e| e.server.clone()),
        tool: event.and_then(|e| e.tool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{GENESIS, Head, Verifier};
    use crate::event::Outcome;
    use chrono::{DateTime, Utc};

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[9; 32])
    }

    fn event(tool: &str, at: i64) -> Event {
        let mut e = Event::at(DateTime::<Utc>::from_timestamp_micros(at).unwrap(), "mcp.request", Outcome::Ok);
        e.user = Some("alice \"the\" admin".into());
        e.tool = Some(tool.into());
        e.reason = Some("a b  c\nd".into());
        e
    }

    #[test]
    fn a_batch_text_is_written_where_it_was_reserved() {
        // Records of the largest numbers: the line's extra room is enough,
        // so the text never grows (growing would at least double it).
        let entries: Vec<_> = (0..50).map(|i| event(&"x".repeat(i * 7), 1_000 + i as i64).entry()).collect();
        let reserved: usize = entries.iter().map(|e| e.body_len_hint() + LINE_EXTRA).sum();
        let (batches, _) = key().seal_batches("main", u64::MAX - 49, GENESIS, &entries);
        assert_eq!(batches.len(), 1);
        assert!(batches[0].text.len() <= reserved);
        assert_eq!(batches[0].text.capacity(), reserved, "reserved once, never grown");
    }

    #[test]
    fn batches_read_back_as_the_records_sealed_one_by_one() {
        let k = key();
        let events: Vec<Event> = (0..5).map(|i| event(&format!("t{i}"), 1_000 + i)).collect();
        let (batches, last) = k.seal_batches("main", 7, GENESIS, &events);
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!((b.first, b.last, b.ts_min, b.ts_max), (7, 11, 1_000, 1_004));
        assert_eq!(b.text.lines().count(), 5, "one line per record: {}", b.text);
        let records = read_batch(&b.text, b.first);
        let mut prev = GENESIS;
        for (r, e) in records.iter().zip(&events) {
            let mac = k.seal("main", r.seq, &prev, &e.to_body());
            assert_eq!((r.body.as_str(), r.mac.as_slice()), (e.to_body().as_str(), &mac[..]));
            assert_eq!(
                (r.ts, r.tool.as_deref(), r.user.as_deref()),
                (e.ts_micros(), e.tool.as_deref(), e.user.as_deref())
            );
            prev = mac;
        }
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8, 9, 10, 11]);
        assert_eq!(last, prev);
        assert_eq!(k.seal_batches::<Event>("main", 1, GENESIS, &[]), (Vec::new(), GENESIS));
        // Events written ahead as entries seal to the same rows.
        let entries: Vec<_> = events.iter().map(Event::entry).collect();
        assert_eq!(k.seal_batches("main", 7, GENESIS, &entries), (batches, last));
    }

    #[test]
    fn a_batch_never_spans_more_than_its_limit() {
        let k = key();
        // an outage's spooled records, and a clock set back
        let times = [0, 400_000, 1_000_000, 1_000_001, 5_000_000, 4_500_000, 3_900_000, 3_999_999];
        let events: Vec<Event> = times.iter().map(|&t| event("x", 10_000_000 + t)).collect();
        let (batches, _) = k.seal_batches("main", 1, GENESIS, &events);
        let bounds: Vec<(u64, u64)> = batches.iter().map(|b| (b.first, b.last)).collect();
        assert_eq!(bounds, [(1, 3), (4, 4), (5, 6), (7, 8)]);
        for b in &batches {
            assert!(b.ts_max - b.ts_min <= SPAN_MICROS, "{b:?}");
            let records = read_batch(&b.text, b.first);
            assert_eq!(records.iter().map(|r| r.ts).min(), Some(b.ts_min));
            assert_eq!(records.iter().map(|r| r.ts).max(), Some(b.ts_max));
        }
        // and together they are one chain
        let (_, head_mac) = k.seal_batches("main", 1, GENESIS, &events);
        let head = Head { seq: 8, mac: head_mac, anchor_seq: 0, anchor_mac: GENESIS };
        let mut v = Verifier::new(&k, "main", &head);
        for b in &batches {
            v.batch(b.first, b.last, b.ts_min, b.ts_max, &read_batch(&b.text, b.first)).unwrap();
        }
        assert_eq!(v.finish(&head).unwrap().records, 8);
    }

    #[test]
    fn a_line_out_of_form_is_a_record_without_a_mac() {
        let records = read_batch("4 {} 00\nnonsense\n6 {\"a\":1} zz", 4);
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert!(records.iter().all(|r| r.mac.is_empty()));
        assert_eq!(records[1].body, "nonsense");
        assert_eq!(read_batch("", 3)[0].seq, 3);
    }
}
