//! The `metrics` key: the Prometheus endpoint.
//!
//! ```yaml
//! metrics:
//!   enabled: true                    # default
//!   allow: [127.0.0.0/8, "::1"]      # who may scrape (the default: loopback only)
//!   listen: 127.0.0.1:9464           # a listener of its own; then not served on `listen`
//! ```
//!
//! `/metrics` asks for no credential (scrapers have none), so it is served
//! only to client addresses in `allow` — the TCP peer's address, never a
//! forwarded header. Everyone else gets the same 404 as for a path that
//! does not exist.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served at all. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Client addresses that may read `/metrics`: addresses (`10.0.0.7`,
    /// `::1`) or CIDR blocks (`10.0.0.0/8`). Default `[127.0.0.0/8, ::1]`:
    /// loopback only.
    #[serde(default = "default_allow")]
    pub allow: Vec<IpNet>,
    /// Serve `/metrics` on a listener of its own at this address (plain
    /// HTTP), and not on `listen`. Default: none, `/metrics` is on `listen`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, allow: default_allow(), listen: None }
    }
}

impl MetricsConfig {
    /// Whether a client at `ip` may read the metrics.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(ip))
    }

    /// What is wrong with the section: the key and a message. `main` is
    /// the gateway's own `listen`.
    pub(super) fn check(&self, main: SocketAddr) -> Result<(), (String, String)> {
        if self.enabled && self.allow.is_empty() {
            return Err((
                "allow".into(),
                "must list at least one address or block (to turn the endpoint off: enabled: false)".into(),
            ));
        }
        if let Some(l) = self.listen
            && l.port() != 0
            && l == main
        {
            return Err(("listen".into(), "must differ from `listen`".into()));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn default_allow() -> Vec<IpNet> {
    vec![IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8), IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128)]
}

/// An IP address block: an address and a prefix length. Host bits beyond
/// the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The block of `addr`'s first `prefix` bits (clamped to the family's
    /// length).
    pub fn new(addr: IpAddr, prefix: u8) -> IpNet {
        let prefix = prefix.min(max_prefix(addr));
        IpNet { addr: mask(addr, prefix), prefix }
    }

    /// `ADDRESS` (one address) or `ADDRESS/PREFIX`; `None` for anything else.
    pub fn parse(s: &str) -> Option<IpNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().ok()?;
                // Digits only: no sign, no spaces, no leading `+`.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let prefix: u8 = p.parse().ok()?;
                if prefix > max_prefix(addr) {
                    return None;
                }
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = s.parse().ok()?;
                (addr, max_prefix(addr))
            }
        };
        Some(IpNet::new(addr, prefix))
    }

    /// Whether `ip` is in the block. An IPv4 client seen through an
    /// IPv6 socket (`::ffff:a.b.c.d`) is matched as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, self.prefix) == self.addr,
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // The message names no value: the file's text is never quoted.
        IpNet::parse(&s).ok_or_else(|| {
            serde::de::Error::custom("not an IP address or block (ADDRESS or ADDRESS/PREFIX, e.g. 10.0.0.0/8)")
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("bastion.yaml"), text)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_are_loopback_only_on_the_main_listener() {
        let c = yaml("mcpServers: {}\n").unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert!(c.metrics.enabled && c.metrics.listen.is_none());
        for ok in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(c.metrics.allows(ip(ok)), "{ok}");
        }
        for no in ["10.0.0.1", "192.168.1.1", "::2", "fe80::1", "::ffff:10.0.0.1", "0.0.0.0"] {
            assert!(!c.metrics.allows(ip(no)), "{no}");
        }
    }

    #[test]
    fn blocks_and_addresses() {
        let c = yaml("metrics: {allow: [10.1.2.3/8, 192.168.0.7, 'fd00::/8'], listen: '127.0.0.1:9464'}\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.metrics.allow[0].to_string(), "10.0.0.0/8", "host bits are dropped");
        assert!(c.metrics.allows(ip("10.200.0.1")));
        assert!(c.metrics.allows(ip("192.168.0.7")) && !c.metrics.allows(ip("192.168.0.8")));
        assert!(c.metrics.allows(ip("fd12::1")) && !c.metrics.allows(ip("fe80::1")));
        assert!(!c.metrics.allows(ip("127.0.0.1")), "an explicit list replaces the default");
        let any = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(any.contains(ip("203.0.113.9")) && !any.contains(ip("::1")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (bad, key) in [
            ("metrics: {allow: [not-an-address]}\n", "metrics.allow[0]"),
            ("metrics: {allow: [127.0.0.1/33]}\n", "metrics.allow[0]"),
            ("metrics: {allow: ['::1/129']}\n", "metrics.allow[0]"),
            ("metrics: {allow: [127.0.0.1, 10.0.0.0/-1]}\n", "metrics.allow[1]"),
            ("metrics: {allow: ['10.0.0.0/ 8']}\n", "metrics.allow[0]"),
            ("metrics: {allow: []}\n", "metrics.allow"),
            ("metrics: {listen: nowhere}\n", "metrics.listen"),
            ("listen: 127.0.0.1:8080\nmetrics: {listen: 127.0.0.1:8080}\n", "metrics.listen"),
            ("metrics: {enable: true}\n", "metrics"),
        ] {
            let err = yaml(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        // Off, an empty list is fine.
        assert!(yaml("metrics: {enabled: false, allow: []}\n").is_ok());
    }

    #[test]
    fn parsing_arbitrary_text_never_panics() {
        for s in ["", "/", "1.2.3.4/", "/8", "1.2.3.4/8/8", "1.2.3.4/999999999999", "::1/+8", "\u{0}", "1.2.3.4 /8"] {
            assert!(IpNet::parse(s).is_none(), "{s:?}");
        }
    }
}
