//! Finding sensitive values in text.
//!
//! One pass of an Aho-Corasick automaton over the text finds the literal
//! anchors of the built-in detectors (`AKIA`, `ghp_`, `glpat-`, `xoxb-`,
//! `sk-`, `eyJ`, `-----BEGIN `, `bst_`, `@`, the AWS secret key's key
//! names) and the keywords of custom detectors. Each anchor is then
//! confirmed where it stands by a small scanner that knows the token's
//! alphabet, length and boundaries, and, where there is one, its checksum
//! or structure — no regular expression runs over the text for them.
//! Numbers without a literal anchor (card numbers, resident registration
//! numbers, phone numbers, IBANs) are found by one byte loop that reads
//! runs of digit groups and classifies each run by its shape before any
//! checksum is computed. Custom detectors are regular expressions: those
//! with keywords run only on text where a keyword was seen; those without
//! are tried together as one [`RegexSet`] and located only when the set
//! says they match.

use aho_corasick::{AhoCorasick, MatchKind};
use bastion_core::config::{BUILTIN_DETECTORS, GuardConfig, Validator};
use regex::{Regex, RegexSet};

use crate::Error;
use crate::validate::{self, Sep};

/// A detector, by its place among the built-in then the custom ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DetectorId(pub(crate) u8);

impl DetectorId {
    pub(crate) fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A set of detectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DetectorSet(pub(crate) u128);

impl DetectorSet {
    pub(crate) fn contains(self, id: DetectorId) -> bool {
        self.0 & (1 << id.0) != 0
    }
    pub(crate) fn insert(&mut self, id: DetectorId) {
        self.0 |= 1 << id.0;
    }
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
    fn intersects(self, other: DetectorSet) -> bool {
        self.0 & other.0 != 0
    }
}

/// The built-in detectors, in the order of [`BUILTIN_DETECTORS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Builtin {
    Email,
    Phone,
    KrRrn,
    CreditCard,
    Iban,
    AwsAccessKey,
    AwsSecretKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    OpenaiKey,
    Jwt,
    PrivateKey,
    BastionKey,
}

pub(crate) const BUILTINS: [Builtin; 14] = [
    Builtin::Email,
    Builtin::Phone,
    Builtin::KrRrn,
    Builtin::CreditCard,
    Builtin::Iban,
    Builtin::AwsAccessKey,
    Builtin::AwsSecretKey,
    Builtin::GithubToken,
    Builtin::GitlabToken,
    Builtin::SlackToken,
    Builtin::OpenaiKey,
    Builtin::Jwt,
    Builtin::PrivateKey,
    Builtin::BastionKey,
];

impl Builtin {
    pub(crate) fn id(self) -> DetectorId {
        DetectorId(self as u8)
    }

    pub(crate) fn from_id(id: DetectorId) -> Option<Builtin> {
        BUILTINS.get(id.index()).copied()
    }

    /// Credentials: refused on the way in, masked on the way out.
    pub(crate) fn is_secret(self) -> bool {
        self as u8 >= Builtin::AwsAccessKey as u8
    }

    fn anchors(self) -> &'static [&'static str] {
        match self {
            Builtin::Email => &["@"],
            Builtin::AwsAccessKey => {
                &["AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA", "AROA"]
            }
            // Key names an AWS secret key is written after; the key itself
            // is 40 characters of base64 with nothing to anchor on.
            Builtin::AwsSecretKey => &[
                "secret_access_key",
                "SECRET_ACCESS_KEY",
                "SecretAccessKey",
                "secretAccessKey",
                "secret-access-key",
                "aws_secret_key",
                "AWS_SECRET_KEY",
                "awsSecretKey",
                "AwsSecretKey",
                "secret access key",
                "Secret Access Key",
                "Secret access key",
            ],
            Builtin::GithubToken => &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            Builtin::GitlabToken => {
                &["glpat-", "gldt-", "glrt-", "glptt-", "glft-", "glsoat-", "glcbt-", "gloas-", "glimt-", "glagent-"]
            }
            Builtin::SlackToken => &["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-", "xoxe.xoxp-", "xapp-"],
            Builtin::OpenaiKey => &["sk-"],
            Builtin::Jwt => &["eyJ"],
            Builtin::PrivateKey => &["-----BEGIN "],
            Builtin::BastionKey => &[bastion_core::apikey::KEY_PREFIX],
            Builtin::Phone | Builtin::KrRrn | Builtin::CreditCard | Builtin::Iban => &[],
        }
    }
}

/// Detectors found by the number scan rather than by an anchor.
const NUMERIC: DetectorSet =
    DetectorSet((1 << Builtin::Phone as u8) | (1 << Builtin::KrRrn as u8) | (1 << Builtin::CreditCard as u8));

/// One value found: which detector, and where (byte offsets in the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub detector: DetectorId,
    pub start: usize,
    pub end: usize,
}

/// What an anchor found by the automaton stands for.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    Builtin(Builtin),
    /// A keyword of the custom detector of this index.
    Keyword(usize),
}

struct Custom {
    regex: Regex,
    validator: Validator,
    /// Tried only where one of its keywords was seen.
    gated: bool,
}

/// The compiled detectors: built once per configuration, shared by every
/// request.
pub struct Detectors {
    names: Vec<String>,
    enabled: DetectorSet,
    anchors: Option<AhoCorasick>,
    /// By pattern of `anchors`: what it stands for (one text may stand for
    /// several).
    anchor_kinds: Vec<Vec<Anchor>>,
    custom: Vec<Custom>,
    /// The custom detectors without keywords, as one set; its patterns'
    /// indexes map to `ungated`.
    ungated_set: Option<RegexSet>,
    ungated: Vec<usize>,
    current_year: u32,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detectors").field("names", &self.names).finish_non_exhaustive()
    }
}

impl Detectors {
    /// Every built-in detector and the configuration's custom ones.
    pub fn new(config: &GuardConfig) -> Result<Detectors, Error> {
        Detectors::build(config, None)
    }

    /// The detectors of `config`, compiling only those in `enabled` (the
    /// others never match); `None` compiles all.
    pub(crate) fn build(config: &GuardConfig, enabled: Option<DetectorSet>) -> Result<Detectors, Error> {
        let count = BUILTINS.len() + config.custom.len();
        if count > 128 {
            return Err(Error::TooManyDetectors);
        }
        let all = DetectorSet(if count == 128 { u128::MAX } else { (1u128 << count) - 1 });
        let enabled = DetectorSet(enabled.unwrap_or(all).0 & all.0);
        let mut names: Vec<String> = BUILTIN_DETECTORS.iter().map(|s| s.to_string()).collect();
        debug_assert!(BUILTINS.iter().enumerate().all(|(i, b)| *b as usize == i));

        let mut patterns: Vec<String> = Vec::new();
        let mut anchor_kinds: Vec<Vec<Anchor>> = Vec::new();
        let mut add = |text: String, anchor: Anchor| match patterns.iter().position(|p| *p == text) {
            Some(i) => anchor_kinds[i].push(anchor),
            None => {
                patterns.push(text);
                anchor_kinds.push(vec![anchor]);
            }
        };
        for b in BUILTINS {
            if enabled.contains(b.id()) {
                for a in b.anchors() {
                    add(a.to_string(), Anchor::Builtin(b));
                }
            }
        }
        let mut custom = Vec::with_capacity(config.custom.len());
        let (mut ungated_patterns, mut ungated) = (Vec::new(), Vec::new());
        for (i, c) in config.custom.iter().enumerate() {
            names.push(c.name.clone());
            let regex = Regex::new(&c.regex).map_err(|_| Error::Pattern { name: c.name.clone() })?;
            let on = enabled.contains(DetectorId((BUILTINS.len() + i) as u8));
            if on && c.keywords.is_empty() {
                ungated_patterns.push(c.regex.clone());
                ungated.push(i);
            }
            if on {
                for k in &c.keywords {
                    for form in [k.clone(), k.to_lowercase(), k.to_uppercase()] {
                        add(form, Anchor::Keyword(i));
                    }
                }
            }
            custom.push(Custom { regex, validator: c.validator, gated: !c.keywords.is_empty() });
        }
        let anchors = if patterns.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&patterns)
                .map_err(|_| Error::Pattern { name: "keywords".into() })?;
            Some(ac)
        };
        let ungated_set = if ungated_patterns.is_empty() {
            None
        } else {
            Some(RegexSet::new(&ungated_patterns).map_err(|_| Error::Pattern { name: "custom".into() })?)
        };
        Ok(Detectors {
            names,
            enabled,
            anchors,
            anchor_kinds,
            custom,
            ungated_set,
            ungated,
            current_year: validate::current_year(),
        })
    }

    /// The detector of a name, built-in or custom.
    pub fn id(&self, name: &str) -> Option<DetectorId> {
        self.names.iter().position(|n| n == name).map(|i| DetectorId(i as u8))
    }

    /// A detector's name (`kr_rrn`, `employee_id`).
    pub fn name(&self, id: DetectorId) -> &str {
        &self.names[id.index()]
    }

    /// How many detectors there are, built-in and custom.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every value any detector finds in `text`: possibly overlapping,
    /// ordered by start, longer first.
    pub fn find(&self, text: &str) -> Vec<Match> {
        let mut out = Vec::new();
        self.find_into(text, self.enabled, &mut out);
        out
    }

    /// What the detectors of `active` find in `text`, appended to `out`
    /// (cleared first), ordered by start, longer first, without duplicates.
    pub(crate) fn find_into(&self, text: &str, active: DetectorSet, out: &mut Vec<Match>) {
        out.clear();
        let active = DetectorSet(active.0 & self.enabled.0);
        if active.is_empty() || text.len() < 6 {
            return;
        }
        let t = text.as_bytes();
        let mut keyword_hits = 0u128;
        if let Some(ac) = &self.anchors {
            for m in ac.find_overlapping_iter(text) {
                for anchor in &self.anchor_kinds[m.pattern().as_usize()] {
                    match *anchor {
                        Anchor::Builtin(b) if active.contains(b.id()) => {
                            if let Some((s, e)) = self.confirm(b, t, m.start(), m.end()) {
                                out.push(Match { detector: b.id(), start: s, end: e });
                            }
                            if b == Builtin::AwsAccessKey
                                && active.contains(Builtin::AwsSecretKey.id())
                                && let Some((s, e)) = secret_after(t, m.end())
                            {
                                // A secret key written beside its key id.
                                out.push(Match { detector: Builtin::AwsSecretKey.id(), start: s, end: e });
                            }
                        }
                        Anchor::Keyword(i) => keyword_hits |= 1 << i,
                        Anchor::Builtin(_) => {}
                    }
                }
            }
        }
        let iban = active.contains(Builtin::Iban.id());
        if iban || active.intersects(NUMERIC) {
            self.scan_numbers(t, active, iban, out);
        }
        self.find_custom(text, active, keyword_hits, out);
        out.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(a.detector.cmp(&b.detector)));
        // A value inside a longer one of the same detector (`xoxp-…` in
        // `xoxe.xoxp-…`) is the same value.
        let mut reach = [0usize; 128];
        out.retain(|m| {
            let r = &mut reach[m.detector.index()];
            let keep = m.end > *r;
            *r = (*r).max(m.end);
            keep
        });
    }

    fn find_custom(&self, text: &str, active: DetectorSet, keyword_hits: u128, out: &mut Vec<Match>) {
        if self.custom.is_empty() {
            return;
        }
        let mut candidates = keyword_hits;
        if let Some(set) = &self.ungated_set {
            for k in set.matches(text).iter() {
                candidates |= 1 << self.ungated[k];
            }
        }
        for (i, c) in self.custom.iter().enumerate() {
            let id = DetectorId((BUILTINS.len() + i) as u8);
            if candidates & (1 << i) == 0 || !active.contains(id) {
                continue;
            }
            debug_assert!(c.gated || self.ungated.contains(&i));
            for m in c.regex.find_iter(text) {
                if !m.is_empty() && self.validates(c.validator, m.as_str()) {
                    out.push(Match { detector: id, start: m.start(), end: m.end() });
                }
            }
        }
    }

    fn validates(&self, validator: Validator, s: &str) -> bool {
        let digits = || s.bytes().filter(u8::is_ascii_digit).collect::<Vec<u8>>();
        match validator {
            Validator::None => true,
            Validator::Luhn => validate::luhn(&digits()),
            Validator::KrRrn => validate::kr_rrn(&digits(), self.current_year),
            Validator::Iban => {
                let compact: Vec<u8> =
                    s.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_uppercase()).collect();
                validate::iban(&compact)
            }
        }
    }

    /// Confirms an anchored built-in detector at its anchor `t[s..e]`: the
    /// whole value's span, or `None` for a look-alike.
    fn confirm(&self, b: Builtin, t: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
        match b {
            Builtin::Email => email(t, s),
            Builtin::AwsAccessKey => {
                let end = s + 20;
                let body = t.get(e..end)?;
                (free_before(t, s)
                    && body.iter().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(b))
                    && !t.get(end).is_some_and(u8::is_ascii_alphanumeric))
                .then_some((s, end))
            }
            Builtin::AwsSecretKey => secret_after(t, e),
            Builtin::GithubToken => {
                if !free_before(t, s) {
                    return None;
                }
                if t[s..e].starts_with(b"github_pat_") {
                    let end = run(t, e, |b| b.is_ascii_alphanumeric() || b == b'_');
                    let body = &t[e..end];
                    ((70..=255).contains(&body.len()) && body.contains(&b'_') && validate::looks_random(body))
                        .then_some((s, end))
                } else {
                    let end = run(t, e, |b| b.is_ascii_alphanumeric());
                    let body = &t[e..end];
                    ((36..=251).contains(&body.len()) && t.get(end) != Some(&b'_') && validate::looks_random(body))
                        .then_some((s, end))
                }
            }
            Builtin::GitlabToken => {
                let end = trim_end(t, e, run(t, e, |b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)), b".");
                let body = &t[e..end];
                (free_before(t, s) && (20..=255).contains(&body.len()) && validate::looks_random(body))
                    .then_some((s, end))
            }
            Builtin::SlackToken => {
                let end = trim_end(t, e, run(t, e, |b| b.is_ascii_alphanumeric() || b == b'-'), b"-");
                let body = &t[e..end];
                (free_before(t, s)
                    && body.len() >= 20
                    && body[0].is_ascii_digit()
                    && body.contains(&b'-')
                    && validate::looks_random(body))
                .then_some((s, end))
            }
            Builtin::OpenaiKey => {
                let end = run(t, e, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                let body = &t[e..end];
                let has = |f: fn(&u8) -> bool| body.iter().any(f);
                (free_before(t, s)
                    && (32..=300).contains(&body.len())
                    && has(u8::is_ascii_uppercase)
                    && has(u8::is_ascii_lowercase)
                    && has(u8::is_ascii_digit)
                    && validate::looks_random(body))
                .then_some((s, end))
            }
            Builtin::Jwt => jwt(t, s),
            Builtin::PrivateKey => private_key(t, s, e),
            Builtin::BastionKey => {
                let end = s + bastion_core::apikey::KEY_LEN;
                let key = t.get(s..end)?;
                let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                (free_before(t, s)
                    && key[e - s..].iter().all(|b| key_char(*b))
                    && !t.get(end).is_some_and(|b| key_char(*b))
                    && validate::looks_random(&key[e - s..]))
                .then_some((s, end))
            }
            Builtin::Phone | Builtin::KrRrn | Builtin::CreditCard | Builtin::Iban => None,
        }
    }

    /// The byte loop over runs of digit groups (`4111 1111 1111 1111`,
    /// `900101-1234567`, `+82 10-1234-5678`) and IBANs (`GB82 WEST …`).
    fn scan_numbers(&self, t: &[u8], active: DetectorSet, want_iban: bool, out: &mut Vec<Match>) {
        const MAX_GROUPS: usize = 16;
        let want_numbers = active.intersects(NUMERIC);
        let n = t.len();
        let mut i = 0;
        let mut groups = [(0usize, 0usize); MAX_GROUPS];
        let mut seps = [Sep::Space; MAX_GROUPS];
        while i < n {
            match t[i..].iter().position(u8::is_ascii_digit) {
                Some(k) => i += k,
                None => break,
            }
            let start = i;
            let mut g = 0;
            let mut j = i;
            loop {
                let gs = j;
                while j < n && t[j].is_ascii_digit() {
                    j += 1;
                }
                if g < MAX_GROUPS {
                    groups[g] = (gs, j);
                }
                g += 1;
                match separator(t, j) {
                    Some((sep, len)) if t.get(j + len).is_some_and(u8::is_ascii_digit) => {
                        if g <= MAX_GROUPS {
                            seps[g - 1] = sep;
                        }
                        j += len;
                    }
                    _ => break,
                }
            }
            i = j;
            if want_iban
                && start >= 2
                && t[start - 2].is_ascii_uppercase()
                && t[start - 1].is_ascii_uppercase()
                && (start == 2 || !t[start - 3].is_ascii_alphanumeric())
            {
                iban_at(t, start - 2, out);
            }
            if !want_numbers || g > MAX_GROUPS {
                continue;
            }
            let plus = start >= 1 && t[start - 1] == b'+';
            let before = if plus { start - 1 } else { start };
            // A value neither continues a word or a decimal number before
            // the run, nor goes on into one after it; a run that does may
            // still hold one in its middle groups.
            let open = before == 0 || {
                let p = t[before - 1];
                !(p.is_ascii_alphanumeric()
                    || p == b'_'
                    || matches!(p, b'.' | b',' | b'+' | b'/') && before >= 2 && t[before - 2].is_ascii_digit())
            };
            let closed = j == n || {
                let q = t[j];
                !(q.is_ascii_alphanumeric()
                    || q == b'_'
                    || matches!(q, b'.' | b',' | b'/') && t.get(j + 1).is_some_and(u8::is_ascii_digit))
            };
            let run = Run { groups: &groups[..g], seps: &seps[..g - 1], plus: plus && open, open, closed };
            self.classify_run(run, t, active, out);
        }
    }

    /// Finds values among the groups of one run: the whole run first; else
    /// parts of it split where a space separates groups, earliest first,
    /// longest first (`4111 1111 1111 1111 12/25` holds a card number).
    fn classify_run(&self, run: Run<'_>, t: &[u8], active: DetectorSet, out: &mut Vec<Match>) {
        let Run { groups, seps, plus, open, closed } = run;
        let g = groups.len();
        let mut a = usize::from(!open);
        while a < g && a > 0 && seps[a - 1] != Sep::Space {
            a += 1;
        }
        while a < g {
            let mut found = None;
            for b in (a + 1..=g).rev() {
                if b < g && seps[b - 1] != Sep::Space || b == g && !closed {
                    continue;
                }
                let digits: usize = groups[a..b].iter().map(|(s, e)| e - s).sum();
                if !(8..=19).contains(&digits) {
                    continue;
                }
                if let Some(d) = self.classify(&groups[a..b], &seps[a..b - 1], plus && a == 0, t, active) {
                    found = Some((b, d));
                    break;
                }
            }
            match found {
                Some((b, d)) => {
                    let mut start = groups[a].0;
                    if d == Builtin::Phone
                        && (plus && a == 0 || start > 0 && t[start - 1] == b'(' && seps.get(a) == Some(&Sep::Paren))
                    {
                        // The `+` of a country code, the `(` of an area code.
                        start -= 1;
                    }
                    out.push(Match { detector: d.id(), start, end: groups[b - 1].1 });
                    a = b;
                }
                None => a += 1,
            }
            while a < g && a > 0 && seps[a - 1] != Sep::Space {
                a += 1;
            }
        }
    }

    fn classify(
        &self,
        groups: &[(usize, usize)],
        seps: &[Sep],
        plus: bool,
        t: &[u8],
        active: DetectorSet,
    ) -> Option<Builtin> {
        let mut digits = [0u8; 19];
        let mut lens = [0u8; 16];
        let mut n = 0;
        for (k, (s, e)) in groups.iter().enumerate() {
            digits[n..n + (e - s)].copy_from_slice(&t[*s..*e]);
            n += e - s;
            lens[k] = (e - s) as u8;
        }
        let (digits, lens) = (&digits[..n], &lens[..groups.len()]);
        let same_sep = |allowed: &[Sep]| seps.iter().all(|s| *s == seps[0] && allowed.contains(s));
        if !plus {
            if active.contains(Builtin::KrRrn.id())
                && n == 13
                && (lens == [13] || lens == [6, 7] && seps[0] == Sep::Hyphen)
                && validate::kr_rrn(digits, self.current_year)
            {
                return Some(Builtin::KrRrn);
            }
            if active.contains(Builtin::CreditCard.id())
                && (lens.len() == 1
                    || same_sep(&[Sep::Space, Sep::Hyphen])
                        && matches!(lens, [4, 4, 4, 4] | [4, 4, 4, 4, 1..=3] | [4, 6, 5] | [4, 6, 4]))
                && validate::card(digits)
            {
                return Some(Builtin::CreditCard);
            }
        }
        if active.contains(Builtin::Phone.id()) && validate::phone(digits, lens, seps, plus) {
            return Some(Builtin::Phone);
        }
        None
    }
}

/// A run of digit groups: where each group is, how they are separated,
/// whether a `+` comes first, and whether the run's first and last groups
/// may start and end a value (no word or decimal number goes on there).
#[derive(Clone, Copy)]
struct Run<'a> {
    groups: &'a [(usize, usize)],
    seps: &'a [Sep],
    plus: bool,
    open: bool,
    closed: bool,
}

/// Whether the byte before `s` lets a token start there.
fn free_before(t: &[u8], s: usize) -> bool {
    s == 0 || !t[s - 1].is_ascii_alphanumeric()
}

/// The end of the run of bytes `ok` accepts from `from`.
fn run(t: &[u8], from: usize, ok: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while i < t.len() && ok(t[i]) {
        i += 1;
    }
    i
}

/// `end` moved back over trailing bytes of `junk` (punctuation ending a
/// sentence), not below `start`.
fn trim_end(t: &[u8], start: usize, mut end: usize, junk: &[u8]) -> usize {
    while end > start && junk.contains(&t[end - 1]) {
        end -= 1;
    }
    end
}

/// A separator between the digit groups of a number at `t[i..]`, and its
/// length.
fn separator(t: &[u8], i: usize) -> Option<(Sep, usize)> {
    match (t.get(i), t.get(i + 1)) {
        (Some(b')' | b'('), Some(b' ')) | (Some(b' '), Some(b'(')) => Some((Sep::Paren, 2)),
        (Some(b')' | b'('), _) => Some((Sep::Paren, 1)),
        (Some(b' '), _) => Some((Sep::Space, 1)),
        (Some(b'-'), _) => Some((Sep::Hyphen, 1)),
        (Some(b'.'), _) => Some((Sep::Dot, 1)),
        _ => None,
    }
}

fn is_secret_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
}

/// An AWS secret access key (40 characters of base64, mixed) within 128
/// bytes after `from`: after its key name, or after its key id.
fn secret_after(t: &[u8], from: usize) -> Option<(usize, usize)> {
    let limit = t.len().min(from + 128);
    let mut i = from;
    while i < limit {
        if !is_secret_char(t[i]) {
            i += 1;
            continue;
        }
        let end = run(t, i, is_secret_char);
        let body = &t[i..end];
        // Not the middle of a longer base64 text ending in padding.
        let bounded = t.get(end) != Some(&b'=');
        if body.len() == 40
            && bounded
            && body.iter().any(u8::is_ascii_uppercase)
            && body.iter().any(u8::is_ascii_lowercase)
            && body.iter().any(|b| b.is_ascii_digit() || *b == b'/' || *b == b'+')
            && validate::looks_random(body)
        {
            return Some((i, end));
        }
        i = end;
    }
    None
}

/// An e-mail address around the `@` at `at`: a local part of up to 64
/// characters, a domain of at least two labels ending in letters.
fn email(t: &[u8], at: usize) -> Option<(usize, usize)> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let mut s = at;
    while s > 0 && local(t[s - 1]) {
        s -= 1;
        if at - s > 64 {
            return None;
        }
    }
    while s < at && t[s] == b'.' {
        s += 1;
    }
    if s == at || t[at - 1] == b'.' {
        return None;
    }
    let label = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    let (mut i, mut labels, mut last) = (at + 1, 0, (0, 0));
    loop {
        let end = run(t, i, label);
        if end == i || t[i] == b'-' || t[end - 1] == b'-' {
            break;
        }
        labels += 1;
        last = (i, end);
        i = end;
        if t.get(i) == Some(&b'.') && t.get(i + 1).is_some_and(|b| label(*b)) {
            i += 1;
        } else {
            break;
        }
    }
    let tld = &t[last.0..last.1];
    (labels >= 2 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic) && last.1 - at <= 254)
        .then_some((s, last.1))
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A JWT (three base64url segments, or five for an encrypted one) starting
/// at `s`, whose header is a JSON object with an `alg`.
fn jwt(t: &[u8], s: usize) -> Option<(usize, usize)> {
    if s > 0 && (is_b64url(t[s - 1]) || t[s - 1] == b'.') {
        return None;
    }
    let mut ends = [0usize; 5];
    let mut i = s;
    let mut count = 0;
    while count < 5 {
        let end = run(t, i, is_b64url);
        ends[count] = end;
        count += 1;
        if t.get(end) == Some(&b'.') && (count < 3 || t.get(end + 1).is_some_and(|b| is_b64url(*b))) {
            i = end + 1;
        } else {
            break;
        }
    }
    let header = &t[s..ends[0]];
    if header.len() > 4096 || !(count == 3 || count == 5) {
        return None;
    }
    let payload = &t[ends[0] + 1..ends[1]];
    let alg_none = validate::jwt_header(header)?;
    let signature_empty = ends[2] == ends[1] + 1;
    // An encrypted token's second part (its key) is empty with `alg: dir`.
    let ok =
        count == 5 || payload.len() >= 2 && validate::base64url(payload).is_some() && (!signature_empty || alg_none);
    ok.then_some((s, ends[count - 1]))
}

/// A PEM private key from its `-----BEGIN ` at `s` (anchor end `e`): to its
/// `-----END …-----` line, or, cut short, over the base64 that follows.
fn private_key(t: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
    let line_end = t.len().min(e + 64);
    let close = find(&t[e..line_end], b"-----")? + e;
    let label = &t[e..close];
    if !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK")) {
        return None;
    }
    let body = close + 5;
    let search_end = t.len().min(body + 64 * 1024);
    if let Some(end_at) = find(&t[body..search_end], b"-----END ") {
        let end_at = body + end_at + 9;
        let tail = t.len().min(end_at + 64);
        if let Some(c) = find(&t[end_at..tail], b"-----") {
            return Some((s, end_at + c + 5));
        }
    }
    // Cut short: the lines of base64 that follow the header line (also
    // with its line breaks written as `\n`, as in JSON inside text).
    let rest = &t[body..];
    if !(rest.starts_with(b"\n") || rest.starts_with(b"\r\n") || rest.starts_with(b"\\n")) {
        return None;
    }
    let end = run(t, body, |b| b.is_ascii_alphanumeric() || b"+/=\r\n\\".contains(&b));
    let end = trim_end(t, body, end, b"\r\n\\");
    let base64 = t[body..end].iter().filter(|b| b.is_ascii_alphanumeric()).count();
    (base64 >= 32).then_some((s, end))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An IBAN starting at `c` (its country code), compact or in groups of
/// four: exactly its country's length, then the mod-97 check.
fn iban_at(t: &[u8], c: usize, out: &mut Vec<Match>) {
    let Some(len) = validate::iban_length([t[c], t[c + 1]]) else {
        return;
    };
    let mut buf = [0u8; 34];
    let (mut k, mut count) = (c, 0);
    while count < len && k < t.len() {
        let b = t[k];
        if b.is_ascii_uppercase() || b.is_ascii_digit() {
            buf[count] = b;
            count += 1;
            k += 1;
        } else if b == b' ' && count % 4 == 0 && t.get(k + 1).is_some_and(u8::is_ascii_alphanumeric) {
            k += 1;
        } else {
            break;
        }
    }
    if count == len && !t.get(k).is_some_and(u8::is_ascii_alphanumeric) && validate::iban(&buf[..len]) {
        out.push(Match { detector: Builtin::Iban.id(), start: c, end: k });
    }
}

#[cfg(test)]
mod tests;
