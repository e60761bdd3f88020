//! The stored values: one per household, village and county, compact and versioned.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::months::{Bucket, Months};
use crate::model::{
    CountyCode, EventKind, Fen, HouseholdCategory, HouseholdId, Indicator, IntervalKind, Month,
    PersonKey, RiskSet, RosterEntry, VillageCode,
};

/// One calendar month of a household's indicators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthBucket {
    pub month: Month,
    /// Bit `i` is set when indicator `i` has at least one record this month.
    pub present: u8,
    pub values: [Fen; Indicator::COUNT],
    /// Tags of the records applied to this month (see `record_tag`), for idempotent ingest.
    pub records: Vec<u64>,
    /// Events of the month by kind.
    pub events: Vec<EventCount>,
}

/// How many events of a kind a month had, and the sum of their amounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventCount {
    pub kind: EventKind,
    pub count: u32,
    pub amount: Fen,
}

/// Adds an event to its month's bucket; returns the months before.
pub(crate) fn add_event(
    months: &mut Months,
    month: Month,
    tag: u64,
    kind: EventKind,
    amount: Option<Fen>,
    retention: u32,
) -> Months {
    months.update(month, retention, |b| {
        match b.events.iter_mut().find(|e| e.kind == kind) {
            Some(e) => {
                e.count += 1;
                e.amount += amount.unwrap_or(0);
            }
            None => b.events.push(EventCount {
                kind,
                count: 1,
                amount: amount.unwrap_or(0),
            }),
        }
        b.records.push(tag);
    })
}

/// Events of a kind over the `n` months ending with `last`: (count, amount sum).
pub fn events_in(months: &Months, kind: EventKind, last: Month, n: u32) -> (u32, Fen) {
    let first = last.minus(n.saturating_sub(1));
    months
        .iter()
        .filter(|b| b.month() >= first && b.month() <= last)
        .flat_map(|b| b.events().filter(|e| e.kind == kind))
        .fold((0, 0), |(c, a), e| (c + e.count, a + e.amount))
}

impl MonthBucket {
    pub fn new(month: Month) -> Self {
        Self {
            month,
            present: 0,
            values: [0; Indicator::COUNT],
            records: Vec::new(),
            events: Vec::new(),
        }
    }
    pub fn has(&self, ind: Indicator) -> bool {
        self.present & (1 << ind.index()) != 0
    }
    pub fn get(&self, ind: Indicator) -> Option<Fen> {
        self.has(ind).then(|| self.values[ind.index()])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Household {
    pub id: HouseholdId,
    pub village: VillageCode,
    /// The village's name as the roster gives it. The working set's households share one
    /// copy of each name (`Households`); stored as text.
    pub village_name: Arc<str>,
    pub category: HouseholdCategory,
    pub head_masked: Box<str>,
    pub members: Box<[PersonKey]>,
    /// Annual per-capita net income (人均纯收入), fen.
    pub income_per_capita: Fen,
    /// Monthly buckets in month order, only months with data. Stored one key per month
    /// (`Space::HouseholdMonth`), so a record rewrites its month, not the household's history.
    #[serde(skip)]
    pub months: Months,
}

impl Household {
    pub fn new(entry: &RosterEntry) -> Self {
        let mut h = Self {
            id: entry.household.clone(),
            village: entry.village,
            village_name: Arc::from(""),
            category: entry.category,
            head_masked: Box::default(),
            members: Box::default(),
            income_per_capita: 0,
            months: Months::default(),
        };
        h.set_roster(entry, entry.village_name.as_str().into());
        h
    }

    pub fn county(&self) -> CountyCode {
        self.village.county()
    }

    /// Whether everything but the months is the same (the roster part a run or a base
    /// stores).
    pub fn same_roster_part(&self, o: &Household) -> bool {
        self.id == o.id
            && self.village == o.village
            && self.village_name == o.village_name
            && self.category == o.category
            && self.head_masked == o.head_masked
            && self.members == o.members
            && self.income_per_capita == o.income_per_capita
    }

    pub fn same_roster(&self, e: &RosterEntry) -> bool {
        self.village == e.village
            && *self.village_name == *e.village_name
            && self.category == e.category
            && *self.head_masked == *e.head_masked
            && *self.members == *e.members
            && self.income_per_capita == e.income_per_capita
    }

    /// Takes the roster part of `e`; `village_name` is its village's name (a shared copy).
    pub fn set_roster(&mut self, e: &RosterEntry, village_name: Arc<str>) {
        self.village = e.village;
        self.village_name = village_name;
        self.category = e.category;
        self.head_masked = e.head_masked.as_str().into();
        self.members = e.members.as_slice().into();
        self.income_per_capita = e.income_per_capita;
    }

    /// Annual household income: per-capita net income times the number of members.
    pub fn annual_income(&self) -> Fen {
        self.income_per_capita * self.members.len().max(1) as Fen
    }

    pub fn newest_month(&self) -> Option<Month> {
        self.months.newest()
    }

    pub fn bucket(&self, month: Month) -> Option<Bucket<'_>> {
        self.months.find(month)
    }

    pub fn has_record(&self, month: Month, tag: u64) -> bool {
        self.bucket(month)
            .is_some_and(|b| b.records().contains(&tag))
    }

    /// Adds a record's values to its month and drops months beyond the retention window;
    /// returns the months before.
    pub fn add_sample(
        &mut self,
        month: Month,
        tag: u64,
        values: &[(Indicator, Fen)],
        retention: u32,
    ) -> Months {
        self.add_samples(month, &[(tag, values)], retention)
    }

    /// [`Household::add_sample`] for several records of one month, in the order given, with
    /// the months packed once: the same months as adding them one at a time.
    pub fn add_samples(
        &mut self,
        month: Month,
        samples: &[(u64, &[(Indicator, Fen)])],
        retention: u32,
    ) -> Months {
        self.months.update(month, retention, |b| {
            for &(tag, values) in samples {
                for (ind, v) in values {
                    b.values[ind.index()] += v;
                    b.present |= 1 << ind.index();
                }
                b.records.push(tag);
            }
        })
    }

    /// Events of a kind over `n` months ending with `last`: (count, amount sum).
    pub fn events(&self, kind: EventKind, last: Month, n: u32) -> (u32, Fen) {
        events_in(&self.months, kind, last, n)
    }

    /// The indicator's value for a month, if any record gave one.
    pub fn value(&self, ind: Indicator, month: Month) -> Option<Fen> {
        self.bucket(month).and_then(|b| b.get(ind))
    }

    /// The indicator's values for `n` months from `first`, in one pass over the buckets:
    /// entry `k` is month `first + k`.
    pub fn values_over(&self, ind: Indicator, first: Month, n: u32) -> Vec<Option<Fen>> {
        let mut out = vec![None; n as usize];
        for b in &self.months {
            let m = b.month();
            if m < first {
                continue;
            }
            match out.get_mut(m.since(first) as usize) {
                Some(slot) => *slot = b.get(ind),
                None => break,
            }
        }
        out
    }

    /// The newest month with a value of the indicator.
    pub fn latest(&self, ind: Indicator) -> Option<(Month, Fen)> {
        self.months
            .iter()
            .filter_map(|b| b.get(ind).map(|v| (b.month(), v)))
            .last()
    }

    /// Sum of the indicator over `n` months ending with `last` (missing months count 0).
    pub fn sum(&self, ind: Indicator, last: Month, n: u32) -> Fen {
        let first = last.minus(n.saturating_sub(1));
        self.months
            .iter()
            .filter(|b| b.month() >= first && b.month() <= last)
            .filter_map(|b| b.get(ind))
            .sum()
    }
}

/// An interval at a village; times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub id: String,
    pub kind: IntervalKind,
    pub start: i64,
    pub end: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Village {
    pub code: VillageCode,
    pub name: String,
    pub intervals: Vec<Interval>,
    /// Monthly buckets of village events (water quality, disasters).
    pub months: Months,
}

impl Village {
    pub fn new(code: VillageCode, name: &str) -> Self {
        Self {
            code,
            name: name.to_string(),
            intervals: Vec::new(),
            months: Months::default(),
        }
    }

    pub fn has_record(&self, month: Month, tag: u64) -> bool {
        self.months
            .find(month)
            .is_some_and(|b| b.records().contains(&tag))
    }

    /// Events of a kind over `n` months ending with `last`: (count, amount sum).
    pub fn events(&self, kind: EventKind, last: Month, n: u32) -> (u32, Fen) {
        events_in(&self.months, kind, last, n)
    }

    /// Inserts or replaces the interval with the same id; drops intervals that ended before
    /// `forget_before` (Unix seconds).
    pub fn upsert_interval(&mut self, interval: Interval, forget_before: i64) {
        match self.intervals.iter_mut().find(|i| i.id == interval.id) {
            Some(existing) => *existing = interval,
            None => self.intervals.push(interval),
        }
        self.intervals
            .retain(|i| i.end.is_none_or(|e| e >= forget_before));
        self.intervals
            .sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    }

    /// Open intervals of a kind (no end yet).
    pub fn open(&self, kind: IntervalKind) -> impl Iterator<Item = &Interval> {
        self.intervals
            .iter()
            .filter(move |i| i.kind == kind && i.end.is_none())
    }
}

/// Per-county aggregates kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountyValue {
    pub code: CountyCode,
    pub households_by_category: [u32; HouseholdCategory::ALL.len()],
    /// Households with a firing alert in any category of a set, per (month, set), in order:
    /// the set of every category, and the sets that county rules watch.
    pub at_risk: Vec<(Month, RiskSet, u32)>,
}

/// [`CountyValue`] as stored before it counted sets of risk categories (value version 1):
/// its numbers counted every category.
#[derive(Deserialize)]
pub struct CountyValueV1 {
    code: CountyCode,
    households_by_category: [u32; HouseholdCategory::ALL.len()],
    at_risk: Vec<(Month, u32)>,
}

impl From<CountyValueV1> for CountyValue {
    fn from(v: CountyValueV1) -> Self {
        Self {
            code: v.code,
            households_by_category: v.households_by_category,
            at_risk: v
                .at_risk
                .into_iter()
                .map(|(m, n)| (m, RiskSet::ALL, n))
                .collect(),
        }
    }
}

impl CountyValue {
    pub fn new(code: CountyCode) -> Self {
        Self {
            code,
            households_by_category: [0; HouseholdCategory::ALL.len()],
            at_risk: Vec::new(),
        }
    }

    /// The number recorded for `set` in `month`, if any.
    pub fn at_risk_in(&self, month: Month, set: RiskSet) -> Option<u32> {
        self.at_risk
            .iter()
            .find(|(m, s, _)| *m == month && *s == set)
            .map(|(_, _, n)| *n)
    }

    /// Records `n` for `set` in `month`, and forgets months `keep_months` or more before it.
    pub fn set_at_risk(&mut self, month: Month, set: RiskSet, n: u32, keep_months: u32) {
        match self
            .at_risk
            .iter_mut()
            .find(|(m, s, _)| *m == month && *s == set)
        {
            Some(e) => e.2 = n,
            None => {
                self.at_risk.push((month, set, n));
                self.at_risk.sort();
            }
        }
        self.at_risk
            .retain(|(m, _, _)| month.since(*m) < keep_months);
    }
}
