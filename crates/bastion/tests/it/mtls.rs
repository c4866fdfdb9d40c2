//! HTTPS and client certificates (mTLS): certificates minted here, a
//! rustls client (reqwest), the real gateway. A trusted certificate is the
//! credential of the user it names; everything else is refused — in the
//! handshake with `client_auth: required`, with 401 with `optional`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType, date_time_ymd,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gateway, Options, Reply, STATELESS, WAIT, bastion_bin, fixture_echo, run_bounded, tool_text};

const VERSION: &str = "2025-11-25";

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("CA certificate");
        Ca { issuer: Issuer::new(p, key), pem: cert.pem() }
    }

    /// A certificate and its key, PEM.
    fn issue(&self, edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        // Not rcgen's default common name.
        p.distinguished_name = DistinguishedName::new();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut p);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client's identity (certificate and key in one PEM) for `cn`.
    fn client(&self, cn: &str) -> String {
        self.client_with(|p| p.distinguished_name.push(DnType::CommonName, cn))
    }

    fn client_with(&self, edit: impl FnOnce(&mut CertificateParams)) -> String {
        let (cert, key) = self.issue(edit);
        format!("{cert}{key}")
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self, cn: &str) -> (String, String) {
        self.issue(|p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names = vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::DnsName("localhost".try_into().expect("dns name")),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        })
    }
}

/// The files of a TLS gateway: its certificate and key, the client CA.
struct Pki {
    dir: tempfile::TempDir,
    /// Issues the server certificate and trusted client certificates.
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("bastion-it-pki-").tempdir().expect("tempdir");
        let ca = Ca::new("Bastion test CA");
        let (cert, key) = ca.server("gateway");
        let pki = Pki { dir, ca };
        pki.write("server.pem", &cert);
        pki.write("server.key", &key);
        pki.write("clients-ca.pem", &pki.ca.pem);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write PEM");
    }

    /// `tls` of a config, with `extra` merged in.
    fn tls(&self, extra: Value) -> Value {
        let mut t = json!({
            "cert": self.path("server.pem"),
            "key": self.path("server.key"),
            "client_ca": self.path("clients-ca.pem"),
        });
        for (k, v) in extra.as_object().expect("object") {
            t[k] = v.clone();
        }
        t
    }
}

fn config(tls: Value) -> Value {
    json!({
        "mcpServers": {"echo": fixture_echo("mtls-echo")},
        "users": {
            "alice": {"role": "admin"},
            "bob": {"role": "admin"},
            "alice@example.com": {"role": "admin"}
        },
        "tls": tls
    })
}

fn start(pki: &Pki, tls: Value) -> Gateway {
    Gateway::start_with(config(pki.tls(tls)), Options { tls: true, ..Options::default() })
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", gw.port)
}

/// How a test client connects.
#[derive(Default)]
struct Client<'a> {
    /// Certificate and key, PEM.
    identity: Option<&'a str>,
    tls12_only: bool,
    http1_only: bool,
}

impl Client<'_> {
    fn build(&self, pki: &Pki) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(pki.ca.pem.as_bytes()).expect("CA certificate");
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .tls_certs_only([root])
            .tls_info(true);
        if let Some(id) = self.identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).expect("identity"));
        }
        if self.tls12_only {
            b = b.tls_version_max(reqwest::tls::Version::TLS_1_2);
        }
        if self.http1_only {
            b = b.http1_only();
        }
        b.build().expect("client")
    }
}

fn with(identity: &str) -> Client<'_> {
    Client { identity: Some(identity), ..Client::default() }
}

/// A stateless `tools/call` of `echo__echo`, with an optional bearer.
async fn echo(client: &reqwest::Client, gw: &Gateway, bearer: Option<&str>) -> reqwest::Result<Reply> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"text": "hi"}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": STATELESS,
            "io.modelcontextprotocol/clientCapabilities": {}
        }}
    });
    let mut b = client
        .post(https(gw, "/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", STATELESS)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo__echo");
    if let Some(t) = bearer {
        b = b.bearer_auth(t);
    }
    Ok(Reply::read(b.body(body.to_string()).send().await?).await)
}

/// The echo call succeeds.
async fn assert_works(client: &reqwest::Client, gw: &Gateway, bearer: Option<&str>, what: &str) {
    let r = echo(client, gw, bearer).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(r.status, 200, "{what}: {}", r.text);
    assert_eq!(tool_text(&r.rpc()), "hi", "{what}");
}

/// The echo call gets 401.
async fn assert_401(client: &reqwest::Client, gw: &Gateway, bearer: Option<&str>, what: &str) {
    let r = echo(client, gw, bearer).await.unwrap_or_else(|e| panic!("{what}: the handshake failed: {e:?}"));
    assert_eq!(r.status, 401, "{what}: {}", r.text);
}

/// The connection fails (the handshake, or the first read after a TLS 1.3
/// handshake the server rejected): no HTTP answer at all.
async fn assert_refused(client: &reqwest::Client, gw: &Gateway, what: &str) {
    if let Ok(r) = echo(client, gw, None).await {
        panic!("{what}: expected the TLS handshake to fail, got HTTP {} {}", r.status, r.text);
    }
}

/// `GET /healthz` over HTTPS answers 200.
async fn assert_healthy(pki: &Pki, gw: &Gateway, identity: &str) {
    let r = with(identity).build(pki).get(https(gw, "/healthz")).send().await.expect("GET /healthz over HTTPS");
    assert_eq!(r.status(), 200);
}

/// `initialize`, `notifications/initialized` and a call, session era, with
/// the certificate alone.
async fn session_call(client: &reqwest::Client, gw: &Gateway) {
    let post = |body: Value, session: Option<String>| {
        let mut b = client
            .post(https(gw, "/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(s) = session {
            b = b.header("mcp-session-id", s);
        }
        b.body(body.to_string()).send()
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "mtls-it", "version": "0"}}});
    let r = Reply::read(post(init, None).await.expect("initialize")).await;
    assert_eq!(r.status, 200, "initialize: {}", r.text);
    let session = r.header("mcp-session-id").expect("Mcp-Session-Id").to_string();
    let r = Reply::read(
        post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), Some(session.clone()))
            .await
            .expect("initialized"),
    )
    .await;
    assert_eq!(r.status, 202, "notifications/initialized: {}", r.text);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"text": "session"}}});
    let r = Reply::read(post(call, Some(session)).await.expect("tools/call")).await;
    assert_eq!(r.status, 200, "tools/call: {}", r.text);
    assert_eq!(tool_text(&r.rpc()), "session");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_trusted_client_certificate_is_the_credential_of_its_common_name() {
    let pki = Pki::new();
    let gw = start(&pki, json!({"client_auth": "required"}));
    assert!(gw.log().contains(&format!("https://127.0.0.1:{}/mcp", gw.port)), "the https URL is printed");
    let alice = pki.ca.client("alice");

    // HTTP/2 by ALPN, and HTTP/1.1.
    let h2 = with(&alice).build(&pki);
    let r = h2.get(https(&gw, "/healthz")).send().await.expect("GET /healthz");
    assert_eq!(r.version(), http::Version::HTTP_2);
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    assert_eq!(info.version(), Some(reqwest::tls::Version::TLS_1_3));
    assert_works(&h2, &gw, None, "stateless call, HTTP/2, certificate only").await;
    session_call(&h2, &gw).await;
    let h1 = Client { identity: Some(&alice), http1_only: true, ..Client::default() }.build(&pki);
    let r = h1.get(https(&gw, "/healthz")).send().await.expect("GET /healthz");
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_works(&h1, &gw, None, "stateless call, HTTP/1.1, certificate only").await;
    session_call(&h1, &gw).await;

    // The certificate's user is the one authorized: carol has no role.
    let carol = with(&pki.ca.client("carol")).build(&pki);
    let r = echo(&carol, &gw, None).await.expect("carol's call");
    assert!(r.rpc().get("error").is_some(), "carol has no role: {} {}", r.status, r.text);
    gw.wait_for_log("denied: the user has no role").await;
    assert!(
        gw.log().lines().any(|l| l.contains("denied: the user has no role") && l.contains("carol")),
        "{}",
        gw.log()
    );

    // The certificate names alice: her key goes with it, bob's does not.
    let alice_key = gw.create_key("alice", &[]);
    let bob_key = gw.create_key("bob", &[]);
    assert_works(&h2, &gw, Some(&alice_key), "alice's certificate with alice's key").await;
    assert_401(&h2, &gw, Some(&bob_key), "alice's certificate with bob's key").await;
    assert_401(&h1, &gw, Some(&bob_key), "alice's certificate with bob's key, HTTP/1.1").await;
    // A header cannot stand in for the certificate.
    let bob = pki.ca.client("bob");
    let r = with(&bob)
        .build(&pki)
        .post(https(&gw, "/mcp"))
        .header("x-client-cert", "alice")
        .bearer_auth(&alice_key)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 401, "bob's certificate with alice's key");
}

#[tokio::test]
async fn required_client_auth_fails_the_handshake_without_a_trusted_certificate() {
    let pki = Pki::new();
    let gw = start(&pki, json!({"client_auth": "required"}));
    let alice = pki.ca.client("alice");
    let key = gw.create_key("alice", &[]);
    let other = Ca::new("Other CA");
    let untrusted = other.client("alice");
    let expired = pki.ca.client_with(|p| {
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let not_yet = pki.ca.client_with(|p| {
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.not_before = date_time_ymd(2999, 1, 1);
        p.not_after = date_time_ymd(3000, 1, 1);
    });
    let server_only = pki.ca.client_with(|p| {
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });

    assert_refused(&Client::default().build(&pki), &gw, "no certificate").await;
    // Not even with a valid key: the certificate is required.
    let r = Client::default().build(&pki).get(https(&gw, "/healthz")).bearer_auth(&key).send().await;
    assert!(r.is_err(), "no certificate, with a key: {r:?}");
    assert_refused(&with(&untrusted).build(&pki), &gw, "a certificate of another CA").await;
    assert_refused(&with(&expired).build(&pki), &gw, "an expired certificate").await;
    assert_refused(&with(&not_yet).build(&pki), &gw, "a certificate not valid yet").await;
    assert_refused(&with(&server_only).build(&pki), &gw, "a certificate for servers only").await;
    let tls12 = Client { identity: Some(&untrusted), tls12_only: true, ..Client::default() };
    assert_refused(&tls12.build(&pki), &gw, "a certificate of another CA, TLS 1.2").await;

    // The gateway serves on.
    assert_works(&with(&alice).build(&pki), &gw, None, "a trusted certificate").await;
    let tls12 = Client { identity: Some(&alice), tls12_only: true, ..Client::default() };
    assert_works(&tls12.build(&pki), &gw, None, "a trusted certificate, TLS 1.2").await;
}

#[tokio::test]
async fn optional_client_auth_gives_untrusted_certificates_no_identity() {
    let pki = Pki::new();
    let gw = start(&pki, json!({}));
    let alice_key = gw.create_key("alice", &[]);
    let bob_key = gw.create_key("bob", &[]);
    let none = Client::default().build(&pki);
    assert_401(&none, &gw, None, "no certificate, no key").await;
    assert_works(&none, &gw, Some(&alice_key), "no certificate, alice's key").await;

    let alice = with(&pki.ca.client("alice")).build(&pki);
    assert_works(&alice, &gw, None, "alice's certificate").await;
    assert_works(&alice, &gw, Some(&alice_key), "alice's certificate and key").await;
    assert_401(&alice, &gw, Some(&bob_key), "alice's certificate, bob's key").await;

    let other = Ca::new("Other CA");
    let untrusted = other.client("alice");
    let expired = pki.ca.client_with(|p| {
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let server_only = pki.ca.client_with(|p| {
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let nameless = pki.ca.client_with(|_| {});
    for (id, what) in [
        (&untrusted, "a certificate of another CA"),
        (&expired, "an expired certificate"),
        (&server_only, "a certificate for servers only"),
        (&nameless, "a trusted certificate without a common name"),
    ] {
        for tls12_only in [false, true] {
            let c = Client { identity: Some(id), tls12_only, ..Client::default() }.build(&pki);
            assert_401(&c, &gw, None, &format!("{what} (TLS 1.2 only: {tls12_only})")).await;
            // The certificate is ignored, not held against a key.
            assert_works(&c, &gw, Some(&bob_key), &format!("{what} with bob's key (TLS 1.2 only: {tls12_only})")).await;
        }
    }
    gw.wait_for_log("verified client certificate without a usable user name").await;
}

#[tokio::test]
async fn the_user_can_be_the_email_address_of_the_certificate() {
    let pki = Pki::new();
    let gw = start(&pki, json!({"client_auth": "optional", "client_user": "email"}));
    let cert = pki.ca.client_with(|p| {
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.subject_alt_names = vec![
            SanType::DnsName("alice.example.com".try_into().expect("dns")),
            SanType::Rfc822Name("alice@example.com".try_into().expect("email")),
            SanType::Rfc822Name("other@example.com".try_into().expect("email")),
        ];
    });
    let c = with(&cert).build(&pki);
    assert_works(&c, &gw, None, "email certificate").await;
    let email_key = gw.create_key("alice@example.com", &[]);
    let cn_key = gw.create_key("alice", &[]);
    assert_works(&c, &gw, Some(&email_key), "the certificate's email with its key").await;
    assert_401(&c, &gw, Some(&cn_key), "the certificate's common name is not its user").await;

    let no_email = pki.ca.client("alice");
    assert_401(&with(&no_email).build(&pki), &gw, None, "a certificate without an email address").await;
    gw.wait_for_log("verified client certificate without a usable user name").await;
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2_clients() {
    let pki = Pki::new();
    let alice = pki.ca.client("alice");
    let tls12 = Client { identity: Some(&alice), tls12_only: true, ..Client::default() };

    let gw = start(&pki, json!({"min_version": "1.3"}));
    assert_refused(&tls12.build(&pki), &gw, "a TLS 1.2 client").await;
    assert_works(&with(&alice).build(&pki), &gw, None, "a TLS 1.3 client").await;
    drop(gw);

    // The default (1.2) takes both.
    let gw = start(&pki, json!({}));
    let c = tls12.build(&pki);
    let r = c.get(https(&gw, "/healthz")).send().await.expect("TLS 1.2");
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    assert_eq!(info.version(), Some(reqwest::tls::Version::TLS_1_2));
    assert_works(&c, &gw, None, "a TLS 1.2 client").await;
}

#[tokio::test]
async fn plain_http_and_stalled_handshakes_do_not_disturb_the_https_listener() {
    let pki = Pki::new();
    let tls = pki.tls(json!({}));
    let mut cfg = config(tls);
    cfg["http"] = json!({"header_read_timeout": "2s"});
    let gw = Gateway::start_with(cfg, Options { tls: true, ..Options::default() });
    let alice = pki.ca.client("alice");

    // Plain HTTP is told to use HTTPS.
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{}/healthz", gw.port))
        .send()
        .await
        .expect("plain HTTP gets an answer");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("https://"));

    // Connections that never finish a handshake, or send no TLS at all,
    // hold nothing up, and are closed after `header_read_timeout`.
    let mut silent = TcpStream::connect(("127.0.0.1", gw.port)).await.expect("connect");
    let mut stalled = TcpStream::connect(("127.0.0.1", gw.port)).await.expect("connect");
    stalled.write_all(&[22, 3, 1, 0, 200, 1]).await.expect("a TLS record's start");
    let mut junk = TcpStream::connect(("127.0.0.1", gw.port)).await.expect("connect");
    junk.write_all(&[0, 1, 2, 3, 4, 5, 6, 7]).await.expect("junk");
    assert_works(&with(&alice).build(&pki), &gw, None, "while others stall").await;
    for (s, what) in [(&mut silent, "silent"), (&mut stalled, "stalled"), (&mut junk, "junk")] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection was not closed"));
        assert!(matches!(n, Ok(0) | Err(_)), "the {what} connection: {n:?}");
    }
    assert_healthy(&pki, &gw, &alice).await;
}

#[tokio::test]
async fn sighup_reloads_the_certificates_for_new_connections() {
    let pki = Pki::new();
    let gw = start(&pki, json!({"client_auth": "required"}));
    let alice = pki.ca.client("alice");
    let served = |c: reqwest::Client| {
        let url = https(&gw, "/healthz");
        async move {
            let r = c.get(url).send().await.expect("GET /healthz");
            let info = r.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
            let der = info.peer_certificate().expect("server certificate").to_vec();
            String::from_utf8_lossy(&der).contains("rotated")
        }
    };
    assert!(!served(with(&alice).build(&pki)).await);

    // New server certificate, and a new client CA.
    let (cert, key) = pki.ca.server("rotated");
    pki.write("server.pem", &cert);
    pki.write("server.key", &key);
    let next = Ca::new("Next client CA");
    pki.write("clients-ca.pem", &format!("{}{}", pki.ca.pem, next.pem));
    gw.sighup();
    gw.wait_for_log("TLS certificates reloaded").await;
    assert!(served(with(&alice).build(&pki)).await, "the new certificate is served");
    assert_works(&with(&next.client("bob")).build(&pki), &gw, None, "a client of the new CA").await;

    // A key that does not match is refused; the running files stay.
    let (_, other_key) = pki.ca.server("unused");
    pki.write("server.key", &other_key);
    gw.sighup();
    gw.wait_for_log("TLS certificates not reloaded").await;
    assert!(gw.log().contains("does not match"), "{}", gw.log());
    assert!(served(with(&alice).build(&pki)).await, "the running certificate is kept");
}

/// `bastion serve` with `tls` files in `dir`: its exit and stderr.
fn serve_once(dir: &Path, tls: Value) -> (bool, String) {
    let cfg = json!({"listen": "127.0.0.1:0", "mcpServers": {"echo": fixture_echo("mtls-never")}, "tls": tls});
    let path = dir.join("bastion.json");
    std::fs::write(&path, cfg.to_string()).expect("config");
    let out = run_bounded(
        Command::new(bastion_bin()).arg("--config").arg(&path).arg("serve").current_dir(dir).env("BASTION_LOG", "info"),
        WAIT,
    );
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unusable_certificate_files_stop_the_start_with_a_message_naming_them() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let (_, other_key) = pki.ca.server("other");
    pki.write("other.key", &other_key);
    pki.write("broken.key", "-----BEGIN PRIVATE KEY-----\nTUlJQ2VBSUJBREFOQmdr!!\n");
    let key_body: String = other_key.lines().nth(1).expect("a line of the key").to_string();

    // Relative paths are the config file's directory's.
    let cases = [
        (json!({"cert": "missing.pem", "key": "server.key"}), "missing.pem"),
        (json!({"cert": "server.pem", "key": "other.key"}), "does not match"),
        (json!({"cert": "server.pem", "key": "broken.key"}), "broken.key"),
        (json!({"cert": "server.key", "key": "server.key"}), "no certificate"),
        (json!({"cert": "server.pem", "key": "server.pem"}), "no private key"),
        (json!({"cert": "server.pem", "key": "server.key", "client_ca": "server.key"}), "TLS client CA"),
    ];
    for (tls, needle) in cases {
        let (ok, stderr) = serve_once(dir, tls.clone());
        assert!(!ok, "{tls}: started");
        assert!(stderr.contains(needle), "{tls}: {needle:?} not in:\n{stderr}");
        assert!(!stderr.contains("PRIVATE KEY-----") && !stderr.contains(&key_body), "{tls}: key material:\n{stderr}");
        assert!(!stderr.contains("TUlJQ2VBSUJBREFOQmdr"), "{tls}: the file's contents:\n{stderr}");
    }
}
