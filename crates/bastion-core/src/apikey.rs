//! API keys: generation and keyed hashing.
//!
//! A key is `bst_` followed by 32 random bytes in unpadded base64url (256
//! bits from the OS CSPRNG). Keys are random, so a keyed hash
//! (HMAC-SHA256 under a server-side pepper) is the right storage form: a
//! stolen database alone cannot be used to test guesses, and verification
//! costs a microsecond instead of an Argon2 run per request.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Every Bastion API key starts with this, so secret scanners can find
/// leaked keys and humans can tell them from other tokens.
pub const KEY_PREFIX: &str = "bst_";
const KEY_BYTES: usize = 32;
/// Length of a well-formed key.
pub const KEY_LEN: usize = 4 + 43;

/// The server-side secret that keys the hash. 32 random bytes, kept in a
/// file with mode 0600 in the data directory.
#[derive(Clone)]
pub struct Pepper(Zeroizing<Vec<u8>>);

impl Pepper {
    pub fn new(bytes: Vec<u8>) -> Result<Self, &'static str> {
        if bytes.len() < 32 {
            return Err("the API key pepper must be at least 32 bytes");
        }
        Ok(Pepper(Zeroizing::new(bytes)))
    }

    pub fn generate() -> Self {
        let mut b = vec![0u8; 32];
        fill_random(&mut b);
        Pepper(Zeroizing::new(b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(..)")
    }
}

fn fill_random(buf: &mut [u8]) {
    rand::rngs::OsRng.try_fill_bytes(buf).expect("the operating system's random number generator failed");
}

/// A freshly generated key: the plaintext (shown once) and what is stored.
pub struct NewKey {
    pub plaintext: Zeroizing<String>,
    pub hash: String,
    /// The first characters of the key, stored to let humans recognise it in
    /// listings (`bst_AbCd…`); 4 random characters reveal 24 bits only.
    pub display_prefix: String,
}

pub fn generate(pepper: &Pepper) -> NewKey {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    fill_random(raw.as_mut());
    let mut plaintext = Zeroizing::new(String::with_capacity(KEY_LEN));
    plaintext.push_str(KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(raw.as_ref(), &mut plaintext);
    let hash = hash_key(pepper, &plaintext);
    let display_prefix = plaintext[..KEY_PREFIX.len() + 4].to_string();
    NewKey { plaintext, hash, display_prefix }
}

/// Whether a presented token has the shape of a Bastion key. Cheap, and
/// keeps obviously foreign tokens (JWTs, other vendors' keys) away from the
/// store.
pub fn looks_like_key(token: &str) -> bool {
    token.len() == KEY_LEN
        && token.starts_with(KEY_PREFIX)
        && token[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stored form of a key: hex of HMAC-SHA256(pepper, key).
pub fn hash_key(pepper: &Pepper, key: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper.as_bytes()).expect("HMAC takes any key length");
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time comparison of two stored hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A random opaque identifier (for sessions, key ids): `bytes` random bytes
/// in unpadded base64url.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    fill_random(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_well_formed_and_unique() {
        let p = Pepper::generate();
        let a = generate(&p);
        let b = generate(&p);
        assert!(looks_like_key(&a.plaintext));
        assert_ne!(*a.plaintext, *b.plaintext);
        assert_eq!(a.hash, hash_key(&p, &a.plaintext));
        assert!(a.plaintext.starts_with(&a.display_prefix));
    }

    #[test]
    fn hash_depends_on_pepper() {
        let k = generate(&Pepper::generate());
        assert_ne!(hash_key(&Pepper::generate(), &k.plaintext), k.hash);
    }

    #[test]
    fn shape_check_rejects_foreign_tokens() {
        assert!(!looks_like_key("eyJhbGciOiJIUzI1NiJ9.e30.x"));
        assert!(!looks_like_key("bst_short"));
        assert!(!looks_like_key(&format!("bst_{}", "!".repeat(43))));
    }

    #[test]
    fn short_peppers_are_refused() {
        assert!(Pepper::new(vec![0; 16]).is_err());
        assert!(Pepper::new(vec![0; 32]).is_ok());
    }

    #[test]
    fn constant_time_equality() {
        assert!(hashes_equal("abc", "abc"));
        assert!(!hashes_equal("abc", "abd"));
        assert!(!hashes_equal("abc", "ab"));
    }
}
