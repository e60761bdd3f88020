//! The working set's households: a table of slots, and an index from id to slot.
//!
//! A hash map of households holds each in a bucket of its own, and grows by powers of two:
//! at 600,000 households it had 1,048,576 buckets of 144 bytes (151 MB), and the person
//! index, holding a household's id per person, 4,194,304 buckets of 32 bytes (134 MB).
//! Here the households live in fixed chunks of [`CHUNK`] slots, filled in turn, so only the
//! last chunk has room to spare, and no growth copies them. The index by id holds a slot
//! (4 bytes a bucket), and the person index (`persons.rs`) holds slots too (12 bytes a
//! bucket), which also saves a second hash lookup per record.
//!
//! The table also keeps one copy of each village's name, which its households share.
//!
//! Invariants:
//! - A household keeps its slot for as long as it is in the table: replacing it keeps the
//!   slot, and only removing it frees the slot for a later household.
//! - `by_id` holds exactly the occupied slots, each once, under the hash of its household's
//!   id.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::months::Months;
use super::values::Household;
use crate::model::HouseholdId;

/// Where a household is in the table ([`Households::at`]).
pub(crate) type Slot = u32;

/// Slots per chunk: 4,096 households, about half a megabyte.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// All households of the working set; see the module's documentation.
#[derive(Default)]
pub(crate) struct Households {
    /// Chunks of `CHUNK` slots each (the last one may be shorter), allocated whole.
    chunks: Vec<Vec<Option<Household>>>,
    by_id: HashTable<Slot>,
    /// Slots emptied by removals, taken again first.
    free: Vec<Slot>,
    len: usize,
    /// The village names of the households, each once (a few thousand).
    names: HashSet<Arc<str>, FxBuildHasher>,
}

/// Why a household could not be placed: the table is out of slots or memory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TableFull {
    #[error("more than {} households", Slot::MAX)]
    Slots,
    #[error("memory refused room for {0} households")]
    Memory(usize),
}

fn hash(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

fn split(slot: Slot) -> (usize, usize) {
    let s = slot as usize;
    (s >> CHUNK_BITS, s & (CHUNK - 1))
}

/// The household in `slot` of `chunks`, if any.
fn in_chunks(chunks: &[Vec<Option<Household>>], slot: Slot) -> Option<&Household> {
    let (c, i) = split(slot);
    chunks.get(c)?.get(i)?.as_ref()
}

/// The hash of the household in `slot`, for the index's growth. Every slot the index holds
/// is occupied (the invariant); an empty one would hash as the empty id.
fn hash_of(chunks: &[Vec<Option<Household>>], slot: Slot) -> u64 {
    hash(in_chunks(chunks, slot).map_or("", |h| h.id.as_str()))
}

impl Households {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `additional` more households in the index (the chunks are allocated
    /// as they fill; room for their list is only asked for). Fails, leaving the index as it
    /// is, when memory refuses room in it.
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), TableFull> {
        let chunks = &self.chunks;
        self.by_id
            .try_reserve(additional, |&s| hash_of(chunks, s))
            .map_err(|_| TableFull::Memory(additional))?;
        let _ = self.chunks.try_reserve(additional.div_ceil(CHUNK));
        Ok(())
    }

    pub fn slot_of(&self, id: &HouseholdId) -> Option<Slot> {
        let chunks = &self.chunks;
        self.by_id
            .find(hash(id.as_str()), |&s| {
                in_chunks(chunks, s).is_some_and(|h| h.id == *id)
            })
            .copied()
    }

    /// Reads the households in `slots` (`None`s skipped), then the ends of their months (and
    /// the first byte of their ids), so that a loop that works on them one at a time finds
    /// them in the cache. Each is a cache miss at province scale; read one household at a
    /// time, the misses come one after the other, while each pass here asks for all of
    /// them at once (the loads do not depend on each other), so the processor waits for
    /// them together. Measured on alternate pages of the wage feed at 600,000 households,
    /// 16 households at a time (BENCHMARKS.md): applying a page 5 to 6 % faster, taking its
    /// changes 10 to 11 %. 8 to 32 at a time gained about as much, 128 less and 512 little;
    /// a pass over the whole page before applying it, tried before, lost: the first
    /// households are out of the cache again before they are used.
    ///
    /// `also`: months of each slot to read with the household's (the ones a change is
    /// compared against); `ids`: whether to read the ids' text too (encoding a change
    /// writes it; applying records does not read it).
    pub fn warm<'a>(
        &self,
        slots: impl Iterator<Item = (Option<Slot>, Option<&'a Months>)> + Clone,
        ids: bool,
    ) {
        let mut seen = 0u64;
        for (slot, also) in slots.clone() {
            if let Some(h) = slot.and_then(|s| self.at(s)) {
                seen ^= (h.months.words().len() ^ h.id.as_str().len()) as u64;
            }
            seen ^= also.map_or(0, Months::touch);
        }
        for (slot, _) in slots {
            if let Some(h) = slot.and_then(|s| self.at(s)) {
                seen ^= h.months.touch();
                if ids {
                    seen ^= u64::from(h.id.as_str().as_bytes().first().copied().unwrap_or(0));
                }
            }
        }
        // The reads are what this is for: the compiler must not leave them out.
        std::hint::black_box(seen);
    }

    pub fn at(&self, slot: Slot) -> Option<&Household> {
        in_chunks(&self.chunks, slot)
    }

    pub fn at_mut(&mut self, slot: Slot) -> Option<&mut Household> {
        let (c, i) = split(slot);
        self.chunks.get_mut(c)?.get_mut(i)?.as_mut()
    }

    pub fn get(&self, id: &HouseholdId) -> Option<&Household> {
        self.at(self.slot_of(id)?)
    }

    pub fn get_mut(&mut self, id: &HouseholdId) -> Option<&mut Household> {
        let slot = self.slot_of(id)?;
        self.at_mut(slot)
    }

    /// The table's copy of a village's name.
    pub fn village_name(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = name.into();
        self.names.insert(shared.clone());
        shared
    }

    /// Puts `h` in the table under its id: in its own slot if a household of that id is
    /// there (returned), else in a new one. Its village's name becomes the table's copy.
    pub fn insert(&mut self, mut h: Household) -> Result<(Slot, Option<Household>), TableFull> {
        match self.names.get(&h.village_name) {
            Some(shared) => h.village_name = shared.clone(),
            None => {
                self.names.insert(h.village_name.clone());
            }
        }
        if let Some(slot) = self.slot_of(&h.id) {
            let (c, i) = split(slot);
            let old = self.chunks[c][i].replace(h);
            return Ok((slot, old));
        }
        let hash = hash(h.id.as_str());
        let slot = self.vacant_slot()?;
        let (c, i) = split(slot);
        self.chunks[c][i] = Some(h);
        let chunks = &self.chunks;
        self.by_id
            .insert_unique(hash, slot, |&s| hash_of(chunks, s));
        self.len += 1;
        Ok((slot, None))
    }

    /// An empty slot: one a removal freed, or the next one, in a new chunk if need be.
    fn vacant_slot(&mut self) -> Result<Slot, TableFull> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        let next = match self.chunks.last() {
            Some(last) if last.len() < CHUNK => (self.chunks.len() - 1) * CHUNK + last.len(),
            _ => {
                let mut chunk = Vec::new();
                chunk
                    .try_reserve_exact(CHUNK)
                    .map_err(|_| TableFull::Memory(CHUNK))?;
                self.chunks.push(chunk);
                (self.chunks.len() - 1) * CHUNK
            }
        };
        // `Slot::MAX` is never taken: a start from the store marks changes it leaves out
        // with it.
        let slot = Slot::try_from(next)
            .ok()
            .filter(|&s| s != Slot::MAX)
            .ok_or(TableFull::Slots)?;
        if let Some(last) = self.chunks.last_mut() {
            last.push(None);
        }
        Ok(slot)
    }

    /// Takes the household of `id` out of the table, with the slot it had.
    pub fn remove(&mut self, id: &HouseholdId) -> Option<(Slot, Household)> {
        let chunks = &self.chunks;
        let entry = self
            .by_id
            .find_entry(hash(id.as_str()), |&s| {
                in_chunks(chunks, s).is_some_and(|h| h.id == *id)
            })
            .ok()?;
        let (slot, _) = entry.remove();
        let (c, i) = split(slot);
        let h = self.chunks.get_mut(c)?.get_mut(i)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some((slot, h))
    }

    /// Every household, in slot order.
    pub fn values(&self) -> impl Iterator<Item = &Household> {
        self.chunks.iter().flatten().filter_map(Option::as_ref)
    }

    /// Every household with its slot, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = (Slot, &Household)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(s, h)| Some((s as Slot, h.as_ref()?)))
    }
}

impl std::fmt::Debug for Households {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Households")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .field("free", &self.free.len())
            .field("names", &self.names.len())
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::{HouseholdCategory, PersonKey, RosterEntry};

    /// A household of `id` in one village, listing `members` (the person index's tests use
    /// it too).
    pub(in crate::state) fn household_listing(id: &str, members: &[PersonKey]) -> Household {
        Household::new(&RosterEntry {
            household: id.parse().unwrap(),
            village: "632522100201".parse().unwrap(),
            village_name: "村".into(),
            category: HouseholdCategory::ALL[0],
            head_masked: String::new(),
            members: members.to_vec(),
            income_per_capita: 0,
        })
    }

    fn household(id: &str) -> Household {
        household_listing(id, &[])
    }

    #[test]
    fn a_slot_is_the_size_of_a_household() {
        // The table's memory is this times the households (Option takes no more room).
        assert_eq!(size_of::<Option<Household>>(), size_of::<Household>());
        assert_eq!(size_of::<Household>(), 104);
    }

    #[test]
    fn households_keep_their_slots_and_freed_slots_are_taken_again() {
        let mut t = Households::default();
        let n = 3 * CHUNK + 17;
        for i in 0..n {
            let (slot, old) = t.insert(household(&format!("H{i}"))).unwrap();
            assert_eq!(slot as usize, i, "filled in turn");
            assert!(old.is_none());
        }
        assert_eq!(t.len(), n);
        assert_eq!(t.chunks.len(), 4);
        assert!(
            t.chunks.iter().all(|c| c.capacity() == CHUNK),
            "no slack beyond a chunk"
        );

        // Replacing keeps the slot and hands back the household before.
        let mut again = household("H5000");
        again.income_per_capita = 7;
        let (slot, old) = t.insert(again).unwrap();
        assert_eq!(slot, 5000);
        assert_eq!(old.unwrap().income_per_capita, 0);
        assert_eq!(t.len(), n);
        assert_eq!(
            t.get(&"H5000".parse().unwrap()).unwrap().income_per_capita,
            7
        );

        // Removing frees the slot; the others keep theirs; the next new one takes it.
        let (slot, h) = t.remove(&"H42".parse().unwrap()).unwrap();
        assert_eq!((slot, h.id.as_str()), (42, "H42"));
        assert!(t.remove(&"H42".parse().unwrap()).is_none());
        assert!(t.get(&"H42".parse().unwrap()).is_none());
        assert!(t.at(42).is_none());
        assert_eq!(t.len(), n - 1);
        assert_eq!(t.slot_of(&"H43".parse().unwrap()), Some(43));
        let (slot, _) = t.insert(household("NEW")).unwrap();
        assert_eq!(slot, 42);
        assert_eq!(t.at(42).unwrap().id.as_str(), "NEW");

        // Every household is found by id in its slot, and listed once.
        for (slot, h) in t.slots() {
            assert_eq!(t.slot_of(&h.id), Some(slot));
        }
        assert_eq!(t.values().count(), n);
        assert_eq!(t.slots().count(), n);
        assert!(t.at(n as Slot).is_none(), "past the end");
        assert!(t.at(Slot::MAX).is_none());
    }

    #[test]
    fn lookups_compare_the_ids_text_not_only_its_hash() {
        let mut t = Households::default();
        for i in 0..10_000 {
            t.insert(household(&format!("{i}"))).unwrap();
        }
        // Ids read separately (other addresses, same text) find the same households.
        for i in (0..10_000).step_by(97) {
            let id: HouseholdId = format!("{i}").parse().unwrap();
            assert_eq!(t.get(&id).unwrap().id, id);
        }
        assert!(t.get(&"10000".parse().unwrap()).is_none());
        assert!(t.try_reserve(1_000_000).is_ok());
        assert_eq!(t.slot_of(&"9999".parse().unwrap()), Some(9999));
    }

    #[test]
    fn households_of_a_village_share_one_copy_of_its_name() {
        let mut t = Households::default();
        let mut other = household("B");
        other.village_name = "乙村".into();
        for h in [household("A1"), household("A2"), other] {
            t.insert(h).unwrap();
        }
        let name =
            |t: &Households, id: &str| t.get(&id.parse().unwrap()).unwrap().village_name.clone();
        assert!(Arc::ptr_eq(&name(&t, "A1"), &name(&t, "A2")));
        assert_eq!(&*name(&t, "B"), "乙村");
        let shared = t.village_name("村");
        assert!(Arc::ptr_eq(&name(&t, "A1"), &shared));
        assert_eq!(t.names.len(), 2);
        // A household read again (a catch-up's copy) takes the shared name too.
        let (_, old) = t.insert(household("A2")).unwrap();
        assert!(old.is_some());
        assert!(Arc::ptr_eq(&name(&t, "A1"), &name(&t, "A2")));
    }
}
