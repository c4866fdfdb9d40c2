//! Master keys, their public ids, and their text form.
//!
//! Text form: the 32 key bytes as standard base64 (padding optional) or as
//! 64 hex characters, with surrounding whitespace ignored. Keys are written
//! as padded base64 followed by a newline.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::TryRngCore;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, KeyError};

/// Length of a master key and of a data key, in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Length of a key id, in bytes.
pub const KEY_ID_LEN: usize = 8;

const KEY_ID_LABEL: &[u8] = b"bastion-vault master key id v1\0";

/// Standard base64 that accepts input with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Fills a buffer from the operating system's random number generator.
pub(crate) fn fill_random(buf: &mut [u8]) {
    rand::rngs::OsRng.try_fill_bytes(buf).expect("the operating system's random number generator failed");
}

/// A 256-bit key held on the heap and zeroed when dropped.
pub(crate) type SecretKey = SecretBox<[u8; KEY_LEN]>;

/// A fresh random 256-bit key.
pub(crate) fn random_key() -> SecretKey {
    SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| fill_random(k))
}

/// A 256-bit master key. It wraps the data keys of sealed secrets.
///
/// The bytes are zeroed when the key is dropped; `Debug` shows only the key id.
pub struct MasterKey {
    key: SecretKey,
    id: KeyId,
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> MasterKey {
        Self::from_secret(random_key())
    }

    /// A master key with the given bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        Self::from_secret(SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| k.copy_from_slice(bytes)))
    }

    /// Parses key text: 32 bytes as standard base64 (padding optional) or as
    /// 64 hex characters, surrounding whitespace ignored. The error never
    /// quotes the text.
    pub fn parse(text: &str) -> Result<MasterKey, KeyError> {
        parse_text(text).map_err(|reason| KeyError::Invalid { origin: "the given text".into(), reason })
    }

    /// The key as padded standard base64, the form written to key files.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(44));
        BASE64.encode_string(self.key.expose_secret(), &mut text);
        text
    }

    /// A 256-bit key for another purpose, derived from this one:
    /// HMAC-SHA256 keyed by this key over `label`. Different labels give
    /// unrelated keys; the result is wiped on drop.
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.expose_secret()).expect("any key length");
        mac.update(label);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// The key's public id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        self.key.expose_secret()
    }

    fn from_secret(key: SecretKey) -> MasterKey {
        let id = KeyId::derive(key.expose_secret());
        MasterKey { key, id }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Parses key text; the error is a reason that does not quote the text.
pub(crate) fn parse_text(text: &str) -> Result<MasterKey, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty");
    }
    let mut key = SecretBox::<[u8; KEY_LEN]>::default();
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode_to_slice(text, key.expose_secret_mut()).map_err(|_| "it is not valid hex")?;
        return Ok(MasterKey::from_secret(key));
    }
    // 32 bytes are 43 base64 characters, 44 with padding.
    if !(text.len() == 43 || text.len() == 44) {
        return Err("it has the wrong length");
    }
    match BASE64.decode_slice(text, key.expose_secret_mut()) {
        Ok(KEY_LEN) => Ok(MasterKey::from_secret(key)),
        Ok(_) | Err(base64::DecodeSliceError::OutputSliceTooSmall) => Err("it does not decode to 32 bytes"),
        Err(base64::DecodeSliceError::DecodeError(_)) => Err("it is neither base64 nor hex"),
    }
}

/// A master key's public id: the first 8 bytes of SHA-256 over a label and
/// the key. It tells which master key wrapped a data key and reveals nothing
/// about the key. Displayed and parsed as 16 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// A key id from its bytes, as stored in a sealed value.
    pub fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> KeyId {
        KeyId(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    fn derive(key: &[u8; KEY_LEN]) -> KeyId {
        let digest = Sha256::new().chain_update(KEY_ID_LABEL).chain_update(key).finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = Error;

    /// Parses 16 hex characters.
    fn from_str(s: &str) -> Result<KeyId, Error> {
        let mut id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(s, &mut id).map_err(|_| Error::Malformed("a key id is 16 hex characters"))?;
        Ok(KeyId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01, 0x23,
        0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
    ];

    fn hex_text() -> String {
        hex::encode(KEY)
    }

    fn b64_text() -> String {
        base64::engine::general_purpose::STANDARD.encode(KEY)
    }

    #[test]
    fn derived_keys_differ_by_label_and_by_key() {
        let k = MasterKey::from_bytes(&KEY);
        let a = k.derive(b"audit");
        assert_eq!(*a, *MasterKey::from_bytes(&KEY).derive(b"audit"));
        assert_ne!(*a, *k.derive(b"other"));
        assert_ne!(*a, *MasterKey::generate().derive(b"audit"));
        assert_ne!(&a[..], &KEY[..]);
    }

    #[test]
    fn parses_padded_and_unpadded_base64() {
        let padded = b64_text();
        assert_eq!(padded.len(), 44);
        assert_eq!(MasterKey::parse(&padded).unwrap().bytes(), &KEY);
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(unpadded.len(), 43);
        assert_eq!(MasterKey::parse(unpadded).unwrap().bytes(), &KEY);
    }

    #[test]
    fn parses_hex_in_either_case() {
        assert_eq!(MasterKey::parse(&hex_text()).unwrap().bytes(), &KEY);
        assert_eq!(MasterKey::parse(&hex_text().to_uppercase()).unwrap().bytes(), &KEY);
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let text = format!("  \n\t{}\r\n\n", b64_text());
        assert_eq!(MasterKey::parse(&text).unwrap().bytes(), &KEY);
        let text = format!("\n{}\n", hex_text());
        assert_eq!(MasterKey::parse(&text).unwrap().bytes(), &KEY);
    }

    #[test]
    fn wrong_lengths_and_alphabets_are_refused() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let cases = [
            String::new(),
            "   \n".into(),
            b64.encode([7u8; 31]),
            b64.encode([7u8; 33]),
            b64.encode([7u8; 48]),
            hex::encode([7u8; 31]),
            hex::encode([7u8; 33]),
            format!("{}g", &hex_text()[..63]),
            format!("{}!", &b64_text()[..43]),
            format!("{} {}", &b64_text()[..20], &b64_text()[20..]),
            // URL-safe alphabet is not standard base64.
            base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]),
        ];
        for text in cases {
            let err = MasterKey::parse(&text).unwrap_err();
            assert!(matches!(err, KeyError::Invalid { .. }), "{text:?}: {err}");
        }
    }

    #[test]
    fn base64_round_trip() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        let again = MasterKey::parse(&text).unwrap();
        assert_eq!(again.bytes(), key.bytes());
        assert_eq!(again.id(), key.id());
    }

    #[test]
    fn key_id_is_stable_and_distinct() {
        let a = MasterKey::from_bytes(&KEY);
        assert_eq!(a.id(), MasterKey::from_bytes(&KEY).id());
        assert_ne!(a.id(), MasterKey::generate().id());
        let shown = a.id().to_string();
        assert_eq!(shown.len(), 16);
        assert_eq!(shown.parse::<KeyId>().unwrap(), *a.id());
        assert!("xyz".parse::<KeyId>().is_err());
        assert!(hex::encode([0u8; 9]).parse::<KeyId>().is_err());
        // The id is not a prefix of the key.
        assert!(!hex_text().contains(&shown));
    }

    #[test]
    fn debug_and_errors_never_show_the_key() {
        let key = MasterKey::from_bytes(&KEY);
        let shown = format!("{key:?} {:?}", Some(&key));
        for needle in [hex_text(), hex_text()[..16].to_string(), b64_text(), b64_text()[..16].to_string()] {
            assert!(!shown.contains(&needle), "{shown}");
        }
        assert!(shown.contains(&key.id().to_string()));

        // An almost-valid key: one character too many.
        let text = format!("{}A", b64_text().trim_end_matches('='));
        let err = MasterKey::parse(&text).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&b64_text()[..16]), "{shown}");
        let text = format!("{}0", hex_text());
        let err = MasterKey::parse(&text).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&hex_text()[..16]), "{shown}");
    }
}
