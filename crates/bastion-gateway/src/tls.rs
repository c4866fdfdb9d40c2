//! HTTPS on the listener, and client certificates (mTLS) as credentials.
//!
//! [`Tls`] holds the rustls server configuration built from `tls` in the
//! config: TLS 1.2 and 1.3 (or 1.3 only), the aws-lc-rs provider, ALPN
//! `h2` and `http/1.1`. With `tls.client_ca`, clients are asked for a
//! certificate:
//!
//! - `client_auth: required`: a client without a certificate that chains to
//!   `client_ca` (valid now, with the `clientAuth` extended key usage when
//!   it has any) fails the handshake;
//! - `client_auth: optional`: the handshake succeeds with or without a
//!   certificate, and with one that does not verify (the client still has
//!   to prove it holds the certificate's key). Such a connection carries no
//!   certificate identity: its requests need a bearer token.
//!
//! After the handshake the client's chain is verified again against the
//! same trust anchors, at that moment, whatever the mode: only a chain that
//! passes becomes a [`ClientCert`]. Its user name is taken from the leaf
//! (`tls.client_user`): the subject's common name, or the first subject
//! alternative name of a kind. A verified certificate without a usable
//! name gives no identity either, and is logged.
//!
//! Certificates and keys are read when the gateway starts and again by
//! [`Tls::reload`]; connections already open keep the configuration they
//! were accepted with. Error messages name the file, never its contents.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bastion_core::config::{CertName, ClientAuth, Config, TlsConfig, is_valid_user_name};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

use crate::auth::ClientCert;

/// Why the TLS configuration cannot be used. Names the file; never shows
/// what it holds.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error("the {what} {}: {message}", path.display())]
    Invalid { what: &'static str, path: PathBuf, message: String },
    #[error("the private key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("tls: {0}")]
    Setup(String),
}

const CERT: &str = "TLS certificate";
const KEY: &str = "TLS private key";
const CLIENT_CA: &str = "TLS client CA";

/// The TLS side of the listener; [`Tls::reload`] swaps in new certificates
/// for the connections accepted from then on.
pub struct Tls {
    current: ArcSwap<Loaded>,
}

/// One loaded configuration.
struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Verifies a client's chain after the handshake (with `client_ca`).
    clients: Option<Arc<dyn ClientCertVerifier>>,
    client_user: CertName,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = self.current.load();
        f.debug_struct("Tls")
            .field("client_certificates", &loaded.clients.is_some())
            .field("client_user", &loaded.client_user)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The TLS side of `config`'s listener, or `None` when it serves plain
    /// HTTP. Paths are resolved against the config file's directory.
    pub fn from_config(config: &Config, config_path: &Path) -> Result<Option<Tls>, TlsError> {
        let Some(t) = &config.tls else { return Ok(None) };
        let loaded = load(t, |p| config.resolve_path(config_path, p))?;
        Ok(Some(Tls { current: ArcSwap::from_pointee(loaded) }))
    }

    /// Reads the certificates, key and client CA of `config` again. On an
    /// error the running ones are kept. A config without `tls` changes
    /// nothing here (turning TLS on or off takes a restart).
    pub fn reload(&self, config: &Config, config_path: &Path) -> Result<(), TlsError> {
        let Some(t) = &config.tls else { return Ok(()) };
        let loaded = load(t, |p| config.resolve_path(config_path, p))?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// Whether clients are asked for a certificate.
    pub fn asks_for_client_certificates(&self) -> bool {
        self.current.load().clients.is_some()
    }

    /// The handshake on an accepted connection, and the identity of the
    /// client's certificate if it has a verified one with a usable name.
    /// A client speaking plain HTTP is answered 400 and refused.
    pub(crate) async fn accept(&self, mut tcp: TcpStream) -> io::Result<(TlsStream<TcpStream>, Option<ClientCert>)> {
        refuse_plain_http(&mut tcp).await?;
        let loaded = self.current.load_full();
        let stream = loaded.acceptor.accept(tcp).await?;
        let cert = loaded.client_cert(stream.get_ref().1.peer_certificates());
        Ok((stream, cert))
    }
}

impl Loaded {
    fn client_cert(&self, chain: Option<&[CertificateDer<'static>]>) -> Option<ClientCert> {
        let verifier = self.clients.as_ref()?;
        let (leaf, intermediates) = chain?.split_first()?;
        if let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            tracing::debug!(
                fingerprint = %fingerprint(leaf),
                error = %e,
                "client certificate not verified: the connection has no certificate identity"
            );
            return None;
        }
        match identity(leaf, self.client_user) {
            Ok(cert) => Some(cert),
            Err(why) => {
                tracing::warn!(
                    fingerprint = %fingerprint(leaf),
                    client_user = ?self.client_user,
                    reason = why,
                    "verified client certificate without a usable user name: the connection has no certificate identity"
                );
                None
            }
        }
    }
}

/// Builds the server configuration of `t`; `resolve` turns the config's
/// paths into real ones.
fn load(t: &TlsConfig, resolve: impl Fn(&Path) -> PathBuf) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert_path = resolve(&t.cert);
    let key_path = resolve(&t.key);
    let chain = read_certs(CERT, &cert_path)?;
    let certified = certified_key(&provider, chain, &cert_path, &key_path)?;
    warn_if_expiring(&certified, &cert_path);

    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version.as_str() {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        other => return Err(TlsError::Setup(format!("min_version {other:?}: must be \"1.2\" or \"1.3\""))),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Setup(e.to_string()))?;

    let (builder, clients) = match &t.client_ca {
        None => (builder.with_no_client_auth(), None),
        Some(ca) => {
            let ca_path = resolve(ca);
            let verifier = client_verifier(&provider, &ca_path, t.client_auth)?;
            let in_handshake: Arc<dyn ClientCertVerifier> = match t.client_auth {
                ClientAuth::Required => verifier.clone(),
                ClientAuth::Optional => Arc::new(Lenient(verifier.clone())),
            };
            (builder.with_client_cert_verifier(in_handshake), Some(verifier))
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), clients, client_user: t.client_user })
}

fn read_file(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path).map(Zeroizing::new).map_err(|source| TlsError::Read { what, path: path.into(), source })
}

/// Every `CERTIFICATE` block of a PEM file (other blocks are skipped).
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |message: &str| TlsError::Invalid { what, path: path.into(), message: message.into() };
    let text = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("not a valid PEM file"))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in it (PEM `BEGIN CERTIFICATE` blocks expected)"));
    }
    Ok(certs)
}

/// The server's chain with its key, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let key_invalid = |message: &str| TlsError::Invalid { what: KEY, path: key_path.into(), message: message.into() };
    let text = read_file(KEY, key_path)?;
    let key = match PrivateKeyDer::from_pem_slice(&text) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(key_invalid(
                "no private key in it (PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` expected)",
            ));
        }
        // The error may quote the file: not shown.
        Err(_) => return Err(key_invalid("not a valid PEM file")),
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| key_invalid("not a usable private key (RSA, ECDSA or Ed25519 expected)"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // Keys whose public half the provider cannot derive are used as
        // they are, as rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch { key: key_path.into(), cert: cert_path.into() })
        }
        Err(e) => Err(TlsError::Invalid {
            what: CERT,
            path: cert_path.into(),
            message: format!("its first certificate is not usable: {e}"),
        }),
    }
}

/// A server certificate past or near its end is served all the same (the
/// operator may be replacing it), but said.
fn warn_if_expiring(certified: &CertifiedKey, path: &Path) {
    let Some(leaf) = certified.cert.first() else { return };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else { return };
    let not_after = cert.validity().not_after.timestamp();
    let left = not_after - chrono::Utc::now().timestamp();
    if left <= 0 {
        tracing::warn!(cert = %path.display(), "the TLS certificate has expired: clients will refuse it");
    } else if left < 14 * 24 * 3600 {
        tracing::warn!(
            cert = %path.display(),
            expires_in = %humanize(Duration::from_secs(left.unsigned_abs())),
            "the TLS certificate expires soon"
        );
    }
}

fn humanize(d: Duration) -> String {
    let h = d.as_secs() / 3600;
    if h >= 48 { format!("{} days", h / 24) } else { format!("{h} hours") }
}

/// The verifier of client certificates against `client_ca`.
fn client_verifier(
    provider: &Arc<CryptoProvider>,
    ca_path: &Path,
    mode: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(CLIENT_CA, ca_path)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            what: CLIENT_CA,
            path: ca_path.into(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match mode {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| TlsError::Invalid { what: CLIENT_CA, path: ca_path.into(), message: e.to_string() })
}

/// `client_auth: optional` in the handshake: a certificate that does not
/// verify does not fail it. What the connection is then worth is decided
/// after the handshake, by verifying the chain again ([`Loaded::client_cert`]);
/// the proof that the client holds the certificate's key is checked here,
/// by the real verifier.
#[derive(Debug)]
struct Lenient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// SHA-256 of a certificate's DER, hex.
fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The identity of a (verified) client certificate: its user name by
/// `kind`, fingerprint and end of validity. The error says why there is no
/// user name.
pub(crate) fn identity(der: &[u8], kind: CertName) -> Result<ClientCert, &'static str> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "the certificate cannot be parsed")?;
    let name = match kind {
        CertName::Cn => {
            let mut names = cert.subject().iter_common_name();
            let first = names.next().ok_or("the subject has no common name")?;
            if names.next().is_some() {
                return Err("the subject has more than one common name");
            }
            first.as_str().map_err(|_| "the subject's common name is not a string")?
        }
        CertName::Email | CertName::Dns | CertName::Uri => {
            use x509_parser::extensions::GeneralName;
            let san = cert
                .subject_alternative_name()
                .map_err(|_| "the subject alternative names cannot be parsed")?
                .ok_or("the certificate has no subject alternative names")?;
            san.value
                .general_names
                .iter()
                .find_map(|g| match (kind, g) {
                    (CertName::Email, GeneralName::RFC822Name(s))
                    | (CertName::Dns, GeneralName::DNSName(s))
                    | (CertName::Uri, GeneralName::URI(s)) => Some(*s),
                    _ => None,
                })
                .ok_or("no subject alternative name of that kind")?
        }
    };
    if !is_valid_user_name(name) {
        return Err("the name is not a valid user name");
    }
    Ok(ClientCert {
        user: name.into(),
        fingerprint: fingerprint(der).into(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A TLS connection starts with a handshake record (22). A client that
/// starts with anything else is refused; one that speaks plain HTTP is
/// told so first.
async fn refuse_plain_http(tcp: &mut TcpStream) -> io::Result<()> {
    const HANDSHAKE: u8 = 22;
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the TLS handshake"));
    }
    if first[0] == HANDSHAKE {
        return Ok(());
    }
    if first[0].is_ascii_uppercase() {
        answer_plain_http(tcp).await;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "plain HTTP on the HTTPS listener"));
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "not a TLS handshake"))
}

/// 400 to a plain-HTTP client, then what it sent is read (briefly, to a
/// bound) so that closing does not reset the connection under the answer.
async fn answer_plain_http(tcp: &mut TcpStream) {
    const BODY: &str = "This port serves HTTPS: use an https:// URL.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if tcp.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let mut discard = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match tcp.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { issuer: Issuer::new(p, key), pem: cert.pem() }
    }

    fn leaf(ca: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> (CertificateDer<'static>, KeyPair) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Not rcgen's default common name.
        p.distinguished_name = DistinguishedName::new();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (cert.der().clone(), key)
    }

    fn cn(name: &str) -> impl FnOnce(&mut CertificateParams) {
        move |p| p.distinguished_name.push(DnType::CommonName, name)
    }

    #[test]
    fn the_user_is_the_common_name_or_the_first_name_of_a_kind() {
        let ca = ca("test CA");
        let (der, _) = leaf(&ca, |p| {
            p.distinguished_name.push(DnType::CommonName, "alice");
            p.subject_alt_names = vec![
                SanType::DnsName("a.example".try_into().unwrap()),
                SanType::Rfc822Name("alice@example.com".try_into().unwrap()),
                SanType::Rfc822Name("second@example.com".try_into().unwrap()),
                SanType::URI("spiffe://example/alice".try_into().unwrap()),
            ];
        });
        let c = identity(&der, CertName::Cn).unwrap();
        assert_eq!(&*c.user, "alice");
        assert_eq!(&*c.fingerprint, hex::encode(Sha256::digest(&der)));
        assert_eq!(c.fingerprint.len(), 64);
        assert_eq!(&*identity(&der, CertName::Email).unwrap().user, "alice@example.com");
        assert_eq!(&*identity(&der, CertName::Dns).unwrap().user, "a.example");
        assert_eq!(&*identity(&der, CertName::Uri).unwrap().user, "spiffe://example/alice");
    }

    #[test]
    fn not_after_comes_from_the_certificate() {
        let ca = ca("test CA");
        let (der, _) = leaf(&ca, |p| {
            p.distinguished_name.push(DnType::CommonName, "alice");
            p.not_after = rcgen::date_time_ymd(2031, 1, 2);
        });
        let expected = chrono::NaiveDate::from_ymd_opt(2031, 1, 2).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
        assert_eq!(identity(&der, CertName::Cn).unwrap().not_after, expected.timestamp());
    }

    #[test]
    fn a_certificate_without_a_usable_name_has_no_identity() {
        let ca = ca("test CA");
        let (none, _) = leaf(&ca, |_| {});
        assert!(identity(&none, CertName::Cn).is_err());
        assert!(identity(&none, CertName::Email).is_err());
        let (two, _) = leaf(&ca, |p| {
            p.distinguished_name.push(DnType::CommonName, "alice");
            p.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())];
        });
        assert!(identity(&two, CertName::Email).is_err(), "a SAN of another kind is not used");
        let (spaced, _) = leaf(&ca, cn(" alice"));
        assert_eq!(identity(&spaced, CertName::Cn).unwrap_err(), "the name is not a valid user name");
        let (control, _) = leaf(&ca, cn("ali\nce"));
        assert!(identity(&control, CertName::Cn).is_err());
        assert!(identity(b"not a certificate", CertName::Cn).is_err());
    }

    fn loaded(ca: &Ca, mode: ClientAuth) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&server_key).unwrap();
        std::fs::write(dir.path().join("cert.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        let t = TlsConfig {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            client_ca: Some("ca.pem".into()),
            client_auth: mode,
            client_user: CertName::Cn,
            min_version: "1.2".into(),
        };
        load(&t, |p| dir.path().join(p)).unwrap()
    }

    #[test]
    fn only_a_chain_that_verifies_after_the_handshake_becomes_an_identity() {
        let ours = ca("our CA");
        let theirs = ca("their CA");
        for mode in [ClientAuth::Optional, ClientAuth::Required] {
            let l = loaded(&ours, mode);
            let (good, _) = leaf(&ours, cn("alice"));
            assert_eq!(l.client_cert(Some(&[good])).map(|c| c.user), Some("alice".into()));
            let (foreign, _) = leaf(&theirs, cn("alice"));
            assert_eq!(l.client_cert(Some(&[foreign])), None);
            let (expired, _) = leaf(&ours, |p| {
                p.distinguished_name.push(DnType::CommonName, "alice");
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            });
            assert_eq!(l.client_cert(Some(&[expired])), None);
            let (server_only, _) = leaf(&ours, |p| {
                p.distinguished_name.push(DnType::CommonName, "alice");
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            });
            assert_eq!(l.client_cert(Some(&[server_only])), None);
            let (nameless, _) = leaf(&ours, |_| {});
            assert_eq!(l.client_cert(Some(&[nameless])), None);
            assert_eq!(l.client_cert(None), None);
            assert_eq!(l.client_cert(Some(&[])), None);
        }
    }

    #[test]
    fn loading_errors_name_the_file_and_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(path("other.pem"), other.serialize_pem()).unwrap();
        std::fs::write(path("garbage.pem"), "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!\n").unwrap();
        std::fs::write(path("empty.pem"), "nothing here\n").unwrap();
        let t = |cert: &str, key: &str, ca: Option<&str>| TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: ca.map(Into::into),
            client_auth: ClientAuth::Optional,
            client_user: CertName::Cn,
            min_version: "1.3".into(),
        };
        let err = |c: TlsConfig| load(&c, |p| dir.path().join(p)).err().map(|e| e.to_string()).unwrap();

        assert!(load(&t("cert.pem", "key.pem", None), |p| dir.path().join(p)).is_ok());
        let e = err(t("missing.pem", "key.pem", None));
        assert!(e.starts_with("cannot read the TLS certificate ") && e.contains("missing.pem"), "{e}");
        let e = err(t("empty.pem", "key.pem", None));
        assert!(e.contains("empty.pem") && e.contains("no certificate"), "{e}");
        let e = err(t("cert.pem", "other.pem", None));
        assert!(e.contains("does not match") && e.contains("other.pem") && e.contains("cert.pem"), "{e}");
        let e = err(t("cert.pem", "garbage.pem", None));
        assert!(e.contains("garbage.pem") && !e.contains("c2VjcmV0"), "{e}");
        let e = err(t("cert.pem", "cert.pem", None));
        assert!(e.contains("no private key"), "{e}");
        assert!(!e.contains("BEGIN CERTIFICATE-----\n"), "{e}");
        let e = err(t("cert.pem", "key.pem", Some("empty.pem")));
        assert!(e.contains("TLS client CA") && e.contains("empty.pem"), "{e}");
        for e in [err(t("cert.pem", "other.pem", None)), err(t("cert.pem", "garbage.pem", None))] {
            assert!(!e.contains("PRIVATE KEY-----"), "{e}");
        }
    }

    #[tokio::test]
    async fn plain_http_is_told_to_use_https() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).await.unwrap();
            answer
        });
        let (mut tcp, _) = listener.accept().await.unwrap();
        assert_eq!(refuse_plain_http(&mut tcp).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        drop(tcp);
        let answer = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("https://"), "{answer}");
    }
}
