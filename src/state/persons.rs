//! The person index: the slot of each person's household ([`super::World`] says which
//! household when several list the person).
//!
//! A hash map from person key to slot holds 20 bytes a bucket, and grows by powers of two:
//! at 600,000 households, about 1.9 million persons sat in 4,194,304 buckets (88 MB with
//! their control bytes). An entry here is the slot and 64 bits hashed from the person's key
//! (its *tag*), 12 bytes: the key itself is in the members of the household in that slot, which
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

/// 64 bits hashed from the whole person key. A key is a keyed hash (`pseudonym`), so any 64
/// bits of it would do; keys made otherwise (those of `guardline rules test` differ only in
/// their second half, the tests' in every byte alike) are told apart all the same.
fn tag(p: &PersonKey) -> [u32; 2] {
    let t = FxBuildHasher.hash_one(p.0);
    [t as u32, (t >> 32) as u32]
}

/// The table's hash of an entry: its tag itself, a hash already (what the map from key to
/// slot computed per lookup), so growth rehashes entries without their keys.
fn hash(tag: [u32; 2]) -> u64 {
    u64::from(tag[0]) | u64::from(tag[1]) << 32
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
        self.get_as(households, p, tag(p))
    }

    /// [`Persons::get`] of each key, `None` for `None`: the same answers, looked up in two
    /// passes over all the keys, first the index's entries by tag, then the households they
    /// name. Each lookup waits on memory two or three times in a row; a pass of one short
    /// step per key lets the processor wait on many keys at once, where one lookup after
    /// another waits on each in turn. An entry whose household does not list its key (a
    /// second key of the same tag) is looked up again as `get` does.
    pub fn get_many(
        &self,
        households: &Households,
        keys: &[Option<&PersonKey>],
    ) -> Vec<Option<Slot>> {
        self.get_many_as(households, keys, tag)
    }

    /// Puts `slot` as `p`'s household, whose household must list `p` (as must the one
    /// `p`'s entry named before).
    pub fn insert(&mut self, households: &Households, p: &PersonKey, slot: Slot) {
        self.insert_as(households, p, tag(p), slot);
    }

    /// The slot of `p`'s household if `p` is in the index; if not, puts `slot`, whose
    /// household must list `p`, and answers `None`.
    pub fn get_or_insert(
        &mut self,
        households: &Households,
        p: &PersonKey,
        slot: Slot,
    ) -> Option<Slot> {
        self.get_or_insert_as(households, p, tag(p), slot)
    }

    /// Takes `p` out of the index, while the household its entry names still lists `p`.
    pub fn remove(&mut self, households: &Households, p: &PersonKey) {
        self.remove_as(households, p, tag(p));
    }

    // The same, with `p`'s tag given: the tests give persons one tag, which no two keys
    // they could make would have.

    fn get_as(&self, households: &Households, p: &PersonKey, t: [u32; 2]) -> Option<Slot> {
        self.table
            .find(hash(t), |e| e.tag == t && lists(households, e.slot, p))
            .map(|e| e.slot)
    }

    fn get_many_as(
        &self,
        households: &Households,
        keys: &[Option<&PersonKey>],
        tag_of: impl Fn(&PersonKey) -> [u32; 2],
    ) -> Vec<Option<Slot>> {
        let by_tag: Vec<Option<Slot>> = keys
            .iter()
            .map(|p| {
                let t = tag_of(p.as_ref()?);
                self.table.find(hash(t), |e| e.tag == t).map(|e| e.slot)
            })
            .collect();
        keys.iter()
            .zip(by_tag)
            .map(|(p, slot)| {
                let (p, slot) = (p.as_ref()?, slot?);
                if lists(households, slot, p) {
                    Some(slot)
                } else {
                    self.get_as(households, p, tag_of(p))
                }
            })
            .collect()
    }

    fn insert_as(&mut self, households: &Households, p: &PersonKey, t: [u32; 2], slot: Slot) {
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

    fn get_or_insert_as(
        &mut self,
        households: &Households,
        p: &PersonKey,
        t: [u32; 2],
        slot: Slot,
    ) -> Option<Slot> {
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

    fn remove_as(&mut self, households: &Households, p: &PersonKey, t: [u32; 2]) {
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
    use crate::state::households::tests::household_listing as household;

    fn key(n: u8) -> PersonKey {
        PersonKey([n; 16])
    }

    #[test]
    fn persons_of_one_tag_are_told_apart_by_their_households_members() {
        // a and b are given one tag; c another.
        let (a, b, c) = (key(1), key(2), key(3));
        let tag_of = |k: &PersonKey| if *k == c { [8, 0] } else { [7, 0] };
        let mut hs = Households::default();
        let (s1, _) = hs.insert(household("H1", &[a])).unwrap();
        let (s2, _) = hs.insert(household("H2", &[b])).unwrap();
        let mut p = Persons::default();
        let get = |p: &Persons, hs: &Households, k: PersonKey| p.get_as(hs, &k, tag_of(&k));
        assert_eq!(p.get_or_insert_as(&hs, &a, tag_of(&a), s1), None);
        assert_eq!(p.get_or_insert_as(&hs, &b, tag_of(&b), s2), None);
        assert_eq!(
            p.get_or_insert_as(&hs, &a, tag_of(&a), s2),
            Some(s1),
            "already in"
        );
        assert_eq!([a, b].map(|k| get(&p, &hs, k)), [Some(s1), Some(s2)]);
        assert_eq!(get(&p, &hs, c), None, "listed nowhere");
        // Together: the entry found first by tag may be the other person's.
        let keys = [Some(&b), None, Some(&a), Some(&c), Some(&b)];
        assert_eq!(
            p.get_many_as(&hs, &keys, tag_of),
            [Some(s2), None, Some(s1), None, Some(s2)]
        );
        // Moving a person: their entry, not another of the same tag, changes.
        let (s3, _) = hs.insert(household("H3", &[a, c])).unwrap();
        p.insert_as(&hs, &a, tag_of(&a), s3);
        p.insert_as(&hs, &c, tag_of(&c), s3);
        assert_eq!(p.len(), 3);
        assert_eq!(
            [a, b, c].map(|k| get(&p, &hs, k)),
            [Some(s3), Some(s2), Some(s3)]
        );
        p.remove_as(&hs, &a, tag_of(&a));
        assert_eq!(
            [a, b, c].map(|k| get(&p, &hs, k)),
            [None, Some(s2), Some(s3)]
        );
        assert_eq!(p.len(), 2);
        // A person no household lists is found nowhere, and removing them changes nothing.
        p.remove_as(&hs, &key(9), [7, 0]);
        assert_eq!(p.len(), 2);
        p.remove_as(&hs, &b, tag_of(&b));
        assert_eq!(get(&p, &hs, b), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn keys_that_differ_in_their_second_half_only_have_entries_of_their_own() {
        // As `guardline rules test` makes a household's members: one seed, then a number.
        let members: Vec<PersonKey> = (0..4u8)
            .map(|k| {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&42u64.to_be_bytes());
                b[8] = k;
                PersonKey(b)
            })
            .collect();
        let mut hs = Households::default();
        let (slot, _) = hs.insert(household("H1", &members)).unwrap();
        let mut p = Persons::default();
        for m in &members {
            assert_eq!(p.get_or_insert(&hs, m, slot), None);
        }
        assert_eq!(p.len(), 4);
        p.remove(&hs, &members[0]);
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(&hs, &members[1]), Some(slot));
    }

    #[test]
    fn the_index_grows_without_the_keys() {
        let mut hs = Households::default();
        let keys: Vec<PersonKey> = (0..5_000u32)
            .map(|i| {
                let mut k = [0u8; 16];
                k[..4].copy_from_slice(&i.to_le_bytes());
                PersonKey(k)
            })
            .collect();
        let slots: Vec<Slot> = keys
            .chunks(4)
            .enumerate()
            .map(|(i, m)| hs.insert(household(&format!("H{i}"), m)).unwrap().0)
            .collect();
        // Five persons to a tag (given), in different households; and the same with tags of
        // their own.
        for given in [true, false] {
            let mut p = Persons::default();
            let t = |i: usize| [(i % 1_000) as u32, 0];
            for (i, k) in keys.iter().enumerate() {
                match given {
                    true => p.insert_as(&hs, k, t(i), slots[i / 4]),
                    false => p.insert(&hs, k, slots[i / 4]),
                }
            }
            assert_eq!(p.len(), keys.len());
            for (i, k) in keys.iter().enumerate() {
                let found = match given {
                    true => p.get_as(&hs, k, t(i)),
                    false => p.get(&hs, k),
                };
                assert_eq!(found, Some(slots[i / 4]), "{i}");
            }
            let all: Vec<Option<&PersonKey>> = keys.iter().map(Some).collect();
            let index_of = |k: &PersonKey| u32::from_le_bytes([k.0[0], k.0[1], k.0[2], k.0[3]]);
            let many = match given {
                true => p.get_many_as(&hs, &all, |k| t(index_of(k) as usize)),
                false => p.get_many(&hs, &all),
            };
            let expected: Vec<Option<Slot>> = (0..keys.len()).map(|i| Some(slots[i / 4])).collect();
            assert_eq!(many, expected, "looked up together");
        }
    }
}
