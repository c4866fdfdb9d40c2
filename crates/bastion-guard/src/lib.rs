//! Bastion's data guard, without I/O: sensitive values found in MCP
//! messages and masked, logged or refused; and poisoned tool and prompt
//! descriptions found before a model reads them.
//!
//! # Detectors
//!
//! Built in (names as in the configuration): `email`, `phone` (Korean and
//! E.164), `kr_rrn` (resident and foreigner registration numbers: date and
//! check digit), `credit_card` (issuer prefix, length, Luhn), `iban`
//! (country length, mod-97), `aws_access_key`, `aws_secret_key`,
//! `github_token`, `gitlab_token`, `slack_token`, `openai_key`, `jwt` (the
//! header must decode to JSON with an `alg`), `private_key` (PEM), and
//! `bastion_key` (Bastion's own `bst_` API keys). Custom ones come from
//! `guard.custom`: a regular expression, optional keywords and a checksum.
//! How one pass finds them all is in [`Detectors`].
//!
//! # Actions
//!
//! Each detector has an action per direction — `off`, `log`, `mask`,
//! `block` — set globally, per server and per tool (see
//! `bastion_core::config::GuardConfig`). Defaults: credentials blocked
//! inbound and masked outbound; resident registration numbers, card
//! numbers and IBANs masked both ways; e-mail addresses and phone numbers
//! off. [`Guard::compile`] resolves the settings once into a table per
//! server and per tool that has its own.
//!
//! # Use
//!
//! ```
//! use bastion_guard::{Guard, Scope, Shape, Verdict};
//! use serde_json::json;
//!
//! let guard = Guard::compile(&Default::default(), &Default::default()).unwrap();
//! let mut result = json!({"content": [{"type": "text", "text": "RRN 900101-1234568"}]});
//! let verdict = guard.inspect_message(Shape::CallResult, &mut result, Scope::tool("hr", "lookup"));
//! assert_eq!(result["content"][0]["text"], "RRN [REDACTED:kr_rrn]");
//! assert_eq!(verdict.hits()[0].path, "/content/0/text");
//!
//! let mut params = json!({"name": "deploy", "arguments": {"key": "AKIAIOSFODNN7EXAMPLE"}});
//! let verdict = guard.inspect_message(Shape::CallRequest, &mut params, Scope::tool("ci", "deploy"));
//! assert!(matches!(&verdict, Verdict::Block { hit } if hit.detector == "aws_access_key"));
//! ```
//!
//! Every value found is a [`Hit`] (detector, direction, server, tool, JSON
//! pointer, action) for the audit trail; a hit never holds the value.
//!
//! # Poisoning
//!
//! [`scan_tool`], [`scan_prompt`] and [`scan_catalog`] read what servers
//! list; see [`poison`](scan_catalog) for what they look for.
//!
//! # Pinning
//!
//! [`pin`]: the canonical hash of a tool's or prompt's definition, and what
//! a definition seen now makes of an item given its pin.
#![forbid(unsafe_code)]

mod detect;
mod inspect;
pub mod pin;
mod poison;
mod settings;
mod validate;

pub use bastion_core::config::GuardAction;
pub use detect::{DetectorId, Detectors, Match};
pub use inspect::{Direction, Guard, Hit, Scope, Shape, Verdict};
pub use poison::{Finding, FindingKind, scan_catalog, scan_prompt, scan_tool};

/// Why a guard could not be built. The configuration's check refuses all
/// of these when the file is loaded; they are here for configurations
/// built otherwise.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A custom detector's pattern does not compile (its text is not
    /// repeated: it may have been written around a real value).
    #[error("the pattern of detector {name} does not compile")]
    Pattern { name: String },
    #[error("unknown detector {name}")]
    UnknownDetector { name: String },
    #[error("too many detectors: at most 128, built-in ones included")]
    TooManyDetectors,
}
