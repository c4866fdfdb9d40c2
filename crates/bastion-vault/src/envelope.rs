//! Envelope encryption: sealing, opening and rewrapping secrets.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretSlice};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::key::{KEY_ID_LEN, KEY_LEN, KeyId, MasterKey, SecretKey, fill_random, random_key};

/// The format version written by [`Keyring::seal`].
pub const FORMAT_VERSION: u8 = 1;

/// Length of an AES-GCM nonce, in bytes.
pub const NONCE_LEN: usize = 12;

/// Length of an AES-GCM authentication tag, in bytes.
pub const TAG_LEN: usize = 16;

/// Length of a wrapped data key: nonce, encrypted key, tag.
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

const HEADER_LEN: usize = 1 + KEY_ID_LEN + WRAPPED_KEY_LEN + NONCE_LEN;

const DATA_KEY_LABEL: &[u8] = b"bastion-vault data key";
const SECRET_LABEL: &[u8] = b"bastion-vault secret";

/// Who a secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A user, by name.
    User(String),
    /// An upstream server, by name.
    Server(String),
}

/// The row a secret belongs to: its owner and its name (e.g. `GITHUB_TOKEN`).
/// A sealed value opens only under the binding it was sealed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The secret's owner.
    pub owner: Owner,
    /// The secret's name.
    pub name: String,
}

impl Binding {
    /// The binding of a user's secret.
    pub fn user(user: impl Into<String>, name: impl Into<String>) -> Binding {
        Binding { owner: Owner::User(user.into()), name: name.into() }
    }

    /// The binding of a server's secret.
    pub fn server(server: impl Into<String>, name: impl Into<String>) -> Binding {
        Binding { owner: Owner::Server(server.into()), name: name.into() }
    }

    /// Associated data for one layer: label, format version, owner kind,
    /// owner and name, every variable-length field preceded by its length.
    fn associated_data(&self, label: &[u8], version: u8) -> Vec<u8> {
        let (kind, owner) = match &self.owner {
            Owner::User(user) => (1u8, user),
            Owner::Server(server) => (2u8, server),
        };
        let mut ad = Vec::with_capacity(3 * 8 + 2 + label.len() + owner.len() + self.name.len());
        push_field(&mut ad, label);
        ad.push(version);
        ad.push(kind);
        push_field(&mut ad, owner.as_bytes());
        push_field(&mut ad, self.name.as_bytes());
        ad
    }
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

/// A sealed secret: the secret encrypted under a fresh data key, and that data
/// key wrapped by a master key. Holds no secret material in clear.
///
/// Store it as one blob ([`Sealed::to_bytes`]) or as columns (the field
/// accessors and [`Sealed::from_parts`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    version: u8,
    key_id: KeyId,
    wrapped_key: [u8; WRAPPED_KEY_LEN],
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Sealed {
    /// The format version.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The id of the master key that wrapped the data key.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The wrapped data key: nonce, encrypted key and tag.
    pub fn wrapped_key(&self) -> &[u8; WRAPPED_KEY_LEN] {
        &self.wrapped_key
    }

    /// The nonce under which the secret was encrypted.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// The encrypted secret followed by its tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// A sealed value from its fields, as kept in separate columns. Checks
    /// the version and the lengths; authenticity is checked on opening.
    pub fn from_parts(
        version: u8,
        key_id: KeyId,
        wrapped_key: &[u8],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Sealed, Error> {
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let wrapped_key =
            wrapped_key.try_into().map_err(|_| Error::Malformed("the wrapped key has the wrong length"))?;
        let nonce = nonce.try_into().map_err(|_| Error::Malformed("the nonce has the wrong length"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(Error::Malformed("the ciphertext is shorter than its tag"));
        }
        Ok(Sealed { version, key_id, wrapped_key, nonce, ciphertext: ciphertext.to_vec() })
    }

    /// The compact byte encoding: version, key id, wrapped key, nonce,
    /// ciphertext (see the crate documentation for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.push(self.version);
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes [`Sealed::to_bytes`]. Bad input is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sealed, Error> {
        let (&version, rest) = bytes.split_first().ok_or(Error::Malformed("it is empty"))?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(Error::Malformed("it is too short"));
        }
        let (key_id, rest) = rest.split_at(KEY_ID_LEN);
        let (wrapped_key, rest) = rest.split_at(WRAPPED_KEY_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key_id = KeyId::from_bytes(key_id.try_into().map_err(|_| Error::Malformed("it is too short"))?);
        Sealed::from_parts(version, key_id, wrapped_key, nonce, ciphertext)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// The master keys in use: the current one, which seals and rewraps, and
/// older ones still accepted for opening while a rotation runs.
///
/// All operations take `&self` and touch one sealed value, so rows can be
/// opened, sealed and rewrapped concurrently, in any order.
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring whose current key is `current`.
    pub fn new(current: MasterKey) -> Keyring {
        Keyring { current, previous: Vec::new() }
    }

    /// Also accepts `key` for opening and rewrapping. A key already in the
    /// keyring is ignored.
    #[must_use]
    pub fn with_previous(mut self, key: MasterKey) -> Keyring {
        if self.find(key.id()).is_none() {
            self.previous.push(key);
        }
        self
    }

    /// The current key.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// The older keys, still accepted for opening.
    pub fn previous(&self) -> &[MasterKey] {
        &self.previous
    }

    /// The id of the current key.
    pub fn current_id(&self) -> &KeyId {
        self.current.id()
    }

    /// The ids of all keys, the current one first.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        std::iter::once(&self.current).chain(&self.previous).map(MasterKey::id)
    }

    /// Whether `sealed` is wrapped by the current key (else [`Keyring::rewrap`]
    /// moves it there).
    pub fn is_current(&self, sealed: &Sealed) -> bool {
        sealed.key_id == *self.current.id()
    }

    /// Seals a secret for `binding` under a fresh data key wrapped by the
    /// current master key.
    pub fn seal<S>(&self, binding: &Binding, secret: &SecretBox<S>) -> Result<Sealed, Error>
    where
        S: Zeroize + AsRef<[u8]> + ?Sized,
    {
        let plaintext = secret.expose_secret().as_ref();
        let data_key = random_key();
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        // Room for the tag up front: the buffer never reallocates, so no
        // copy of the plaintext is left behind in freed memory.
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
        buf.extend_from_slice(plaintext);
        cipher(data_key.expose_secret())
            .encrypt_in_place(
                Nonce::from_slice(&nonce),
                &binding.associated_data(SECRET_LABEL, FORMAT_VERSION),
                &mut *buf,
            )
            .map_err(|_| Error::TooLarge)?;
        let ciphertext = std::mem::take(&mut *buf);
        let wrapped_key = wrap(&self.current, &data_key, binding)?;
        Ok(Sealed { version: FORMAT_VERSION, key_id: *self.current.id(), wrapped_key, nonce, ciphertext })
    }

    /// Opens a sealed secret, checking that it was sealed for `binding`.
    pub fn open(&self, sealed: &Sealed, binding: &Binding) -> Result<SecretSlice<u8>, Error> {
        let data_key = self.unwrap(sealed, binding)?;
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        cipher(data_key.expose_secret())
            .decrypt_in_place(
                Nonce::from_slice(&sealed.nonce),
                &binding.associated_data(SECRET_LABEL, sealed.version),
                &mut *buf,
            )
            .map_err(|_| Error::Decrypt)?;
        // An exact-size copy; `buf` is zeroed when dropped.
        Ok(SecretSlice::from(Box::<[u8]>::from(buf.as_slice())))
    }

    /// Rewraps the data key of `sealed` under the current master key. The
    /// secret's nonce and ciphertext are kept as they are. A value already
    /// wrapped by the current key is checked and returned unchanged.
    pub fn rewrap(&self, sealed: &Sealed, binding: &Binding) -> Result<Sealed, Error> {
        let data_key = self.unwrap(sealed, binding)?;
        if self.is_current(sealed) {
            return Ok(sealed.clone());
        }
        let wrapped_key = wrap(&self.current, &data_key, binding)?;
        Ok(Sealed { key_id: *self.current.id(), wrapped_key, ..sealed.clone() })
    }

    fn find(&self, id: &KeyId) -> Option<&MasterKey> {
        std::iter::once(&self.current).chain(&self.previous).find(|k| k.id() == id)
    }

    /// Unwraps the data key of `sealed` with the master key it names.
    fn unwrap(&self, sealed: &Sealed, binding: &Binding) -> Result<SecretKey, Error> {
        if sealed.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(sealed.version));
        }
        let master = self.find(&sealed.key_id).ok_or(Error::UnknownKey(sealed.key_id))?;
        let (nonce, rest) = sealed.wrapped_key.split_at(NONCE_LEN);
        let (encrypted, tag) = rest.split_at(KEY_LEN);
        let mut data_key = SecretBox::<[u8; KEY_LEN]>::default();
        data_key.expose_secret_mut().copy_from_slice(encrypted);
        cipher(master.bytes())
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &binding.associated_data(DATA_KEY_LABEL, sealed.version),
                data_key.expose_secret_mut(),
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::Decrypt)?;
        Ok(data_key)
    }
}

/// Wraps a data key under `master`: nonce, encrypted key, tag.
fn wrap(master: &MasterKey, data_key: &SecretKey, binding: &Binding) -> Result<[u8; WRAPPED_KEY_LEN], Error> {
    let mut out = Zeroizing::new([0u8; WRAPPED_KEY_LEN]);
    let (nonce, rest) = out.split_at_mut(NONCE_LEN);
    let (encrypted, tag) = rest.split_at_mut(KEY_LEN);
    fill_random(nonce);
    encrypted.copy_from_slice(data_key.expose_secret());
    let computed = cipher(master.bytes())
        .encrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &binding.associated_data(DATA_KEY_LABEL, FORMAT_VERSION),
            encrypted,
        )
        .map_err(|_| Error::TooLarge)?;
    tag.copy_from_slice(&computed);
    Ok(*out)
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secret(text: &str) -> SecretBox<str> {
        SecretBox::from(Box::<str>::from(text))
    }

    fn github() -> Binding {
        Binding::user("alice", "GITHUB_TOKEN")
    }

    #[test]
    fn the_ciphers_key_schedule_is_wiped_on_drop() {
        // Compiles only while the zeroize features stay switched on.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes::Aes256>();
    }

    fn opened(keyring: &Keyring, sealed: &Sealed, binding: &Binding) -> Result<Vec<u8>, Error> {
        keyring.open(sealed, binding).map(|s| s.expose_secret().to_vec())
    }

    #[test]
    fn round_trip() {
        let keyring = Keyring::new(MasterKey::generate());
        for value in ["ghp_example", "", "ünïcødé ✓", &"x".repeat(10_000)] {
            let sealed = keyring.seal(&github(), &secret(value)).unwrap();
            assert_eq!(sealed.version(), FORMAT_VERSION);
            assert_eq!(sealed.key_id(), keyring.current_id());
            assert_eq!(sealed.ciphertext().len(), value.len() + TAG_LEN);
            assert_eq!(opened(&keyring, &sealed, &github()).unwrap(), value.as_bytes());
            let again = Sealed::from_bytes(&sealed.to_bytes()).unwrap();
            assert_eq!(again, sealed);
            let parts = Sealed::from_parts(
                sealed.version(),
                *sealed.key_id(),
                sealed.wrapped_key(),
                sealed.nonce(),
                sealed.ciphertext(),
            )
            .unwrap();
            assert_eq!(parts, sealed);
        }
        let bytes = SecretSlice::from(vec![0u8, 255, 1, 254]);
        let sealed = keyring.seal(&github(), &bytes).unwrap();
        assert_eq!(opened(&keyring, &sealed, &github()).unwrap(), [0, 255, 1, 254]);
    }

    #[test]
    fn byte_layout() {
        let keyring = Keyring::new(MasterKey::generate());
        let sealed = keyring.seal(&github(), &secret("abc")).unwrap();
        let bytes = sealed.to_bytes();
        assert_eq!(bytes.len(), 1 + 8 + 60 + 12 + 3 + 16);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..9], keyring.current_id().as_bytes());
        assert_eq!(&bytes[9..69], sealed.wrapped_key());
        assert_eq!(&bytes[69..81], sealed.nonce());
        assert_eq!(&bytes[81..], sealed.ciphertext());
    }

    #[test]
    fn the_wrong_master_key_fails() {
        let sealed = Keyring::new(MasterKey::generate()).seal(&github(), &secret("s")).unwrap();
        let other = Keyring::new(MasterKey::generate());
        assert!(matches!(other.open(&sealed, &github()), Err(Error::UnknownKey(id)) if id == *sealed.key_id()));
        // A forged key id naming the other key does not help.
        let forged = Sealed { key_id: *other.current_id(), ..sealed };
        assert!(matches!(other.open(&forged, &github()), Err(Error::Decrypt)));
    }

    #[test]
    fn every_byte_flip_fails() {
        let keyring = Keyring::new(MasterKey::generate());
        let sealed = keyring.seal(&github(), &secret("ghp_example")).unwrap();
        let bytes = sealed.to_bytes();
        // The version and key id bytes are covered too: a changed version is
        // unsupported, a changed key id is unknown.
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                let result = Sealed::from_bytes(&bad).and_then(|s| keyring.open(&s, &github()));
                assert!(result.is_err(), "flipping bit {bit:#x} of byte {i} went unnoticed");
            }
        }
        // Truncation and extension fail as well.
        for len in 0..bytes.len() {
            let result = Sealed::from_bytes(&bytes[..len]).and_then(|s| keyring.open(&s, &github()));
            assert!(result.is_err(), "truncation to {len} went unnoticed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Sealed::from_bytes(&longer).and_then(|s| keyring.open(&s, &github())).is_err());
    }

    #[test]
    fn another_owner_or_name_fails() {
        let keyring = Keyring::new(MasterKey::generate());
        let sealed = keyring.seal(&github(), &secret("s")).unwrap();
        let others = [
            Binding::server("alice", "GITHUB_TOKEN"),
            Binding::user("bob", "GITHUB_TOKEN"),
            Binding::user("alice", "GITLAB_TOKEN"),
            Binding::user("alic", "eGITHUB_TOKEN"),
            Binding::user("aliceG", "ITHUB_TOKEN"),
            Binding::user("", "aliceGITHUB_TOKEN"),
            Binding::user("alice", "github_token"),
        ];
        for other in others {
            assert!(matches!(keyring.open(&sealed, &other), Err(Error::Decrypt)), "{other:?}");
            assert!(matches!(keyring.rewrap(&sealed, &other), Err(Error::Decrypt)), "{other:?}");
        }
    }

    #[test]
    fn associated_data_is_unambiguous() {
        let ad = |b: Binding| b.associated_data(SECRET_LABEL, FORMAT_VERSION);
        assert_ne!(ad(Binding::user("ab", "c")), ad(Binding::user("a", "bc")));
        assert_ne!(ad(Binding::user("x", "N")), ad(Binding::server("x", "N")));
        assert_ne!(ad(Binding::user("", "xN")), ad(Binding::user("x", "N")));
        assert_ne!(
            Binding::user("a", "b").associated_data(SECRET_LABEL, 1),
            Binding::user("a", "b").associated_data(DATA_KEY_LABEL, 1)
        );
    }

    #[test]
    fn swapped_parts_between_rows_fail() {
        let keyring = Keyring::new(MasterKey::generate());
        let alice = github();
        let bob = Binding::user("bob", "GITHUB_TOKEN");
        let a = keyring.seal(&alice, &secret("alice's token")).unwrap();
        let b = keyring.seal(&bob, &secret("bob's token")).unwrap();
        // Bob's wrapped key in Alice's row, and the other way round.
        let a_with_bobs_key = Sealed { wrapped_key: b.wrapped_key, ..a.clone() };
        let b_with_alices_key = Sealed { wrapped_key: a.wrapped_key, ..b.clone() };
        for (sealed, binding) in [(&a_with_bobs_key, &alice), (&a_with_bobs_key, &bob), (&b_with_alices_key, &bob)] {
            assert!(matches!(keyring.open(sealed, binding), Err(Error::Decrypt)));
        }
        // Bob's whole value in Alice's row.
        assert!(matches!(keyring.open(&b, &alice), Err(Error::Decrypt)));
        // Bob's ciphertext and nonce under Alice's wrapped key.
        let mixed = Sealed { nonce: b.nonce, ciphertext: b.ciphertext.clone(), ..a.clone() };
        assert!(matches!(keyring.open(&mixed, &alice), Err(Error::Decrypt)));
    }

    #[test]
    fn a_fresh_data_key_per_seal() {
        let keyring = Keyring::new(MasterKey::generate());
        let one = keyring.seal(&github(), &secret("same")).unwrap();
        let two = keyring.seal(&github(), &secret("same")).unwrap();
        assert_ne!(one.wrapped_key(), two.wrapped_key());
        assert_ne!(one.wrapped_key()[NONCE_LEN..], two.wrapped_key()[NONCE_LEN..]);
        assert_ne!(one.nonce(), two.nonce());
        assert_ne!(one.ciphertext(), two.ciphertext());
        let one_data_key = keyring.unwrap(&one, &github()).unwrap();
        let two_data_key = keyring.unwrap(&two, &github()).unwrap();
        assert_ne!(one_data_key.expose_secret(), two_data_key.expose_secret());
    }

    #[test]
    fn rotation() {
        let old = MasterKey::generate();
        let old_bytes = *old.bytes();
        let new = MasterKey::generate();
        let new_bytes = *new.bytes();
        let before = Keyring::new(old);
        let sealed = before.seal(&github(), &secret("v")).unwrap();

        // During the rotation: new current, old still accepted.
        let during = Keyring::new(new).with_previous(MasterKey::from_bytes(&old_bytes));
        assert!(!during.is_current(&sealed));
        assert_eq!(opened(&during, &sealed, &github()).unwrap(), b"v");
        let rewrapped = during.rewrap(&sealed, &github()).unwrap();
        assert!(during.is_current(&rewrapped));
        assert_eq!(rewrapped.key_id(), during.current_id());
        assert_eq!(rewrapped.nonce(), sealed.nonce());
        assert_eq!(rewrapped.ciphertext(), sealed.ciphertext());
        assert_ne!(rewrapped.wrapped_key(), sealed.wrapped_key());
        // Rewrapping again changes nothing.
        assert_eq!(during.rewrap(&rewrapped, &github()).unwrap(), rewrapped);
        // Sealing uses the current key.
        assert_eq!(during.seal(&github(), &secret("w")).unwrap().key_id(), during.current_id());

        // After the rotation: only the new key.
        let after = Keyring::new(MasterKey::from_bytes(&new_bytes));
        assert_eq!(opened(&after, &rewrapped, &github()).unwrap(), b"v");
        assert!(matches!(after.open(&sealed, &github()), Err(Error::UnknownKey(_))));
        // A rewrapped value is still bound to its row.
        assert!(matches!(after.open(&rewrapped, &Binding::user("bob", "GITHUB_TOKEN")), Err(Error::Decrypt)));
    }

    #[test]
    fn keyring_ids_and_duplicates() {
        let a = MasterKey::generate();
        let a_bytes = *a.bytes();
        let b = MasterKey::generate();
        let (a_id, b_id) = (*a.id(), *b.id());
        let keyring = Keyring::new(a).with_previous(b).with_previous(MasterKey::from_bytes(&a_bytes));
        assert_eq!(keyring.ids().copied().collect::<Vec<_>>(), [a_id, b_id]);
        let shown = format!("{keyring:?}");
        assert!(shown.contains(&a_id.to_string()) && shown.contains(&b_id.to_string()));
        assert!(!shown.contains(&hex::encode(a_bytes)[..16]));
    }

    #[test]
    fn from_parts_checks_lengths_and_version() {
        let id = KeyId::from_bytes([0; KEY_ID_LEN]);
        let wrapped = [0u8; WRAPPED_KEY_LEN];
        let nonce = [0u8; NONCE_LEN];
        let tag = [0u8; TAG_LEN];
        assert!(Sealed::from_parts(1, id, &wrapped, &nonce, &tag).is_ok());
        assert!(matches!(Sealed::from_parts(2, id, &wrapped, &nonce, &tag), Err(Error::UnsupportedVersion(2))));
        assert!(matches!(Sealed::from_parts(1, id, &wrapped[1..], &nonce, &tag), Err(Error::Malformed(_))));
        assert!(matches!(Sealed::from_parts(1, id, &wrapped, &[0; 13], &tag), Err(Error::Malformed(_))));
        assert!(matches!(Sealed::from_parts(1, id, &wrapped, &nonce, &tag[1..]), Err(Error::Malformed(_))));
        assert!(matches!(Sealed::from_bytes(&[]), Err(Error::Malformed(_))));
        assert!(matches!(Sealed::from_bytes(&[0]), Err(Error::UnsupportedVersion(0))));
        assert!(matches!(Sealed::from_bytes(&[1; 96]), Err(Error::Malformed(_))));
    }

    #[test]
    fn debug_and_errors_show_no_secret() {
        let key = MasterKey::generate();
        let key_hex = hex::encode(key.bytes());
        let keyring = Keyring::new(key);
        let value = "ghp_do_not_print_me";
        let sealed = keyring.seal(&github(), &secret(value)).unwrap();
        let opened = keyring.open(&sealed, &github()).unwrap();
        let err = keyring.open(&sealed, &Binding::user("bob", "GITHUB_TOKEN")).unwrap_err();
        let shown = format!("{sealed:?} {opened:?} {err} {err:?} {keyring:?}");
        assert!(!shown.contains(value), "{shown}");
        assert!(!shown.contains(&key_hex[..16]), "{shown}");
    }

    /// A value sealed by format version 1 keeps opening: the layout, the
    /// associated data and the key id derivation are fixed.
    #[test]
    fn a_version_1_value_still_opens() {
        const SEALED: &str = concat!(
            "01fadc0179935a59f9ba329f50245b681da770de7124ef1859da46b1bbb939e136ef9ea68eb0cbe9978e316451cda18e7e5c7dd5",
            "7529ac4b31b6416de8fef37e1dcf9ad984c3f7fd40726c3abbc51cdf1899c776f7380808bd0e10588efab146f46489568faaa57ee8fd76",
        );
        let keyring = Keyring::new(MasterKey::from_bytes(&[7; KEY_LEN]));
        assert_eq!(keyring.current_id().to_string(), "fadc0179935a59f9");
        let sealed = Sealed::from_bytes(&hex::decode(SEALED).unwrap()).unwrap();
        let binding = Binding::server("github", "GITHUB_TOKEN");
        assert_eq!(opened(&keyring, &sealed, &binding).unwrap(), b"ghp_golden");
        assert!(keyring.open(&sealed, &Binding::user("github", "GITHUB_TOKEN")).is_err());
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Sealed::from_bytes(&bytes);
        }

        #[test]
        fn from_bytes_with_a_valid_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![FORMAT_VERSION];
            bytes.extend_from_slice(&tail);
            if let Ok(sealed) = Sealed::from_bytes(&bytes) {
                prop_assert_eq!(sealed.to_bytes(), bytes);
            }
        }

        #[test]
        fn any_value_and_binding_round_trips(
            value in proptest::collection::vec(any::<u8>(), 0..64),
            owner in ".{0,8}",
            name in ".{0,8}",
            server in any::<bool>(),
        ) {
            let keyring = Keyring::new(MasterKey::generate());
            let binding = if server { Binding::server(owner, name) } else { Binding::user(owner, name) };
            let sealed = keyring.seal(&binding, &SecretSlice::from(value.clone())).unwrap();
            let decoded = Sealed::from_bytes(&sealed.to_bytes()).unwrap();
            let opened = keyring.open(&decoded, &binding).unwrap();
            prop_assert_eq!(opened.expose_secret(), &value[..]);
        }
    }
}
