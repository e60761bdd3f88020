//! Durable storage behind a narrow trait, so that the backend can be replaced.
//!
//! The store knows key spaces and bytes; the modules that own a value (state, alerts, notify)
//! encode it with [`codec`]. Invariants:
//! - [`Store::commit`] applies a batch atomically and returns only once it is durable, so a
//!   caller that writes a feed cursor after committing the state it covers never moves the
//!   cursor ahead of the state.
//! - [`open`] checks the schema version and refuses a store written by a newer or unknown
//!   version of guardline instead of misreading it; it migrates one of an older version it
//!   knows before anything reads it.
//! - Every commit that writes a state space ([`Space::is_state`]) writes a new
//!   [`Store::state_stamp`] and a [`journal`] entry naming the keys it changed in the same
//!   batch, so a copy of the working set saved with the stamp (the state snapshot) can tell
//!   whether it is still current, and which keys to read again if it is not.
//! - A store whose write failed (disk full, read-only file system, I/O error) answers every
//!   operation with [`StoreError::NotWritable`] until [`Store::writable`] finds it writable
//!   again. Like any failed commit, the failed write may or may not have been applied (as a
//!   whole, never in part); callers treat it as not applied and write it again.

pub mod codec;
pub mod files;
pub mod journal;
pub mod run_files;
mod sled_backend;

use std::path::{Path, PathBuf};

pub use sled_backend::SledStore;

/// The schema version this build writes and understands. [`open`] migrates a store of an
/// older version it knows (see `sled_backend::migrate_months`).
///
/// - 1: months of a household under `H`, the household id, a NUL, the month.
/// - 2: months under `M`, the month, then the household id ([`Space::HouseholdMonth`]).
/// - 3: every commit that writes state writes a new [`Store::state_stamp`]. Migrating
///   writes one; an older guardline, which would write state without stamping it and leave
///   a state snapshot looking current, refuses the store.
/// - 4: the months in runs and a base ([`Space::MonthRun`]; the base in [`Space::MonthBase`],
///   later in a file beside the keys, which the base's meta key says). Opening
///   a store of an older version writes a new stamp without a journal entry, and
///   `state::World::load` moves the months left under [`Space::HouseholdMonth`].
pub const SCHEMA_VERSION: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source} ({hint})")]
    Open {
        path: PathBuf,
        source: sled::Error,
        hint: &'static str,
    },
    #[error(
        "the store at {path} has schema version {found}, but this guardline understands only version {expected}; it was written by a newer guardline: run that version, or restore a backup"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "the store at {path} has an unreadable schema version key ({detail}); it was not written by guardline or is damaged"
    )]
    UnknownSchema { path: PathBuf, detail: String },
    #[error("store I/O failed: {0} (check disk space and permissions of the data directory)")]
    Io(#[from] sled::Error),
    #[error(
        "{failure} in data_dir {dir} ({detail}): ingest paused until the store is writable again; {advice}",
        advice = .failure.advice()
    )]
    NotWritable {
        dir: PathBuf,
        failure: WriteFailure,
        detail: String,
    },
    #[error(
        "store file {path}: {source} (check the disk, its free space and the permissions of the data directory)"
    )]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store file {path} is damaged: {detail}; restore data_dir from a backup")]
    FileDamaged { path: PathBuf, detail: String },
    #[error("stored value {space:?}/{key} is damaged or of an unknown version: {detail}")]
    Decode {
        space: Space,
        key: String,
        detail: String,
    },
    #[error("stored value {space:?}/{key} is missing: {detail}")]
    Missing {
        space: Space,
        key: String,
        detail: String,
    },
    #[error(
        "no room in the working set for {space:?}/{key}: {detail} (give guardline more memory)"
    )]
    WorkingSetFull {
        space: Space,
        key: String,
        detail: String,
    },
}

impl StoreError {
    /// Whether the store refuses writes (and pauses ingest) rather than failed otherwise.
    pub fn is_not_writable(&self) -> bool {
        matches!(self, Self::NotWritable { .. })
    }
}

/// Why the store refuses writes; `reason` is the label of
/// `guardline_store_write_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteFailure {
    /// The file system is full (or the quota is exhausted).
    NoSpace,
    /// The file system is mounted read-only (by an administrator, or by the kernel after
    /// errors).
    ReadOnly,
    /// Any other error.
    Io,
}

impl WriteFailure {
    pub const ALL: [WriteFailure; 3] = [Self::NoSpace, Self::ReadOnly, Self::Io];

    /// Classifies a failed operation of the sled backend.
    pub fn of(e: &sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Self::of_io(io),
            _ => Self::Io,
        }
    }

    /// Classifies an I/O error; sled keeps the kind when it repeats a remembered error.
    pub fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Self::NoSpace,
            ErrorKind::ReadOnlyFilesystem => Self::ReadOnly,
            _ => Self::Io,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::NoSpace => "no_space",
            Self::ReadOnly => "read_only",
            Self::Io => "io",
        }
    }

    /// What an operator does about it.
    pub fn advice(self) -> &'static str {
        match self {
            Self::NoSpace => "free space on its file system; guardline resumes by itself",
            Self::ReadOnly => {
                "remount it read-write (and check the kernel log for why it turned read-only); guardline resumes by itself"
            }
            Self::Io => "check the disk and the kernel log; guardline retries by itself",
        }
    }
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoSpace => "no space left on device",
            Self::ReadOnly => "read-only file system",
            Self::Io => "I/O error writing the store",
        })
    }
}

/// Told when the store's writes fail and when it turns writable or not (the daemon's
/// metrics).
pub trait WriteObserver: Send + Sync {
    /// A write, or an attempt to reopen the store after one, failed.
    fn write_failed(&self, failure: WriteFailure);
    /// The store accepts writes again (`true`) or refuses them (`false`).
    fn writable_changed(&self, writable: bool);
}

/// The key spaces of the store. Keys of different spaces never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    Meta,
    /// A household's roster part, one key per household, as stores kept them before the
    /// months' base held them (see `state::month_log`): read while the base is of an older
    /// format, deleted by the next base. Nothing writes them now.
    Household,
    /// Schema 3: one month of one household, the month (big-endian u32), then the household
    /// id. Only read, to move the months into a base, then deleted.
    HouseholdMonth,
    /// The households' roster parts and months one commit changed, as one key (a *run*):
    /// its sequence number, then the bytes of the runs since the base, this one included
    /// (both big-endian u64). sled's cost is per key (about 6 µs to insert one), so a page of
    /// 10,000 records writes one key instead of 7,000 (10,000 for a page of the roster).
    MonthRun,
    /// Every household's months as of a run (the *base*) as guardline kept it in keys before
    /// the base was a file: the base's generation, then the key's index (both big-endian
    /// u32). Read while the store names such a base; the next base, a file, deletes them.
    MonthBase,
    Village,
    County,
    Cursor,
    Alert,
    Outbox,
    Quarantine,
    Waiting,
    Silence,
    Audit,
    NotifyLog,
    /// Which state keys each stamped commit changed ([`journal`]), so that a state snapshot
    /// taken before them can be brought up to the store.
    Journal,
}

impl Space {
    /// The spaces of the working set (`state::World`): households, their months, villages
    /// and counties. Commits that write them change the [`Store::state_stamp`].
    pub fn is_state(self) -> bool {
        matches!(
            self,
            Self::Household
                | Self::HouseholdMonth
                | Self::MonthRun
                | Self::MonthBase
                | Self::Village
                | Self::County
        )
    }

    pub(crate) fn prefix(self) -> u8 {
        match self {
            Self::Meta => b'm',
            Self::Household => b'h',
            Self::HouseholdMonth => b'M',
            Self::MonthRun => b'R',
            Self::MonthBase => b'B',
            Self::Village => b'v',
            Self::County => b'c',
            Self::Cursor => b'f',
            Self::Alert => b'a',
            Self::Outbox => b'o',
            Self::Quarantine => b'q',
            Self::Waiting => b'w',
            Self::Silence => b's',
            Self::Audit => b'u',
            Self::NotifyLog => b'n',
            Self::Journal => b'j',
        }
    }

    pub(crate) fn of_prefix(prefix: u8) -> Option<Self> {
        [
            Self::Meta,
            Self::Household,
            Self::HouseholdMonth,
            Self::MonthRun,
            Self::MonthBase,
            Self::Village,
            Self::County,
            Self::Cursor,
            Self::Alert,
            Self::Outbox,
            Self::Quarantine,
            Self::Waiting,
            Self::Silence,
            Self::Audit,
            Self::NotifyLog,
            Self::Journal,
        ]
        .into_iter()
        .find(|s| s.prefix() == prefix)
    }
}

/// One write (`Some` value) or deletion (`None`) of a [`Batch`].
pub type Op = (Space, Vec<u8>, Option<Vec<u8>>);

/// Writes and deletes applied together by [`Store::commit`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push((space, key.into(), Some(value)));
    }
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push((space, key.into(), None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// What [`Store::for_each`] calls with each key and value.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// State keys with their spaces ([`Store::state_changes_since`]).
pub type StateKeys = Vec<(Space, Vec<u8>)>;

/// Keys and values of a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What guardline needs from a storage backend.
pub trait Store: Send + Sync {
    /// Every key and value of a space, in key order.
    fn scan(&self, space: Space) -> Result<Entries, StoreError>;
    /// Calls `f` with every key and value of a space, in key order, without collecting them
    /// (a province's months are millions of keys). Stops at the first error of `f`.
    fn for_each(&self, space: Space, f: &mut Visit<'_>) -> Result<(), StoreError> {
        self.for_each_in(space, &[], None, f)
    }
    /// [`Store::for_each`] over the keys from `from` (included) to `to` (excluded; `None`:
    /// to the end of the space). Ranges can be read by several threads at once.
    fn for_each_in(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        for (k, v) in self.scan(space)? {
            if k.as_slice() >= from && to.is_none_or(|t| k.as_slice() < t) {
                f(&k, &v)?;
            }
        }
        Ok(())
    }
    /// The keys of [`Store::for_each_in`]'s range, without their values (a backend that
    /// keeps large values apart need not read them).
    fn for_each_key_in(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_in(space, from, to, &mut |k, _| f(k))
    }
    /// The first key of a space from `from` (included) on, if there is one.
    fn first_key_from(&self, space: Space, from: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .scan(space)?
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k.as_slice() >= from))
    }
    /// The last key of a space, if it has any.
    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.scan(space)?.pop().map(|(k, _)| k))
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies the batch atomically; returns once it is durable.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    /// The stamp of the state spaces ([`Space::is_state`]). Every commit that writes one
    /// of them also writes a new stamp, never used before, so a copy of the state taken
    /// when the stamp was `s` is the state exactly while the stamp is still `s`. `None`
    /// until the first such commit.
    fn state_stamp(&self) -> Result<Option<u64>, StoreError>;
    /// Writes a new state stamp without changing the state (a store written before stamps
    /// existed has none) and returns it.
    fn renew_state_stamp(&self) -> Result<u64, StoreError>;
    /// Applies a batch of state atomically and durably like [`Store::commit`], under a new
    /// stamp but without a journal entry, so that no state snapshot taken before can be
    /// brought across it: for a migration that deletes millions of keys, which would only
    /// bloat the journal.
    fn commit_unjournaled(&self, batch: Batch) -> Result<(), StoreError>;
    /// The state keys changed since the state stamp was `since`, each once, read from the
    /// [`journal`], unless it cannot tell (its chain does not lead from `since` to the
    /// current stamp) or they are more than `limit`.
    fn state_changes_since(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<journal::StateChanges, StoreError> {
        let Some(current) = self.state_stamp()? else {
            return Ok(journal::StateChanges::Unknown);
        };
        let mut chain = journal::Chain::from(since, limit);
        let mut going = true;
        self.for_each(Space::Journal, &mut |k, v| {
            if going {
                going = chain.push(k, v)?;
            }
            Ok(())
        })?;
        Ok(chain.finish(current))
    }
    /// How many keys this process's commits named in the journal so far.
    fn state_keys_journaled(&self) -> u64 {
        0
    }
    /// Forgets the journal's entries up to the one that wrote stamp `through` (a state
    /// snapshot with that stamp now covers them); returns how many. When no entry wrote it
    /// (a stamp written by a migration), all entries go if `through` is the current stamp,
    /// as all are older; otherwise none. Entries are only looked at, so a damaged one is
    /// forgotten like any other.
    fn forget_state_changes_through(&self, through: u64) -> Result<usize, StoreError> {
        let mut doomed = Vec::new();
        let mut found = false;
        self.for_each(Space::Journal, &mut |k, v| {
            if !found {
                doomed.push(k.to_vec());
                found = journal::Entry::stamps(k, v).is_ok_and(|(_, stamp)| stamp == through);
            }
            Ok(())
        })?;
        if !found && self.state_stamp()? != Some(through) {
            return Ok(0);
        }
        for part in doomed.chunks(4096) {
            let mut batch = Batch::default();
            for k in part {
                batch.delete(Space::Journal, k.clone());
            }
            self.commit(batch)?;
        }
        Ok(doomed.len())
    }
    /// Writes the file `name` beside the store's keys ([`files`]), whole or not at all, with
    /// the bytes `fill` writes; returns their number. The file counts only once a commit
    /// names it.
    fn write_file(&self, name: &str, fill: &mut files::Fill<'_>) -> Result<u64, StoreError>;
    /// The path of the file `name` beside the store's keys, to read it.
    fn file_path(&self, name: &str) -> PathBuf;
    /// The names of the files beside the store's keys, sorted.
    fn file_names(&self) -> Result<Vec<String>, StoreError>;
    /// Removes the file `name` beside the store's keys, if it is there.
    fn remove_file(&self, name: &str) -> Result<(), StoreError>;
    /// A new id, unique and increasing over the store's lifetime (also across restarts).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Bytes the store occupies on disk, its files included.
    fn size_on_disk(&self) -> u64;
    /// Lets go of what the store keeps in memory of what was read, where it can: called
    /// after a start's bulk reads, whose pages a cache would otherwise hold to the end.
    fn release_cache(&self) {}
    /// `Ok` when the store accepts writes. After a failed write, the store is reopened and
    /// probed, at most once per back-off interval, until it accepts writes again; until
    /// then the failure is answered.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Why the store refuses writes, if it does, as of its last write or reopen attempt
    /// (no I/O: for readiness).
    fn write_failure(&self) -> Option<WriteFailure> {
        None
    }
}

/// Deletes the keys of `space` that sort before `before`, in batches of at most `chunk`
/// keys; returns how many. For logs keyed by time first (the notification log, the audit
/// log), `before` is a time's big-endian bytes: entries older than it go.
pub fn prune_before(
    store: &dyn Store,
    space: Space,
    before: &[u8],
    chunk: usize,
) -> Result<usize, StoreError> {
    let mut keys = Vec::new();
    store.for_each_in(space, &[], Some(before), &mut |k, _| {
        keys.push(k.to_vec());
        Ok(())
    })?;
    for part in keys.chunks(chunk.max(1)) {
        let mut batch = Batch::default();
        for k in part {
            batch.delete(space, k.clone());
        }
        store.commit(batch)?;
    }
    Ok(keys.len())
}

/// Opens (or creates) the sled store in `dir` and checks its schema version.
pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
    SledStore::open(dir)
}
