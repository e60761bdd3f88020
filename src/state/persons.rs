//! The person index: the slot of each person's household ([`super::World`] says which
//! household when several list the person).
//!
//! A hash map from person key to slot holds 20 bytes a bucket, and grows by powers of two:
//! at 600,000 households, about 1.9 million persons sat in 4,194,304 buckets (88 MB with
//! their control bytes). An entry here is the slot and 64 bits of the person's key (its
//! *tag*), 12 bytes: the key itself is in the members of the household in that slot, which
//! a lookup compares. The table hashes the tag alone, so it can grow without the keys.
//!
//! Invariants:
//! - Each person listed by a household in the table has exactly one entry, and no other
//!   entry exists.
//! - An entry's slot is occupied, and its household lists the person: a change of a
//!   household's members takes persons out of the index before the household drops them
//!   (`unlist_person` first), and puts them in after it lists them.
//!
//! Two members of one household whose keys share their 64-bit tag would have entries the
//! index cannot tell apart. Keys are keyed hashes, so for a province of 600,000 households
//! (about 2 million pairs of members) the chance is about 10⁻¹³, well below that of two
//! records sharing their 56-bit record tag (`record_tag`).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::households::{Households, Slot};
use crate::model::PersonKey;

/// One person: their household's slot and their key's tag, in 32-bit halves so that an
/// entry takes 12 bytes, not 16.
#[derive(Clone, Copy)]
struct Entry {
    slot: Slot,
    tag: [u32; 2],
}

/// 64 bits of a person key. The key is a keyed hash already (`pseudonym`), so any 64 bits
/// of it are as good as any other.
fn tag(p: &PersonKey) -> [u32; 2] {
    [
        u32::from_le_bytes([p.0[0], p.0[1], p.0[2], p.0[3]]),
        u32::from_le_bytes([p.0[4], p.0[5], p.0[6], p.0[7]]),
    ]
}

/// The table's hash of an entry: of its tag alone, so growth rehashes entries without
/// their keys.
fn hash(tag: [u32; 2]) -> u64 {
    FxBuildHasher.hash_one(tag)
}

/// Whether the household in `slot` lists `p`.
fn lists(households: &Households, slot: Slot, p: &PersonKey) -> bool {
    households.at(slot).is_some_and(|h| h.members.contains(p))
}

#[derive(Default)]
pub(crate) struct Persons {
    table: HashTable<Entry>,
}

impl Persons {
    /// The slot of `p`'s household.
    pub fn get(&self, households: &Households, p: &PersonKey) -> Option<Slot> {
        let t = tag(p);
        self.table
            .find(hash(t), |e| e.tag == t && lists(households, e.slot, p))
            .map(|e| e.slot)
    }

    /// Puts `slot` as `p`'s household, whose household must list `p` (as must the one
    /// `p`'s entry named before).
    pub fn insert(&mut self, households: &Households, p: &PersonKey, slot: Slot) {
        let t = tag(p);
        match self
            .table
            .find_mut(hash(t), |e| e.tag == t && lists(households, e.slot, p))
        {
            Some(e) => e.slot = slot,
            None => {
                self.table
                    .insert_unique(hash(t), Entry { slot, tag: t }, |e| hash(e.tag));
            }
        }
    }

    /// The slot of `p`'s household if `p` is in the index; if not, puts `slot`, whose
    /// household must list `p`, and answers `None`.
    pub fn get_or_insert(
        &mut self,
        households: &Households,
        p: &PersonKey,
        slot: Slot,
    ) -> Option<Slot> {
        let t = tag(p);
        match self.table.entry(
            hash(t),
            |e| e.tag == t && lists(households, e.slot, p),
            |e| hash(e.tag),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => Some(e.get().slot),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(Entry { slot, tag: t });
                None
            }
        }
    }

    /// Takes `p` out of the index, while the household its entry names still lists `p`.
    pub fn remove(&mut self, households: &Households, p: &PersonKey) {
        let t = tag(p);
        if let Ok(e) = self
            .table
            .find_entry(hash(t), |e| e.tag == t && lists(households, e.slot, p))
        {
            e.remove();
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn clear(&mut self) {
        self.table.clear();
    }

    /// Makes room for `additional` more persons. Fails, leaving the table as it is, when
    /// memory refuses room; the table then grows as persons come.
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.table.try_reserve(additional, |e| hash(e.tag)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HouseholdCategory, RosterEntry};
    use crate::state::Household;

    fn household(id: &str, members: &[PersonKey]) -> Household {
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

    /// A person key whose tag is `tag`, told apart by `rest`.
    fn key(tag: u64, rest: u8) -> PersonKey {
        let mut k = [rest; 16];
        k[..8].copy_from_slice(&tag.to_le_bytes());
        PersonKey(k)
    }

    #[test]
    fn persons_of_one_tag_are_told_apart_by_their_households_members() {
        // a and b share a tag; c does not.
        let (a, b, c) = (key(7, 1), key(7, 2), key(8, 3));
        let mut hs = Households::default();
        let (s1, _) = hs.insert(household("H1", &[a])).unwrap();
        let (s2, _) = hs.insert(household("H2", &[b])).unwrap();
        let mut p = Persons::default();
        assert_eq!(p.get_or_insert(&hs, &a, s1), None);
        assert_eq!(p.get_or_insert(&hs, &b, s2), None);
        assert_eq!(p.get_or_insert(&hs, &a, s2), Some(s1), "already in");
        assert_eq!([a, b].map(|k| p.get(&hs, &k)), [Some(s1), Some(s2)]);
        assert_eq!(p.get(&hs, &c), None, "listed nowhere");
        // Moving a person: their entry, not another of the same tag, changes.
        let (s3, _) = hs.insert(household("H3", &[a, c])).unwrap();
        p.insert(&hs, &a, s3);
        p.insert(&hs, &c, s3);
        assert_eq!(p.len(), 3);
        assert_eq!(
            [a, b, c].map(|k| p.get(&hs, &k)),
            [Some(s3), Some(s2), Some(s3)]
        );
        p.remove(&hs, &a);
        assert_eq!(
            [a, b, c].map(|k| p.get(&hs, &k)),
            [None, Some(s2), Some(s3)]
        );
        assert_eq!(p.len(), 2);
        // A person no household lists is found nowhere, and removing them changes nothing.
        p.remove(&hs, &key(7, 9));
        assert_eq!(p.len(), 2);
        p.remove(&hs, &b);
        assert_eq!(p.get(&hs, &b), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_index_grows_without_the_keys() {
        let mut hs = Households::default();
        // Five persons to a tag, in different households.
        let keys: Vec<PersonKey> = (0..5_000u32)
            .map(|i| key(u64::from(i % 1_000), (i / 1_000) as u8))
            .collect();
        let slots: Vec<Slot> = keys
            .chunks(4)
            .enumerate()
            .map(|(i, m)| hs.insert(household(&format!("H{i}"), m)).unwrap().0)
            .collect();
        let mut p = Persons::default();
        for (i, k) in keys.iter().enumerate() {
            p.insert(&hs, k, slots[i / 4]);
        }
        assert_eq!(p.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(p.get(&hs, k), Some(slots[i / 4]), "{i}");
        }
    }
}
