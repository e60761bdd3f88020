//! The households in the store: runs and a base.
//!
//! sled's cost is per key (about 6 µs to insert one), and a page of a bulk feed changes
//! thousands of households. So a commit writes the households' roster parts and months it
//! changed as one key, a *run* ([`Space::MonthRun`]), and the *base* holds every household,
//! roster part and months, as of one run, in a file of frames of
//! [`BASE_HOUSEHOLDS_PER_FRAME`] households. A start reads the base's roster parts, then
//! the runs after it (their roster changes made as they are read, in order, their months'
//! changes gathered), then the base's months, packing each household's months once from
//! its base and all its runs' changes together.
//!
//! The base is a file, not keys, because sled 0.34 handles values of megabytes badly: each
//! is a blob file of its own, written again whenever its leaf splits, and its commits hold
//! sled's process-wide batch lock while the ingest's commits wait (BENCHMARKS.md).
//!
//! Invariants:
//! - A run's key is its sequence number, then the bytes of the runs since the base, this one
//!   included (both big-endian u64), so the last key tells a start where the log stands
//!   without reading the runs.
//! - A base is a file beside the store's keys ([`Store::write_file`]), named for its
//!   generation (`months-base.N`). A new base is written from memory, under a generation
//!   above every one in the store (files and keys), synced and renamed into place; then the
//!   meta key [`BASE_KEY`] names its generation and the last run it holds, in the commit
//!   that deletes those runs. Only that file is ever read. Files of any other generation are
//!   what a write cut short, a failed commit or the base before left behind: the next base
//!   deletes those the store does not name before it writes (their space may be what a full
//!   disk lacks), and the one it replaces once its own commit is done. Never the file the
//!   store names: bases are written by one thread at a time.
//! - Stores written before bases were files hold the base in keys of [`Space::MonthBase`]
//!   (its generation, then the key's index), and their meta key says so (version 1). Such a
//!   base is read as it is until the next base, which is a file, deletes the keys.
//! - Months stored one key per household (schema 3, [`Space::HouseholdMonth`]) are read only
//!   when there is no base yet, then moved into one and deleted.
//! - A base file of format 4 holds the households' roster parts; then the store's household
//!   keys ([`Space::Household`], where guardline kept roster parts before, one key per
//!   household) are stale and never read, and are deleted. Bases of older formats and bases
//!   in keys hold months only: the households come from those keys, then the runs' roster
//!   changes (runs of version 1 hold none: their commits wrote the keys) are made on them.

use std::io::{BufReader, Seek, Write};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::frames::{self, FrameError, write_frame};
use super::households::Slot;
use super::{Bucket, Household, Households, MonthBucket, Months, Newest, World, months};
use crate::model::{HouseholdId, Month};
use crate::store::{Batch, Space, Store, StoreError, codec};

/// The version of a run's value: 1 held months only (roster parts were keys of their own), 2
/// holds the roster changes, then the months ([`Run`]).
pub(super) const RUN_VERSION: u8 = 2;
/// The version of a base key's value (stores written before bases were files).
const BASE_KEY_VERSION: u8 = 1;
/// The meta key naming the current base: [`BaseInfo`].
pub(super) const BASE_KEY: &[u8] = b"month_base";
/// The version of [`BASE_KEY`]'s value: 1 named a base in keys ([`BaseInfoV1`]), 2 says
/// where it is.
const BASE_INFO_VERSION: u8 = 2;
/// Households per frame of a base file: a few MB per frame at 24 months each.
pub(super) const BASE_HOUSEHOLDS_PER_FRAME: usize = 4096;
/// Deletions per commit when the keys of a base in keys are deleted.
const DELETES_PER_COMMIT: usize = 256;
/// A base file's first bytes.
const BASE_MAGIC: &[u8; 8] = b"GLMBASE\x01";
/// The version of a base file's frames; a change to the packing of [`Months`] changes it.
/// 1 held postcard frames of `(id, Months)`; 2 holds the packed words as they are
/// ([`frames::encode_months`]); 3 the same, with narrow months (`months.rs`), which a
/// reader of format 2 would misread; 4 puts a frame of the households' roster parts before
/// each frame of their months. Files of formats 1 to 3 are read too: format 2's words are
/// wide months, packed again as they are read.
const BASE_FILE_FORMAT: u32 = 4;
/// The first base file format that holds the households' roster parts.
const ROSTER_IN_BASE_FORMAT: u32 = 4;
/// Deletions per commit when stale household keys are deleted.
const HOUSEHOLD_DELETES_PER_COMMIT: usize = 10_000;
/// Base files are named this, then their generation.
const BASE_FILE_PREFIX: &str = "months-base.";
/// A new base is written once the runs after the current one hold more bytes than this
/// (`daemon.base_rewrite_bytes`) and than a quarter of it (see `LogState::base_due`): a
/// start from the store reads at most the larger of the two after the base (more while a
/// base is being written on its thread). A bulk ingest of 3,000,000 households wrote 17
/// bases, 8 times the last one's bytes in all.
pub const DEFAULT_MIN_RUN_BYTES: u64 = 64 << 20;
/// … or once there are this many runs after it (small feeds' commits).
const MAX_RUNS: u64 = 20_000;

/// What the meta key [`BASE_KEY`] holds. Generation 0: no base yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BaseInfo {
    pub generation: u32,
    /// The last run the base holds: runs up to it are deleted with it.
    pub through: u64,
    /// The bytes of the base (its file, or its keys' values).
    pub bytes: u64,
    /// Whether the base is a file (`months-base.N`) rather than keys of [`Space::MonthBase`].
    pub in_file: bool,
}

/// What the meta key [`BASE_KEY`] held at version 1: a base in keys.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BaseInfoV1 {
    generation: u32,
    through: u64,
    bytes: u64,
}

impl BaseInfo {
    fn decode(value: &[u8]) -> Result<Self, StoreError> {
        if value.first() == Some(&1) {
            let v1: BaseInfoV1 = codec::decode(1, Space::Meta, BASE_KEY, value)?;
            return Ok(BaseInfo {
                generation: v1.generation,
                through: v1.through,
                bytes: v1.bytes,
                in_file: false,
            });
        }
        codec::decode(BASE_INFO_VERSION, Space::Meta, BASE_KEY, value)
    }
}

/// The name of the base file of `generation`.
fn base_file_name(generation: u32) -> String {
    format!("{BASE_FILE_PREFIX}{generation}")
}

/// The generation of a base file's name, also of its temporary file (`months-base.N.tmp`);
/// `None` for a name that is not a base's.
fn base_file_generation(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(BASE_FILE_PREFIX)?;
    let digits = rest.strip_suffix(".tmp").unwrap_or(rest);
    // Only the names bases are written under: digits without a sign or leading zeros.
    let generation: u32 = digits.parse().ok()?;
    (generation.to_string() == digits).then_some(generation)
}

/// The first frame of a base file.
#[derive(Debug, Serialize, Deserialize)]
struct BaseHeader {
    format: u32,
    generation: u32,
    through: u64,
    households: u64,
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
    /// `min_run_bytes` and a quarter of the base, or more than [`MAX_RUNS`] runs.
    ///
    /// A start from the store holds the runs' changes beside the households' months it
    /// packs (about as many bytes as the runs), and the allocator keeps most of that room
    /// for blocks of other sizes than the months': at half the base, the runs could take
    /// a start at 600,000 households past 1 KB per household. A base at a quarter costs
    /// a bulk ingest more bases (17 instead of 10 at 3,000,000 households, on a thread of
    /// their own), within the noise of its time in the benches (BENCHMARKS.md).
    pub fn base_due(&self, min_run_bytes: u64) -> bool {
        self.pending_bytes() > (self.base.bytes / 4).max(min_run_bytes)
            || self.last_run.saturating_sub(self.base.through) > MAX_RUNS
    }

    /// Reads where the log stands from the store: the base's meta key, and the first and
    /// last runs after it.
    pub fn read(store: &dyn Store) -> Result<Self, StoreError> {
        let base = match store.get(Space::Meta, BASE_KEY)? {
            Some(v) => BaseInfo::decode(&v)?,
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

/// A household's roster part in a run, as it is written: the household (its months are not
/// part of it), or that it is gone. [`RosterChange`] reads it.
#[derive(Debug, Serialize)]
pub(super) enum RosterChangeRef<'a> {
    Put(&'a Household),
    Gone(&'a str),
}

/// A household's roster part in a run, as it is read ([`RosterChangeRef`]).
#[derive(Debug, Deserialize)]
pub(super) enum RosterChange {
    /// The household's roster part; its months are the run's entries and those before.
    Put(Household),
    /// The household is gone, its months with it.
    Gone(String),
}

/// One run as it is read: the roster changes, then the months. Within a run a household has
/// one roster change at most, made before its months.
pub(super) struct Run {
    pub roster: Vec<RosterChange>,
    pub months: Vec<OwnedRunEntry>,
}

impl Run {
    /// Decodes a run's value of either version.
    pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<Self, StoreError> {
        if value.first() == Some(&1) {
            let months = codec::decode(1, Space::MonthRun, key, value)?;
            return Ok(Run {
                roster: Vec::new(),
                months,
            });
        }
        let (roster, months) = codec::decode(RUN_VERSION, Space::MonthRun, key, value)?;
        Ok(Run { roster, months })
    }
}

fn run_key(seq: u64, bytes: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&bytes.to_be_bytes());
    k
}

pub(super) fn split_run_key(k: &[u8]) -> Result<(u64, u64), StoreError> {
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

#[cfg(test)]
pub(super) fn base_key(generation: u32, index: u32) -> Vec<u8> {
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

/// Encodes the roster parts and months that changed as the next run, if any did; advances
/// `state`. The value is the one `codec::encode(RUN_VERSION, &(roster, entries))` makes,
/// the entries written straight (`Bucket::encode_postcard`); a test pins the two.
pub(super) fn put_run(
    batch: &mut Batch,
    state: &mut LogState,
    roster: &[RosterChangeRef<'_>],
    entries: &[RunEntry<'_>],
) {
    if roster.is_empty() && entries.is_empty() {
        return;
    }
    let mut value = Vec::with_capacity(64 + 48 * entries.len());
    value.push(RUN_VERSION);
    codec::push_varint(&mut value, roster.len() as u64);
    for r in roster {
        value = codec::extend_item(r, value);
    }
    codec::push_varint(&mut value, entries.len() as u64);
    for (id, month, bucket) in entries {
        codec::push_varint(&mut value, id.len() as u64);
        value.extend_from_slice(id.as_bytes());
        codec::push_varint(&mut value, (*month).into());
        match bucket {
            None => value.push(0),
            Some(b) => {
                value.push(1);
                b.encode_postcard(&mut value);
            }
        }
    }
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

/// Applies one run's months to the households (its roster changes are the caller's, made
/// before). `newest`, where given, follows the newest month per indicator through them.
pub(super) fn apply_run_months(
    households: &mut Households,
    key: &[u8],
    entries: Vec<OwnedRunEntry>,
    mut newest: Option<&mut Newest>,
) -> Result<(), StoreError> {
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
            let before = newest.is_some().then(|| h.months.clone());
            h.months.set(month, bucket.as_ref());
            if let (Some(n), Some(before)) = (newest.as_deref_mut(), before) {
                n.note(month, before.find(month), bucket.as_ref());
            }
        }
    }
    Ok(())
}

/// Reads the households into `w`: the base's roster parts, the runs after the base, then
/// the base's months, packing each household's months once from its base and the runs'
/// changes together. Where the base holds no roster parts (format 3 and before, in keys,
/// schema 3), the households come from their keys instead. Months stored one key per
/// household (schema 3) are moved into a base first.
pub(super) fn load(w: &mut World, store: &dyn Store) -> Result<(), StoreError> {
    load_reading(w, store, RUN_BYTES_PER_READ)
}

/// [`load`], reading about `run_bytes_per_read` bytes of runs between releases of the
/// store's cache.
pub(super) fn load_reading(
    w: &mut World,
    store: &dyn Store,
    run_bytes_per_read: u64,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let state = LogState::read(store)?;
    let per_household =
        state.base.generation == 0 && store.first_key_from(Space::HouseholdMonth, &[])?.is_some();
    let mut base_file = if state.base.in_file && !per_household {
        Some(BaseFile::open(store, &state.base)?)
    } else {
        None
    };
    let roster_in_base = base_file
        .as_ref()
        .is_some_and(|f| f.header.format >= ROSTER_IN_BASE_FORMAT);
    match base_file.as_mut() {
        Some(file) if roster_in_base => file.read_roster(&mut w.households)?,
        _ => super::load_household_keys(w, store)?,
    }
    let households_done = started.elapsed();
    let mut runs = RunChanges::read(&mut w.households, store, &state, run_bytes_per_read)?;
    let (run_changes, run_arena_bytes) = runs.size();
    let runs_done = started.elapsed();
    if per_household {
        super::load_household_months(w, store)?;
    } else if let Some(file) = base_file {
        file.read_months(&mut w.households, &mut runs)?;
    } else if state.base.generation != 0 {
        read_base_keys(&mut w.households, store, state.base.generation, &mut runs)?;
    }
    runs.make_the_rest(&mut w.households);
    w.log = state;
    if per_household {
        write_base(w, store)?;
    }
    // What a move from schema 3 cut short left behind. (Household keys a base did not
    // delete are left to the next base: never read beside a base that holds the roster
    // parts, they are not worth failing a start over.)
    delete_household_months(store)?;
    tracing::debug!(
        households_seconds = households_done.as_secs_f64(),
        runs_seconds = (runs_done - households_done).as_secs_f64(),
        months_seconds = (started.elapsed() - runs_done).as_secs_f64(),
        runs = w.log.last_run.saturating_sub(w.log.base.through),
        run_changes,
        run_arena_bytes,
        "households loaded"
    );
    Ok(())
}

/// Puts a run's roster part of a household in the table, replacing the one there and keeping
/// its months. (A start from the store builds the person index after; a catch-up keeps it
/// with `World::catch_up_household`.)
fn put_roster(households: &mut Households, key: &[u8], mut h: Household) -> Result<(), StoreError> {
    if let Some(old) = households.get_mut(&h.id) {
        h.months = std::mem::take(&mut old.months);
    }
    households
        .insert(h)
        .map_err(|e| super::table_full(Space::MonthRun, key, &e))?;
    Ok(())
}

/// What the runs after the base change in the households' months, gathered (while their
/// roster changes are made) before the base's months are read, so that each household's
/// months are packed once, from its base and its changes together.
///
/// Made one at a time ([`Months::set`]), in the runs' order, each change packed the
/// household's months anew: at 600,000 households the runs after a base held about 1.35
/// million changes, and the blocks they left behind, scattered over the allocator's pages,
/// kept about 95 MiB more resident at the end of a start from the store than the months
/// themselves took. Made after the base's months were all in place instead, every household
/// the runs change held its base months and its new ones at once: 276 MiB more at the peak
/// of a start from the store at 3,000,000 households, by hand.
///
/// The changes are kept in ranges of [`RANGE_SLOTS`] slots, each let go of as soon as the
/// months of all its households are made. The base's months come in the table's order of
/// slots, so the ranges go one after another, and the months being packed take the room the
/// ranges before them left (a range with a slot the runs emptied, or whose household is
/// new since the base, waits for the households the base did not hold, at the end). For
/// that room to be of use to them, the ranges are small and
/// their blocks laid out in the order of slots: a first pass over the runs counts each
/// range's changes, a second gathers them into room made to measure. mimalloc (v3) gives
/// each stretch of its arena to one kind of page, and with the shipped purge delay (never)
/// the room of large blocks freed stays resident and is never taken by small ones: held in
/// ranges of 4,096 slots, in vectors grown as the runs came, the changes (about as many
/// bytes as the runs) stayed resident beside all the months (BENCHMARKS.md).
#[derive(Default)]
struct RunChanges {
    /// The changes of slots `i * RANGE_SLOTS ..` in the `i`th range.
    ranges: Vec<SlotRange>,
    /// The households the runs removed (a household removed and put back starts without
    /// months: those of the base were the one removed).
    removed: std::collections::HashSet<HouseholdId, rustc_hash::FxBuildHasher>,
    /// Reused for every household's packing.
    scratch: Vec<u64>,
}

/// About how many bytes of runs a start reads through the store between releases of its
/// cache. sled keeps the pages read to the end of the process, and more than its cache's
/// accounting says; released only after all of them, the runs after a base at 600,000
/// households (about 100 MB) left 72 MB of it, which the allocator kept for blocks of
/// other sizes than the months packed next.
const RUN_BYTES_PER_READ: u64 = 8 << 20;

/// How many runs to read between releases of the store's cache: about `bytes_per_read`
/// bytes, by the runs' average size since the base ([`LogState::pending_bytes`]), at least
/// one. Runs of uneven sizes (a bulk poll's among small feeds') make some reads larger.
fn runs_per_read(log: &LogState, bytes_per_read: u64) -> u64 {
    let runs = log.last_run.saturating_sub(log.base.through);
    let bytes = log.pending_bytes().max(1);
    let per_read = u128::from(runs) * u128::from(bytes_per_read) / u128::from(bytes);
    u64::try_from(per_read).unwrap_or(u64::MAX).max(1)
}

/// Reads the runs after the base into `visit`, about `bytes_per_read` bytes at a time,
/// releasing the store's cache after each read.
fn read_runs(
    store: &dyn Store,
    log: &LogState,
    bytes_per_read: u64,
    visit: &mut crate::store::Visit<'_>,
) -> Result<(), StoreError> {
    let per_read = runs_per_read(log, bytes_per_read);
    let mut from = log.base.through.saturating_add(1);
    loop {
        let to = from.checked_add(per_read).filter(|&to| to <= log.last_run);
        let to_key = to.map(|to| run_key(to, 0));
        store.for_each_in(Space::MonthRun, &run_key(from, 0), to_key.as_deref(), visit)?;
        store.release_cache();
        match to {
            Some(to) => from = to,
            None => return Ok(()),
        }
    }
}

/// A slot no household takes ([`Households`] refuses it): in the first pass of
/// [`RunChanges::read`], a change left out.
const NO_SLOT: Slot = Slot::MAX;

/// Slots per range of [`RunChanges`]: small enough that a range's changes (about 100, a
/// few KB) are blocks of the allocator's small pages, which the months take next.
const RANGE_SLOTS: Slot = 32;

/// What the first pass of [`RunChanges::read`] counts of a range: its changes, their words
/// and which of its slots they go to.
#[derive(Clone, Copy, Default)]
struct RangeCount {
    changes: usize,
    words: usize,
    slots: u32,
}

const _: () = assert!(RANGE_SLOTS <= u32::BITS);

/// The changes the runs make to the households of one range of slots.
#[derive(Default)]
struct SlotRange {
    /// Every change, sorted by slot, in the runs' order within each slot.
    changes: Vec<RunChange>,
    /// The changes' buckets, packed, one after another.
    words: Vec<u64>,
    /// Each slot's changes, in slot order: the slot, and where they start in `changes`.
    households: Vec<(Slot, u32)>,
    /// Whether the months of each of `households` were made from its changes yet.
    done: Vec<bool>,
    /// How many of `households` are not made yet: at none, the range is emptied.
    pending: usize,
}

/// The `len` of a [`RunChange`] that marks its slot's household removed: what the slot's
/// changes before it made is gone, and whoever takes the slot after starts without months.
const REMOVED: u32 = u32::MAX;

/// One month of the household in a slot, as a run puts it: its bucket's words in
/// [`SlotRange::words`] (none: the month is gone), or that the household was removed
/// ([`REMOVED`]). 16 bytes: at 600,000 households the runs after a base held about 1.9
/// million changes.
#[derive(Clone, Copy)]
struct RunChange {
    slot: Slot,
    month: Month,
    at: u32,
    len: u32,
}

const _: () = assert!(std::mem::size_of::<RunChange>() == 16);

/// A position or a length in a [`SlotRange`]'s words or changes, which a start holds in
/// memory: past 4 G (32 GB of words), far beyond what runs of a quarter of a base hold, it is
/// refused as damage rather than wrapped.
fn index_u32(n: usize, key: &[u8]) -> Result<u32, StoreError> {
    // `u32::MAX` is refused too: as a length it would read as `REMOVED`.
    u32::try_from(n)
        .ok()
        .filter(|&v| v != REMOVED)
        .ok_or_else(|| {
            damaged(
                Space::MonthRun,
                key,
                "more months' changes after the base than a start can hold",
            )
        })
}

impl SlotRange {
    /// Sorts the changes gathered and indexes them by slot.
    fn index(&mut self, key: &[u8]) -> Result<(), StoreError> {
        // In the runs' order within a slot: words are appended in that order, and a
        // removal, which appends none, sorts before a change starting where it stood.
        self.changes.sort_unstable_by_key(|c| (c.slot, c.at, c.len));
        // Every start is below the count of changes, taken as a u32 here.
        index_u32(self.changes.len(), key)?;
        let mut start = 0u32;
        for same in self.changes.chunk_by(|a, b| a.slot == b.slot) {
            self.households.push((same[0].slot, start));
            start += same.len() as u32;
        }
        self.done = vec![false; self.households.len()];
        self.pending = self.households.len();
        Ok(())
    }

    /// The bytes the changes take.
    fn bytes(&self) -> usize {
        use std::mem::size_of_val;
        size_of_val(self.changes.as_slice())
            + size_of_val(self.words.as_slice())
            + size_of_val(self.households.as_slice())
            + size_of_val(self.done.as_slice())
    }
}

impl RunChanges {
    /// Reads the runs after run `through`, the last the base holds, making their roster
    /// changes on `households` as it goes. Changes to the months of households not in the
    /// table are left out: a later run deleted them with their household, and the runs
    /// before it may still name them.
    ///
    /// A slot a household left may be taken by one that came after: its changes then
    /// follow those of the household before and the mark of its removal, from which they
    /// are made on no months. A household removed keeps none of the base's months, put
    /// back or not.
    ///
    /// The runs are read about `bytes_per_read` bytes at a time, the store's cache released
    /// after each ([`Store::release_cache`]).
    fn read(
        households: &mut Households,
        store: &dyn Store,
        log: &LogState,
        bytes_per_read: u64,
    ) -> Result<Self, StoreError> {
        let mut runs = Self::default();
        let after = run_key(log.base.through.saturating_add(1), 0);
        // The first pass makes the roster changes and notes, in the runs' order, the slot
        // each removal and each month's change goes to (`NO_SLOT`: left out), and counts
        // each range's changes and words.
        let mut slots: Vec<Slot> = Vec::new();
        let mut counts: Vec<RangeCount> = Vec::new();
        let mut scratch = Vec::new();
        let mut count = |slot: Slot, words: usize| {
            let i = (slot / RANGE_SLOTS) as usize;
            if counts.len() <= i {
                counts.resize(i + 1, RangeCount::default());
            }
            counts[i].changes += 1;
            counts[i].words += words;
            counts[i].slots |= 1 << (slot % RANGE_SLOTS);
        };
        read_runs(store, log, bytes_per_read, &mut |k, v| {
            let run = Run::decode(k, v)?;
            for change in run.roster {
                match change {
                    RosterChange::Put(h) => put_roster(households, k, h)?,
                    RosterChange::Gone(id) => {
                        let id: HouseholdId = id.parse().map_err(|_| {
                            damaged(Space::MonthRun, k, "a household id that is not one")
                        })?;
                        match households.remove(&id) {
                            Some((slot, _)) => {
                                // The mark of a removal takes a word: later changes start
                                // past it, so they sort after it.
                                count(slot, 1);
                                slots.push(slot);
                            }
                            None => slots.push(NO_SLOT),
                        }
                        runs.removed.insert(id);
                    }
                }
            }
            for (id, month, bucket) in run.months {
                if bucket.as_ref().is_some_and(|b| b.month.ordinal() != month) {
                    return Err(damaged(Space::MonthRun, k, "a bucket under another month"));
                }
                let slot = id
                    .parse::<HouseholdId>()
                    .ok()
                    .and_then(|id| households.slot_of(&id));
                match slot {
                    Some(slot) => {
                        scratch.clear();
                        if let Some(b) = &bucket {
                            months::pack(b, &mut scratch);
                        }
                        count(slot, scratch.len());
                        slots.push(slot);
                    }
                    None => slots.push(NO_SLOT),
                }
            }
            Ok(())
        })?;
        // Each range's room, in the order of slots: the ranges are let go of in that order
        // as the base's months are made, and the pages they free take the months next.
        runs.ranges = counts
            .iter()
            .map(|c| SlotRange {
                changes: Vec::with_capacity(c.changes),
                words: Vec::with_capacity(c.words),
                households: Vec::with_capacity(c.slots.count_ones() as usize),
                ..SlotRange::default()
            })
            .collect();
        drop(counts);
        // The second pass gathers the changes, where the first put them.
        let mut next = slots.iter();
        let mut slot_of_next = |k: &[u8]| {
            next.next().copied().ok_or_else(|| {
                damaged(
                    Space::MonthRun,
                    k,
                    "the runs changed while a start read them",
                )
            })
        };
        read_runs(store, log, bytes_per_read, &mut |k, v| {
            let run = Run::decode(k, v)?;
            for change in run.roster {
                if let RosterChange::Gone(_) = change {
                    let slot = slot_of_next(k)?;
                    if slot != NO_SLOT {
                        let range = runs.range_mut(slot);
                        range.changes.push(RunChange {
                            slot,
                            month: Month::from_ordinal(0),
                            at: index_u32(range.words.len(), k)?,
                            len: REMOVED,
                        });
                        range.words.push(0);
                    }
                }
            }
            for (_, month, bucket) in run.months {
                let slot = slot_of_next(k)?;
                if slot == NO_SLOT {
                    continue;
                }
                // Packed aside first: packing narrows a bucket after writing it wide,
                // which would outgrow the room the first pass counted.
                scratch.clear();
                if let Some(b) = &bucket {
                    months::pack(b, &mut scratch);
                }
                let range = runs.range_mut(slot);
                let at = range.words.len();
                range.words.extend_from_slice(&scratch);
                range.changes.push(RunChange {
                    slot,
                    month: Month::from_ordinal(month),
                    at: index_u32(at, k)?,
                    len: index_u32(range.words.len() - at, k)?,
                });
            }
            Ok(())
        })?;
        if next.next().is_some() {
            return Err(damaged(
                Space::MonthRun,
                &after,
                "the runs changed while a start read them",
            ));
        }
        drop(slots);
        for range in &mut runs.ranges {
            range.index(&after)?;
        }
        Ok(runs)
    }

    /// The range of `slot`, made if there is none yet.
    fn range_mut(&mut self, slot: Slot) -> &mut SlotRange {
        let i = (slot / RANGE_SLOTS) as usize;
        if self.ranges.len() <= i {
            self.ranges.resize_with(i + 1, SlotRange::default);
        }
        &mut self.ranges[i]
    }

    /// How many changes there are, and the bytes they take (not counting the removed
    /// households' ids).
    fn size(&self) -> (usize, usize) {
        self.ranges.iter().fold((0, 0), |(changes, bytes), r| {
            (changes + r.changes.len(), bytes + r.bytes())
        })
    }

    /// Gives household `id` its months from the base, with the runs' changes made. A
    /// household gone since the base, or removed and put back, keeps none of them.
    fn put_base_months(&mut self, households: &mut Households, id: &HouseholdId, base: Months) {
        if !self.removed.is_empty() && self.removed.contains(id) {
            return;
        }
        if let Some(slot) = households.slot_of(id) {
            let months = self.months_of(slot, base);
            if let Some(h) = households.at_mut(slot) {
                h.months = months;
            }
        }
    }

    /// The months of the household in `slot`: `base` with the runs' changes made.
    fn months_of(&mut self, slot: Slot, base: Months) -> Months {
        let r = (slot / RANGE_SLOTS) as usize;
        let found = self
            .ranges
            .get(r)
            .and_then(|range| range.households.binary_search_by_key(&slot, |h| h.0).ok());
        match found {
            Some(i) => self.make(r, i, &base),
            None => base,
        }
    }

    /// Makes the changes of the `i`th slot of range `r` on `base`, once: those after the
    /// slot's last removal on no months, if a household was removed from it. The range is
    /// emptied once all its slots are made.
    fn make(&mut self, r: usize, i: usize, base: &Months) -> Months {
        let range = &mut self.ranges[r];
        // Counted once, should a damaged base hold a household twice.
        let first = !range.done[i];
        range.done[i] = true;
        let start = range.households[i].1 as usize;
        let end = range
            .households
            .get(i + 1)
            .map_or(range.changes.len(), |h| h.1 as usize);
        let mut slot_changes = &range.changes[start..end];
        let none = Months::default();
        let base = match slot_changes.iter().rposition(|c| c.len == REMOVED) {
            Some(last) => {
                slot_changes = &slot_changes[last + 1..];
                &none
            }
            None => base,
        };
        let mut changes: Vec<(Month, Option<&[u64]>)> = slot_changes
            .iter()
            .map(|c| {
                let (at, len) = (c.at as usize, c.len as usize);
                let words = &range.words[at..at + len];
                (c.month, (c.len > 0).then_some(words))
            })
            .collect();
        let months = base.with_changes(&mut changes, &mut self.scratch);
        range.pending -= usize::from(first);
        if range.pending == 0 {
            *range = SlotRange::default();
        }
        months
    }

    /// Makes the changes of the households the base did not hold (new since it) on the
    /// months they have.
    fn make_the_rest(mut self, households: &mut Households) {
        for r in 0..self.ranges.len() {
            // The range is emptied when its last slot is made.
            let mut i = 0;
            while i < self.ranges[r].households.len() {
                if !self.ranges[r].done[i] {
                    let slot = self.ranges[r].households[i].0;
                    if let Some(h) = households.at_mut(slot) {
                        h.months = self.make(r, i, &h.months);
                    }
                }
                i += 1;
            }
        }
    }
}

/// Reads the months of the base in keys of `generation` (a store written before bases
/// were files) into the households, with the runs' changes.
fn read_base_keys(
    households: &mut Households,
    store: &dyn Store,
    generation: u32,
    runs: &mut RunChanges,
) -> Result<(), StoreError> {
    let next = generation.checked_add(1).map(u32::to_be_bytes);
    store.for_each_in(
        Space::MonthBase,
        &generation.to_be_bytes(),
        next.as_ref().map(|n| &n[..]),
        &mut |k, v| {
            let part: Vec<(String, Months)> =
                codec::decode(BASE_KEY_VERSION, Space::MonthBase, k, v)?;
            for (id, months) in part {
                if let Ok(id) = id.parse::<HouseholdId>() {
                    runs.put_base_months(households, &id, months);
                }
            }
            Ok(())
        },
    )
}

/// The base file the store names, opened, its header read and checked. A missing or
/// damaged file is an error: the base is the truth, not a cache.
struct BaseFile {
    path: std::path::PathBuf,
    input: BufReader<std::fs::File>,
    header: BaseHeader,
    /// The households of each roster frame, once read ([`BaseFile::read_roster`]): each
    /// months' frame after must hold as many.
    roster_frames: Vec<usize>,
}

impl BaseFile {
    fn open(store: &dyn Store, base: &BaseInfo) -> Result<Self, StoreError> {
        let path = store.file_path(&base_file_name(base.generation));
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(file_damaged(
                    &path,
                    &format!(
                        "missing, though the store names it as the months' base (generation {})",
                        base.generation
                    ),
                ));
            }
            Err(source) => return Err(file_error(&path, source)),
        };
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        frames::read_exact(&mut input, &mut magic).map_err(|e| frame_error(&path, e))?;
        if &magic != BASE_MAGIC {
            return Err(file_damaged(&path, "not a base of the months"));
        }
        let header: BaseHeader =
            frames::read_frame(&mut input, &mut Vec::new()).map_err(|e| frame_error(&path, e))?;
        if !(1..=BASE_FILE_FORMAT).contains(&header.format)
            || header.generation != base.generation
            || header.through != base.through
        {
            return Err(file_damaged(
                &path,
                &format!(
                    "its header (format {}, generation {}, through run {}) is not the base the store names (format {BASE_FILE_FORMAT}, generation {}, through run {})",
                    header.format, header.generation, header.through, base.generation, base.through
                ),
            ));
        }
        Ok(BaseFile {
            path,
            input,
            header,
            roster_frames: Vec::new(),
        })
    }

    /// Reads the households' roster parts (format 4) into the table, which is empty before,
    /// skipping their months; then goes back to the first frame for [`BaseFile::read_months`].
    /// A second thread reads and decodes the frames while this one puts them in place.
    fn read_roster(&mut self, households: &mut Households) -> Result<(), StoreError> {
        let BaseFile {
            path,
            input,
            header,
            roster_frames,
        } = self;
        let path: &std::path::Path = path;
        let header: &BaseHeader = header;
        let start = input
            .stream_position()
            .map_err(|source| file_error(path, source))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Household>>(4);
        std::thread::scope(|scope| {
            let reading = &mut *input;
            // Moves `tx`, so that the households end when the reader does.
            let reader = scope.spawn(move || {
                let mut buf = Vec::new();
                let mut read = 0u64;
                while read < header.households {
                    let roster: Vec<Household> =
                        frames::read_frame(reading, &mut buf).map_err(|e| frame_error(path, e))?;
                    frames::skip_frame(reading).map_err(|e| frame_error(path, e))?;
                    if roster.is_empty() {
                        return Err(file_damaged(path, "an empty frame of households"));
                    }
                    read += roster.len() as u64;
                    if tx.send(roster).is_err() {
                        return Ok(()); // the table refused a household: its error counts
                    }
                }
                if read != header.households {
                    return Err(file_damaged(path, "more households than its header says"));
                }
                Ok(())
            });
            let mut put = Ok(());
            'frames: for chunk in rx {
                roster_frames.push(chunk.len());
                for h in chunk {
                    match households.insert(h) {
                        Ok((_, None)) => {}
                        Ok((_, Some(_))) => {
                            put = Err(file_damaged(path, "a household twice"));
                            break 'frames;
                        }
                        Err(e) => {
                            let name = path.file_name().unwrap_or_default();
                            put = Err(super::table_full(
                                Space::MonthBase,
                                name.as_encoded_bytes(),
                                &e,
                            ));
                            break 'frames;
                        }
                    }
                }
            }
            let read = reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            put.and(read)
        })?;
        input
            .seek(std::io::SeekFrom::Start(start))
            .map_err(|source| file_error(path, source))?;
        Ok(())
    }

    /// Reads the households' months into the table, with the runs' changes: those of
    /// households the table holds (those gone since are left out: the runs after the base
    /// delete their months). A second thread reads and decodes the frames while this one
    /// puts the months in place.
    fn read_months(
        self,
        households: &mut Households,
        runs: &mut RunChanges,
    ) -> Result<(), StoreError> {
        let BaseFile {
            path,
            mut input,
            header,
            roster_frames,
        } = self;
        let path: &std::path::Path = &path;
        let whole = header.format >= ROSTER_IN_BASE_FORMAT;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(HouseholdId, Months)>>(4);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let of_frame = |e| frame_error(path, e);
                let mut buf = Vec::new();
                let mut read = 0u64;
                let mut frame = 0;
                while read < header.households {
                    if whole {
                        frames::skip_frame(&mut input).map_err(of_frame)?;
                    }
                    let chunk: Vec<(HouseholdId, Months)> = if header.format == 1 {
                        frames::read_frame(&mut input, &mut buf).map_err(of_frame)?
                    } else {
                        frames::read_raw_frame(&mut input, &mut buf).map_err(of_frame)?;
                        frames::decode_months(&buf).map_err(|detail| file_damaged(path, detail))?
                    };
                    if chunk.is_empty() {
                        return Err(file_damaged(path, "an empty frame of households"));
                    }
                    if whole && roster_frames.get(frame) != Some(&chunk.len()) {
                        return Err(file_damaged(
                            path,
                            "a frame of months of other households than its roster's",
                        ));
                    }
                    frame += 1;
                    read += chunk.len() as u64;
                    if tx.send(chunk).is_err() {
                        return Ok(());
                    }
                }
                if read != header.households {
                    return Err(file_damaged(path, "more households than its header says"));
                }
                if !frames::at_end(&mut input).map_err(of_frame)? {
                    return Err(file_damaged(path, "bytes after the last frame"));
                }
                Ok(())
            });
            for chunk in rx {
                for (id, months) in chunk {
                    runs.put_base_months(households, &id, months);
                }
            }
            reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// A base file that could not be read or sought.
fn file_error(path: &std::path::Path, source: std::io::Error) -> StoreError {
    StoreError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// A base file whose content is not what a base holds.
fn file_damaged(path: &std::path::Path, detail: &str) -> StoreError {
    StoreError::FileDamaged {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// A frame of a base file that could not be read.
fn frame_error(path: &std::path::Path, e: FrameError) -> StoreError {
    match e {
        FrameError::Io(source) => file_error(path, source),
        other => file_damaged(path, &other.to_string()),
    }
}

/// Writes the base the store names again in an older format, from `households` (sorted by
/// id): 1, postcard frames, as 5d17eac wrote it; 2, every month packed wide, as guardline
/// wrote it before narrow months; 3, months only, as guardline wrote it before the base held
/// the roster parts.
#[cfg(test)]
pub(super) fn rewrite_base_in_format(
    store: &dyn Store,
    households: &[(HouseholdId, Months)],
    format: u32,
) {
    let base = LogState::read(store).unwrap().base;
    let header = BaseHeader {
        format,
        generation: base.generation,
        through: base.through,
        households: households.len() as u64,
    };
    store
        .write_file(&base_file_name(base.generation), &mut |out| {
            out.write_all(BASE_MAGIC)?;
            let mut buf = Vec::new();
            write_frame(out, &mut buf, &header)?;
            for chunk in households.chunks(BASE_HOUSEHOLDS_PER_FRAME) {
                if format == 1 {
                    write_frame(out, &mut buf, chunk)?;
                    continue;
                }
                if format == 3 {
                    frames::encode_months(chunk.iter().map(|(id, m)| (id, m)), &mut buf)?;
                    frames::write_raw_frame(out, &buf)?;
                    continue;
                }
                // `encode_months`' layout, with the words packed wide.
                buf.clear();
                for (id, months) in chunk {
                    let words = months.wide_words();
                    buf.extend_from_slice(&(id.as_str().len() as u32).to_le_bytes());
                    buf.extend_from_slice(id.as_str().as_bytes());
                    buf.extend_from_slice(&(words.len() as u32).to_le_bytes());
                    for w in words {
                        buf.extend_from_slice(&w.to_le_bytes());
                    }
                }
                frames::write_raw_frame(out, &buf)?;
            }
            Ok(())
        })
        .unwrap();
}

/// Whether a state snapshot whose changes since are `changed` crossed a new base: the base
/// holds runs the changes name (and deleted them), or its keys changed.
pub(super) fn crosses_base(
    store: &dyn Store,
    changed: &[(Space, Vec<u8>)],
) -> Result<bool, StoreError> {
    if changed.iter().any(|(space, _)| *space == Space::MonthBase) {
        return Ok(true);
    }
    let through = LogState::read(store)?.base.through;
    for (space, key) in changed {
        if *space == Space::MonthRun && split_run_key(key)?.0 <= through {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a base is written from: every household as it was after one run, so that it can be
/// written on another thread while ingest goes on. The months are shared with memory (a
/// clone of [`Months`] costs a reference count); the roster parts are encoded already, one
/// buffer per frame, all held while the base is written (about 90 bytes a household).
pub struct BaseSource {
    households: Vec<(HouseholdId, Months)>,
    /// The postcard bytes of each frame's roster parts, in the order of `households`.
    rosters: Vec<Vec<u8>>,
    state: LogState,
}

/// What a base written from a [`BaseSource`] changes in memory ([`World::base_written`]).
#[derive(Debug, Clone, Copy)]
pub struct BaseWritten {
    base: BaseInfo,
    /// The running count of run bytes at the base's last run.
    offset: u64,
}

/// `w`'s households, in the table's order, and where the log stands. The engine's thread
/// waits for this: no sort (a start puts each household wherever it comes), and the roster
/// parts encoded on every core.
pub(super) fn base_source(w: &World) -> BaseSource {
    let all: Vec<&Household> = w.households.values().collect();
    let chunks: Vec<&[&Household]> = all.chunks(BASE_HOUSEHOLDS_PER_FRAME).collect();
    let rosters = crate::parallel::in_shares(&chunks, 2, |_, part| {
        part.iter()
            .map(|chunk| frames::to_bytes(*chunk))
            .collect::<Vec<_>>()
    })
    .concat();
    let households = all
        .iter()
        .map(|h| (h.id.clone(), h.months.clone()))
        .collect();
    BaseSource {
        households,
        rosters,
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

/// Writes a new base from `source` as a file, then, in one commit, names it in the meta key
/// and deletes the runs it holds; then deletes the files of other generations and any base
/// in keys. The base counts only once that commit is done. Runs written meanwhile (by
/// another thread) are after it and stay.
pub fn write_base_from(source: &BaseSource, store: &dyn Store) -> Result<BaseWritten, StoreError> {
    let started = std::time::Instant::now();
    let state = source.state;
    // What a crash or a failed commit left takes space the new file may need (a full disk):
    // delete it first. The store names the base to keep (memory may lag behind a commit that
    // failed yet was applied); this thread is the only one that writes bases.
    let named = LogState::read(store)?.base;
    delete_other_bases(store, named.generation, false)?;
    let generation = next_generation(store, state.base.generation.max(named.generation))?;
    let households = &source.households;
    let name = base_file_name(generation);
    let header = BaseHeader {
        format: BASE_FILE_FORMAT,
        generation,
        through: state.last_run,
        households: households.len() as u64,
    };
    let bytes = store.write_file(&name, &mut |out: &mut dyn Write| {
        out.write_all(BASE_MAGIC)?;
        let mut buf = Vec::new();
        write_frame(out, &mut buf, &header)?;
        for (chunk, roster) in households
            .chunks(BASE_HOUSEHOLDS_PER_FRAME)
            .zip(&source.rosters)
        {
            frames::write_raw_frame(out, roster)?;
            frames::encode_months(chunk.iter().map(|(id, m)| (id, m)), &mut buf)?;
            frames::write_raw_frame(out, &buf)?;
        }
        Ok(())
    })?;
    let base = BaseInfo {
        generation,
        through: state.last_run,
        bytes,
        in_file: true,
    };
    let mut batch = Batch::default();
    batch.put(
        Space::Meta,
        BASE_KEY.to_vec(),
        codec::encode(BASE_INFO_VERSION, &base),
    );
    let through = run_key(state.last_run.saturating_add(1), 0);
    store.for_each_key_in(Space::MonthRun, &[], Some(&through), &mut |k| {
        batch.delete(Space::MonthRun, k.to_vec());
        Ok(())
    })?;
    // A failed commit may still be applied (and the file named): the file stays, and the
    // next base deletes it if nothing names it.
    store.commit(batch)?;
    let written = BaseWritten {
        base,
        offset: state.run_bytes,
    };
    // The older bases go after: never read, so no hurry and no harm if a crash or a failure
    // leaves them to the next base.
    if let Err(e) = delete_other_bases(store, generation, true) {
        warn!(error = %e, generation, "earlier bases of the months not deleted; the next base deletes them");
    }
    // The base holds the roster parts: household keys of the schema before are stale.
    if let Err(e) = delete_household_keys(store) {
        warn!(error = %e, generation, "stale household keys not deleted; the next base or start deletes them");
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

/// A generation above `current` and every one in the store, in base files (also temporary
/// ones) and in keys: what a write cut short left must never become part of a base.
fn next_generation(store: &dyn Store, current: u32) -> Result<u32, StoreError> {
    let in_keys = match store.last_key(Space::MonthBase)? {
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
    let in_files = store
        .file_names()?
        .iter()
        .filter_map(|n| base_file_generation(n))
        .max()
        .unwrap_or(0);
    current
        .max(in_keys)
        .max(in_files)
        .checked_add(1)
        .ok_or_else(|| damaged(Space::MonthBase, &[], "no generation left after u32::MAX"))
}

/// Writes a new base from `w`'s households on this thread (see [`write_base_from`]).
pub(super) fn write_base(w: &mut World, store: &dyn Store) -> Result<(), StoreError> {
    let source = base_source(w);
    let written = write_base_from(&source, store)?;
    base_written(w, written);
    Ok(())
}

/// Deletes the base files of every generation but `generation` (the one the store names)
/// and their temporary files; with `keys`, also every key of a base in keys (only once the
/// store names a base in a file: bases in keys are older).
fn delete_other_bases(store: &dyn Store, generation: u32, keys: bool) -> Result<(), StoreError> {
    let current = base_file_name(generation);
    for name in store.file_names()? {
        if name != current && base_file_generation(&name).is_some() {
            store.remove_file(&name)?;
        }
    }
    if !keys {
        return Ok(());
    }
    let mut stale = Batch::default();
    store.for_each_in(Space::MonthBase, &[], None, &mut |k, _| {
        stale.delete(Space::MonthBase, k.to_vec());
        Ok(())
    })?;
    for part in stale.ops.chunks(DELETES_PER_COMMIT) {
        store.commit(Batch { ops: part.to_vec() })?;
    }
    Ok(())
}

/// Deletes the household keys ([`Space::Household`]) once the base holds the roster parts
/// (format 4), in commits without journal entries: no state snapshot taken before then is
/// brought across. Returns how many were deleted.
fn delete_household_keys(store: &dyn Store) -> Result<usize, StoreError> {
    if store.first_key_from(Space::Household, &[])?.is_none() {
        return Ok(0);
    }
    // The keys one after another in one buffer (about 20 bytes a household, where a vector
    // each would take three times that), then deleted in commits of a few thousand.
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    store.for_each(Space::Household, &mut |k, _| {
        bytes.extend_from_slice(k);
        ends.push(bytes.len());
        Ok(())
    })?;
    let mut start = 0;
    for part in ends.chunks(HOUSEHOLD_DELETES_PER_COMMIT) {
        let mut batch = Batch::default();
        for &end in part {
            batch.delete(Space::Household, bytes[start..end].to_vec());
            start = end;
        }
        store.commit_unjournaled(batch)?;
    }
    let deleted = ends.len();
    if deleted > 0 {
        info!(
            keys = deleted,
            "household keys deleted: the months' base holds the roster parts"
        );
    }
    Ok(deleted)
}

/// Deletes the months stored one key per household (schema 3) once a base holds them, month
/// by month (their keys begin with the month), in commits of at most `MONTH_DELETES_PER_COMMIT`
/// keys without journal entries. Returns how many were deleted.
fn delete_household_months(store: &dyn Store) -> Result<usize, StoreError> {
    const MONTH_DELETES_PER_COMMIT: usize = 100_000;
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
        for part in keys.chunks(MONTH_DELETES_PER_COMMIT) {
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
    fn a_base_is_due_once_the_runs_outgrow_a_quarter_of_it_or_number_thousands() {
        let mib = 1u64 << 20;
        let state = |base_bytes: u64, run_bytes: u64, runs: u64| LogState {
            base: BaseInfo {
                generation: 1,
                through: 10,
                bytes: base_bytes,
                in_file: true,
            },
            last_run: 10 + runs,
            // The count runs on from before the base (a base written while runs went on).
            run_bytes: 7 * mib + run_bytes,
            base_offset: 7 * mib,
        };
        // Small stores wait for 64 MiB of runs.
        assert!(!state(0, 64 * mib, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        assert!(state(0, 64 * mib + 1, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        // Large ones for a quarter of the base.
        assert!(!state(400 * mib, 100 * mib, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        assert!(state(400 * mib, 100 * mib + 1, 100).base_due(DEFAULT_MIN_RUN_BYTES));
        // Many small commits.
        assert!(!state(400 * mib, mib, MAX_RUNS).base_due(DEFAULT_MIN_RUN_BYTES));
        assert!(state(400 * mib, mib, MAX_RUNS + 1).base_due(DEFAULT_MIN_RUN_BYTES));
        // A smaller least amount (`daemon.base_rewrite_bytes`) counts for small bases only.
        assert!(state(0, mib + 1, 100).base_due(mib));
        assert!(!state(0, mib, 100).base_due(mib));
        assert!(!state(400 * mib, 100 * mib, 100).base_due(mib));
    }

    #[test]
    fn base_files_are_named_for_their_generation_and_old_meta_keys_name_keys() {
        assert_eq!(base_file_name(42), "months-base.42");
        assert_eq!(base_file_generation("months-base.42"), Some(42));
        assert_eq!(base_file_generation("months-base.42.tmp"), Some(42));
        assert_eq!(base_file_generation("months-base."), None);
        assert_eq!(base_file_generation("months-base.x"), None);
        assert_eq!(base_file_generation("months-base.007"), None);
        assert_eq!(base_file_generation("months-base.+7"), None);
        assert_eq!(base_file_generation("months-base.0"), Some(0));
        assert_eq!(base_file_generation("state.snapshot"), None);
        let v1 = codec::encode(
            1,
            &BaseInfoV1 {
                generation: 3,
                through: 9,
                bytes: 100,
            },
        );
        let info = BaseInfo::decode(&v1).unwrap();
        assert_eq!((info.generation, info.through, info.bytes), (3, 9, 100));
        assert!(!info.in_file);
        let v2 = BaseInfo {
            in_file: true,
            ..info
        };
        let encoded = codec::encode(BASE_INFO_VERSION, &v2);
        assert_eq!(BaseInfo::decode(&encoded).unwrap(), v2);
        assert!(BaseInfo::decode(&[3, 0]).is_err());
    }

    #[test]
    fn runs_are_read_a_share_of_their_bytes_at_a_time() {
        let mib = 1u64 << 20;
        let log = |runs: u64, bytes: u64| LogState {
            base: BaseInfo {
                generation: 1,
                through: 10,
                bytes: 400 * mib,
                in_file: true,
            },
            last_run: 10 + runs,
            run_bytes: 3 * mib + bytes,
            base_offset: 3 * mib,
        };
        // 300 runs of 96 MiB: 25 runs make 8 MiB.
        assert_eq!(runs_per_read(&log(300, 96 * mib), 8 * mib), 25);
        // Runs larger than a read: one at a time.
        assert_eq!(runs_per_read(&log(3, 96 * mib), 8 * mib), 1);
        // No runs, or no bytes counted: at least one, and no overflow.
        assert_eq!(runs_per_read(&log(0, 0), 8 * mib), 1);
        assert_eq!(runs_per_read(&log(u64::MAX - 10, 1), u64::MAX), u64::MAX);
    }

    #[test]
    fn a_range_of_slots_lets_go_of_its_changes_once_its_households_are_made() {
        let month = Month::from_ordinal(5);
        let bucket = MonthBucket::new(month);
        let mut runs = RunChanges::default();
        for slot in [1, 3, RANGE_SLOTS + 2] {
            let range = runs.range_mut(slot);
            let at = range.words.len();
            months::pack(&bucket, &mut range.words);
            range.changes.push(RunChange {
                slot,
                month,
                at: at as u32,
                len: (range.words.len() - at) as u32,
            });
        }
        for range in &mut runs.ranges {
            range.index(b"test").unwrap();
        }
        assert_eq!(runs.size().0, 3);
        let made = runs.months_of(3, Months::default());
        assert_eq!(made.iter().map(|b| b.month()).collect::<Vec<_>>(), [month]);
        assert_eq!(
            runs.size().0,
            3,
            "kept whole while slot 1 is still to be made"
        );
        runs.months_of(1, Months::default());
        let first = &runs.ranges[0];
        assert_eq!(
            (first.changes.capacity(), first.words.capacity()),
            (0, 0),
            "the first range is let go of"
        );
        assert_eq!(runs.size().0, 1, "the second range holds its change");
        // A slot without changes keeps its base; the rest are made at the end.
        let base = Months::from_buckets([&bucket]);
        assert!(runs.months_of(2, base.clone()) == base);
        assert_eq!(runs.ranges[1].pending, 1);
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
