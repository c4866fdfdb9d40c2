//! What each detector does where: the built-in defaults, overridden by the
//! global `guard.detectors`, then by a server's, then by a tool's. Resolved
//! once per configuration into one table per server and per tool with
//! settings of its own, so a request looks its table up and indexes it.

use std::collections::BTreeMap;

use bastion_core::config::{BUILTIN_DETECTORS, DetectorConfig, GuardAction, GuardConfig, GuardDirection, MaskStyle};

use crate::Direction;
use crate::detect::{BUILTINS, Builtin, DetectorId, DetectorSet};

/// How a detector's values are masked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mask {
    pub partial: bool,
    pub keep_prefix: Option<u8>,
    pub keep_suffix: Option<u8>,
}

impl Mask {
    fn apply(&mut self, style: Option<MaskStyle>, keep_prefix: Option<u8>, keep_suffix: Option<u8>) {
        if keep_prefix.is_some() || keep_suffix.is_some() {
            self.keep_prefix = keep_prefix;
            self.keep_suffix = keep_suffix;
            self.partial = true;
        }
        if let Some(style) = style {
            self.partial = style == MaskStyle::Partial;
        }
    }
}

/// The settings of every detector at one place (global, a server, a tool).
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// By detector: the action inbound, outbound.
    actions: Vec<[GuardAction; 2]>,
    masks: Vec<Mask>,
    /// By direction: the detectors not `off`.
    active: [DetectorSet; 2],
}

impl Table {
    /// The built-in defaults, and each custom detector's own settings.
    pub(crate) fn defaults(config: &GuardConfig) -> Table {
        use GuardAction::*;
        let mut actions = Vec::with_capacity(BUILTINS.len() + config.custom.len());
        let mut masks = Vec::with_capacity(actions.capacity());
        for b in BUILTINS {
            actions.push(match b {
                Builtin::Email | Builtin::Phone => [Off, Off],
                Builtin::KrRrn | Builtin::CreditCard | Builtin::Iban => [Mask, Mask],
                _ if b.is_secret() => [Block, Mask],
                _ => [Off, Off],
            });
            masks.push(self::Mask::default());
        }
        for c in &config.custom {
            let (inbound, outbound) = c.direction.covers();
            let pick = |on: bool| if on { c.action } else { Off };
            actions.push([pick(inbound), pick(outbound)]);
            let mut mask = self::Mask::default();
            mask.apply(c.mask, c.keep_prefix, c.keep_suffix);
            masks.push(mask);
        }
        let mut table = Table { actions, masks, active: Default::default() };
        table.finish();
        table
    }

    /// These settings over the table's. Names were checked when the
    /// configuration was loaded; an unknown one here is an error all the
    /// same.
    /// Every detector off.
    pub(crate) fn disable(&mut self) {
        for a in &mut self.actions {
            *a = [GuardAction::Off, GuardAction::Off];
        }
        self.finish();
    }

    pub(crate) fn apply(
        &mut self,
        config: &GuardConfig,
        settings: &BTreeMap<String, DetectorConfig>,
    ) -> Result<(), crate::Error> {
        for (name, d) in settings {
            let i = index_of(config, name).ok_or_else(|| crate::Error::UnknownDetector { name: name.clone() })?;
            if let Some(action) = d.action {
                let (inbound, outbound) = d.direction.unwrap_or(GuardDirection::Both).covers();
                if inbound {
                    self.actions[i][0] = action;
                }
                if outbound {
                    self.actions[i][1] = action;
                }
            }
            self.masks[i].apply(d.mask, d.keep_prefix, d.keep_suffix);
        }
        self.finish();
        Ok(())
    }

    fn finish(&mut self) {
        self.active = Default::default();
        for (i, a) in self.actions.iter().enumerate() {
            for (d, action) in a.iter().enumerate() {
                if *action != GuardAction::Off {
                    self.active[d].insert(DetectorId(i as u8));
                }
            }
        }
    }

    pub(crate) fn action(&self, id: DetectorId, direction: Direction) -> GuardAction {
        self.actions[id.index()][direction as usize]
    }

    pub(crate) fn mask(&self, id: DetectorId) -> Mask {
        self.masks[id.index()]
    }

    pub(crate) fn active(&self, direction: Direction) -> DetectorSet {
        self.active[direction as usize]
    }

    /// The detectors this table uses in either direction.
    pub(crate) fn used(&self) -> DetectorSet {
        DetectorSet(self.active[0].0 | self.active[1].0)
    }
}

/// A detector's index: built-in ones first, then the custom ones in order.
fn index_of(config: &GuardConfig, name: &str) -> Option<usize> {
    BUILTIN_DETECTORS
        .iter()
        .position(|n| *n == name)
        .or_else(|| config.custom.iter().position(|c| c.name == name).map(|i| BUILTIN_DETECTORS.len() + i))
}

/// The letters and digits partial masking keeps of a built-in detector's
/// value when neither `keep_prefix` nor `keep_suffix` is set: the start of
/// a resident registration number (`900101-1******`), the end of card and
/// phone numbers, an IBAN's country and check digits and its end, a
/// token's first four characters; a custom detector's last four.
pub(crate) fn default_keep(id: DetectorId) -> (usize, usize) {
    match Builtin::from_id(id) {
        Some(Builtin::KrRrn) => (7, 0),
        Some(Builtin::CreditCard | Builtin::Phone) => (0, 4),
        Some(Builtin::Iban) => (4, 4),
        Some(Builtin::Email) => (1, 0),
        Some(_) => (4, 0),
        None => (0, 4),
    }
}
