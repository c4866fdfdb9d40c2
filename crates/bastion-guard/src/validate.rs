//! Checksums and shapes that tell a real value from a look-alike: Luhn,
//! resident registration numbers, IBANs, phone numbers, JWT headers.
//! Each takes the candidate's characters only (separators already dropped
//! where that is what the rule wants).

/// The Luhn check of card numbers, over ASCII digits.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    if digits.len() < 2 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Card numbers: an issuer prefix in use, a length that issuer gives, and
/// the Luhn check.
pub(crate) fn card(digits: &[u8]) -> bool {
    let len = digits.len();
    if !(13..=19).contains(&len) {
        return false;
    }
    let p = |n: usize| -> u32 { digits[..n].iter().fold(0, |a, d| a * 10 + u32::from(d - b'0')) };
    let (p1, p2, p3, p4) = (p(1), p(2), p(3), p(4));
    let issuer_ok = match p1 {
        // Visa
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard (51–55, 2221–2720), Mir (2200–2204); Maestro (50, 56–58)
        5 => (51..=55).contains(&p2) && len == 16 || matches!(p2, 50 | 56..=58) && len >= 13,
        2 => (2221..=2720).contains(&p4) && len == 16 || (2200..=2204).contains(&p4) && len >= 16,
        // Amex (34, 37), JCB (3528–3589), Diners (300–305, 36, 38, 39)
        3 => {
            matches!(p2, 34 | 37) && len == 15
                || (3528..=3589).contains(&p4) && len >= 16
                || ((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && len >= 14
        }
        // Discover (6011, 644–649, 65), UnionPay (62), Maestro (6304, 67)
        6 => (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62 || p2 == 67 || p4 == 6304) && len >= 16,
        _ => false,
    };
    issuer_ok && luhn(digits)
}

/// A Korean resident registration number (or a foreigner's registration
/// number), 13 digits `YYMMDDGNNNNNC`: a real date in the century the
/// gender digit `G` gives (1–4, 5–8 for foreigners), not after
/// `current_year`, and the check digit `C`.
pub(crate) fn kr_rrn(d: &[u8], current_year: u32) -> bool {
    if d.len() != 13 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n = |i: usize| u32::from(d[i] - b'0');
    let (yy, mm, dd, g) = (n(0) * 10 + n(1), n(2) * 10 + n(3), n(4) * 10 + n(5), n(6));
    let century = match g {
        1 | 2 | 5 | 6 => 1900,
        3 | 4 | 7 | 8 => 2000,
        _ => return false,
    };
    let year = century + yy;
    if year > current_year || !(1..=12).contains(&mm) || dd == 0 || dd > days_in_month(year, mm) {
        return false;
    }
    const WEIGHTS: [u32; 12] = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5];
    let sum: u32 = WEIGHTS.iter().enumerate().map(|(i, w)| w * n(i)).sum();
    let check = if g >= 5 { (13 - sum % 11) % 10 } else { (11 - sum % 11) % 10 };
    check == n(12)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The length of an IBAN of a country (ISO 13616 registry), or `None`
/// for a country without IBANs.
pub(crate) fn iban_length(country: [u8; 2]) -> Option<usize> {
    const TABLE: &[(&[u8; 2], u8)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BI", 27),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DJ", 27),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FK", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HN", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"LY", 25),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MN", 20),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NI", 28),
        (b"NL", 18),
        (b"NO", 15),
        (b"OM", 23),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"RU", 33),
        (b"SA", 24),
        (b"SC", 31),
        (b"SD", 18),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"SO", 23),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
        (b"YE", 30),
    ];
    TABLE.binary_search_by(|(c, _)| (*c).cmp(&country)).ok().map(|i| usize::from(TABLE[i].1))
}

/// An IBAN, compact and upper case: a country with IBANs, its length, and
/// the mod-97 check.
pub(crate) fn iban(s: &[u8]) -> bool {
    if s.len() < 15 || !s.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return false;
    }
    if !(s[0].is_ascii_uppercase() && s[1].is_ascii_uppercase() && s[2].is_ascii_digit() && s[3].is_ascii_digit()) {
        return false;
    }
    if iban_length([s[0], s[1]]) != Some(s.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &b in s[4..].iter().chain(&s[..4]) {
        rem = if b.is_ascii_digit() {
            (rem * 10 + u32::from(b - b'0')) % 97
        } else {
            (rem * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    rem == 1
}

/// How the digit groups of a candidate phone number are separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sep {
    Space,
    Hyphen,
    Dot,
    /// A parenthesis, with or without a space: `(02) 123`.
    Paren,
}

/// A phone number: Korean national formats (`010-1234-5678`,
/// `02-123-4567`, `031 123 4567`, `01012345678`) or, with a leading `+`,
/// E.164 (`+82 10-1234-5678`, `+14155552671`).
pub(crate) fn phone(digits: &[u8], groups: &[u8], seps: &[Sep], plus: bool) -> bool {
    let n = digits.len();
    // Separators agree, parentheses aside (`(02) 123-4567`); after a
    // country code the first may differ (`+82 10-1234-5678`).
    let mut plain = seps.iter().skip(usize::from(plus)).filter(|s| **s != Sep::Paren);
    if let Some(first) = plain.next()
        && plain.any(|s| s != first)
    {
        return false;
    }
    if plus {
        return (8..=15).contains(&n) && digits[0] != b'0';
    }
    if digits[0] != b'0' {
        return false;
    }
    // The area or service prefix, and how long the whole number may be.
    let prefix = match (digits[1], digits[2]) {
        (b'1', b'0' | b'1' | b'6' | b'7' | b'8' | b'9') => 3,
        (b'2', _) => 2,
        (b'3'..=b'6', b'1'..=b'5') | (b'7', b'0') => 3,
        _ => return false,
    };
    let ok_len = if prefix == 2 { (9..=10).contains(&n) } else { (10..=11).contains(&n) };
    if !ok_len {
        return false;
    }
    match groups {
        [_] => true,
        [a, b, c] => usize::from(*a) == prefix && matches!(b, 3 | 4) && *c == 4,
        _ => false,
    }
}

/// Decodes unpadded base64url; `None` on any other character or length.
pub(crate) fn base64url(s: &[u8]) -> Option<Vec<u8>> {
    fn val(b: u8) -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            acc |= val(*b)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// A JWT's header: base64url of a JSON object naming an `alg`. Returns the
/// algorithm's being `none` (an unsigned token may have no signature).
pub(crate) fn jwt_header(segment: &[u8]) -> Option<bool> {
    let bytes = base64url(segment)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    let alg = header.get("alg")?.as_str()?;
    Some(alg.eq_ignore_ascii_case("none"))
}

/// Whether a token's random part looks random: not a placeholder such as
/// `xxxxxxxx` or `0123456789abcdef…` written in documentation.
pub(crate) fn looks_random(s: &[u8]) -> bool {
    let mut seen = [false; 128];
    let mut distinct = 0;
    for &b in s {
        if b < 128 && !seen[usize::from(b)] {
            seen[usize::from(b)] = true;
            distinct += 1;
        }
    }
    let sequential = s.windows(2).filter(|w| w[1] == w[0].wrapping_add(1)).count();
    distinct >= 10.min(s.len() / 2) && sequential * 2 < s.len()
}

/// The year now, from the system clock (read once, when detectors are
/// built): resident registration numbers of people not yet born are not
/// counted.
pub(crate) fn current_year() -> u32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Civil year from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u32::try_from(year).unwrap_or(2026).max(2026)
}

#[cfg(test)]
mod tests;
