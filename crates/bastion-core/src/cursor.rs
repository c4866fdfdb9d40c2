//! Pagination cursors that cannot be forged.
//!
//! A cursor Bastion hands out for a merged list names an offset into that
//! list. It is bound to the list method (`tools/list`, …) and to a scope
//! string chosen by the caller of [`encode`] (the endpoint, and the principal
//! where it is known), and authenticated with HMAC-SHA256 under a
//! [`CursorKey`]. A cursor made for one method or scope is refused for
//! another, a cursor a client made up or altered is refused, and nothing in
//! it can be read back as anything but an offset.
//!
//! Wire form: unpadded base64url of
//! `version (1 byte) ‖ offset (u32, big-endian) ‖ tag (first 16 bytes of the MAC)`,
//! 28 characters. The method and scope are not carried; they enter the MAC
//! only.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const OFFSET_BYTES: usize = 4;
const TAG_BYTES: usize = 16;
const RAW_LEN: usize = 1 + OFFSET_BYTES + TAG_BYTES;
/// Length of an encoded cursor.
pub const CURSOR_LEN: usize = (RAW_LEN * 8).div_ceil(6);
/// The largest offset a cursor may carry (16 Mi items). A merged list never
/// comes near it; anything larger is refused as absurd.
pub const MAX_OFFSET: usize = 1 << 24;
const DOMAIN: &[u8] = b"bastion/cursor/v1";

/// The secret cursors are authenticated under: 32 bytes from the operating
/// system's CSPRNG. Its `Debug` shows nothing of it.
pub struct CursorKey(Zeroizing<[u8; 32]>);

impl CursorKey {
    /// A fresh random key.
    pub fn random() -> CursorKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.try_fill_bytes(key.as_mut()).expect("the operating system's random number generator failed");
        CursorKey(key)
    }

    /// A key from given bytes (for gateways that must share one).
    pub fn from_bytes(bytes: [u8; 32]) -> CursorKey {
        CursorKey(Zeroizing::new(bytes))
    }

    /// The key of this process, created on first use. Cursors made by one
    /// process are refused by every other: a restart ends open pagination,
    /// and several gateway replicas behind one address will need a shared
    /// key ([`CursorKey::from_bytes`]) instead.
    pub fn process() -> &'static CursorKey {
        static KEY: OnceLock<CursorKey> = OnceLock::new();
        KEY.get_or_init(CursorKey::random)
    }

    fn tag(&self, method: &str, scope: &str, offset: u32) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_ref()).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        mac.update(&[VERSION]);
        // Lengths first, so that no two (method, scope) pairs feed the same bytes.
        mac.update(&(method.len() as u64).to_be_bytes());
        mac.update(method.as_bytes());
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(&offset.to_be_bytes());
        mac
    }
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// A cursor for `offset` into the list `method` returns in `scope`. An offset
/// above [`MAX_OFFSET`] is encoded as `MAX_OFFSET + 1`, which [`decode`]
/// refuses.
pub fn encode(key: &CursorKey, method: &str, scope: &str, offset: usize) -> String {
    let offset = u32::try_from(offset.min(MAX_OFFSET + 1)).expect("MAX_OFFSET fits in u32");
    let tag = key.tag(method, scope, offset).finalize().into_bytes();
    let mut raw = [0u8; RAW_LEN];
    raw[0] = VERSION;
    raw[1..1 + OFFSET_BYTES].copy_from_slice(&offset.to_be_bytes());
    raw[1 + OFFSET_BYTES..].copy_from_slice(&tag[..TAG_BYTES]);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The offset of a cursor made by [`encode`] under `key` for the same
/// `method` and `scope`; `None` for anything else: garbage, another method or
/// scope, another key, a changed byte, an offset above [`MAX_OFFSET`].
pub fn decode(key: &CursorKey, cursor: &str, method: &str, scope: &str) -> Option<usize> {
    if cursor.len() != CURSOR_LEN {
        return None;
    }
    let mut raw = [0u8; RAW_LEN];
    let n = URL_SAFE_NO_PAD.decode_slice(cursor, &mut raw).ok()?;
    if n != RAW_LEN || raw[0] != VERSION {
        return None;
    }
    let offset = u32::from_be_bytes(raw[1..1 + OFFSET_BYTES].try_into().ok()?);
    // Constant-time comparison of the truncated tag.
    key.tag(method, scope, offset).verify_truncated_left(&raw[1 + OFFSET_BYTES..]).ok()?;
    let offset = usize::try_from(offset).ok()?;
    (offset <= MAX_OFFSET).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: &str = "tools/list";
    const S: &str = "all";

    #[test]
    fn round_trips_and_is_compact() {
        let k = CursorKey::random();
        for offset in [0, 1, 100, 4096, MAX_OFFSET] {
            let c = encode(&k, M, S, offset);
            assert_eq!(c.len(), CURSOR_LEN);
            assert_eq!(decode(&k, &c, M, S), Some(offset));
        }
    }

    #[test]
    fn refuses_other_methods_scopes_and_keys() {
        let k = CursorKey::random();
        let c = encode(&k, M, S, 100);
        assert_eq!(decode(&k, &c, "prompts/list", S), None);
        assert_eq!(decode(&k, &c, M, "group:dev"), None);
        assert_eq!(decode(&CursorKey::random(), &c, M, S), None);
        // method and scope are length-delimited inside the MAC
        let c = encode(&k, "ab", "c", 1);
        assert_eq!(decode(&k, &c, "a", "bc"), None);
    }

    #[test]
    fn refuses_garbage_and_the_old_format() {
        let k = CursorKey::random();
        for bad in ["", "not-base64!", "bzox", &URL_SAFE_NO_PAD.encode("o:42"), &"A".repeat(CURSOR_LEN)] {
            assert_eq!(decode(&k, bad, M, S), None, "{bad}");
        }
    }

    #[test]
    fn refuses_absurd_offsets() {
        let k = CursorKey::random();
        assert_eq!(decode(&k, &encode(&k, M, S, MAX_OFFSET + 1), M, S), None);
        assert_eq!(decode(&k, &encode(&k, M, S, usize::MAX), M, S), None);
    }

    #[test]
    fn debug_hides_the_key() {
        let k = CursorKey::from_bytes([0xab; 32]);
        let d = format!("{k:?}");
        assert!(!d.contains("ab") && !d.contains("171"), "{d}");
    }

    #[test]
    fn the_process_key_is_one_key() {
        let c = encode(CursorKey::process(), M, S, 7);
        assert_eq!(decode(CursorKey::process(), &c, M, S), Some(7));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decoding_never_panics(s in ".*", m in ".*", sc in ".*") {
            let _ = decode(CursorKey::process(), &s, &m, &sc);
        }

        #[test]
        fn decoding_base64_noise_is_refused(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let c = URL_SAFE_NO_PAD.encode(&raw);
            prop_assert_eq!(decode(CursorKey::process(), &c, M, S), None);
        }

        #[test]
        fn own_cursors_round_trip(offset in 0..=MAX_OFFSET, m in ".*", sc in ".*") {
            let k = CursorKey::process();
            prop_assert_eq!(decode(k, &encode(k, &m, &sc, offset), &m, &sc), Some(offset));
        }

        #[test]
        fn any_changed_character_is_refused(offset in 0..=MAX_OFFSET, pos in 0..CURSOR_LEN, with in 0u8..64) {
            let k = CursorKey::process();
            let c = encode(k, M, S, offset);
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut bytes = c.clone().into_bytes();
            prop_assume!(bytes[pos] != alphabet[with as usize]);
            bytes[pos] = alphabet[with as usize];
            let changed = String::from_utf8(bytes).unwrap();
            // 21 bytes are exactly 28 characters: every character carries
            // six bits of the cursor, none is padding.
            prop_assert_eq!(decode(k, &changed, M, S), None);
        }

        #[test]
        fn cross_method_reuse_is_refused(offset in 0..=MAX_OFFSET, other in "[a-z/]{1,24}") {
            prop_assume!(other != M);
            let k = CursorKey::process();
            prop_assert_eq!(decode(k, &encode(k, M, S, offset), &other, S), None);
        }
    }
}
