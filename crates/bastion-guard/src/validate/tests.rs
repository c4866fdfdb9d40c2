use super::*;

/// The check digit a resident registration number's first 12 digits call for.
fn with_check(first12: &str) -> String {
    let d: Vec<u32> = first12.bytes().map(|b| u32::from(b - b'0')).collect();
    let w = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5];
    let sum: u32 = d.iter().zip(w).map(|(a, b)| a * b).sum();
    let c = if d[6] >= 5 { (13 - sum % 11) % 10 } else { (11 - sum % 11) % 10 };
    format!("{first12}{c}")
}

#[test]
fn luhn_and_card_issuers() {
    for good in [
        "4111111111111111",
        "4012888888881881",
        "378282246310005",
        "5555555555554444",
        "2223003122003222",
        "6011111111111117",
        "3530111333300000",
        "30569309025904",
        "6200000000000005",
    ] {
        assert!(card(good.as_bytes()), "{good}");
    }
    for bad in ["4111111111111112", "1234567812345670", "9111111111111111", "41111111111111", "37828224631000"] {
        assert!(!card(bad.as_bytes()), "{bad}");
    }
    assert!(luhn(b"79927398713") && !luhn(b"79927398710") && !luhn(b"7a"));
}

#[test]
fn resident_registration_numbers() {
    let year = 2026;
    assert_eq!(with_check("900101123456"), "9001011234568");
    for good in ["900101123456", "000229323456", "851231234567", "900101523456", "051010712345"] {
        let n = with_check(good);
        assert!(kr_rrn(n.as_bytes(), year), "{n}");
    }
    let wrong_check = {
        let mut n = with_check("900101123456").into_bytes();
        n[12] = b'0' + (n[12] - b'0' + 1) % 10;
        n
    };
    assert!(!kr_rrn(&wrong_check, year));
    for bad in [
        "900230123456", // February 30th
        "010229323456", // 2001 was not a leap year
        "901301123456", // month 13
        "900100123456", // day 0
        "900101923456", // gender digit 9
        "300101323456", // born in 2030
    ] {
        assert!(!kr_rrn(with_check(bad).as_bytes(), year), "{bad}");
    }
}

#[test]
fn ibans() {
    for good in ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606", "NO9386011117947"] {
        assert!(iban(good.as_bytes()), "{good}");
    }
    for bad in ["GB82WEST12345698765433", "DE8937040044053201300", "XX89370400440532013000", "gb82west12345698765432"] {
        assert!(!iban(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn phones() {
    let p = |d: &str, g: &[u8], s: &[Sep], plus| phone(d.as_bytes(), g, s, plus);
    assert!(p("01012345678", &[3, 4, 4], &[Sep::Hyphen, Sep::Hyphen], false));
    assert!(p("01012345678", &[11], &[], false));
    assert!(p("021234567", &[2, 3, 4], &[Sep::Hyphen, Sep::Hyphen], false));
    assert!(p("0311234567", &[3, 3, 4], &[Sep::Space, Sep::Space], false));
    assert!(p("0212345678", &[2, 4, 4], &[Sep::Paren, Sep::Hyphen], false));
    assert!(p("821012345678", &[2, 2, 4, 4], &[Sep::Space, Sep::Hyphen, Sep::Hyphen], true));
    assert!(p("14155552671", &[1, 3, 3, 4], &[Sep::Paren, Sep::Paren, Sep::Hyphen], true));
    assert!(!p("01012345678", &[3, 4, 4], &[Sep::Hyphen, Sep::Dot], false));
    assert!(!p("0101234567", &[3, 4, 3], &[Sep::Hyphen, Sep::Hyphen], false));
    assert!(!p("12345678901", &[11], &[], false));
    assert!(!p("0901234567", &[10], &[], false));
    assert!(!p("1234567", &[7], &[], true));
}

#[test]
fn base64url_and_jwt_headers() {
    assert_eq!(base64url(b"aGVsbG8").unwrap(), b"hello");
    assert_eq!(base64url(b"").unwrap(), b"");
    assert!(base64url(b"aGVsb+8").is_none() && base64url(b"a").is_none());
    assert_eq!(jwt_header(b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"), Some(false));
    assert_eq!(jwt_header(b"eyJhbGciOiJub25lIn0"), Some(true));
    // {"typ":"JWT"}: no alg.
    assert_eq!(jwt_header(b"eyJ0eXAiOiJKV1QifQ"), None);
}

#[test]
fn placeholders_do_not_look_random() {
    assert!(!looks_random(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    assert!(!looks_random(b"abcdefghijklmnopqrstuvwxyz0123456789"));
    assert!(looks_random(b"aB3dE5gH7jK9mN1pQ2sT4vW6yZ8bC0dF2hJ4"));
}

#[test]
fn the_year_is_plausible() {
    assert!((2026..2200).contains(&current_year()));
}
