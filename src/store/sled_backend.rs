//! The sled backend: one tree, keys prefixed by their space, so that one sled batch is
//! atomic across households, villages, alerts, the outbox and cursors.
//!
//! A failed operation closes the database. sled 0.34 remembers the first I/O error of a
//! database (disk full, read-only file system) and refuses every later write, and some
//! reads, until the database is opened again; a write after such an error can even wait
//! forever for a flush, and the database in memory may hold the failed batch. So the
//! backend drops its `sled::Db` at once — it holds the only handle, so this closes the files
//! and releases sled's lock on them — and reopens it when asked whether the store is
//! writable, at most once per back-off interval (1 s, doubling up to 30 s), proving it with
//! a small durable write. While it is closed, reads fail too: sled cannot open a database on
//! a read-only file system, nor (it writes a snapshot when it opens one) on a full one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::files::{FileDir, Fill};
use super::journal::ChangedKeys;
use super::run_files::{self, RunFiles, Spill};
use super::{
    Batch, Entries, Op, SCHEMA_VERSION, Space, Store, StoreError, WriteFailure, WriteObserver,
};

const SCHEMA_KEY: &[u8] = b"schema_version";
/// The folder of the store's files ([`super::files`]) in the data_dir.
pub const FILES_DIR: &str = "store-files";
/// The state stamp ([`Store::state_stamp`]), big-endian: random, so that a store restored
/// from a backup, whose id generator goes back with it, cannot write a stamp again.
const STATE_STAMP_KEY: &[u8] = b"state_stamp";

/// Adds a new state stamp and the journal entry of `changed` to `b`; returns the stamp.
fn stamp_into(db: &sled::Db, b: &mut sled::Batch, changed: &ChangedKeys) -> sled::Result<u64> {
    let (before, stamp) = next_stamp(db)?;
    // The generator's ids increase: entries are read in the order they were written.
    let seq = db.generate_id()?;
    b.insert(
        key_of(Space::Journal, &seq.to_be_bytes()),
        changed.entry(before, stamp),
    );
    b.insert(key_of(Space::Meta, STATE_STAMP_KEY), &stamp.to_be_bytes());
    Ok(stamp)
}
/// The counts of references to run files that the store holds ([`run_files`]).
fn run_file_counts(db: &sled::Db) -> Result<run_files::Counts, StoreError> {
    let entries = db
        .scan_prefix(key_of(Space::Meta, run_files::count_prefix()))
        .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v.to_vec())))
        .collect::<sled::Result<Vec<_>>>()?;
    run_files::counts_of(entries.iter().map(|(k, v)| (&k[..], &v[..])))
}

/// Adds one write or deletion of a [`Batch`] to a sled batch.
fn put_op(b: &mut sled::Batch, space: Space, key: &[u8], value: Option<Vec<u8>>) {
    let k = key_of(space, key);
    match value {
        Some(v) => b.insert(k, v),
        None => b.remove(k),
    }
}

/// The current state stamp and a new one, never equal to it.
fn next_stamp(db: &sled::Db) -> sled::Result<(Option<u64>, u64)> {
    let before = db
        .get(key_of(Space::Meta, STATE_STAMP_KEY))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes);
    let stamp = loop {
        let s: u64 = rand::random();
        if Some(s) != before {
            break s;
        }
    };
    Ok((before, stamp))
}

/// The first wait before reopening a store whose write failed; it doubles up to the maximum.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(30);

pub struct SledStore {
    /// The data_dir, for messages; the database is its `store` folder.
    dir: PathBuf,
    path: PathBuf,
    /// The files beside the keys: `data_dir/store-files`.
    files: FileDir,
    /// The runs too large for sled's tree: `data_dir/store-runs` ([`run_files`]).
    runs: RunFiles,
    /// The open database, `None` from a failed operation until a reopen succeeds.
    slot: RwLock<Slot>,
    /// Why the store refuses writes: `Some` exactly while the database is closed.
    health: Mutex<Health>,
    observer: OnceLock<Arc<dyn WriteObserver>>,
    /// The size last measured, reported while the database is closed.
    size: AtomicU64,
    /// Held by commits that write a new state stamp: each reads the stamp before it, and
    /// the journal's chain needs them one after another.
    stamping: Mutex<()>,
    /// Keys named in the journal by this process's commits.
    journaled: AtomicU64,
}

struct Slot {
    /// The only handle of the database: operations borrow it under the lock.
    db: Option<sled::Db>,
    /// Counts reopens, so that a failure seen on an old database never closes a new one.
    generation: u64,
}

#[derive(Default)]
struct Health {
    failure: Option<(WriteFailure, String)>,
    since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

fn key_of(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(space.prefix());
    k.extend_from_slice(key);
    k
}

/// Opens the database in `path`. sled 0.34 writes a snapshot when it opens a database, and
/// one it could not finish (disk full) stays behind as `snap.*.generating`, which later
/// opens take for the newest snapshot and refuse as corrupted. Such a file is never a
/// snapshot (sled renames a finished one), so it is removed and the open tried again; the
/// open that failed held sled's lock, so no other process is writing it.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let open = || {
        // 64 MiB: with 8 MiB a start from the store peaked about 100 MB lower at 600,000
        // households, but the roster's one key per household ingested 25 % slower (2× at
        // 3,000,000), and the feeds of months about 10 % slower (BENCHMARKS.md).
        sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
    };
    let began = Instant::now();
    loop {
        match open() {
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(path) > 0 => {
                return open();
            }
            // sled releases its file lock a moment after its database is dropped (its
            // flusher thread lets go last), so reopening in the same process, after a
            // failed write, can find the lock still held: wait for it a little. Another
            // process holding it is reported after the wait.
            Err(e) if lock_busy(&e) && began.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// sled's cache, in bytes (see `open_db`).
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// How long opening waits for sled's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Whether sled could not open because another handle holds its file lock.
fn lock_busy(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Removes the snapshot files sled left unfinished in `path`; returns how many.
fn remove_unfinished_snapshots(path: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.")
            && name.ends_with(".generating")
            && std::fs::remove_file(entry.path()).is_ok()
        {
            warn!(file = %entry.path().display(), "removed a snapshot file sled left unfinished");
            removed += 1;
        }
    }
    removed
}

/// Writes the schema version again with its own value and flushes: a write that changes
/// nothing but proves that the store accepts writes.
fn probe(db: &sled::Db) -> sled::Result<()> {
    let key = key_of(Space::Meta, SCHEMA_KEY);
    let value = db
        .get(&key)?
        .map_or_else(|| SCHEMA_VERSION.to_be_bytes().to_vec(), |v| v.to_vec());
    db.insert(key, value)?;
    db.flush()?;
    Ok(())
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("store");
        let db = open_db(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            hint: match WriteFailure::of(&source) {
                WriteFailure::NoSpace => "no space left on its file system: free space",
                WriteFailure::ReadOnly => "its file system is read-only: remount it read-write",
                WriteFailure::Io => "is another guardline running on the same data_dir?",
            },
            source,
        })?;
        check_schema(&db, &path)?;
        let runs = RunFiles::new(dir.join(run_files::RUNS_DIR));
        runs.load(run_file_counts(&db)?)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            files: FileDir::new(dir.join(FILES_DIR)),
            runs,
            slot: RwLock::new(Slot {
                db: Some(db),
                generation: 0,
            }),
            health: Mutex::new(Health::default()),
            observer: OnceLock::new(),
            size: AtomicU64::new(0),
            stamping: Mutex::new(()),
            journaled: AtomicU64::new(0),
        })
    }

    /// Tells `observer` whether the store is writable now and whenever that changes, and
    /// about every failed write (the daemon's metrics). Only the first observer counts.
    pub fn observe(&self, observer: Arc<dyn WriteObserver>) {
        observer.writable_changed(self.write_failure().is_none());
        let _ = self.observer.set(observer);
    }

    /// Runs `op` on the open database, reopening it first if it is closed (and due); a sled
    /// error closes it.
    fn run<T>(&self, op: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T, StoreError> {
        let closed = self
            .slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .db
            .is_none();
        if closed {
            self.writable()?;
        }
        let (result, generation) = {
            let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
            let Some(db) = slot.db.as_ref() else {
                return Err(self.refusal());
            };
            (op(db), slot.generation)
        };
        result.map_err(|e| self.failed(e, generation))
    }

    /// Closes the database after `e` (unless it was reopened since) and records the failure.
    fn failed(&self, e: sled::Error, generation: u64) -> StoreError {
        let failure = WriteFailure::of(&e);
        {
            let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
            if slot.generation != generation {
                // That database was closed, and its failure recorded, already.
                return StoreError::NotWritable {
                    dir: self.dir.clone(),
                    failure,
                    detail: e.to_string(),
                };
            }
            // The last handle: dropping it closes the files and releases sled's lock.
            // After an I/O error sled skips its final flush, so this does not block.
            drop(slot.db.take());
            self.runs.close();
        }
        self.record_failure(failure, e.to_string())
    }

    /// Notes a failure (logging it when the state changes), schedules the next reopen, and
    /// returns the error callers see.
    fn record_failure(&self, failure: WriteFailure, detail: String) -> StoreError {
        let now = Instant::now();
        let (was_writable, changed) = {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            let was_writable = h.failure.is_none();
            let changed = h.failure.as_ref().map(|(f, _)| *f) != Some(failure);
            h.backoff = if was_writable {
                h.since = Some(now);
                REOPEN_FIRST
            } else {
                (h.backoff * 2).min(REOPEN_MAX)
            };
            h.retry_at = Some(now + h.backoff);
            h.failure = Some((failure, detail.clone()));
            (was_writable, changed)
        };
        if let Some(o) = self.observer.get() {
            o.write_failed(failure);
            if was_writable {
                o.writable_changed(false);
            }
        }
        if changed {
            error!(data_dir = %self.dir.display(), reason = failure.reason(), error = %detail,
                   "{failure} in data_dir: ingest paused until the store is writable again; {}",
                   failure.advice());
        }
        StoreError::NotWritable {
            dir: self.dir.clone(),
            failure,
            detail,
        }
    }

    /// The error answered while the store is closed.
    fn refusal(&self) -> StoreError {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let (failure, detail) = h
            .failure
            .clone()
            .unwrap_or((WriteFailure::Io, "the store was closed".into()));
        StoreError::NotWritable {
            dir: self.dir.clone(),
            failure,
            detail,
        }
    }

    /// Fails the store as a write that met `kind` would (tests cannot fill a disk).
    #[cfg(test)]
    fn fail_for_tests(&self, kind: std::io::ErrorKind) -> StoreError {
        let generation = self
            .slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation;
        self.failed(sled::Error::Io(kind.into()), generation)
    }

    /// Makes the next reopen due now instead of after the back-off.
    #[cfg(test)]
    fn reopen_now_for_tests(&self) {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retry_at = Some(Instant::now());
    }

    /// Turns the store back into schema version 1 (months under `H`: id, NUL, month), except
    /// for the first `keep` month keys, as if a migration had stopped after moving them.
    /// Answers how many keys it moved back.
    #[cfg(test)]
    pub(crate) fn downgrade_months_for_tests(&self, keep: usize) -> usize {
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        let db = slot.db.as_ref().unwrap();
        let prefix = Space::HouseholdMonth.prefix();
        let mut moved = 0;
        for r in db.range([prefix]..[prefix + 1]).skip(keep) {
            let (k, v) = r.unwrap();
            let (month, id) = k[1..].split_at(4);
            db.insert([&[MONTHS_V1][..], id, &[0], month].concat(), v)
                .unwrap();
            db.remove(&k).unwrap();
            moved += 1;
        }
        db.insert(key_of(Space::Meta, SCHEMA_KEY), &1u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
        moved
    }

    /// How many keys begin with `prefix` (a space's, or one of an older schema).
    #[cfg(test)]
    pub(crate) fn count_prefix_for_tests(&self, prefix: u8) -> usize {
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        let db = slot.db.as_ref().unwrap();
        db.range([prefix]..[prefix + 1]).count()
    }

    /// Overwrites the schema version (tests use it to simulate a store of another version).
    pub fn write_schema_version_for_tests(&self, version: u32) -> Result<(), StoreError> {
        self.run(|db| {
            db.insert(key_of(Space::Meta, SCHEMA_KEY), &version.to_be_bytes())?;
            db.flush()
        })?;
        Ok(())
    }
}

/// The prefix of schema version 1's month keys: `H`, the household id, a NUL, the month.
const MONTHS_V1: u8 = b'H';
/// Month keys moved per sled batch while migrating (fewer in tests, to take several).
const MIGRATE_BATCH: usize = if cfg!(test) { 1_000 } else { 20_000 };

/// Migrates schema version 1 to 2: every month key `H<id>\0<month>` becomes `M<month><id>`
/// ([`Space::HouseholdMonth`]), with its value unchanged. Each sled batch moves keys
/// atomically (inserts the new, removes the old), so a migration stopped by a crash goes on
/// where it stopped at the next start (the version already says 2, and `H` keys are left).
/// It rewrites every month key: a province takes minutes, so it reports its progress, to
/// the log and to systemd (asking for more start time).
fn migrate_months(db: &sled::Db) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut reported = started;
    let mut moved = 0u64;
    info!("migrating the store from schema version 1 to 2 (months keyed by month first)");
    loop {
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = Instant::now();
            info!(months = moved, "migrating the store");
            let _ = crate::sd_notify::extend_timeout(Duration::from_secs(60));
        }
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for r in db.range([MONTHS_V1]..[MONTHS_V1 + 1]).take(MIGRATE_BATCH) {
            let (k, v) = r?;
            let old = &k[1..];
            // The id, a NUL, and four bytes of month (which may hold zeros themselves).
            let Some(nul) = old.len().checked_sub(5).filter(|&i| old[i] == 0) else {
                return Err(StoreError::Decode {
                    space: Space::HouseholdMonth,
                    key: String::from_utf8_lossy(old).into_owned(),
                    detail: "a month key of schema version 1 without its NUL and month".into(),
                });
            };
            let (id, month) = (&old[..nul], &old[nul + 1..]);
            let mut new = Vec::with_capacity(k.len());
            new.extend_from_slice(month);
            new.extend_from_slice(id);
            batch.insert(key_of(Space::HouseholdMonth, &new), v);
            batch.remove(k);
            n += 1;
        }
        if n == 0 {
            break;
        }
        db.apply_batch(batch)?;
        moved += n as u64;
    }
    db.flush()?;
    info!(
        months = moved,
        seconds = started.elapsed().as_secs_f64(),
        "migrated the store from schema version 1 to 2 (months keyed by month first)"
    );
    Ok(())
}

fn check_schema(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    let key = key_of(Space::Meta, SCHEMA_KEY);
    match db.get(&key)? {
        None => {
            if db.iter().next().is_some() {
                return Err(StoreError::UnknownSchema {
                    path: path.to_path_buf(),
                    detail: "data without a schema version".into(),
                });
            }
            db.insert(key, &SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
            Ok(())
        }
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::UnknownSchema {
                    path: path.to_path_buf(),
                    detail: format!("{} bytes instead of 4", v.len()),
                })?;
            let found = u32::from_be_bytes(bytes);
            if (1..SCHEMA_VERSION).contains(&found) {
                // The new version first, so that an older guardline refuses a store whose
                // migration has begun; the keys left are moved at this and every later open
                // (months keyed by household, by `state::World::load`).
                // With it a new state stamp: versions before 3 did not stamp their commits,
                // and no state snapshot of version 3 knows the months' runs, so none
                // taken before can pass for current.
                // Without a journal entry: no snapshot can be brought across it.
                let stamp: u64 = rand::random();
                let mut b = sled::Batch::default();
                b.insert(key, &SCHEMA_VERSION.to_be_bytes());
                b.insert(key_of(Space::Meta, STATE_STAMP_KEY), &stamp.to_be_bytes());
                db.apply_batch(b)?;
                db.flush()?;
            }
            if (1..=SCHEMA_VERSION).contains(&found) {
                if db.range([MONTHS_V1]..[MONTHS_V1 + 1]).next().is_some() {
                    migrate_months(db)?;
                }
                Ok(())
            } else if found > SCHEMA_VERSION {
                Err(StoreError::NewerSchema {
                    path: path.to_path_buf(),
                    found,
                    expected: SCHEMA_VERSION,
                })
            } else {
                Err(StoreError::UnknownSchema {
                    path: path.to_path_buf(),
                    detail: format!("version {found} is not one this guardline can migrate"),
                })
            }
        }
    }
}

impl SledStore {
    /// Calls `f` with the keys and the values as sled holds them (run references not
    /// resolved) from `from` (included) to `to` (excluded; `None`: the space's end).
    fn visit_range(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut super::Visit<'_>,
    ) -> Result<(), StoreError> {
        let start = key_of(space, from);
        // The space's keys all begin with its prefix byte, so they end before the next byte.
        let end = to.map_or_else(|| vec![space.prefix() + 1], |t| key_of(space, t));
        let mut stopped: Option<StoreError> = None;
        self.run(|db| {
            for r in db.range(start..end) {
                let (k, v) = r?;
                if let Err(e) = f(&k[1..], &v) {
                    stopped = Some(e);
                    break;
                }
            }
            Ok(())
        })?;
        stopped.map_or(Ok(()), Err)
    }

    /// The sled batch of `ops`: runs above [`run_files::SPILL_ABOVE`] bytes appended to a
    /// run file (synced) and referred to, and the counts of references that changed.
    fn sled_batch(&self, db: &sled::Db, ops: &mut Vec<Op>) -> sled::Result<(sled::Batch, Spill)> {
        let (counts, spill) = if ops.iter().any(|(space, ..)| *space == Space::MonthRun) {
            self.runs.spill(ops, |key| {
                db.get(key_of(Space::MonthRun, key))
                    .map(|v| v.map(|v| v.to_vec()))
            })?
        } else {
            Default::default()
        };
        let mut b = sled::Batch::default();
        for (space, key, value) in ops.drain(..) {
            put_op(&mut b, space, &key, value);
        }
        for (file, count) in counts {
            let key = key_of(Space::Meta, &run_files::count_key(file));
            match count {
                Some(n) => b.insert(key, &n.to_be_bytes()),
                None => b.remove(key),
            }
        }
        Ok((b, spill))
    }
}

impl Store for SledStore {
    fn scan(&self, space: Space) -> Result<Entries, StoreError> {
        let entries: Entries = self.run(|db| {
            db.scan_prefix([space.prefix()])
                .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v.to_vec())))
                .collect()
        })?;
        if space != Space::MonthRun {
            return Ok(entries);
        }
        entries
            .into_iter()
            .map(|(k, v)| {
                let v = self.runs.resolve(&k, &v)?.into_owned();
                Ok((k, v))
            })
            .collect()
    }

    fn for_each_in(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut super::Visit<'_>,
    ) -> Result<(), StoreError> {
        self.visit_range(space, from, to, &mut |k, v| match space {
            Space::MonthRun => f(k, &self.runs.resolve(k, v)?),
            _ => f(k, v),
        })
    }

    fn for_each_key_in(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.visit_range(space, from, to, &mut |k, _| f(k))
    }

    fn first_key_from(&self, space: Space, from: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let start = key_of(space, from);
        let end = vec![space.prefix() + 1];
        self.run(|db| {
            Ok(match db.range(start..end).next() {
                Some(r) => Some(r?.0[1..].to_vec()),
                None => None,
            })
        })
    }

    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StoreError> {
        let (start, end) = (vec![space.prefix()], vec![space.prefix() + 1]);
        self.run(|db| {
            Ok(match db.range(start..end).next_back() {
                Some(r) => Some(r?.0[1..].to_vec()),
                None => None,
            })
        })
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.run(|db| db.get(key_of(space, key)))?;
        match value {
            Some(v) if space == Space::MonthRun => {
                Ok(Some(self.runs.resolve(key, &v)?.into_owned()))
            }
            v => Ok(v.map(|v| v.to_vec())),
        }
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut changed: Option<ChangedKeys> = None;
        for (space, key, _) in &batch.ops {
            if space.is_state() {
                changed.get_or_insert_default().push(*space, key);
            }
        }
        let _one_at_a_time = changed
            .is_some()
            .then(|| self.stamping.lock().unwrap_or_else(PoisonError::into_inner));
        let mut ops = batch.ops;
        let spill = self.run(|db| {
            let (mut b, spill) = self.sled_batch(db, &mut ops)?;
            if let Some(changed) = &changed {
                stamp_into(db, &mut b, changed)?;
            }
            db.apply_batch(b)?;
            db.flush()?;
            Ok(spill)
        })?;
        self.runs.committed(spill);
        if let Some(changed) = &changed {
            self.journaled.fetch_add(changed.len(), Ordering::Relaxed);
        }
        Ok(())
    }

    fn state_keys_journaled(&self) -> u64 {
        self.journaled.load(Ordering::Relaxed)
    }

    fn state_stamp(&self) -> Result<Option<u64>, StoreError> {
        let value = self.run(|db| db.get(key_of(Space::Meta, STATE_STAMP_KEY)))?;
        match value {
            None => Ok(None),
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => Ok(Some(u64::from_be_bytes(b))),
                Err(_) => Err(StoreError::Decode {
                    space: Space::Meta,
                    key: String::from_utf8_lossy(STATE_STAMP_KEY).into_owned(),
                    detail: format!("a stamp of {} bytes, expected 8", v.len()),
                }),
            },
        }
    }

    fn renew_state_stamp(&self) -> Result<u64, StoreError> {
        let _one_at_a_time = self.stamping.lock().unwrap_or_else(PoisonError::into_inner);
        self.run(|db| {
            let mut b = sled::Batch::default();
            let stamp = stamp_into(db, &mut b, &ChangedKeys::default())?;
            db.apply_batch(b)?;
            db.flush()?;
            Ok(stamp)
        })
    }

    fn commit_unjournaled(&self, batch: Batch) -> Result<(), StoreError> {
        let _one_at_a_time = self.stamping.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ops = batch.ops;
        let spill = self.run(|db| {
            let (mut b, spill) = self.sled_batch(db, &mut ops)?;
            let (_, stamp) = next_stamp(db)?;
            b.insert(key_of(Space::Meta, STATE_STAMP_KEY), &stamp.to_be_bytes());
            db.apply_batch(b)?;
            db.flush()?;
            Ok(spill)
        })?;
        self.runs.committed(spill);
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.run(|db| db.generate_id())
    }

    fn write_file(&self, name: &str, fill: &mut Fill<'_>) -> Result<u64, StoreError> {
        // Like a commit, refused while the database refuses writes: a file counts only once
        // a commit names it.
        self.writable()?;
        self.files.write(name, fill)
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.files.path(name)
    }

    fn file_names(&self) -> Result<Vec<String>, StoreError> {
        self.files.names()
    }

    fn remove_file(&self, name: &str) -> Result<(), StoreError> {
        self.files.remove(name)
    }

    fn size_on_disk(&self) -> u64 {
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(Ok(n)) = slot.db.as_ref().map(sled::Db::size_on_disk) {
            self.size.store(n, Ordering::Relaxed);
        }
        self.size.load(Ordering::Relaxed) + self.files.size() + self.runs.size()
    }

    /// Closes the database and opens it again: sled keeps up to its cache's capacity (and
    /// somewhat more) of the pages a start read, the runs, alerts and outbox, until the
    /// process ends. Operations wait on the slot's lock meanwhile. A database smaller than
    /// the cache is left open: what sled caches of it is at most about its size. A reopen
    /// that fails leaves the store closed as a failed write does, but due for a reopen at
    /// once, so that the next operation tries again rather than failing.
    fn release_cache(&self) {
        let began = Instant::now();
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = slot.db.as_ref() else { return };
        if db.size_on_disk().unwrap_or(0) < CACHE_CAPACITY {
            return;
        }
        // Nothing should be waiting to be written at a start; a flush makes sure. A
        // database that cannot flush is left as it is, for the next write to find out.
        if let Err(e) = db.flush() {
            warn!(error = %e, "flushing the store before releasing its cache failed: its cache is kept");
            return;
        }
        drop(slot.db.take());
        slot.generation += 1;
        match open_db(&self.path) {
            Ok(db) => {
                slot.db = Some(db);
                drop(slot);
                debug!(
                    seconds = began.elapsed().as_secs_f64(),
                    "store reopened to release its cache"
                );
            }
            Err(e) => {
                // Recorded while the slot is still locked, so that no operation finds the
                // store closed without a failure to answer.
                let e = self.record_failure(WriteFailure::of(&e), e.to_string());
                self.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retry_at = Some(Instant::now());
                drop(slot);
                warn!(error = %e, "reopening the store to release its cache failed: the next operation reopens it");
            }
        }
    }

    fn writable(&self) -> Result<(), StoreError> {
        {
            let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            match (&h.failure, h.retry_at) {
                (None, _) => return Ok(()),
                (Some((failure, detail)), Some(at)) if Instant::now() < at => {
                    return Err(StoreError::NotWritable {
                        dir: self.dir.clone(),
                        failure: *failure,
                        detail: detail.clone(),
                    });
                }
                _ => {}
            }
        }
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.db.is_some() {
            // Reopened by another caller meanwhile.
            return Ok(());
        }
        let db = match open_db(&self.path) {
            Ok(db) => db,
            Err(e) => return Err(self.record_failure(WriteFailure::of(&e), e.to_string())),
        };
        if let Err(e) = probe(&db) {
            drop(db);
            return Err(self.record_failure(WriteFailure::of(&e), e.to_string()));
        }
        // The failed commit may have been applied or not: the run files' counts are read
        // again, and the next run goes to a new file.
        let counts = match run_file_counts(&db) {
            Ok(counts) => counts,
            Err(e) => {
                drop(db);
                return Err(self.record_failure(WriteFailure::Io, e.to_string()));
            }
        };
        if let Err(e) = self.runs.load(counts) {
            warn!(error = %e, "run files named by nothing not removed; the next start removes them");
        }
        slot.db = Some(db);
        slot.generation += 1;
        // Recorded before other callers can see the database (the slot is still locked).
        let (was, since) = {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            let was = h.failure.take().map(|(f, _)| f);
            h.retry_at = None;
            (was, h.since.take())
        };
        drop(slot);
        if let Some(o) = self.observer.get() {
            o.writable_changed(true);
        }
        info!(data_dir = %self.dir.display(), was = was.map_or("", WriteFailure::reason),
              paused_seconds = since.map_or(0.0, |s| s.elapsed().as_secs_f64()),
              "the store is writable again: ingest resumes");
        Ok(())
    }

    fn write_failure(&self) -> Option<WriteFailure> {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failure
            .as_ref()
            .map(|(f, _)| *f)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    #[test]
    fn batch_is_applied_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(Space::Household, b"h1".to_vec(), b"one".to_vec());
            b.put(Space::Cursor, b"h1".to_vec(), b"cursor".to_vec());
            s.commit(b).unwrap();
            let mut b = Batch::default();
            b.delete(Space::Cursor, b"h1".to_vec());
            s.commit(b).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            s.scan(Space::Household).unwrap(),
            vec![(b"h1".to_vec(), b"one".to_vec())]
        );
        assert_eq!(s.get(Space::Cursor, b"h1").unwrap(), None);
        let a = s.next_id().unwrap();
        assert!(s.next_id().unwrap() > a);
    }

    /// A run of `len` bytes, beginning with a run's version as real runs do.
    fn run_value(len: usize, seed: u8) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        v[0] = 2;
        v
    }

    fn put_runs(s: &SledStore, runs: &[(&[u8], &[u8])]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        for (k, v) in runs {
            b.put(Space::MonthRun, k.to_vec(), v.to_vec());
        }
        s.commit(b)
    }

    /// The counts of references per run file, in memory and in the store's meta keys,
    /// which must agree.
    fn counts(s: &SledStore) -> Vec<(u32, u64)> {
        let slot = s.slot.read().unwrap();
        let stored = run_file_counts(slot.db.as_ref().unwrap()).unwrap();
        assert_eq!(stored, s.runs.counts_for_tests());
        stored
    }

    fn blobs(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("store/blobs")).map_or(0, |d| d.count())
    }

    #[test]
    fn large_runs_go_to_run_files_synced_and_read_back_the_same_through_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = run_value(300_000, 1);
        let small = run_value(run_files::SPILL_ABOVE, 2);
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(Space::MonthRun, b"r1".to_vec(), big.clone());
            b.put(Space::MonthRun, b"r2".to_vec(), small.clone());
            b.put(Space::Cursor, b"feed".to_vec(), b"c".to_vec());
            s.commit(b).unwrap();
            assert_eq!(s.runs.numbers(), [0]);
            let raw = s.run(|db| db.get(key_of(Space::MonthRun, b"r1"))).unwrap();
            assert_eq!(raw.map(|v| v.len()), Some(run_files::REFERENCE_LEN));
            let raw = s.run(|db| db.get(key_of(Space::MonthRun, b"r2"))).unwrap();
            assert_eq!(
                raw.as_deref(),
                Some(&small[..]),
                "a small run stays in the tree"
            );
            assert!(s.size_on_disk() >= big.len() as u64);
        }
        // sled wrote no blob (the run would have been one), and a reopen reads the same.
        assert_eq!(blobs(dir.path()), 0);
        let s = SledStore::open(dir.path()).unwrap();
        let expected = vec![
            (b"r1".to_vec(), big.clone()),
            (b"r2".to_vec(), small.clone()),
        ];
        assert_eq!(s.get(Space::MonthRun, b"r1").unwrap(), Some(big.clone()));
        assert_eq!(s.scan(Space::MonthRun).unwrap(), expected);
        let mut visited = Vec::new();
        s.for_each(Space::MonthRun, &mut |k, v| {
            visited.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(visited, expected);
        let mut keys = Vec::new();
        s.for_each_key_in(Space::MonthRun, b"", None, &mut |k| {
            keys.push(k.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(keys, [b"r1".to_vec(), b"r2".to_vec()]);
        assert_eq!(s.get(Space::Cursor, b"feed").unwrap(), Some(b"c".to_vec()));
    }

    #[test]
    fn run_files_nothing_names_are_removed_and_appends_go_past_what_a_failure_left() {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<Vec<u8>> = (0..4).map(|i| run_value(120_000, i)).collect();
        {
            let mut s = SledStore::open(dir.path()).unwrap();
            s.runs.rotate_at_for_tests(100_000);
            for (i, r) in runs[..3].iter().enumerate() {
                put_runs(&s, &[(format!("r{i}").as_bytes(), r)]).unwrap();
            }
            assert_eq!(s.runs.numbers(), [0, 1, 2], "a file per run at this size");
            // Runs deleted (as a base deletes them): their files go, but the one appended to.
            let mut b = Batch::default();
            b.delete(Space::MonthRun, b"r0".to_vec());
            b.delete(Space::MonthRun, b"r1".to_vec());
            s.commit(b).unwrap();
            assert_eq!(s.runs.numbers(), [2]);
            assert_eq!(counts(&s), [(2, 1)]);
            // What a commit cut short by a crash leaves: bytes after the last run of the file
            // appended to, and a file nothing names.
            let mut f = OpenOptions::new()
                .append(true)
                .open(s.runs.path_for_tests(2))
                .unwrap();
            f.write_all(b"half a run").unwrap();
            std::fs::write(s.runs.path_for_tests(9), b"a run never committed").unwrap();
        }
        let mut s = SledStore::open(dir.path()).unwrap();
        s.runs.rotate_at_for_tests(100_000);
        assert_eq!(s.runs.numbers(), [2], "the file nothing named is removed");
        assert_eq!(
            s.get(Space::MonthRun, b"r2").unwrap(),
            Some(runs[2].clone())
        );
        put_runs(&s, &[(b"r3", &runs[3])]).unwrap();
        assert_eq!(
            s.runs.numbers(),
            [2, 10],
            "a new file past every number seen"
        );
        assert_eq!(
            s.get(Space::MonthRun, b"r3").unwrap(),
            Some(runs[3].clone())
        );
        // Two runs in one commit, past the size of a file: each in a file of its own (the
        // one left synced before the next is begun), each read back.
        let two = [run_value(150_000, 6), run_value(150_000, 7)];
        put_runs(&s, &[(b"r4", &two[0]), (b"r5", &two[1])]).unwrap();
        assert_eq!(s.runs.numbers(), [2, 10, 11, 12]);
        assert_eq!(s.get(Space::MonthRun, b"r4").unwrap(), Some(two[0].clone()));
        assert_eq!(s.get(Space::MonthRun, b"r5").unwrap(), Some(two[1].clone()));
        let mut b = Batch::default();
        b.delete(Space::MonthRun, b"r4".to_vec());
        b.delete(Space::MonthRun, b"r5".to_vec());
        s.commit(b).unwrap();
        assert_eq!(
            s.runs.numbers(),
            [2, 10, 12],
            "file 12 is the one appended to"
        );
        // A run replaced and one deleted in one commit: both files are named by nothing then.
        let mut b = Batch::default();
        b.put(Space::MonthRun, b"r3".to_vec(), run_value(10, 5));
        b.delete(Space::MonthRun, b"r2".to_vec());
        s.commit(b).unwrap();
        assert_eq!(
            s.runs.numbers(),
            [12],
            "file 12 is still the one appended to"
        );
        assert!(counts(&s).is_empty());
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s.runs.numbers().is_empty());
        assert_eq!(
            s.get(Space::MonthRun, b"r3").unwrap(),
            Some(run_value(10, 5))
        );
    }

    #[test]
    fn a_damaged_or_missing_run_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        put_runs(&s, &[(b"\x00\x01", &run_value(50_000, 3))]).unwrap();
        let path = s.runs.path_for_tests(0);
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[40_000] ^= 1;
        for (bytes, says) in [
            (Some(flipped), "checksum differs"),
            (Some(good[..49_999].to_vec()), "the file is shorter"),
            (None, "its file is missing"),
        ] {
            match bytes {
                Some(b) => std::fs::write(&path, b).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            let errors = [
                s.get(Space::MonthRun, b"\x00\x01").unwrap_err(),
                s.scan(Space::MonthRun).unwrap_err(),
                s.for_each(Space::MonthRun, &mut |_, _| Ok(())).unwrap_err(),
            ];
            for e in errors {
                let text = e.to_string();
                assert!(
                    text.contains(says)
                        && text.contains("00000000.runs")
                        && text.contains("the run 0001")
                        && text.contains("restore data_dir from a backup"),
                    "{text}"
                );
            }
            // The keys alone are still read (a base deletes runs by their keys).
            s.for_each_key_in(Space::MonthRun, b"", None, &mut |_| Ok(()))
                .unwrap();
        }
    }

    #[test]
    fn a_run_that_cannot_be_written_fails_the_commit_whole_and_the_store_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let seen = Arc::new(Seen::default());
        s.observe(seen.clone());
        // The run files' folder cannot be made: a file is in its place.
        let runs_dir = dir.path().join(run_files::RUNS_DIR);
        std::fs::write(&runs_dir, b"in the way").unwrap();
        let mut b = Batch::default();
        b.put(Space::MonthRun, b"r1".to_vec(), run_value(200_000, 1));
        b.put(Space::Cursor, b"feed".to_vec(), b"c".to_vec());
        let e = s.commit(b).unwrap_err();
        assert!(e.is_not_writable(), "{e}");
        assert_eq!(s.write_failure(), Some(WriteFailure::Io));
        std::fs::remove_file(&runs_dir).unwrap();
        s.reopen_now_for_tests();
        s.writable().unwrap();
        assert_eq!(
            s.get(Space::Cursor, b"feed").unwrap(),
            None,
            "nothing of it applied"
        );
        assert_eq!(s.get(Space::MonthRun, b"r1").unwrap(), None);
        put_runs(&s, &[(b"r1", &run_value(200_000, 1))]).unwrap();
        assert_eq!(
            s.get(Space::MonthRun, b"r1").unwrap(),
            Some(run_value(200_000, 1))
        );
        assert_eq!(
            seen.0.lock().unwrap().as_slice(),
            ["writable=true", "io", "writable=false", "writable=true"]
        );
    }

    #[test]
    fn newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        SledStore::open(dir.path())
            .unwrap()
            .write_schema_version_for_tests(SCHEMA_VERSION + 1)
            .unwrap();
        let err = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("written by a newer guardline"), "{err}");
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl WriteObserver for Seen {
        fn write_failed(&self, failure: WriteFailure) {
            self.0.lock().unwrap().push(failure.reason().to_string());
        }
        fn writable_changed(&self, writable: bool) {
            self.0.lock().unwrap().push(format!("writable={writable}"));
        }
    }

    fn put(s: &SledStore, key: &[u8]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.put(Space::Household, key.to_vec(), b"v".to_vec());
        s.commit(b)
    }

    #[test]
    fn a_failed_write_closes_the_store_until_a_reopen_proves_it_writable() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let seen = Arc::new(Seen::default());
        s.observe(seen.clone());
        put(&s, b"before").unwrap();

        let err = s.fail_for_tests(std::io::ErrorKind::StorageFull);
        assert!(err.is_not_writable());
        assert_eq!(s.write_failure(), Some(WriteFailure::NoSpace));
        // Until the back-off passes, everything is refused at once, reads too, with a
        // message that names the data_dir and what to do.
        for e in [
            put(&s, b"during").unwrap_err(),
            s.get(Space::Household, b"before").unwrap_err(),
            s.writable().unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(e.is_not_writable(), "{text}");
            assert!(
                text.starts_with("no space left on device in data_dir ")
                    && text.contains(&dir.path().display().to_string())
                    && text.contains("ingest paused until the store is writable again")
                    && text.contains("free space"),
                "{text}"
            );
        }
        // A read-only file system now: the reason changes.
        s.reopen_now_for_tests();
        let generation = s.slot.read().unwrap().generation;
        let e = s.failed(
            sled::Error::Io(std::io::ErrorKind::ReadOnlyFilesystem.into()),
            generation,
        );
        assert!(e.to_string().starts_with("read-only file system"), "{e}");
        assert_eq!(s.write_failure(), Some(WriteFailure::ReadOnly));

        // Due again: the database is reopened in the same process (so the old handle
        // released sled's file lock) and what was committed before is there.
        s.reopen_now_for_tests();
        s.writable().unwrap();
        assert_eq!(s.write_failure(), None);
        assert_eq!(
            s.get(Space::Household, b"before").unwrap(),
            Some(b"v".to_vec())
        );
        put(&s, b"after").unwrap();
        assert_eq!(s.scan(Space::Household).unwrap().len(), 2);
        assert!(s.size_on_disk() > 0);
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "writable=true",
                "no_space",
                "writable=false",
                "read_only",
                "writable=true"
            ]
        );
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.scan(Space::Household).unwrap().len(), 2);
    }

    #[test]
    fn releasing_the_cache_reopens_a_store_larger_than_it_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        put(&s, b"small").unwrap();
        s.release_cache();
        assert_eq!(
            s.slot.read().unwrap().generation,
            0,
            "a store smaller than the cache stays open"
        );
        // Past the cache's capacity: 80 values of 1 MiB, distinct so that nothing shrinks
        // them.
        for i in 0..80u32 {
            let mut b = Batch::default();
            let value: Vec<u8> = (0..1 << 20)
                .map(|j: u32| (j ^ i).to_le_bytes()[0])
                .collect();
            b.put(Space::Household, i.to_be_bytes().to_vec(), value);
            s.commit(b).unwrap();
        }
        assert!(s.size_on_disk() > CACHE_CAPACITY, "{}", s.size_on_disk());
        let seen = Arc::new(Seen::default());
        s.observe(seen.clone());
        s.release_cache();
        assert_eq!(s.slot.read().unwrap().generation, 1, "reopened");
        assert_eq!(s.write_failure(), None);
        assert_eq!(*seen.0.lock().unwrap(), ["writable=true"]);
        assert_eq!(
            s.get(Space::Household, b"small").unwrap(),
            Some(b"v".to_vec())
        );
        let v = s
            .get(Space::Household, &79u32.to_be_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(v.len(), 1 << 20);
        assert_eq!(v[1], (1u32 ^ 79).to_le_bytes()[0]);
        put(&s, b"after").unwrap();
        assert_eq!(s.scan(Space::Household).unwrap().len(), 82);
        // A closed store is left closed, for `writable` to reopen when due.
        s.fail_for_tests(std::io::ErrorKind::StorageFull);
        s.release_cache();
        assert!(s.slot.read().unwrap().db.is_none());
    }

    #[test]
    fn a_failure_seen_on_a_database_closed_since_does_not_close_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.fail_for_tests(std::io::ErrorKind::StorageFull);
        s.reopen_now_for_tests();
        s.writable().unwrap();
        // A late failure of generation 0 leaves generation 1 open.
        s.failed(sled::Error::Io(std::io::ErrorKind::Other.into()), 0);
        assert!(s.slot.read().unwrap().db.is_some());
        assert_eq!(s.write_failure(), None);
        put(&s, b"k").unwrap();
    }

    #[test]
    fn a_snapshot_left_unfinished_does_not_stop_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        put(&SledStore::open(dir.path()).unwrap(), b"kept").unwrap();
        // What a snapshot interrupted by a full disk leaves behind.
        let unfinished = dir.path().join("store/snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"").unwrap();
        // sled alone refuses it (once the closed store's lock is released).
        let raw = loop {
            match sled::Config::new().path(dir.path().join("store")).open() {
                Err(e) if lock_busy(&e) => std::thread::sleep(Duration::from_millis(25)),
                other => break other,
            }
        };
        assert!(matches!(raw, Err(sled::Error::Corruption { .. })));
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            s.get(Space::Household, b"kept").unwrap(),
            Some(b"v".to_vec())
        );
        assert!(!unfinished.exists());
    }

    #[test]
    fn io_errors_are_classified() {
        use std::io::Error;
        for (errno, failure) in [
            (28, WriteFailure::NoSpace),
            (122, WriteFailure::NoSpace),
            (30, WriteFailure::ReadOnly),
            (5, WriteFailure::Io),
        ] {
            assert_eq!(
                WriteFailure::of(&sled::Error::Io(Error::from_raw_os_error(errno))),
                failure,
                "errno {errno}"
            );
        }
        // sled repeats a remembered error as a custom error of the same kind.
        let repeated = Error::new(std::io::ErrorKind::StorageFull, "Os { code: 28 }");
        assert_eq!(WriteFailure::of_io(&repeated), WriteFailure::NoSpace);
    }

    #[test]
    fn unknown_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SledStore::open(dir.path())
            .unwrap()
            .write_schema_version_for_tests(0)
            .unwrap();
        let err = SledStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("can migrate") && err.contains("damaged"),
            "{err}"
        );
    }
}
