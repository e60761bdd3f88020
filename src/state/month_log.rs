//! The months in the store: runs and a base.
//!
//! sled's cost is per key (about 6 µs to insert one), and a page of a bulk feed changes
//! thousands of households' months. So a commit writes the months it changed as one key, a
//! *run* ([`Space::MonthRun`]), and the *base* ([`Space::MonthBase`]) holds every household's
//! months in keys of [`BASE_HOUSEHOLDS_PER_KEY`] households, as of one run. A start reads the
//! base, then the runs after it, in order.
//!
//! Invariants:
//! - A run's key is its sequence number, then the bytes of the runs since the base, this one
//!   included (both big-endian u64), so the last key tells a start where the log stands
//!   without reading the runs.
//! - The base's keys begin with its generation. A new base is written from memory, under a
//!   generation above every one in the store, in several commits; the meta key [`BASE_KEY`]
//!   names the current generation and the last run it holds, and changes in the commit that
//!   deletes those runs.
//!   Keys of any other generation are what a write cut short or the base before left behind:
//!   they are never read, and the next base deletes them.
//! - Months stored one key per household (schema 3, [`Space::HouseholdMonth`]) are read only
//!   when there is no base yet, then moved into one and deleted.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Bucket, Household, Map, MonthBucket, Months, World};
use crate::model::{HouseholdId, Month};
use crate::store::{Batch, Space, Store, StoreError, codec};

/// The version of a run's value.
const RUN_VERSION: u8 = 1;
/// The version of a base key's value.
const BASE_VERSION: u8 = 1;
/// The meta key naming the current base: [`BaseInfo`].
pub(super) const BASE_KEY: &[u8] = b"month_base";
/// Households per key of the base: a few MB per value at 24 months each.
pub(super) const BASE_HOUSEHOLDS_PER_KEY: usize = 4096;
/// Keys of the base per commit while a base is written.
const BASE_KEYS_PER_COMMIT: usize = 16;
/// A new base is written once the runs after the current one hold more bytes than half of
/// it, and at least this many (`daemon.base_rewrite_bytes`): each start reads at most half
/// again the base, and a bulk ingest writes the base about twice over in all.
pub const DEFAULT_MIN_RUN_BYTES: u64 = 64 << 20;
/// … or once there are this many runs after it (small feeds' commits).
const MAX_RUNS: u64 = 20_000;

/// What the meta key [`BASE_KEY`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BaseInfo {
    pub generation: u32,
    /// The last run the base holds: runs up to it are deleted with it.
    pub through: u64,
    /// The bytes of the base's values.
    pub bytes: u64,
}

/// Where the month log stands: the base, and the runs since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LogState {
    pub base: BaseInfo,
    /// The sequence number of the last run written (the base's `through` if none since).
    pub last_run: u64,
    /// A running count of the bytes of runs, as the last run's key carries it.
    pub run_bytes: u64,
    /// The count at the base's last run: the runs since the base hold `run_bytes` less
    /// this. (A base written while runs go on leaves the count running.)
    pub base_offset: u64,
}

impl LogState {
    /// The bytes of the runs since the base.
    pub fn pending_bytes(&self) -> u64 {
        self.run_bytes.saturating_sub(self.base_offset)
    }

    /// Whether the runs since the base have grown enough to write a new one: more than
    /// `min_run_bytes` and half the base, or more than [`MAX_RUNS`] runs.
    pub fn base_due(&self, min_run_bytes: u64) -> bool {
        self.pending_bytes() > (self.base.bytes / 2).max(min_run_bytes)
            || self.last_run.saturating_sub(self.base.through) > MAX_RUNS
    }

    /// Reads where the log stands from the store: the base's meta key, and the first and
    /// last runs after it.
    pub fn read(store: &dyn Store) -> Result<Self, StoreError> {
        let base = match store.get(Space::Meta, BASE_KEY)? {
            Some(v) => codec::decode(BASE_VERSION, Space::Meta, BASE_KEY, &v)?,
            None => BaseInfo::default(),
        };
        let mut state = LogState {
            base,
            last_run: base.through,
            run_bytes: 0,
            base_offset: 0,
        };
        if let Some(k) = store.last_key(Space::MonthRun)? {
            let (seq, bytes) = split_run_key(&k)?;
            if seq > base.through {
                state.last_run = seq;
                state.run_bytes = bytes;
                // The count before the first run after the base: its own, less its size.
                let after = run_key(base.through.saturating_add(1), 0);
                if let Some(first) = store.first_key_from(Space::MonthRun, &after)? {
                    let (_, counted) = split_run_key(&first)?;
                    let size = store
                        .get(Space::MonthRun, &first)?
                        .map_or(0, |v| v.len() as u64);
                    state.base_offset = counted.saturating_sub(size);
                }
            }
        }
        Ok(state)
    }
}

/// One month of one household in a run: the household id, the month, the bucket (`None`:
/// the month is gone).
pub(super) type RunEntry<'a> = (&'a str, u32, Option<Bucket<'a>>);
type OwnedRunEntry = (String, u32, Option<MonthBucket>);

fn run_key(seq: u64, bytes: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&bytes.to_be_bytes());
    k
}

fn split_run_key(k: &[u8]) -> Result<(u64, u64), StoreError> {
    match (k.get(..8), k.get(8..16)) {
        (Some(seq), Some(bytes)) if k.len() == 16 => Ok((
            u64::from_be_bytes(seq.try_into().unwrap_or_default()),
            u64::from_be_bytes(bytes.try_into().unwrap_or_default()),
        )),
        _ => Err(damaged(
            Space::MonthRun,
            k,
            "a run key of another length than 16",
        )),
    }
}

fn base_key(generation: u32, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn damaged(space: Space, key: &[u8], detail: &str) -> StoreError {
    StoreError::Decode {
        space,
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

/// Encodes the months that changed as the next run, if any did; advances `state`.
pub(super) fn put_run(batch: &mut Batch, state: &mut LogState, entries: &[RunEntry<'_>]) {
    if entries.is_empty() {
        return;
    }
    let value = codec::encode(RUN_VERSION, &entries);
    state.last_run += 1;
    state.run_bytes += value.len() as u64;
    batch.put(
        Space::MonthRun,
        run_key(state.last_run, state.run_bytes),
        value,
    );
}

/// The run entries of one household changed since `old`: the months that changed, and
/// those gone (all of them if the household is gone).
pub(super) fn household_entries<'a>(
    entries: &mut Vec<RunEntry<'a>>,
    id: &'a HouseholdId,
    old: &Months,
    now: Option<&'a Household>,
) {
    match now {
        Some(h) => {
            let (changed, gone) = h.months.changes_since(old);
            entries.extend(
                changed
                    .into_iter()
                    .map(|b| (id.as_str(), b.month().ordinal(), Some(b))),
            );
            entries.extend(gone.into_iter().map(|m| (id.as_str(), m.ordinal(), None)));
        }
        None => entries.extend(old.iter().map(|b| (id.as_str(), b.month().ordinal(), None))),
    }
}

/// Applies one run's entries to the households.
pub(super) fn apply_run(
    households: &mut Map<HouseholdId, Household>,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    let entries: Vec<OwnedRunEntry> = codec::decode(RUN_VERSION, Space::MonthRun, key, value)?;
    for (id, month, bucket) in entries {
        let month = Month::from_ordinal(month);
        if bucket.as_ref().is_some_and(|b| b.month != month) {
            return Err(damaged(
                Space::MonthRun,
                key,
                "a bucket under another month",
            ));
        }
        // A household that is gone went with its months: a later run deleted them, and
        // the runs before it may still name them.
        if let Some(h) = id
            .parse::<HouseholdId>()
            .ok()
            .and_then(|h| households.get_mut(&h))
        {
            h.months.set(month, bucket.as_ref());
        }
    }
    Ok(())
}

/// Reads the months into `w`'s households: the base, then the runs after it. Months stored
/// one key per household (schema 3) are moved into a base first.
pub(super) fn load(w: &mut World, store: &dyn Store) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let state = LogState::read(store)?;
    let per_household =
        state.base.generation == 0 && store.first_key_from(Space::HouseholdMonth, &[])?.is_some();
    if per_household {
        super::load_household_months(w, store)?;
    } else {
        let generation = state.base.generation.to_be_bytes();
        let next = state.base.generation.checked_add(1).map(u32::to_be_bytes);
        let households = &mut w.households;
        store.for_each_in(
            Space::MonthBase,
            &generation,
            next.as_ref().map(|n| &n[..]),
            &mut |k, v| {
                let part: Vec<(String, Months)> =
                    codec::decode(BASE_VERSION, Space::MonthBase, k, v)?;
                for (id, months) in part {
                    // A household gone since the base: the runs after it delete its months.
                    if let Some(h) = id
                        .parse::<HouseholdId>()
                        .ok()
                        .and_then(|id| households.get_mut(&id))
                    {
                        h.months = months;
                    }
                }
                Ok(())
            },
        )?;
    }
    let households = &mut w.households;
    let after = run_key(state.base.through.saturating_add(1), 0);
    store.for_each_in(Space::MonthRun, &after, None, &mut |k, v| {
        apply_run(households, k, v)
    })?;
    w.log = state;
    if per_household {
        write_base(w, store)?;
    }
    // What a move from schema 3 cut short left behind.
    delete_household_months(store)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        runs = w.log.last_run.saturating_sub(w.log.base.through),
        "months loaded"
    );
    Ok(())
}

/// What a base is written from: every household's months as they were after one run,
/// shared with memory (a clone of [`Months`] costs a reference count), so that it can be
/// written on another thread while ingest goes on.
pub struct BaseSource {
    households: Vec<(HouseholdId, Months)>,
    state: LogState,
}

/// What a base written from a [`BaseSource`] changes in memory ([`World::base_written`]).
#[derive(Debug, Clone, Copy)]
pub struct BaseWritten {
    base: BaseInfo,
    /// The running count of run bytes at the base's last run.
    offset: u64,
}

/// The months of `w`'s households, sorted by id, and where the log stands.
pub(super) fn base_source(w: &World) -> BaseSource {
    let mut households: Vec<(HouseholdId, Months)> = w
        .households
        .iter()
        .filter(|(_, h)| !h.months.is_empty())
        .map(|(id, h)| (id.clone(), h.months.clone()))
        .collect();
    households.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    BaseSource {
        households,
        state: w.log,
    }
}

/// Puts a written base in `w`'s log state. The runs written meanwhile stay after it.
pub(super) fn base_written(w: &mut World, written: BaseWritten) {
    if written.base.generation > w.log.base.generation {
        w.log.base = written.base;
        w.log.base_offset = written.offset;
    }
}

/// Writes a new base from `source`, then deletes the runs it holds and the keys of other
/// generations. Several commits: the base counts only once the one that names it in the
/// meta key is done. Runs written meanwhile (by another thread) are after it and stay.
pub fn write_base_from(source: &BaseSource, store: &dyn Store) -> Result<BaseWritten, StoreError> {
    let started = std::time::Instant::now();
    let state = source.state;
    // Past every generation in the store: keys of a write cut short keep theirs, and must
    // never become part of a base.
    let highest = match store.last_key(Space::MonthBase)? {
        Some(k) => k
            .get(..4)
            .and_then(|g| g.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| {
                damaged(
                    Space::MonthBase,
                    &k,
                    "a base key shorter than its generation",
                )
            })?,
        None => 0,
    };
    let generation = state
        .base
        .generation
        .max(highest)
        .checked_add(1)
        .ok_or_else(|| damaged(Space::MonthBase, &[], "no generation left after u32::MAX"))?;
    let households = &source.households;
    // One thread encodes the keys while this one commits them: encoding is about two
    // fifths of a base's time, sled's commits the rest.
    let (mut batch, bytes) = std::thread::scope(|scope| {
        // A rendezvous: at most the batch being encoded and the one being committed are
        // held (16 keys of a few MB each).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(0);
        let encoder = scope.spawn(move || encode_base(households, generation, &tx));
        let mut committed = Ok(());
        for full in rx.iter() {
            committed = store.commit(full);
            if committed.is_err() {
                // Dropping the receiver stops the encoder at its next key.
                break;
            }
        }
        drop(rx);
        let encoded = encoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        committed.and(encoded)
    })?;
    let base = BaseInfo {
        generation,
        through: state.last_run,
        bytes,
    };
    batch.put(
        Space::Meta,
        BASE_KEY.to_vec(),
        codec::encode(BASE_VERSION, &base),
    );
    let through = run_key(state.last_run.saturating_add(1), 0);
    store.for_each_in(Space::MonthRun, &[], Some(&through), &mut |k, _| {
        batch.delete(Space::MonthRun, k.to_vec());
        Ok(())
    })?;
    store.commit(batch)?;
    let written = BaseWritten {
        base,
        offset: state.run_bytes,
    };
    // The keys of other generations go after: never read, so no hurry and no harm if a
    // crash or a failure leaves them to the next base. All of them sort before this one's.
    if let Err(e) = delete_generations_below(store, generation) {
        warn!(error = %e, generation, "keys of earlier bases of the months not deleted; the next base deletes them");
    }
    info!(
        generation,
        households = households.len(),
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        "months' base written"
    );
    Ok(written)
}

/// Writes a new base from `w`'s households on this thread (see [`write_base_from`]).
pub(super) fn write_base(w: &mut World, store: &dyn Store) -> Result<(), StoreError> {
    let source = base_source(w);
    let written = write_base_from(&source, store)?;
    base_written(w, written);
    Ok(())
}

/// Deletes the base keys of generations below `generation`.
fn delete_generations_below(store: &dyn Store, generation: u32) -> Result<(), StoreError> {
    let mut stale = Batch::default();
    store.for_each_in(
        Space::MonthBase,
        &[],
        Some(&generation.to_be_bytes()),
        &mut |k, _| {
            stale.delete(Space::MonthBase, k.to_vec());
            Ok(())
        },
    )?;
    for part in stale.ops.chunks(BASE_KEYS_PER_COMMIT * 16) {
        store.commit(Batch { ops: part.to_vec() })?;
    }
    Ok(())
}

/// Encodes the base of `households` (sorted by id) as keys of generation `generation`,
/// sending each full commit's worth to `tx`; returns the last, partial batch and the bytes
/// of all values. Stops early, with what it has, once the receiver is gone.
fn encode_base(
    households: &[(HouseholdId, Months)],
    generation: u32,
    tx: &std::sync::mpsc::SyncSender<Batch>,
) -> Result<(Batch, u64), StoreError> {
    let mut bytes = 0u64;
    let mut batch = Batch::default();
    for (index, value) in households.chunks(BASE_HOUSEHOLDS_PER_KEY).enumerate() {
        let value = codec::encode(BASE_VERSION, &value);
        bytes += value.len() as u64;
        let index = u32::try_from(index).map_err(|_| {
            damaged(
                Space::MonthBase,
                &[],
                "more keys in a base than a u32 counts",
            )
        })?;
        batch.put(Space::MonthBase, base_key(generation, index), value);
        if batch.len() == BASE_KEYS_PER_COMMIT && tx.send(std::mem::take(&mut batch)).is_err() {
            break;
        }
    }
    Ok((batch, bytes))
}

/// Deletes the months stored one key per household (schema 3) once a base holds them, month
/// by month (their keys begin with the month), in commits of at most [`DELETES_PER_COMMIT`]
/// keys without journal entries. Returns how many were deleted.
fn delete_household_months(store: &dyn Store) -> Result<usize, StoreError> {
    const DELETES_PER_COMMIT: usize = 100_000;
    let old = Space::HouseholdMonth;
    let mut deleted = 0;
    while let Some(first) = store.first_key_from(old, &[])? {
        let (month, _) = super::split_month_key(&first)?;
        let this = month.ordinal().to_be_bytes();
        let next = month.ordinal().checked_add(1).map(u32::to_be_bytes);
        let mut keys = Vec::new();
        store.for_each_in(old, &this, next.as_ref().map(|n| &n[..]), &mut |k, _| {
            keys.push(k.to_vec());
            Ok(())
        })?;
        for part in keys.chunks(DELETES_PER_COMMIT) {
            let mut batch = Batch::default();
            for k in part {
                batch.delete(old, k.clone());
            }
            store.commit_unjournaled(batch)?;
        }
        deleted += keys.len();
        if next.is_none() {
            break;
        }
    }
    if deleted > 0 {
        info!(
            keys = deleted,
            "months stored per household (schema 3) deleted"
        );
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_is_due_once_the_runs_outgrow_half_of_it_or_number_thousands() {
        let mib = 1u64 << 20;
        let state = |base_bytes: u64, run_bytes: u64, runs: u64| LogState {
            base: BaseInfo {
                generation: 1,
                through: 10,
                bytes: base_bytes,
            },
            last_run: 10 + runs,
            // The count runs on from before the base (a base written while runs went on).
            run_bytes: 7 * mib + run_bytes,
            base_offset: 7 * mib,
        };
        // Small stores wait for 64 MiB of runs.
        assert!(!state(0, 64 * mib, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        assert!(state(0, 64 * mib + 1, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        // Large ones for half the base.
        assert!(!state(400 * mib, 200 * mib, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        assert!(state(400 * mib, 200 * mib + 1, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        // Many small commits.
        assert!(!state(400 * mib, mib, MAX_RUNS).base_due(DEFAULT_MIN_RUN_BYTES));
        assert!(state(400 * mib, mib, MAX_RUNS + 1).base_due(DEFAULT_MIN_RUN_BYTES));
        // A smaller least amount (`daemon.base_rewrite_bytes`) counts for small bases only.
        assert!(state(0, mib + 1, 100).base_due(mib));
        assert!(!state(0, mib, 100).base_due(mib));
        assert!(!state(400 * mib, 100 * mib, 100).base_due(mib));
    }

    #[test]
    fn run_keys_carry_the_sequence_then_the_bytes_since_the_base() {
        let k = run_key(7, 123_456);
        assert_eq!(split_run_key(&k).unwrap(), (7, 123_456));
        assert!(
            run_key(7, u64::MAX) < run_key(8, 0),
            "keys sort by sequence"
        );
        assert!(split_run_key(&k[..15]).is_err());
    }
}
