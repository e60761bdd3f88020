//! The state journal: which state keys each stamped commit changed.
//!
//! Every commit that writes a state space ([`Space::is_state`]) adds one entry under
//! [`Space::Journal`], in the same atomic batch as the changes and the new state stamp. An
//! entry names the stamp before the commit, the stamp it wrote and the keys it wrote or
//! deleted (not their values). The entries of consecutive commits form a chain of stamps.
//! A copy of the working set taken at stamp `s` (the state snapshot) is brought up to the
//! store by following the chain from `s` to the current stamp and reading the current
//! values of the keys it names: the result is the store's state whatever the order of the
//! changes. A chain with a gap (a commit without an entry, as an older guardline writes
//! them) cannot be followed, and the caller loads the store instead.
//!
//! Entries are keyed by an id of the store's generator (big-endian), so they are read in
//! the order they were written. Their value: a version byte, a flag byte (whether there
//! was a stamp before), the stamp before and the stamp written (big-endian u64 each), then
//! each key as its space's prefix byte, a big-endian u16 length and the key's bytes.

use super::{Space, StateKeys, StoreError};

const VERSION: u8 = 1;
const HEADER: usize = 2 + 8 + 8;

/// The keys of one commit's entry, encoded as they are added.
#[derive(Debug, Default)]
pub struct ChangedKeys {
    bytes: Vec<u8>,
    n: u64,
    /// A key longer than the format holds: the entry is written so that it breaks the
    /// chain (no state key is that long; this is a guard, not a case).
    too_long: bool,
}

impl ChangedKeys {
    pub fn push(&mut self, space: Space, key: &[u8]) {
        match u16::try_from(key.len()) {
            Ok(len) => {
                self.bytes.push(space.prefix());
                self.bytes.extend_from_slice(&len.to_be_bytes());
                self.bytes.extend_from_slice(key);
                self.n += 1;
            }
            Err(_) => self.too_long = true,
        }
    }

    /// How many keys.
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The entry's value, from stamp `before` to stamp `stamp`.
    pub fn entry(&self, before: Option<u64>, stamp: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 1 + self.bytes.len());
        out.push(VERSION);
        out.push(u8::from(before.is_some()));
        // A key too long to name: an entry whose "before" no stamp can match.
        let before = if self.too_long { Some(stamp) } else { before };
        out.extend_from_slice(&before.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&stamp.to_be_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }
}

/// One entry, read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub before: Option<u64>,
    pub stamp: u64,
    keys: &'a [u8],
}

fn damaged(key: &[u8], detail: &str) -> StoreError {
    StoreError::Decode {
        space: Space::Journal,
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        detail: detail.to_string(),
    }
}

impl<'a> Entry<'a> {
    /// The stamps of an entry (before, written), without reading its keys: entries outside
    /// the chain are only looked at.
    pub fn stamps(key: &[u8], value: &[u8]) -> Result<(Option<u64>, u64), StoreError> {
        let head = value
            .get(..HEADER)
            .ok_or_else(|| damaged(key, "an entry shorter than its header"))?;
        if head[0] != VERSION {
            return Err(damaged(key, "an entry of an unknown version"));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(((head[1] != 0).then(|| word(2)), word(10)))
    }

    pub fn decode(key: &[u8], value: &'a [u8]) -> Result<Self, StoreError> {
        let damaged = |detail: &str| damaged(key, detail);
        let (before, stamp) = Self::stamps(key, value)?;
        let keys = &value[HEADER..];
        let entry = Self {
            before,
            stamp,
            keys,
        };
        // The keys are checked once here, so that reading them cannot fail.
        let mut rest = keys;
        while !rest.is_empty() {
            let Some((&[prefix, hi, lo], after)) = rest.split_first_chunk::<3>() else {
                return Err(damaged("a key cut short"));
            };
            if Space::of_prefix(prefix).is_none_or(|s| !s.is_state()) {
                return Err(damaged("a key of a space that is not state"));
            }
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            rest = after.get(len..).ok_or_else(|| damaged("a key cut short"))?;
        }
        Ok(entry)
    }

    /// The keys the commit wrote or deleted, with their spaces (checked by [`Entry::decode`]).
    pub fn keys(&self) -> impl Iterator<Item = (Space, &'a [u8])> + 'a {
        let mut rest = self.keys;
        std::iter::from_fn(move || {
            let (&[prefix, hi, lo], after) = rest.split_first_chunk::<3>()?;
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            let key = after.get(..len)?;
            rest = &after[len..];
            Some((Space::of_prefix(prefix)?, key))
        })
    }
}

/// What the journal tells of the changes since a stamp.
#[derive(Debug, PartialEq, Eq)]
pub enum StateChanges {
    /// The keys changed, each once.
    Keys(StateKeys),
    /// The chain does not lead from that stamp to the current one: a gap (a commit without
    /// an entry, forgotten entries) or a stamp the store never had.
    Unknown,
    /// More keys than the limit.
    TooMany,
}

/// Follows the chain of entries, given in the order they were written, from stamp `since`:
/// collects the keys named on the way, each once, up to `limit` of them.
#[derive(Debug)]
pub struct Chain {
    at: u64,
    started: bool,
    /// A gap, or too many keys: the chain cannot tell.
    lost: bool,
    limit: usize,
    keys: std::collections::BTreeSet<(Space, Vec<u8>)>,
}

impl Chain {
    pub fn from(since: u64, limit: usize) -> Self {
        Self {
            at: since,
            started: false,
            lost: false,
            limit,
            keys: Default::default(),
        }
    }

    /// Takes the next entry (its key and value in the store); `false` once the chain is
    /// lost (later entries do not matter). Only the entries of the chain are read whole.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        if self.lost {
            return Ok(false);
        }
        let (before, stamp) = Entry::stamps(key, value)?;
        if before == Some(self.at) {
            let e = Entry::decode(key, value)?;
            self.started = true;
            self.at = stamp;
            self.keys
                .extend(e.keys().map(|(space, key)| (space, key.to_vec())));
            self.lost = self.keys.len() > self.limit;
        } else if self.started {
            // A commit whose entry does not continue the chain: a gap.
            self.lost = true;
        }
        // Entries before the chain starts are older than `since`, not yet forgotten.
        Ok(!self.lost)
    }

    /// The keys, if the chain leads to stamp `current`.
    pub fn finish(self, current: u64) -> StateChanges {
        if self.keys.len() > self.limit {
            StateChanges::TooMany
        } else if self.lost || self.at != current {
            StateChanges::Unknown
        } else {
            StateChanges::Keys(self.keys.into_iter().collect())
        }
    }
}

/// [`Chain`] over the values of `entries`.
#[cfg(test)]
fn follow(entries: &[Vec<u8>], since: u64, current: u64, limit: usize) -> StateChanges {
    let mut chain = Chain::from(since, limit);
    for v in entries {
        if !chain.push(b"k", v).unwrap() {
            break;
        }
    }
    chain.finish(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(before: Option<u64>, stamp: u64, keys: &[(Space, &[u8])]) -> Vec<u8> {
        let mut c = ChangedKeys::default();
        for (s, k) in keys {
            c.push(*s, k);
        }
        c.entry(before, stamp)
    }

    fn follow_all(values: &[Vec<u8>], since: u64, current: u64) -> Option<StateKeys> {
        match follow(values, since, current, 100) {
            StateChanges::Keys(k) => Some(k),
            StateChanges::Unknown => None,
            StateChanges::TooMany => panic!("not that many"),
        }
    }

    #[test]
    fn an_entry_reads_back_what_was_written() {
        let v = entry(
            Some(7),
            9,
            &[
                (Space::Household, b"h1"),
                (Space::HouseholdMonth, b"\0\0\0\x01h1"),
            ],
        );
        let e = Entry::decode(b"k", &v).unwrap();
        assert_eq!((e.before, e.stamp), (Some(7), 9));
        let keys: Vec<(Space, &[u8])> = e.keys().collect();
        assert_eq!(
            keys,
            vec![
                (Space::Household, &b"h1"[..]),
                (Space::HouseholdMonth, &b"\0\0\0\x01h1"[..])
            ]
        );
        let empty = entry(None, 3, &[]);
        let first = Entry::decode(b"k", &empty).unwrap();
        assert_eq!((first.before, first.keys().count()), (None, 0));
    }

    #[test]
    fn damaged_entries_are_refused() {
        let v = entry(Some(1), 2, &[(Space::Village, b"632801001")]);
        for cut in [0, 5, HEADER + 2, v.len() - 1] {
            assert!(Entry::decode(b"k", &v[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = v.clone();
        other[0] = 9;
        assert!(Entry::decode(b"k", &other).is_err());
        let mut foreign = v.clone();
        foreign[HEADER] = Space::Alert.prefix();
        assert!(Entry::decode(b"k", &foreign).is_err());
    }

    #[test]
    fn the_chain_is_followed_from_the_snapshots_stamp_to_the_current_one() {
        let values = vec![
            entry(Some(1), 2, &[(Space::Household, b"old")]),
            entry(
                Some(2),
                3,
                &[(Space::Household, b"a"), (Space::County, b"632801")],
            ),
            entry(
                Some(3),
                4,
                &[(Space::Household, b"a"), (Space::Village, b"v")],
            ),
        ];
        let keys = follow_all(&values, 2, 4).unwrap();
        assert_eq!(
            keys,
            vec![
                (Space::Household, b"a".to_vec()),
                (Space::Village, b"v".to_vec()),
                (Space::County, b"632801".to_vec()),
            ]
        );
        // Nothing changed since: nothing to read.
        assert_eq!(follow_all(&values, 4, 4).unwrap(), vec![]);
        // A stamp the chain does not reach, or one it does not start from.
        assert_eq!(follow_all(&values, 2, 5), None);
        assert_eq!(follow_all(&values, 9, 4), None);
        assert_eq!(follow_all(&[], 2, 4), None);
    }

    #[test]
    fn a_gap_in_the_chain_or_too_many_keys_is_refused() {
        let gap = vec![
            entry(Some(2), 3, &[(Space::Household, b"a")]),
            // A commit from 3 to 5 wrote no entry.
            entry(Some(5), 6, &[(Space::Household, b"b")]),
        ];
        assert_eq!(follow_all(&gap, 2, 6), None);
        let many: Vec<Vec<u8>> = (0..3u64)
            .map(|i| {
                entry(
                    Some(i),
                    i + 1,
                    &[(Space::Household, format!("h{i}").as_bytes())],
                )
            })
            .collect();
        assert_eq!(follow(&many, 0, 3, 2), StateChanges::TooMany);
        assert!(matches!(follow(&many, 0, 3, 3), StateChanges::Keys(k) if k.len() == 3));
        // An entry outside the chain is only looked at: damage in its keys does not matter.
        let mut bad_keys = entry(Some(40), 41, &[(Space::Household, b"x")]);
        bad_keys.truncate(HEADER + 2);
        let with_old = [vec![bad_keys], many.clone()].concat();
        assert!(matches!(follow(&with_old, 0, 3, 3), StateChanges::Keys(_)));
    }

    #[test]
    fn an_entry_with_a_key_too_long_breaks_the_chain() {
        let mut c = ChangedKeys::default();
        c.push(Space::Household, &vec![b'x'; 70_000]);
        let v = c.entry(Some(1), 2);
        assert_eq!(follow_all(&[v], 1, 2), None);
    }
}
