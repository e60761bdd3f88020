//! Running counts of the alerts for the gauges and the county values.
//!
//! Every pass reports how many alerts there are per (county, rule, severity, status), the
//! recorded dispositions, and how many households have a firing alert per county, per
//! (county, risk category), and per county in any set of risk categories (county rules).
//! Counting them by walking every alert cost a pass tens of milliseconds at province scale
//! whatever its size; the tally is kept as alerts change, so a pass pays for its
//! transitions only.
//!
//! Invariant: the tally equals [`Tally::of`] over the alerts at all times. [`super::Alerts`]
//! takes an alert out before it changes a counted field (status, disposition) or removes it,
//! and puts it back after; the fields that name the alert (county, rule, severity, risk
//! category, entity) do not change while it is kept.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use super::{Alert, Disposition, Status};
use crate::model::{CountyCode, RiskCategory, RiskSet};

#[derive(Debug, Default, PartialEq)]
pub(super) struct Tally {
    /// Alerts per (county, rule, severity, status).
    counts: HashMap<(Option<CountyCode>, String, String, Status), u64>,
    /// Recorded dispositions per (county, rule, disposition).
    dispositions: HashMap<(Option<CountyCode>, String, Disposition), u64>,
    /// Firing alerts per (county, risk category, household entity): a household may fire
    /// several rules of one category.
    firing: HashMap<(CountyCode, RiskCategory, String), u64>,
    /// The risk categories firing per (county, household entity).
    households: HashMap<(CountyCode, String), RiskSet>,
    /// Households per (county, the exact set of their firing risk categories). Households
    /// fire in few combinations, so the households of a county in any set of categories are
    /// a sum over a few entries.
    per_mask: HashMap<(CountyCode, RiskSet), u64>,
    /// Households with a firing alert per (county, risk category), and per county.
    per_risk: HashMap<(CountyCode, RiskCategory), u64>,
    per_county: HashMap<CountyCode, u64>,
}

impl Tally {
    /// The tally of `alerts`, counted from scratch (on load, and in tests).
    pub(super) fn of<'a>(alerts: impl IntoIterator<Item = &'a Alert>) -> Self {
        let mut t = Self::default();
        for a in alerts {
            t.add(a);
        }
        t
    }

    pub(super) fn add(&mut self, a: &Alert) {
        self.change(a, true);
    }

    pub(super) fn remove(&mut self, a: &Alert) {
        self.change(a, false);
    }

    fn change(&mut self, a: &Alert, add: bool) {
        step(
            &mut self.counts,
            (a.county, a.rule.clone(), a.severity.clone(), a.status),
            add,
        );
        if let Some(ack) = &a.ack {
            step(
                &mut self.dispositions,
                (a.county, a.rule.clone(), ack.disposition),
                add,
            );
        }
        if a.status != Status::Firing || !a.entity.starts_with("household/") {
            return;
        }
        let (Some(county), Ok(risk)) = (a.county, a.risk_category.parse::<RiskCategory>()) else {
            return;
        };
        // A household counts once per (county, risk category) and once per county,
        // however many of its alerts fire.
        if step(&mut self.firing, (county, risk, a.entity.clone()), add) {
            step(&mut self.per_risk, (county, risk), add);
            let key = (county, a.entity.clone());
            let before = self.households.get(&key).copied().unwrap_or(RiskSet::EMPTY);
            let after = before.with(risk, add);
            if after.is_empty() {
                self.households.remove(&key);
            } else {
                self.households.insert(key, after);
            }
            if !before.is_empty() {
                step(&mut self.per_mask, (county, before), false);
            }
            if !after.is_empty() {
                step(&mut self.per_mask, (county, after), true);
            }
            if before.is_empty() != after.is_empty() {
                step(&mut self.per_county, county, add);
            }
        }
    }

    /// Alerts per (county, rule, severity, status), in order.
    pub(super) fn counts(&self) -> BTreeMap<(Option<CountyCode>, &str, &str, Status), u64> {
        self.counts
            .iter()
            .map(|((c, r, s, st), n)| ((*c, r.as_str(), s.as_str(), *st), *n))
            .collect()
    }

    /// Recorded dispositions per (county, rule, disposition), in order.
    pub(super) fn dispositions(&self) -> BTreeMap<(Option<CountyCode>, &str, Disposition), u64> {
        self.dispositions
            .iter()
            .map(|((c, r, d), n)| ((*c, r.as_str(), *d), *n))
            .collect()
    }

    /// Households with a firing alert per county; counties without any are absent.
    pub(super) fn households_per_county(&self) -> BTreeMap<CountyCode, u64> {
        self.per_county.iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Households with a firing alert in any category of `set`, per county; counties
    /// without any are absent.
    pub(super) fn households_in(&self, set: RiskSet) -> BTreeMap<CountyCode, u64> {
        let mut out: BTreeMap<CountyCode, u64> = BTreeMap::new();
        for ((county, mask), n) in &self.per_mask {
            if mask.intersects(set) {
                *out.entry(*county).or_default() += n;
            }
        }
        out
    }

    /// Households with a firing alert per (county, risk category); absent when none.
    pub(super) fn households_per_risk(&self) -> BTreeMap<(CountyCode, RiskCategory), u64> {
        self.per_risk.iter().map(|(k, n)| (*k, *n)).collect()
    }
}

/// Adds one to `key`'s count, or takes one away, forgetting the key at zero. The answer:
/// whether the key came or went (its count went from zero to one, or from one to zero).
fn step<K: Hash + Eq>(m: &mut HashMap<K, u64>, key: K, add: bool) -> bool {
    use std::collections::hash_map::Entry;
    match (m.entry(key), add) {
        (Entry::Vacant(e), true) => {
            e.insert(1);
            true
        }
        (Entry::Occupied(mut e), true) => {
            *e.get_mut() += 1;
            false
        }
        // Taking away what was never counted would break the invariant; nothing to do.
        (Entry::Vacant(_), false) => false,
        (Entry::Occupied(e), false) if *e.get() <= 1 => {
            e.remove();
            true
        }
        (Entry::Occupied(mut e), false) => {
            *e.get_mut() -= 1;
            false
        }
    }
}
