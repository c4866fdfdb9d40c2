//! Bastion's audit trail, without I/O: what a record holds ([`Event`]),
//! how records are chained ([`AuditKey::seal`]), and how a stored chain is
//! checked ([`Verifier`]). The gateway fills events and the store keeps
//! them; neither needs to know how the chain works.
//!
//! # The chain
//!
//! Each record is stored as its JSON text (the *body*) with a sequence
//! number and a MAC:
//!
//! ```text
//! mac(n) = HMAC-SHA256(chain key, "bastion-audit-v1" ‖ chain ‖ n ‖ mac(n-1) ‖ body(n))
//! ```
//!
//! starting from 32 zero bytes. The key is secret, so whoever can write the
//! database but not read the key cannot make a record that verifies: a
//! changed body breaks its own MAC; a deleted record leaves a gap in the
//! numbers (or, renumbered, breaks every MAC after it); an inserted or
//! reordered one breaks the MAC where it stands. What remains possible
//! without the key is cutting the tail and setting the chain's head back
//! to an earlier record: [`Checkpoint`]s exported and kept elsewhere catch
//! that, since the record they name must still carry their MAC.
//!
//! Records are stored in batches, a row of text each ([`batch`] says how);
//! a batch's bounds, which searches go by (its first and last number, its
//! oldest and newest time), are compared with its records, so a changed
//! bound is found too.
//!
//! # Arguments
//!
//! A call's arguments are never stored: [`AuditKey::digest_arguments`] is a
//! keyed digest of their canonical JSON, equal for equal arguments (so two
//! records can be compared) and useless for guessing them without the key.
#![forbid(unsafe_code)]

pub mod batch;
mod chain;
mod event;

pub use batch::{Batch, SPAN_MICROS, read_batch};
pub use chain::{ArgumentsDigest, AuditKey, Checkpoint, GENESIS, Head, Mac, Problem, Stored, Verified, Verifier};
pub use event::{Entry, Event, Fields, Outcome, Sealable};
