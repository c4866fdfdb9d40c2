//! Newline-delimited lines out of a child's stdout (or stderr), read with a
//! bounded buffer, and what a line that cannot be used says about the call
//! it answers.
//!
//! A line longer than the limit is discarded up to its newline, keeping only
//! its length and its first and last few KiB: the reader never holds more
//! than `max + 1` bytes of one line, and reading goes on with the next line.
//! Bytes are not decoded here; the caller decides what a line that is not
//! UTF-8 means.
//!
//! A discarded line may be the answer to a call, which then fails at once
//! instead of waiting for its timeout — but only when the call's id can be
//! told without reading the whole line: [`envelope`] recognises the
//! top-level members of a JSON-RPC object that come before its first nested
//! value (`{"jsonrpc":"2.0","id":5,"result":{…`) or after its last one
//! (`…},"jsonrpc":"2.0","id":5}`), never anything inside the result.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes asked of the pipe at once.
const CHUNK: usize = 64 * 1024;
/// What is kept of the start of a discarded line.
pub(crate) const HEAD: usize = 4096;
/// What is kept of the end of a discarded line.
pub(crate) const TAIL: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A whole line without its `\n`, at most the limit long.
    Whole(Bytes),
    /// A line over the limit, discarded: its length (without the `\n`) and
    /// its first [`HEAD`] and last [`TAIL`] bytes.
    TooLong { len: usize, head: Vec<u8>, tail: Vec<u8> },
}

/// The part of an over-long line seen so far.
#[derive(Default)]
struct Discard {
    len: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Discard {
    fn absorb(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        if bytes.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - TAIL..]);
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > TAIL {
                self.tail.drain(..self.tail.len() - TAIL);
            }
        }
    }

    fn into_line(self) -> Line {
        Line::TooLong { len: self.len, head: self.head, tail: self.tail }
    }
}

pub(crate) struct LineReader<R> {
    inner: R,
    /// Bytes read and not yet returned: never more than `max + 1`.
    buf: BytesMut,
    max: usize,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
    /// Set while the rest of an over-long line is skipped.
    discard: Option<Discard>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads lines of at most `max` bytes (without the `\n`) from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader { inner, buf: BytesMut::new(), max, scanned: 0, discard: None, eof: false }
    }

    /// The next line; `None` at the end of the stream. A last line without
    /// a newline is returned too. Cancel-safe: nothing read is lost when the
    /// future is dropped.
    pub async fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
            if self.eof {
                return Ok(self.take_rest());
            }
            // Room for the rest of a line of `max` bytes and its newline.
            let room = self.max.saturating_add(1).saturating_sub(self.buf.len()).clamp(1, CHUNK);
            self.buf.reserve(room);
            let n = self.inner.read_buf(&mut (&mut self.buf).limit(room)).await?;
            debug_assert!(self.buf.len() <= self.max.saturating_add(1));
            if n == 0 {
                self.eof = true;
            }
        }
    }

    /// A complete line from the buffer, if there is one.
    fn take_line(&mut self) -> Option<Line> {
        let newline = self.buf[self.scanned..].iter().position(|&b| b == b'\n').map(|i| i + self.scanned);
        match (newline, self.discard.take()) {
            (Some(i), Some(mut discard)) => {
                discard.absorb(&self.buf[..i]);
                let _ = self.buf.split_to(i + 1);
                self.scanned = 0;
                Some(discard.into_line())
            }
            (Some(i), None) => {
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i);
                self.scanned = 0;
                if i > self.max {
                    let mut discard = Discard::default();
                    discard.absorb(&line);
                    return Some(discard.into_line());
                }
                Some(Line::Whole(line.freeze()))
            }
            (None, Some(mut discard)) => {
                discard.absorb(&self.buf);
                self.buf.clear();
                self.scanned = 0;
                self.discard = Some(discard);
                None
            }
            (None, None) => {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max {
                    let mut discard = Discard::default();
                    discard.absorb(&self.buf);
                    self.buf.clear();
                    self.scanned = 0;
                    self.discard = Some(discard);
                }
                None
            }
        }
    }

    /// At the end of the stream: the last line, if it had no newline.
    fn take_rest(&mut self) -> Option<Line> {
        if let Some(discard) = self.discard.take() {
            return Some(discard.into_line());
        }
        if self.buf.is_empty() {
            return None;
        }
        self.scanned = 0;
        Some(Line::Whole(self.buf.split().freeze()))
    }
}

/// What the top-level members of a JSON-RPC object that could be read say.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// The `id`, when it is a non-negative integer (every id Bastion sends).
    pub id: Option<u64>,
    /// An `id` that is something else, or two different ids.
    pub odd_id: bool,
    /// A `result` or `error` member: the object is a response.
    pub response: bool,
    /// A `method` member: a request or a notification.
    pub method: bool,
}

impl Envelope {
    /// The call this object answers, when that is certain.
    pub fn answered_call(&self) -> Option<u64> {
        if self.response && !self.method && !self.odd_id { self.id } else { None }
    }

    fn note(&mut self, key: &[u8], value: Option<&[u8]>) {
        match key {
            b"id" => match value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok()) {
                Some(id) if self.id.is_none_or(|seen| seen == id) => self.id = Some(id),
                _ => self.odd_id = true,
            },
            b"result" | b"error" => self.response = true,
            b"method" => self.method = true,
            _ => {}
        }
    }
}

/// Reads the envelope of a JSON-RPC object from the first bytes of its line
/// (`head`) and the last ones (`tail`): the members before the first nested
/// value, and those after the last one. Anything that does not parse as
/// such ends the reading of that side.
pub(crate) fn envelope(head: &[u8], tail: &[u8]) -> Envelope {
    let mut env = Envelope::default();
    leading_members(head, &mut env);
    trailing_members(tail, &mut env);
    env
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes a number, `true`, `false` or `null` is made of.
fn is_scalar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')
}

/// The end of the string starting at `s[start]` (a `"`): the index of its
/// closing quote.
fn string_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The start of the string ending at `s[end]` (a `"`): the index of its
/// opening quote, the first `"` before it not escaped by a backslash.
fn string_start(s: &[u8], end: usize) -> Option<usize> {
    let mut i = end;
    while i > 0 {
        i -= 1;
        if s[i] == b'"' {
            let backslashes = s[..i].iter().rev().take_while(|&&b| b == b'\\').count();
            if backslashes % 2 == 0 {
                return Some(i);
            }
        }
    }
    None
}

fn leading_members(s: &[u8], env: &mut Envelope) {
    let skip = |mut i: usize| {
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        i
    };
    let mut i = skip(0);
    if s.get(i) != Some(&b'{') {
        return;
    }
    loop {
        i = skip(i + 1);
        if s.get(i) != Some(&b'"') {
            return;
        }
        let Some(key_end) = string_end(s, i) else { return };
        let key = &s[i + 1..key_end];
        i = skip(key_end + 1);
        if s.get(i) != Some(&b':') {
            return;
        }
        i = skip(i + 1);
        let value_end = match s.get(i) {
            Some(b'{' | b'[') => {
                env.note(key, None);
                return;
            }
            Some(b'"') => match string_end(s, i) {
                Some(end) => end + 1,
                None => return,
            },
            Some(&b) if is_scalar(b) => {
                let mut end = i;
                while end < s.len() && is_scalar(s[end]) {
                    end += 1;
                }
                end
            }
            _ => return,
        };
        let value = &s[i..value_end];
        i = skip(value_end);
        // The value is whole only when a separator follows it.
        match s.get(i) {
            Some(b',') => env.note(key, Some(value)),
            Some(b'}') => {
                env.note(key, Some(value));
                return;
            }
            _ => return,
        }
    }
}

fn trailing_members(s: &[u8], env: &mut Envelope) {
    let skip = |mut i: usize| {
        while i > 0 && is_ws(s[i - 1]) {
            i -= 1;
        }
        i
    };
    // `i` is one past the byte under consideration.
    let mut i = skip(s.len());
    if i == 0 || s[i - 1] != b'}' {
        return;
    }
    i -= 1;
    loop {
        i = skip(i);
        if i == 0 {
            return;
        }
        let value_end = i;
        let value_start = match s[i - 1] {
            b'"' => match string_start(s, i - 1) {
                Some(start) => start,
                None => return,
            },
            b if is_scalar(b) => {
                let mut start = i - 1;
                while start > 0 && is_scalar(s[start - 1]) {
                    start -= 1;
                }
                // The token must not have been cut off by the start of `s`.
                if start == 0 {
                    return;
                }
                start
            }
            // A nested value: its key cannot be found without reading it.
            _ => return,
        };
        let value = &s[value_start..value_end];
        i = skip(value_start);
        if i == 0 || s[i - 1] != b':' {
            return;
        }
        i = skip(i - 1);
        if i == 0 || s[i - 1] != b'"' {
            return;
        }
        let Some(key_start) = string_start(s, i - 1) else { return };
        let key = &s[key_start + 1..i - 1];
        i = skip(key_start);
        if i == 0 {
            return;
        }
        match s[i - 1] {
            b',' => env.note(key, Some(value)),
            b'{' => {
                env.note(key, Some(value));
                return;
            }
            _ => return,
        }
        i -= 1;
    }
}

/// The calls a line that is not valid UTF-8 answers, read from a lossy
/// decoding of it: the ids of the responses in it (one, or a batch).
pub(crate) fn answered_calls_lossy(line: &[u8]) -> Vec<u64> {
    let Ok(value) = serde_json::from_str::<Value>(&String::from_utf8_lossy(line)) else { return Vec::new() };
    let answered = |m: &Value| {
        let m = m.as_object()?;
        if m.contains_key("method") || !(m.contains_key("result") || m.contains_key("error")) {
            return None;
        }
        m.get("id")?.as_u64()
    };
    match &value {
        Value::Array(items) => items.iter().filter_map(answered).collect(),
        other => answered(other).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A stream that hands out its bytes in the given pieces.
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Every line of `input` (split in `pieces` of the given sizes), with
    /// the largest number of bytes the reader held at once.
    fn read_all(input: &[u8], sizes: &[usize], max: usize) -> (Vec<Line>, usize) {
        let mut pieces = VecDeque::new();
        let mut rest = input;
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes.get(k).copied().unwrap_or(rest.len()).clamp(1, rest.len());
            pieces.push_back(rest[..n].to_vec());
            rest = &rest[n..];
            k += 1;
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = LineReader::new(Pieces(pieces), max);
            let mut out = Vec::new();
            let mut held = 0;
            while let Some(line) = r.next_line().await.unwrap() {
                held = held.max(r.buf.len());
                out.push(line);
            }
            (out, held)
        })
    }

    fn expected(line: &[u8], max: usize) -> Line {
        if line.len() <= max {
            Line::Whole(Bytes::copy_from_slice(line))
        } else {
            Line::TooLong {
                len: line.len(),
                head: line[..HEAD.min(line.len())].to_vec(),
                tail: line[line.len() - TAIL.min(line.len())..].to_vec(),
            }
        }
    }

    #[test]
    fn long_lines_are_skipped_and_reading_goes_on() {
        let max = 10_000;
        let long = vec![b'x'; 100_000];
        let mut input = b"first\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nsecond\nlast");
        let (lines, held) = read_all(&input, &[], max);
        assert_eq!(
            lines,
            vec![expected(b"first", max), expected(&long, max), expected(b"second", max), expected(b"last", max)]
        );
        assert!(held <= max + 1);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_whole() {
        let (lines, _) = read_all(b"12345\n123456\n", &[3, 3, 3], 5);
        assert_eq!(lines, vec![expected(b"12345", 5), expected(b"123456", 5)]);
    }

    #[test]
    fn an_unterminated_long_line_at_the_end_is_reported() {
        let (lines, _) = read_all(&[b'y'; 50], &[7; 10], 10);
        assert!(matches!(&lines[..], [Line::TooLong { len: 50, .. }]), "{lines:?}");
    }

    proptest! {
        #[test]
        fn lines_come_out_whole_or_skipped_whatever_the_pieces(
            lines in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..12_000), 0..8),
            sizes in prop::collection::vec(1usize..9000, 0..40),
            max in 0usize..10_000,
        ) {
            let mut input = Vec::new();
            for l in &lines {
                input.extend_from_slice(l);
                input.push(b'\n');
            }
            let (out, held) = read_all(&input, &sizes, max);
            let want: Vec<Line> = lines.iter().map(|l| expected(l, max)).collect();
            prop_assert_eq!(out, want);
            prop_assert!(held <= max + 1, "held {} bytes with a limit of {}", held, max);
        }
    }

    fn ends(line: &str) -> Envelope {
        let b = line.as_bytes();
        envelope(&b[..HEAD.min(b.len())], &b[b.len() - TAIL.min(b.len())..])
    }

    #[test]
    fn the_id_is_read_at_the_start_or_the_end_of_the_envelope() {
        let big = "x".repeat(20_000);
        let compact = format!(r#"{{"jsonrpc":"2.0","id":5,"result":{{"text":"{big}"}}}}"#);
        assert_eq!(ends(&compact).answered_call(), Some(5));
        let spaced = format!(r#"{{ "jsonrpc": "2.0", "id": 6, "result": {{"text": "{big}"}} }}"#);
        assert_eq!(ends(&spaced).answered_call(), Some(6));
        let id_last = format!(r#"{{"result":{{"text":"{big}"}},"jsonrpc":"2.0","id":7}}"#);
        assert_eq!(ends(&id_last).answered_call(), Some(7));
        let id_then_version = format!(r#"{{"error":{{"code":1,"message":"{big}"}},"id":8,"jsonrpc":"2.0"}}"#);
        assert_eq!(ends(&id_then_version).answered_call(), Some(8));
    }

    #[test]
    fn ids_inside_the_result_are_never_taken() {
        let big = "x".repeat(20_000);
        // The result's own "id" members, at the start and at the end.
        let inside = format!(r#"{{"jsonrpc":"2.0","result":{{"id":3,"text":"{big}","meta":{{"id":4}}}},"id":9}}"#);
        assert_eq!(ends(&inside).answered_call(), Some(9));
        let hidden = format!(r#"{{"jsonrpc":"2.0","result":{{"id":3,"text":"{big}"}},"extra":{{"id":4}}}}"#);
        assert_eq!(ends(&hidden).answered_call(), None);
        // An id-like string at the very end of a text.
        let text = format!(r#"{{"jsonrpc":"2.0","result":{{"text":"{big} \"id\":4}}"}}}}"#);
        assert_eq!(ends(&text).answered_call(), None);
        let escaped = format!(r#"{{"result":{{"t":"{big}"}},"note":"\",\"id\":4}}"}}"#);
        assert_eq!(ends(&escaped).id, None);
    }

    #[test]
    fn requests_and_notifications_answer_no_call() {
        let big = "x".repeat(20_000);
        let request =
            format!(r#"{{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage","params":{{"t":"{big}"}}}}"#);
        assert_eq!(ends(&request).answered_call(), None);
        let method_last = format!(r#"{{"jsonrpc":"2.0","id":5,"params":{{"t":"{big}"}},"method":"x"}}"#);
        assert_eq!(ends(&method_last).answered_call(), None);
        let unknown_kind = format!(r#"{{"jsonrpc":"2.0","id":5,"params":{{"t":"{big}"}}}}"#);
        assert_eq!(ends(&unknown_kind).answered_call(), None);
        let string_id = format!(r#"{{"jsonrpc":"2.0","id":"5","result":{{"t":"{big}"}}}}"#);
        assert_eq!(ends(&string_id).answered_call(), None);
        let two_ids = format!(r#"{{"id":5,"result":{{"t":"{big}"}},"id":6}}"#);
        assert_eq!(ends(&two_ids).answered_call(), None);
    }

    #[test]
    fn a_cut_off_number_is_not_an_id() {
        // The head ends inside the number.
        assert_eq!(envelope(br#"{"jsonrpc":"2.0","id":12"#, b"").id, None);
        // The tail starts inside the number.
        assert_eq!(envelope(b"", br#"34}"#).id, None);
    }

    #[test]
    fn lossy_lines_give_the_ids_they_answer() {
        let mut line = br#"{"jsonrpc":"2.0","id":11,"result":{"text":"bad "#.to_vec();
        line.extend_from_slice(&[0xff, 0xfe]);
        line.extend_from_slice(br#" bytes"}}"#);
        assert_eq!(answered_calls_lossy(&line), vec![11]);
        let mut batch = b"[".to_vec();
        batch.extend_from_slice(&line);
        batch.extend_from_slice(br#",{"jsonrpc":"2.0","id":12,"error":{"code":1,"message":"m"}}]"#);
        assert_eq!(answered_calls_lossy(&batch), vec![11, 12]);
        let mut notification = br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":""#.to_vec();
        notification.extend_from_slice(&[0xc3, 0x28]);
        notification.extend_from_slice(br#""}}"#);
        assert!(answered_calls_lossy(&notification).is_empty());
        assert!(answered_calls_lossy(&[0xff, b'{']).is_empty());
    }

    fn content() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(Value::from),
            "[a-z\"\\\\{},:id ]{0,40}".prop_map(Value::from),
            Just(json!({"id": 4})),
            Just(Value::from("\"id\":4}")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("(id|text|result|method|[a-z]{1,5})", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the result holds and wherever the line is cut, the id
        /// read is the response's own or none.
        #[test]
        fn never_a_wrong_id(
            id in 0u64..1000,
            result in content(),
            padding in 0usize..10_000,
            id_last in any::<bool>(),
            cut in 1usize..200,
        ) {
            let mut result = result;
            if let Value::Object(m) = &mut result {
                m.insert("pad".into(), Value::from("p".repeat(padding)));
            }
            let line = if id_last {
                format!(r#"{{"result":{result},"jsonrpc":"2.0","id":{id}}}"#)
            } else {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
            };
            let b = line.as_bytes();
            let h = cut.min(b.len());
            let env = envelope(&b[..h], &b[b.len() - cut.min(b.len())..]);
            prop_assert!(env.id.is_none() || env.id == Some(id), "{:?} from {}", env, line);
            if let Some(got) = env.answered_call() {
                prop_assert_eq!(got, id);
            }
            let whole = envelope(b, b);
            prop_assert_eq!(whole.answered_call(), Some(id), "{}", line);
        }
    }
}
