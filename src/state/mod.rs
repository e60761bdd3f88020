//! Rolling state per household, village and county, and how records change it.
//!
//! The working set lives in memory ([`World`]) and is written through to the store in batches.
//! Invariants:
//! - Applying a record is idempotent: a sample whose record id was already applied to its
//!   household's month changes nothing; roster entries and intervals replace by id.
//! - Between [`World::begin`] and [`World::take_batch`] every changed entity is remembered with
//!   its value before the change, so a batch the store failed to commit can be rolled back
//!   and memory never runs ahead of disk.
//! - Monthly buckets more than `retention_months` before the current month are refused, and
//!   those more than `retention_months` before a household's newest month are dropped.

mod frames;
mod households;
mod month_log;
mod persons;
pub use month_log::DEFAULT_MIN_RUN_BYTES as DEFAULT_BASE_REWRITE_BYTES;
pub use month_log::{BaseSource, BaseWritten, write_base_from};
mod months;
pub mod snapshot;
mod values;

use households::{Households, Slot};
use months::MonthsBuilder;
use persons::Persons;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset};
use tracing::debug;

pub use values::{
    Bucket, CountyValue, EventCount, Household, Interval, MonthBucket, Months, Village, events_in,
};

use crate::model::{
    CountyCode, Fen, HouseholdCategory, HouseholdId, Indicator, Month, Observation, PersonKey,
    Record, RiskSet, Subject, VillageCode,
};
use crate::store::{Batch, Space, Store, StoreError, codec};

/// Why a record was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("person is not on the household roster (yet)")]
    UnknownPerson,
    #[error("household {0} is not on the roster")]
    UnknownHousehold(HouseholdId),
    #[error("month {0} lies in the future")]
    FutureMonth(Month),
    #[error("month {0} is older than the retention window")]
    TooOld(Month),
    #[error("interval ends before it starts")]
    IntervalReversed,
    #[error("numeric samples are kept per household, not per village")]
    VillageSample,
    #[error("the working set has no room for another household: {0}")]
    WorkingSetFull(String),
}

impl Rejection {
    /// A short, stable reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownPerson => "unknown_person",
            Self::UnknownHousehold(_) => "unknown_household",
            Self::FutureMonth(_) => "future_month",
            Self::TooOld(_) => "too_old",
            Self::IntervalReversed => "interval_reversed",
            Self::VillageSample => "village_sample",
            Self::WorkingSetFull(_) => "working_set_full",
        }
    }
}

/// What applying one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Duplicate,
}

/// A sample record's tag ([`record_tag`]) and values.
type TaggedSample<'r> = (u64, &'r [(Indicator, Fen)]);

/// An entity rules are evaluated on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityRef {
    Household(HouseholdId),
    Village(VillageCode),
    /// A township (乡镇): the first 9 digits of its villages' codes.
    Township(u64),
    County(CountyCode),
    /// A departmental feed (for rules about missing data).
    Feed(String),
}

impl EntityRef {
    pub fn key(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_key(&mut s);
        s
    }

    /// Writes [`EntityRef::key`] without allocating it (fingerprints hash it per check).
    pub fn write_key(&self, w: &mut impl std::fmt::Write) -> std::fmt::Result {
        match self {
            Self::Household(h) => write!(w, "household/{h}"),
            Self::Village(v) => write!(w, "village/{v}"),
            Self::Township(t) => write!(w, "township/{t:09}"),
            Self::County(c) => write!(w, "county/{c}"),
            Self::Feed(f) => write!(w, "feed/{f}"),
        }
    }

    /// Parses [`EntityRef::key`].
    pub fn parse(key: &str) -> Option<Self> {
        let (kind, id) = key.split_once('/')?;
        match kind {
            "household" => id.parse().ok().map(Self::Household),
            "village" => id.parse().ok().map(Self::Village),
            "township" if id.len() == 9 => id.parse().ok().map(Self::Township),
            "county" => id.parse().ok().map(Self::County),
            "feed" if !id.is_empty() => Some(Self::Feed(id.to_string())),
            _ => None,
        }
    }

    /// The county the entity lies in, if it lies in one.
    pub fn county(&self, world: &World) -> Option<CountyCode> {
        match self {
            Self::Household(h) => world.household(h).map(|h| h.county()),
            Self::Village(v) => Some(v.county()),
            Self::Township(t) => CountyCode::new((*t / 1000) as u32).ok(),
            Self::County(c) => Some(*c),
            Self::Feed(_) => None,
        }
    }
}

/// Households' months as loaded: (household id as stored, months), in id order.
type PackedMonths = Vec<(Vec<u8>, Months)>;

/// The month of a month key (its first four bytes) and the household id after them.
fn split_month_key(k: &[u8]) -> Result<(Month, &[u8]), StoreError> {
    match k.split_first_chunk::<4>() {
        Some((month, id)) => Ok((Month::from_ordinal(u32::from_be_bytes(*month)), id)),
        None => Err(StoreError::Decode {
            space: Space::HouseholdMonth,
            key: String::from_utf8_lossy(k).into_owned(),
            detail: "a month key shorter than its month".into(),
        }),
    }
}

/// The months of the households whose ids lie in `from..to`, packed.
///
/// Month keys sort by month, then household ([`Space::HouseholdMonth`]), so the range is
/// read as one run of keys per month, from the oldest month to `newest`. Each run comes in
/// id order and is merged into the households seen before, which stay in id order.
fn load_months(
    store: &dyn Store,
    from: &[u8],
    to: Option<&[u8]>,
    newest: Month,
    retention_months: u32,
) -> Result<PackedMonths, StoreError> {
    let mut seen: Vec<(Vec<u8>, MonthsBuilder)> = Vec::new();
    let mut next = store.first_key_from(Space::HouseholdMonth, &[])?;
    while let Some(key) = next {
        let (month, _) = split_month_key(&key)?;
        let this = month.ordinal().to_be_bytes();
        let after = month.ordinal().checked_add(1).map(u32::to_be_bytes);
        let lo = [&this[..], from].concat();
        let hi = match (to, after) {
            (Some(to), _) => Some([&this[..], to].concat()),
            (None, after) => after.map(|a| a.to_vec()),
        };
        // The months that may still come for a household, this one included: no more than
        // up to the newest, nor than the retention keeps.
        let to_come = newest.since(month).min(retention_months) as usize + 1;
        let mut fresh: Vec<(Vec<u8>, MonthsBuilder)> = Vec::new();
        let mut i = 0;
        store.for_each_in(Space::HouseholdMonth, &lo, hi.as_deref(), &mut |k, v| {
            let b: values::MonthBucket =
                codec::decode(HOUSEHOLD_MONTH_VERSION, Space::HouseholdMonth, k, v)?;
            let (_, id) = split_month_key(k)?;
            while seen.get(i).is_some_and(|(s, _)| s.as_slice() < id) {
                i += 1;
            }
            match seen.get_mut(i) {
                Some((s, months)) if s.as_slice() == id => {
                    // Keys are unique and come month by month, so a household's months
                    // arrive in order: a refusal would mean the store is not what it says.
                    if !months.push(&b, to_come) {
                        return Err(StoreError::Decode {
                            space: Space::HouseholdMonth,
                            key: String::from_utf8_lossy(k).into_owned(),
                            detail: "a month read out of order".into(),
                        });
                    }
                }
                _ => {
                    let mut months = MonthsBuilder::default();
                    months.push(&b, to_come);
                    fresh.push((id.to_vec(), months));
                }
            }
            Ok(())
        })?;
        if !fresh.is_empty() {
            seen = merge_by_id(seen, fresh);
        }
        next = match after {
            Some(after) => store.first_key_from(Space::HouseholdMonth, &after)?,
            None => None,
        };
    }
    Ok(seen
        .into_iter()
        .map(|(id, months)| (id, months.finish()))
        .collect())
}

/// Schema 3: reads the months stored one key per household ([`Space::HouseholdMonth`])
/// into `w`'s households, to be moved into a base.
fn load_household_months(w: &mut World, store: &dyn Store) -> Result<(), StoreError> {
    // The months are most of the store: each range of households is read and packed on
    // its own thread, month by month.
    let Some(newest) = store
        .last_key(Space::HouseholdMonth)?
        .map(|k| split_month_key(&k).map(|(m, _)| m))
        .transpose()?
    else {
        return Ok(());
    };
    let retention_months = w.retention_months;
    // Every 1,024th household id, to split the months into ranges of equal size.
    let mut ids: Vec<&str> = w.households.values().map(|h| h.id.as_str()).collect();
    ids.sort_unstable();
    let samples: Vec<&[u8]> = ids.iter().step_by(1024).map(|id| id.as_bytes()).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let bounds: Vec<&[u8]> = (1..threads)
        .filter_map(|i| samples.get(i * samples.len() / threads).copied())
        .collect();
    let ranges: Vec<(&[u8], Option<&[u8]>)> = (0..=bounds.len())
        .map(|i| {
            let from: &[u8] = if i == 0 { &[] } else { bounds[i - 1] };
            (from, bounds.get(i).copied())
        })
        .collect();
    let packed: Vec<Result<PackedMonths, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(from, to)| {
                s.spawn(move || load_months(store, from, to, newest, retention_months))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Decode {
                        space: Space::HouseholdMonth,
                        key: String::new(),
                        detail: "a thread loading months panicked".into(),
                    })
                })
            })
            .collect()
    });
    for part in packed {
        for (id, months) in part? {
            let household = std::str::from_utf8(&id)
                .ok()
                .and_then(|s| s.parse::<HouseholdId>().ok());
            match household.and_then(|h| w.households.get_mut(&h)) {
                Some(h) => h.months = months,
                None => {
                    return Err(StoreError::Decode {
                        space: Space::HouseholdMonth,
                        key: String::from_utf8_lossy(&id).into_owned(),
                        detail: "months of a household that is not stored".into(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The error of a household the working set had no room for, read from `key` of `space`.
fn table_full(space: Space, key: &[u8], e: &households::TableFull) -> StoreError {
    StoreError::WorkingSetFull {
        space,
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    }
}

/// Merges two lists sorted by id (with no id in both) into one.
fn merge_by_id<T>(a: Vec<(Vec<u8>, T)>, b: Vec<(Vec<u8>, T)>) -> Vec<(Vec<u8>, T)> {
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        let first = if x.0 <= y.0 { a.next() } else { b.next() };
        out.extend(first);
    }
    out.extend(a);
    out.extend(b);
    out
}

/// The id or code in `part` of the stored `key` of `space`, parsed; `what` names it in the
/// error.
fn parse_key<T: std::str::FromStr>(
    space: Space,
    key: &[u8],
    part: &[u8],
    what: &str,
) -> Result<T, StoreError> {
    std::str::from_utf8(part)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Decode {
            space,
            key: String::from_utf8_lossy(key).into_owned(),
            detail: what.to_string(),
        })
}

/// Records that the household in `slot`, which lists person `m`, does (see [`World`]'s
/// `persons`).
fn list_person(
    persons: &mut Persons,
    shared: &mut Map<PersonKey, BTreeSet<HouseholdId>>,
    households: &Households,
    m: PersonKey,
    slot: Slot,
) {
    match persons.get_or_insert(households, &m, slot) {
        None => {}
        Some(listed) => {
            if listed == slot {
                return;
            }
            // Invariant: both slots are occupied (the index holds only such slots, and the
            // caller's household is in the table).
            let Some(id) = households.at(slot).map(|h| &h.id) else {
                return;
            };
            let listing = shared.entry(m).or_insert_with(|| {
                households
                    .at(listed)
                    .map(|h| h.id.clone())
                    .into_iter()
                    .collect()
            });
            listing.insert(id.clone());
            let least = match listing.first() {
                Some(least) if least == id => Some(slot),
                Some(least) => households.slot_of(least),
                None => None,
            };
            if let Some(least) = least {
                persons.insert(households, &m, least);
            }
        }
    }
}

/// The village of household `h`, made from the household if it is not there (or has no
/// name); see [`World::villages_of_households`].
fn note_village(villages: &mut Map<VillageCode, Village>, h: &Household) {
    let v = villages
        .entry(h.village)
        .or_insert_with(|| Village::new(h.village, ""));
    if v.name.is_empty() && !h.village_name.is_empty() {
        v.name = h.village_name.to_string();
    }
}

/// The newest month per indicator over all households' months.
fn newest_months(households: &Households) -> [Option<Month>; Indicator::COUNT] {
    let mut latest = [None; Indicator::COUNT];
    for h in households.values() {
        note_latest(&mut latest, &h.months);
    }
    latest
}

/// Raises `newest` (an indicator's newest month) to `month`.
fn raise(newest: &mut Option<Month>, month: Month) {
    *newest = Some(newest.map_or(month, |x| x.max(month)));
}

/// Raises `latest` (the newest month per indicator) to the months of `months`.
fn note_latest(latest: &mut [Option<Month>; Indicator::COUNT], months: &Months) {
    for b in months {
        for ind in Indicator::ALL {
            if b.has(ind) {
                raise(&mut latest[ind.index()], b.month());
            }
        }
    }
}

/// The newest month per indicator, followed through the changes of a catch-up: raised by
/// every bucket put in place, and told to walk every household again when an indicator
/// left a bucket of its newest month (that newest month could then go back) or a household
/// with months left.
struct Newest {
    months: [Option<Month>; Indicator::COUNT],
    walk_again: bool,
}

impl Newest {
    /// A household's bucket of `month`, `old` before, became `new` (none: removed).
    fn note(&mut self, month: Month, old: Option<Bucket<'_>>, new: Option<&MonthBucket>) {
        for ind in Indicator::ALL {
            let newest = &mut self.months[ind.index()];
            if new.is_some_and(|b| b.has(ind)) {
                raise(newest, month);
            } else if old.is_some_and(|b| b.has(ind)) && *newest == Some(month) {
                self.walk_again = true;
            }
        }
    }
}

/// Records that household `id`, in `slot`, no longer lists person `m`: called while it
/// still does (the person index finds a person through the household it names).
fn unlist_person(
    persons: &mut Persons,
    shared: &mut Map<PersonKey, BTreeSet<HouseholdId>>,
    households: &Households,
    m: PersonKey,
    id: &HouseholdId,
    slot: Slot,
) {
    match shared.get_mut(&m) {
        Some(listing) => {
            listing.remove(id);
            // The households still listing the person are in the table.
            match listing.first().and_then(|least| households.slot_of(least)) {
                Some(least) => persons.insert(households, &m, least),
                None => persons.remove(households, &m),
            }
            if listing.len() < 2 {
                shared.remove(&m);
            }
        }
        None => {
            if persons.get(households, &m) == Some(slot) {
                persons.remove(households, &m);
            }
        }
    }
}

/// The in-memory working set.
pub struct World {
    /// Each household in a slot of its own, found by its id (`Household::id`, shared text).
    /// A batch's touched households and the shared persons hold clones of that one id, so
    /// touched households can be told apart by address ([`Touched::absorb`]).
    households: Households,
    villages: Map<VillageCode, Village>,
    counties: BTreeMap<CountyCode, CountyValue>,
    /// The household of each person, by slot: the one roster entry that lists them, or of
    /// several (a roster error, such as a household split on paper before the old entry
    /// drops them) the one with the least household id, so that the index does not depend
    /// on the order in which entries were applied or households are walked at a start.
    /// Every slot it holds is occupied, by a household that lists the person.
    persons: Persons,
    /// Persons listed by more than one household, with those households.
    shared: Map<PersonKey, BTreeSet<HouseholdId>>,
    latest: [Option<Month>; Indicator::COUNT],
    /// Where the months' runs and base stand in the store ([`month_log`]).
    log: month_log::LogState,
    retention_months: u32,
    /// What each household changed by the batch was before it, by slot: a batch removes no
    /// household, so its slots hold the same households from its beginning to its end.
    undo_households: Map<Slot, Undo>,
    undo_villages: Map<VillageCode, Option<Village>>,
    dirty_counties: BTreeSet<CountyCode>,
    /// Counts the changes that may move persons between slots: each batch's beginning, each
    /// roster record, each rollback and catch-up. [`PersonSlots`] looked up at one count are
    /// good only at that count, and only in this `World` (each starts at 0).
    roster_changes: u64,
    /// The month of the last `now` a record was applied at (its Unix time and UTC offset):
    /// a page's records share one `now`, and the calendar conversion was a few percent of
    /// applying a record.
    now_month: Option<(i64, i32, Month)>,
}

/// The households' slots of the persons a page's records name, looked up together before
/// the page is applied ([`World::person_slots`]).
///
/// A lookup waits on memory: the person index's bucket, then the household in that slot and
/// its members. Done for all the page's records in passes of one step each
/// (`Persons::get_many`), the processor overlaps the lookups of many records;
/// between records' other work it cannot. Good only while no roster record
/// is applied and within the batch they were looked up in (`roster_changes` tells).
#[derive(Debug, Default)]
pub struct PersonSlots {
    roster_changes: u64,
    slots: Vec<Option<Slot>>,
}

/// Households read ahead together before a loop works on them one at a time
/// ([`Households::warm`]).
const WARM_HOUSEHOLDS: usize = 16;

/// The working set's hash maps, with Fx hashing instead of the standard library's SipHash.
/// SipHash resists keys chosen to collide, and cost a fifth of the instructions of applying
/// a record. These keys are person keys (keyed hashes already, which no feed can choose)
/// and the household ids and village codes of the roster, the departments' own register.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// What the first change of a batch to a household kept of it: what the batch encodes the
/// changes against, and what a rollback puts back.
#[derive(Debug)]
enum Undo {
    /// Only the household's months changed: its months before. A record's change packs a
    /// new run of months anyway, so keeping the old run costs no copy.
    Months(Months),
    /// Its roster part changed (or it is new): the whole household before, if any.
    Whole(Option<Household>),
}

impl Undo {
    fn months(&self) -> Option<&Months> {
        match self {
            Undo::Months(m) => Some(m),
            Undo::Whole(h) => h.as_ref().map(|h| &h.months),
        }
    }
}

/// Entities changed by a batch, for incremental evaluation.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub households: Vec<HouseholdId>,
    pub villages: Vec<VillageCode>,
    /// The length after repeats were last removed (see [`Touched::absorb`]).
    compacted_len: usize,
}

impl Touched {
    pub fn of_households(households: Vec<HouseholdId>) -> Self {
        Self {
            households,
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.households.is_empty() && self.villages.is_empty()
    }

    /// Adds the entities of `other`. A long catch-up poll touches the same households page
    /// after page, so repeats are removed whenever the list has doubled since they last were:
    /// it stays within twice the number of distinct entities (and repeats may remain).
    ///
    /// Households are first told apart by the address of their shared id: the working set
    /// hands out one id per household ([`World`]'s invariant), so that removes the repeats
    /// without comparing texts (sorting a million ids by text was 8 % of the applying
    /// thread's time in a bulk ingest).
    /// Ids read anew (a roster record's own) are different copies of the same text; where
    /// too few repeats go that way, the texts are compared.
    pub fn absorb(&mut self, other: Touched) {
        self.households.extend(other.households);
        self.villages.extend(other.villages);
        let len = self.households.len() + self.villages.len();
        if len >= 2 * self.compacted_len.max(1 << 16) {
            let before = self.households.len();
            self.households.sort_unstable_by_key(HouseholdId::address);
            self.households
                .dedup_by(|a, b| HouseholdId::address(a) == HouseholdId::address(b));
            if self.households.len() > before / 4 * 3 {
                self.households.sort_unstable();
                self.households.dedup();
            }
            self.villages.sort_unstable();
            self.villages.dedup();
            self.compacted_len = self.households.len() + self.villages.len();
        }
    }
}

/// Version 2: the months moved to their own keys (version 1 held them in the value).
const HOUSEHOLD_VERSION: u8 = 2;
const HOUSEHOLD_MONTH_VERSION: u8 = 1;

/// The key of one month of a household in schema 3: the month (big-endian, so keys sort by
/// month), then the id ([`Space::HouseholdMonth`]).
#[cfg(test)]
fn month_key(id: &HouseholdId, month: Month) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.as_str().len() + 4);
    k.extend_from_slice(&month.ordinal().to_be_bytes());
    k.extend_from_slice(id.as_str().as_bytes());
    k
}
const VILLAGE_VERSION: u8 = 1;
/// 2: at-risk numbers per set of risk categories (1 counted every category; still read).
const COUNTY_VERSION: u8 = 2;

/// Decodes a county value of either version.
fn decode_county(space: Space, key: &[u8], bytes: &[u8]) -> Result<CountyValue, StoreError> {
    if bytes.first() == Some(&1) {
        let v1: values::CountyValueV1 = codec::decode(1, space, key, bytes)?;
        return Ok(v1.into());
    }
    codec::decode(COUNTY_VERSION, space, key, bytes)
}

/// Below this many changed households a batch is encoded on the calling thread.
const PARALLEL_MIN_HOUSEHOLDS: usize = 1024;

/// The run entries of one household a batch changed: its roster part if that changed, and
/// its months that changed or are gone. `before` is what the undo log kept, `now` the
/// household in the same slot now. A batch removes no household, so `now` is there (a debug
/// assertion checks); were it not, a household the undo log kept whole is written as gone
/// (all its months with it), and otherwise nothing is written.
fn household_changes<'a>(
    roster: &mut Vec<month_log::RosterChangeRef<'a>>,
    entries: &mut Vec<month_log::RunEntry<'a>>,
    before: &'a Undo,
    now: Option<&'a Household>,
) {
    debug_assert!(now.is_some(), "a batch removes no household");
    let none = Months::default();
    let old_months = before.months().unwrap_or(&none);
    let id = match (now, before) {
        (Some(h), _) => {
            let roster_changed = match before {
                Undo::Months(_) => false,
                Undo::Whole(b) => b.as_ref().is_none_or(|b| !b.same_roster_part(h)),
            };
            if roster_changed {
                roster.push(month_log::RosterChangeRef::Put(h));
            }
            &h.id
        }
        (None, Undo::Whole(Some(b))) => {
            roster.push(month_log::RosterChangeRef::Gone(b.id.as_str()));
            &b.id
        }
        // No household now, and none kept whole before: no id to write as gone (a broken
        // invariant, which the assertion above reports in debug builds).
        (None, _) => return,
    };
    month_log::household_entries(entries, id, old_months, now);
}

/// Reads the households' roster parts from their keys ([`Space::Household`]), where a store
/// whose base holds none keeps them (see `month_log`).
fn load_household_keys(w: &mut World, store: &dyn Store) -> Result<(), StoreError> {
    store.for_each(Space::Household, &mut |k, v| {
        let h: Household = codec::decode(HOUSEHOLD_VERSION, Space::Household, k, v)?;
        w.households
            .insert(h)
            .map_err(|e| table_full(Space::Household, k, &e))?;
        Ok(())
    })
}

/// A stable 64-bit tag of a record id within a feed (FNV-1a), kept for idempotent ingest.
///
/// The top byte identifies the feed ([`feed_byte`]), so that evidence can name the records
/// of one department; the other 56 bits hash the feed and the record id.
pub fn record_tag(feed: &str, record_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in feed.bytes().chain([0u8]).chain(record_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (u64::from(feed_byte(feed)) << 56) | (h & 0x00ff_ffff_ffff_ffff)
}

/// One byte standing for a feed in record tags.
pub fn feed_byte(feed: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in feed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) as u8
}

impl World {
    pub fn new(retention_months: u32) -> Self {
        Self {
            households: Households::default(),
            villages: Map::default(),
            counties: BTreeMap::new(),
            persons: Persons::default(),
            shared: Map::default(),
            latest: [None; Indicator::COUNT],
            log: month_log::LogState::default(),
            retention_months,
            undo_households: Map::default(),
            undo_villages: Map::default(),
            dirty_counties: BTreeSet::new(),
            roster_changes: 0,
            now_month: None,
        }
    }

    /// Loads the whole working set from the store.
    pub fn load(store: &dyn Store, retention_months: u32) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let mut w = Self::new(retention_months);
        month_log::load(&mut w, store)?;
        let households_done = started.elapsed();
        let w = w.load_rest(store)?;
        debug!(
            households_seconds = households_done.as_secs_f64(),
            rest_seconds = (started.elapsed() - households_done).as_secs_f64(),
            "working set loaded"
        );
        Ok(w)
    }

    /// Brings a working set taken at an earlier state stamp up to the store: reads again
    /// the keys changed since ([`Store::state_changes_since`], in space order: households
    /// before their months). The person index, which must be that of the households before,
    /// follows each changed household's members, and the newest months (`Newest`) and the
    /// villages follow the changed keys; every household is walked again only where those
    /// cannot tell.
    pub(crate) fn catch_up(
        &mut self,
        store: &dyn Store,
        changed: &[(Space, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let damaged = |space, key: &[u8], detail: &str| StoreError::Decode {
            space,
            key: String::from_utf8_lossy(key).into_owned(),
            detail: detail.to_string(),
        };
        let mut newest = Newest {
            months: self.latest,
            walk_again: false,
        };
        // Households read again, whose villages may be new; every household's village is
        // looked at again only where a village went, or came without its name.
        let mut read_again: Vec<Slot> = Vec::new();
        let mut every_village = false;
        self.roster_changes += 1;
        for (space, key) in changed {
            let value = store.get(*space, key)?;
            match space {
                Space::Household => {
                    let id: HouseholdId = parse_key(*space, key, key, "not a household id")?;
                    let h = match value {
                        Some(v) => {
                            let h: Household = codec::decode(HOUSEHOLD_VERSION, *space, key, &v)?;
                            if h.id != id {
                                return Err(damaged(*space, key, "a household under another id"));
                            }
                            Some(h)
                        }
                        None => None,
                    };
                    self.catch_up_household(*space, key, &id, h, &mut read_again, &mut newest)?;
                }
                Space::MonthRun => {
                    // A run deleted since is one a new base holds: the snapshot's reader
                    // refuses to catch up across a new base, so none is left to apply.
                    if let Some(v) = value {
                        let run = month_log::Run::decode(key, &v)?;
                        for change in run.roster {
                            let (id, h) = match change {
                                month_log::RosterChange::Put(h) => (h.id.clone(), Some(h)),
                                month_log::RosterChange::Gone(id) => (
                                    parse_key(*space, key, id.as_bytes(), "not a household id")?,
                                    None,
                                ),
                            };
                            self.catch_up_household(
                                *space,
                                key,
                                &id,
                                h,
                                &mut read_again,
                                &mut newest,
                            )?;
                        }
                        month_log::apply_run_months(
                            &mut self.households,
                            key,
                            run.months,
                            Some(&mut newest),
                        )?;
                    }
                }
                Space::Village => {
                    let code: VillageCode = parse_key(*space, key, key, "not a village code")?;
                    match value {
                        Some(v) => {
                            let village: Village = codec::decode(VILLAGE_VERSION, *space, key, &v)?;
                            every_village |= village.name.is_empty();
                            self.villages.insert(code, village);
                        }
                        None => {
                            every_village = true;
                            self.villages.remove(&code);
                        }
                    }
                }
                Space::County => {
                    let code: CountyCode = parse_key(*space, key, key, "not a county code")?;
                    match value {
                        Some(v) => {
                            let c = decode_county(*space, key, &v)?;
                            self.counties.insert(code, c);
                        }
                        None => {
                            self.counties.remove(&code);
                        }
                    }
                }
                other => return Err(damaged(*other, key, "not a key of the working set")),
            }
        }
        // At 3,000,000 households a walk over every household for each of these took about
        // half a second of a start after a crash.
        if every_village {
            self.villages_of_households();
        } else {
            for slot in read_again {
                if let Some(h) = self.households.at(slot) {
                    note_village(&mut self.villages, h);
                }
            }
        }
        self.latest = if newest.walk_again {
            newest_months(&self.households)
        } else {
            newest.months
        };
        Ok(())
    }

    /// Puts a household read again in the table, or takes it out (`h`: `None`), keeping its
    /// months and the person index, for a catch-up; `read_again` gets its slot, whose
    /// village may be new. `space` and `key` say where it was read.
    fn catch_up_household(
        &mut self,
        space: Space,
        key: &[u8],
        id: &HouseholdId,
        h: Option<Household>,
        read_again: &mut Vec<Slot>,
        newest: &mut Newest,
    ) -> Result<(), StoreError> {
        match h {
            Some(mut h) => {
                if let Some(old) = self.households.get_mut(id) {
                    h.months = std::mem::take(&mut old.months);
                    // One shared id per household (touched households and the shared persons
                    // hold it).
                    h.id = old.id.clone();
                }
                let members = h.members.clone();
                // Out of the person index while the household before still lists them.
                if let Some(slot) = self.households.slot_of(id) {
                    let (hs, persons, shared) =
                        (&self.households, &mut self.persons, &mut self.shared);
                    let dropped = hs
                        .at(slot)
                        .into_iter()
                        .flat_map(|o| o.members.iter().filter(|m| !members.contains(m)));
                    for m in dropped {
                        unlist_person(persons, shared, hs, *m, id, slot);
                    }
                }
                let (slot, _) = self
                    .households
                    .insert(h)
                    .map_err(|e| table_full(space, key, &e))?;
                let (hs, persons, shared) = (&self.households, &mut self.persons, &mut self.shared);
                for m in &members {
                    list_person(persons, shared, hs, *m, slot);
                }
                read_again.push(slot);
            }
            None => {
                if let Some(slot) = self.households.slot_of(id) {
                    // Out of the person index while the household still lists them.
                    let (hs, persons, shared) =
                        (&self.households, &mut self.persons, &mut self.shared);
                    for m in hs.at(slot).into_iter().flat_map(|o| o.members.iter()) {
                        unlist_person(persons, shared, hs, *m, id, slot);
                    }
                }
                if let Some((_, old)) = self.households.remove(id) {
                    newest.walk_again |= !old.months.is_empty();
                }
            }
        }
        Ok(())
    }

    /// Whether the months' runs since their base have grown enough that a start would read
    /// more than it should: then [`World::write_base`] is due. `min_run_bytes`: the least
    /// bytes of runs worth a new base ([`DEFAULT_BASE_REWRITE_BYTES`] by default).
    pub fn base_due(&self, min_run_bytes: u64) -> bool {
        self.log.base_due(min_run_bytes)
    }

    /// The bytes of the months' runs written since their base.
    pub fn run_bytes(&self) -> u64 {
        self.log.pending_bytes()
    }

    /// What a new base of the months is written from ([`month_log::write_base_from`], on
    /// any thread): every household's months now, shared, not copied.
    pub fn base_source(&self) -> BaseSource {
        month_log::base_source(self)
    }

    /// Puts a base written from [`World::base_source`] in the log state: later runs stay
    /// after it. A base older than the one known is ignored.
    pub fn base_written(&mut self, written: BaseWritten) {
        month_log::base_written(self, written);
    }

    /// Writes the months of every household as a new base and deletes the runs it holds
    /// (see `month_log`). Only when the world is what the store holds (no batch open).
    pub fn write_base(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        month_log::write_base(self, store)
    }

    /// Reads where the months' runs and base stand, for a world read from a snapshot.
    pub(crate) fn read_log_state(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        self.log = month_log::LogState::read(store)?;
        Ok(())
    }

    /// Villages and counties, once the households are loaded.
    fn load_rest(mut self, store: &dyn Store) -> Result<Self, StoreError> {
        for (k, v) in store.scan(Space::Village)? {
            let village: Village = codec::decode(VILLAGE_VERSION, Space::Village, &k, &v)?;
            self.villages.insert(village.code, village);
        }
        self.villages_of_households();
        for (k, v) in store.scan(Space::County)? {
            let c = decode_county(Space::County, &k, &v)?;
            self.counties.insert(c.code, c);
        }
        self.recompute_latest();
        Ok(self)
    }

    /// Villages the roster brought before it stored them (and their names) are rebuilt from
    /// their households.
    fn villages_of_households(&mut self) {
        for h in self.households.values() {
            note_village(&mut self.villages, h);
        }
    }

    /// Rebuilds the person index and the newest month per indicator from the households.
    ///
    /// Two walks over all households, one on another thread: at a start they are about a
    /// second for 600,000 households, on the way to ready.
    fn recompute_latest(&mut self) {
        let households = &self.households;
        let persons = &mut self.persons;
        let shared = &mut self.shared;
        let latest = std::thread::scope(|s| {
            let walk = s.spawn(|| newest_months(households));
            persons.clear();
            shared.clear();
            // Sized once: growing a map of millions of persons rehashes it again and again.
            persons.try_reserve(households.values().map(|h| h.members.len()).sum());
            for (slot, h) in households.slots() {
                for m in &h.members {
                    list_person(persons, shared, households, *m, slot);
                }
            }
            // A panic of the walk (a bug) is this thread's.
            walk.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        self.latest = latest;
    }

    pub fn household(&self, id: &HouseholdId) -> Option<&Household> {
        self.households.get(id)
    }
    pub fn village(&self, code: &VillageCode) -> Option<&Village> {
        self.villages.get(code)
    }
    pub fn households(&self) -> impl Iterator<Item = &Household> {
        self.households.values()
    }
    pub fn villages(&self) -> impl Iterator<Item = &Village> {
        self.villages.values()
    }
    pub fn counties(&self) -> impl Iterator<Item = &CountyValue> {
        self.counties.values()
    }
    pub fn n_households(&self) -> usize {
        self.households.len()
    }
    /// The newest month any record of the indicator was applied for.
    pub fn latest_month(&self, ind: Indicator) -> Option<Month> {
        self.latest[ind.index()]
    }

    /// Whether every change has been taken into a batch ([`World::take_batch`]) or rolled
    /// back: then the world is what the store holds, once that batch is committed.
    pub fn is_settled(&self) -> bool {
        self.undo_households.is_empty()
            && self.undo_villages.is_empty()
            && self.dirty_counties.is_empty()
    }

    /// Starts a batch: from here on, changes are remembered for [`World::rollback`].
    pub fn begin(&mut self) {
        self.roster_changes += 1;
        self.undo_households.clear();
        self.undo_villages.clear();
        self.dirty_counties.clear();
    }

    /// Keeps the whole household in `slot` for the batch's undo log before its roster part
    /// changes.
    fn touch_household(&mut self, slot: Slot) {
        let whole = match self.undo_households.get_mut(&slot) {
            Some(Undo::Whole(_)) => return,
            // Only its months changed so far: the household before is today's roster part
            // with those months.
            Some(Undo::Months(months)) => self.households.at(slot).map(|h| Household {
                months: std::mem::take(months),
                ..h.clone()
            }),
            None => self.households.at(slot).cloned(),
        };
        self.undo_households.insert(slot, Undo::Whole(whole));
    }

    fn touch_village(&mut self, code: VillageCode) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.undo_villages.entry(code) {
            e.insert(self.villages.get(&code).cloned());
        }
    }

    /// Looks up, for each of `records` up to the first roster record, the slot of the person
    /// it names (`None` for a record of no person, or of a person in no household). Call after
    /// [`World::begin`], and give the answer to [`World::apply_looked_up`] for the same records.
    pub fn person_slots<'r>(
        &self,
        records: impl Iterator<Item = Option<&'r Record>>,
    ) -> PersonSlots {
        let keys: Vec<Option<&PersonKey>> = records
            .map_while(|r| match r.map(|r| &r.observation) {
                Some(Observation::Roster(_)) => None,
                Some(
                    Observation::Sample {
                        subject: Subject::Person(p),
                        ..
                    }
                    | Observation::Event {
                        subject: Subject::Person(p),
                        ..
                    },
                ) => Some(Some(p)),
                _ => Some(None),
            })
            .collect();
        PersonSlots {
            roster_changes: self.roster_changes,
            slots: self.persons.get_many(&self.households, &keys),
        }
    }

    /// Applies one record. `now` bounds months (no future data); `feed` scopes record ids.
    pub fn apply(
        &mut self,
        feed: &str,
        record: &Record,
        now: DateTime<FixedOffset>,
    ) -> Result<Applied, Rejection> {
        self.apply_with(feed, record, now, None)
    }

    /// [`World::apply`] for the `i`th record of those `looked_up` was made for: its person's
    /// slot is taken from there while still good, and looked up again if not.
    pub fn apply_looked_up(
        &mut self,
        feed: &str,
        record: &Record,
        now: DateTime<FixedOffset>,
        looked_up: &PersonSlots,
        i: usize,
    ) -> Result<Applied, Rejection> {
        let slot = looked_up
            .slots
            .get(i)
            .filter(|_| looked_up.roster_changes == self.roster_changes);
        self.apply_with(feed, record, now, slot.copied())
    }

    /// Applies a page's records in order, with the answer of [`World::person_slots`] for
    /// the same records: each record's outcome is what [`World::apply_looked_up`] would give
    /// it one record at a time, and so is the world after (`None` in `records`, a record that
    /// failed to map, is answered `None`).
    ///
    /// A feed such as the wages lists a household's members one after the other, so a page
    /// holds runs of samples of one household and month: each such run is applied at once,
    /// its household's months packed once instead of once per record.
    pub fn apply_page(
        &mut self,
        feed: &str,
        records: &[Option<&Record>],
        now: DateTime<FixedOffset>,
        looked_up: &PersonSlots,
    ) -> Vec<Option<Result<Applied, Rejection>>> {
        let mut outcomes = Vec::with_capacity(records.len());
        let mut group: Vec<TaggedSample<'_>> = Vec::new();
        // What `looked_up_sample` answered for `records[i]` while the run before it was
        // sought, so that no record's tag is hashed twice.
        let mut seen = None;
        let mut i = 0;
        let mut warmed = 0;
        while let Some(&record) = records.get(i) {
            if i >= warmed {
                warmed = (i + WARM_HOUSEHOLDS).min(looked_up.slots.len());
                let ahead = looked_up.slots.get(i..warmed).unwrap_or_default();
                self.households
                    .warm(ahead.iter().map(|&s| (s, None)), false);
            }
            let Some(record) = record else {
                outcomes.push(None);
                i += 1;
                continue;
            };
            let first = seen
                .take()
                .unwrap_or_else(|| self.looked_up_sample(feed, record, looked_up, i));
            let Some((slot, month, sample)) = first else {
                outcomes.push(Some(self.apply_looked_up(feed, record, now, looked_up, i)));
                i += 1;
                continue;
            };
            group.clear();
            group.push(sample);
            i += 1;
            while let Some(&Some(next)) = records.get(i) {
                match self.looked_up_sample(feed, next, looked_up, i) {
                    Some((s, m, sample)) if (s, m) == (slot, month) => {
                        group.push(sample);
                        i += 1;
                    }
                    other => {
                        seen = Some(other);
                        break;
                    }
                }
            }
            self.apply_samples(slot, month, &mut group, now, &mut outcomes);
        }
        outcomes
    }

    /// The `i`th record of a page as [`World::apply_page`] groups it: a sample of a person
    /// whose household `looked_up` found (and still holds), with its month, tag and values.
    fn looked_up_sample<'r>(
        &self,
        feed: &str,
        record: &'r Record,
        looked_up: &PersonSlots,
        i: usize,
    ) -> Option<(Slot, Month, TaggedSample<'r>)> {
        if looked_up.roster_changes != self.roster_changes {
            return None;
        }
        match &record.observation {
            Observation::Sample {
                subject: Subject::Person(_),
                month,
                values,
            } => {
                let slot = looked_up.slots.get(i).copied().flatten()?;
                Some((slot, *month, (record_tag(feed, &record.id), values)))
            }
            _ => None,
        }
    }

    /// Applies samples of one month to the household in `slot`, in the order given (tag and
    /// values of each), pushing each one's outcome: the checks of
    /// [`World::apply_to_household`] in its order, a record already applied (before, or
    /// earlier in `samples`) a duplicate, the rest added with one packing of the months.
    /// Leaves in `samples` the ones added.
    fn apply_samples(
        &mut self,
        slot: Slot,
        month: Month,
        samples: &mut Vec<TaggedSample<'_>>,
        now: DateTime<FixedOffset>,
        outcomes: &mut Vec<Option<Result<Applied, Rejection>>>,
    ) {
        let now_month = self.month_of(now);
        let retention = self.retention_months;
        let refused = if month > now_month {
            Some(Rejection::FutureMonth(month))
        } else if self.households.at(slot).is_none() {
            // Invariant: the person index holds occupied slots only.
            Some(Rejection::UnknownPerson)
        } else if now_month.since(month) > retention {
            Some(Rejection::TooOld(month))
        } else {
            None
        };
        let Some(h) = self.households.at_mut(slot).filter(|_| refused.is_none()) else {
            let refused = refused.unwrap_or(Rejection::UnknownPerson);
            outcomes.extend(samples.iter().map(|_| Some(Err(refused.clone()))));
            samples.clear();
            return;
        };
        // Those added move to the front: a record is a duplicate when its tag is in the
        // month already or among those added before it.
        let applied = h.bucket(month).map(|b| b.records()).unwrap_or_default();
        let mut added = 0;
        for k in 0..samples.len() {
            let (tag, values) = samples[k];
            if applied.contains(&tag) || samples[..added].iter().any(|&(t, _)| t == tag) {
                outcomes.push(Some(Ok(Applied::Duplicate)));
            } else {
                samples[added] = (tag, values);
                added += 1;
                outcomes.push(Some(Ok(Applied::Changed)));
            }
        }
        samples.truncate(added);
        if samples.is_empty() {
            return;
        }
        let before = h.add_samples(month, samples, retention);
        self.undo_households
            .entry(slot)
            .or_insert(Undo::Months(before));
        for (ind, _) in samples.iter().flat_map(|(_, values)| values.iter()) {
            raise(&mut self.latest[ind.index()], month);
        }
    }

    /// `person`: the slot of the record's person, if already looked up since the last roster
    /// change.
    fn apply_with(
        &mut self,
        feed: &str,
        record: &Record,
        now: DateTime<FixedOffset>,
        person: Option<Option<Slot>>,
    ) -> Result<Applied, Rejection> {
        match &record.observation {
            Observation::Roster(entry) => {
                self.roster_changes += 1;
                let id = entry.household.clone();
                if let Some(old) = self.households.get(&id)
                    && old.same_roster(entry)
                {
                    return Ok(Applied::Duplicate);
                }
                let old_category = self.households.get(&id).map(|h| (h.county(), h.category));
                let slot = match self.households.slot_of(&id) {
                    Some(slot) => {
                        self.touch_household(slot);
                        slot
                    }
                    None => match self.households.insert(Household::new(entry)) {
                        Ok((slot, _)) => {
                            // New in the batch: a slot no household of the batch had.
                            self.undo_households.insert(slot, Undo::Whole(None));
                            slot
                        }
                        // Not in the table, so the batch has nothing of it to write.
                        Err(e) => return Err(Rejection::WorkingSetFull(e.to_string())),
                    },
                };
                let village_name = self.households.village_name(&entry.village_name);
                // Invariant: the slot was just found or filled.
                let Some(h) = self.households.at(slot) else {
                    return Err(Rejection::UnknownHousehold(id));
                };
                let removed: Vec<PersonKey> = h
                    .members
                    .iter()
                    .filter(|m| !entry.members.contains(m))
                    .copied()
                    .collect();
                // The id the household was stored under, not the record's copy of it.
                let id = h.id.clone();
                // Out of the person index while the household still lists them.
                let (hs, persons, shared) = (&self.households, &mut self.persons, &mut self.shared);
                for m in removed {
                    unlist_person(persons, shared, hs, m, &id, slot);
                }
                let Some(h) = self.households.at_mut(slot) else {
                    return Err(Rejection::UnknownHousehold(id));
                };
                h.set_roster(entry, village_name);
                let (hs, persons, shared) = (&self.households, &mut self.persons, &mut self.shared);
                for m in &entry.members {
                    list_person(persons, shared, hs, *m, slot);
                }
                if let Some((county, cat)) = old_category {
                    self.county_mut(county).households_by_category[cat.index()] =
                        self.county_mut(county).households_by_category[cat.index()]
                            .saturating_sub(1);
                }
                let county = entry.village.county();
                self.county_mut(county).households_by_category[entry.category.index()] += 1;
                // The roster names villages: a new village, or one known only from an
                // interval or event feed, is stored with its name.
                let named = self
                    .villages
                    .get(&entry.village)
                    .is_some_and(|v| entry.village_name.is_empty() || v.name == entry.village_name);
                if !named {
                    self.set_village_name(entry.village, &entry.village_name);
                }
                Ok(Applied::Changed)
            }
            Observation::Sample {
                subject,
                month,
                values,
            } => {
                let tag = record_tag(feed, &record.id);
                let retention = self.retention_months;
                let applied = self.apply_to_household(subject, person, *month, tag, now, |h| {
                    h.add_sample(*month, tag, values, retention)
                })?;
                if applied == Applied::Changed {
                    for (ind, _) in values {
                        raise(&mut self.latest[ind.index()], *month);
                    }
                }
                Ok(applied)
            }
            Observation::Event {
                subject,
                kind,
                time,
                amount,
            } => {
                let month = Month::of(*time);
                let tag = record_tag(feed, &record.id);
                let retention = self.retention_months;
                if let Subject::Village(code) = subject {
                    if month > self.month_of(now) {
                        return Err(Rejection::FutureMonth(month));
                    }
                    if self
                        .villages
                        .get(code)
                        .is_some_and(|v| v.has_record(month, tag))
                    {
                        return Ok(Applied::Duplicate);
                    }
                    self.touch_village(*code);
                    let v = self
                        .villages
                        .entry(*code)
                        .or_insert_with(|| Village::new(*code, ""));
                    values::add_event(&mut v.months, month, tag, *kind, *amount, retention);
                    return Ok(Applied::Changed);
                }
                self.apply_to_household(subject, person, month, tag, now, |h| {
                    values::add_event(&mut h.months, month, tag, *kind, *amount, retention)
                })
            }
            Observation::Interval {
                village,
                id,
                kind,
                start,
                end,
            } => {
                if end.is_some_and(|e| e < *start) {
                    return Err(Rejection::IntervalReversed);
                }
                let interval = Interval {
                    id: id.clone(),
                    kind: *kind,
                    start: start.timestamp(),
                    end: end.map(|e| e.timestamp()),
                };
                if self
                    .villages
                    .get(village)
                    .is_some_and(|v| v.intervals.contains(&interval))
                {
                    return Ok(Applied::Duplicate);
                }
                self.touch_village(*village);
                let retention_secs = i64::from(self.retention_months) * 31 * 86_400;
                let v = self
                    .villages
                    .entry(*village)
                    .or_insert_with(|| Village::new(*village, ""));
                v.upsert_interval(interval, now.timestamp() - retention_secs);
                Ok(Applied::Changed)
            }
        }
    }

    /// Resolves a person or household subject, checks the month, skips a record already
    /// applied, and applies `f` to the household. `person`: the person's slot, if already
    /// looked up.
    #[allow(clippy::too_many_arguments)]
    fn apply_to_household(
        &mut self,
        subject: &Subject,
        person: Option<Option<Slot>>,
        month: Month,
        tag: u64,
        now: DateTime<FixedOffset>,
        f: impl FnOnce(&mut Household) -> Months,
    ) -> Result<Applied, Rejection> {
        let now_month = self.month_of(now);
        if month > now_month {
            return Err(Rejection::FutureMonth(month));
        }
        let slot = match subject {
            Subject::Person(p) => person
                .unwrap_or_else(|| self.persons.get(&self.households, p))
                .ok_or(Rejection::UnknownPerson)?,
            Subject::Household(h) => self
                .households
                .slot_of(h)
                .ok_or_else(|| Rejection::UnknownHousehold(h.clone()))?,
            Subject::Village(_) => return Err(Rejection::VillageSample),
        };
        // Invariant: the person index holds occupied slots only.
        let Some(h) = self.households.at_mut(slot) else {
            return Err(Rejection::UnknownPerson);
        };
        if now_month.since(month) > self.retention_months {
            return Err(Rejection::TooOld(month));
        }
        if h.has_record(month, tag) {
            return Ok(Applied::Duplicate);
        }
        let before = f(h);
        self.undo_households
            .entry(slot)
            .or_insert(Undo::Months(before));
        Ok(Applied::Changed)
    }

    /// `Month::of(now)`, converted once for the records applied at the same `now`.
    fn month_of(&mut self, now: DateTime<FixedOffset>) -> Month {
        let key = (now.timestamp(), now.offset().local_minus_utc());
        match self.now_month {
            Some((t, o, m)) if (t, o) == key => m,
            _ => {
                let m = Month::of(now);
                self.now_month = Some((key.0, key.1, m));
                m
            }
        }
    }

    fn county_mut(&mut self, code: CountyCode) -> &mut CountyValue {
        self.dirty_counties.insert(code);
        self.counties
            .entry(code)
            .or_insert_with(|| CountyValue::new(code))
    }

    /// Names a village (villages known only from interval or event feeds have no name).
    pub fn set_village_name(&mut self, code: VillageCode, name: &str) {
        self.touch_village(code);
        self.villages
            .entry(code)
            .or_insert_with(|| Village::new(code, ""))
            .name = name.to_string();
    }

    /// Records, for every county and each of `sets`, how many of its households have a
    /// firing alert in a category of the set this month: `counts`' number, or 0 where it
    /// names none (the county's last one resolved).
    pub fn record_at_risk(
        &mut self,
        month: Month,
        sets: &[RiskSet],
        counts: &BTreeMap<(CountyCode, RiskSet), u64>,
    ) {
        let mut codes: BTreeSet<CountyCode> = self.counties.keys().copied().collect();
        codes.extend(counts.keys().map(|(c, _)| *c));
        for code in codes {
            for set in sets {
                let n = counts.get(&(code, *set)).copied().unwrap_or(0);
                self.set_at_risk(code, month, *set, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
    }

    /// Records how many households of a county have a firing alert in a category of `set`
    /// this month.
    pub fn set_at_risk(&mut self, code: CountyCode, month: Month, set: RiskSet, n: u32) {
        let same = self
            .counties
            .get(&code)
            .is_some_and(|c| c.at_risk_in(month, set) == Some(n));
        if !same {
            self.county_mut(code).set_at_risk(month, set, n, 24);
        }
    }

    /// Encodes everything changed since [`World::begin`] and forgets the undo log.
    pub fn take_batch(&mut self) -> (Batch, Touched) {
        let mut batch = Batch::default();
        let mut touched = Touched::default();
        // Each household's changes encode apart from the others': a large change (a page of
        // a bulk feed) is encoded on every core, each thread over a contiguous share.
        let undone: Vec<(Slot, Undo)> = self.undo_households.drain().collect();
        let households = &self.households;
        let parts = crate::parallel::in_shares(&undone, PARALLEL_MIN_HOUSEHOLDS, |_, part| {
            let mut roster = Vec::new();
            let mut entries = Vec::new();
            for chunk in part.chunks(WARM_HOUSEHOLDS) {
                let ahead = chunk
                    .iter()
                    .map(|(slot, before)| (Some(*slot), before.months()));
                households.warm(ahead, true);
                for (slot, before) in chunk {
                    household_changes(&mut roster, &mut entries, before, households.at(*slot));
                }
            }
            (roster, entries)
        });
        let mut roster = Vec::new();
        let mut entries = Vec::new();
        for (part_roster, part_entries) in parts {
            roster.extend(part_roster);
            entries.extend(part_entries);
        }
        month_log::put_run(&mut batch, &mut self.log, &roster, &entries);
        drop((roster, entries));
        // The household's own id, not a record's copy (see [`Touched::absorb`]).
        touched.households = undone
            .iter()
            .filter_map(|(slot, _)| self.households.at(*slot).map(|h| h.id.clone()))
            .collect();
        drop(undone);
        for (code, _) in self.undo_villages.drain() {
            if let Some(v) = self.villages.get(&code) {
                batch.put(
                    Space::Village,
                    code.to_string().into_bytes(),
                    codec::encode(VILLAGE_VERSION, v),
                );
            }
            touched.villages.push(code);
        }
        for code in std::mem::take(&mut self.dirty_counties) {
            if let Some(c) = self.counties.get(&code) {
                batch.put(
                    Space::County,
                    code.to_string().into_bytes(),
                    codec::encode(COUNTY_VERSION, c),
                );
            }
        }
        // In no particular order: the evaluation sorts what it takes.
        (batch, touched)
    }

    /// Undoes every change since [`World::begin`] (the store refused the batch).
    pub fn rollback(&mut self) {
        self.roster_changes += 1;
        for (slot, before) in self.undo_households.drain() {
            match before {
                Undo::Months(months) => {
                    if let Some(h) = self.households.at_mut(slot) {
                        h.months = months;
                    }
                }
                Undo::Whole(Some(h)) => {
                    // It was in the table before the batch, so it fits again: the batch
                    // only replaced it (households are removed only by catching up).
                    let _ = self.households.insert(h);
                }
                Undo::Whole(None) => {
                    if let Some(id) = self.households.at(slot).map(|h| h.id.clone()) {
                        self.households.remove(&id);
                    }
                }
            }
        }
        for (code, before) in self.undo_villages.drain() {
            match before {
                Some(v) => self.villages.insert(code, v),
                None => self.villages.remove(&code),
            };
        }
        // County counts are derived from households: recount them.
        for c in self.counties.values_mut() {
            c.households_by_category = [0; HouseholdCategory::ALL.len()];
        }
        let counts: Vec<(CountyCode, HouseholdCategory)> = self
            .households
            .values()
            .map(|h| (h.county(), h.category))
            .collect();
        for (county, cat) in counts {
            self.counties
                .entry(county)
                .or_insert_with(|| CountyValue::new(county))
                .households_by_category[cat.index()] += 1;
        }
        self.dirty_counties.clear();
        self.recompute_latest();
    }
}

#[cfg(test)]
pub(crate) mod tests;
