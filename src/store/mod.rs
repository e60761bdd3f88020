//! Durable storage behind a narrow trait, so that the backend can be replaced.
//!
//! The store knows key spaces and bytes; the modules that own a value (state, alerts, notify)
//! encode it with [`codec`]. Invariants:
//! - [`Store::commit`] applies a batch atomically and returns only once it is durable, so a
//!   caller that writes a feed cursor after committing the state it covers never moves the
//!   cursor ahead of the state.
//! - [`open`] checks the schema version and refuses a store written by a newer or unknown
//!   version of guardline instead of misreading it.

pub mod codec;
mod sled_backend;

use std::path::{Path, PathBuf};

pub use sled_backend::SledStore;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the store at {path}: {source} (is another guardline running on the same data_dir?)"
    )]
    Open { path: PathBuf, source: sled::Error },
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
    #[error("stored value {space:?}/{key} is damaged or of an unknown version: {detail}")]
    Decode {
        space: Space,
        key: String,
        detail: String,
    },
}

/// The key spaces of the store. Keys of different spaces never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Meta,
    Household,
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
}

impl Space {
    pub(crate) fn prefix(self) -> u8 {
        match self {
            Self::Meta => b'm',
            Self::Household => b'h',
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
        }
    }
}

/// Writes and deletes applied together by [`Store::commit`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
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

/// Keys and values of a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What guardline needs from a storage backend.
pub trait Store: Send + Sync {
    /// Every key and value of a space, in key order.
    fn scan(&self, space: Space) -> Result<Entries, StoreError>;
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies the batch atomically; returns once it is durable.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    /// A new id, unique and increasing over the store's lifetime (also across restarts).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> u64;
}

/// Opens (or creates) the sled store in `dir` and checks its schema version.
pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
    SledStore::open(dir)
}
