//! The runs of months ([`Space::MonthRun`]) larger than [`SPILL_ABOVE`] bytes, kept out of
//! sled's tree in append-only files of their own (`data_dir/store-runs/`), for
//! [`super::SledStore`].
//!
//! Why: sled 0.34 writes any node above 128 KiB (a quarter of its 512 KiB segment) to a
//! blob file of its own and never syncs that file, only its log. A machine that lost power
//! right after a commit could come back with a log naming a blob the disk never got, and
//! sled would report the store corrupted. A bulk page's run (0.3 to 0.5 MB) is such a node,
//! and so is a leaf holding a few of them; sled also rewrites a leaf whole after ten changes
//! to it, runs and all. Here a run's bytes are written once, appended to a file that is
//! synced before the commit that names them, and the tree holds a reference of
//! [`REFERENCE_LEN`] bytes instead: a leaf of runs (sled splits a leaf above 16 keys) stays
//! below 128 KiB, so no run ever reaches a blob file.
//!
//! Invariants:
//! - A value under [`Space::MonthRun`] that begins with the marker byte 0xFF and is
//!   [`REFERENCE_LEN`] bytes long is a reference: a file's number, an offset, a length and
//!   the CRC-32 of those bytes. No run begins with the marker: a run begins with its
//!   format's version (1 or 2).
//! - The bytes a reference names were synced, and for a new file its folder too, before
//!   the commit that wrote the reference.
//! - The meta key `run-file/N` (N big-endian) holds how many references name file N; the
//!   commit that changes the number writes it, and deletes it at 0. A file without such a
//!   key is named by nothing: bytes a commit appended before it failed, or before a crash.
//!   Such files are removed when the store opens, and a file is removed once a commit
//!   brings its count to 0, unless it is the one being appended to.
//! - Bytes past the last reference of a file (a failed commit's) are never named: an append
//!   goes after them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use tracing::{debug, warn};

use super::{Op, Space, StoreError};

/// The folder of the run files in the data_dir.
pub const RUNS_DIR: &str = "store-runs";
/// A run longer than this goes to a run file; shorter ones stay in sled's tree, where 16
/// of them (a leaf) take at most 64 KiB.
pub const SPILL_ABOVE: usize = 4096;
/// The first byte of a reference.
const MARKER: u8 = 0xFF;
/// Marker, file number (u32), offset (u64), length (u32), CRC-32 (u32), big-endian.
pub const REFERENCE_LEN: usize = 1 + 4 + 8 + 4 + 4;
/// The meta key of a file's count of references: this, then its number (big-endian).
const COUNT_KEY: &[u8] = b"run-file/";
/// A file is appended to until it holds this many bytes; then the next one is begun.
const ROTATE_AT: u64 = 64 << 20;

/// Where a run's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reference {
    file: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

impl Reference {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REFERENCE_LEN);
        v.push(MARKER);
        v.extend_from_slice(&self.file.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v
    }

    /// The reference `value` is, if it is one.
    fn parse(value: &[u8]) -> Option<Self> {
        let v: &[u8; REFERENCE_LEN] = value.try_into().ok()?;
        if v[0] != MARKER {
            return None;
        }
        let (file, rest) = v[1..].split_first_chunk::<4>()?;
        let (offset, rest) = rest.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let crc: &[u8; 4] = rest.try_into().ok()?;
        Some(Self {
            file: u32::from_be_bytes(*file),
            offset: u64::from_be_bytes(*offset),
            len: u32::from_be_bytes(*len),
            crc: u32::from_be_bytes(*crc),
        })
    }
}

/// The meta key (without the space's prefix) of file `n`'s count of references.
pub fn count_key(n: u32) -> Vec<u8> {
    let mut k = COUNT_KEY.to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn file_name(n: u32) -> String {
    format!("{n:08}.runs")
}

/// The number of a run file's name, if it is one.
fn number_of(name: &str) -> Option<u32> {
    name.strip_suffix(".runs")
        .filter(|n| n.len() == 8)?
        .parse()
        .ok()
}

/// The run files of one store.
pub struct RunFiles {
    dir: PathBuf,
    rotate_at: u64,
    state: Mutex<FilesState>,
}

#[derive(Default)]
struct FilesState {
    /// References per file, as the meta keys hold them.
    counts: BTreeMap<u32, u64>,
    /// The file appended to, once a commit has appended.
    current: Option<Appending>,
    /// The number of the next file begun: past every file seen and counted.
    next: u32,
}

struct Appending {
    number: u32,
    file: File,
    len: u64,
}

/// What a commit changes of the files' counts: applied once sled has the commit.
#[derive(Debug, Default)]
pub struct Spill {
    deltas: BTreeMap<u32, i64>,
}

/// The counts the meta keys hold: `(file, count)`.
pub type Counts = Vec<(u32, u64)>;

/// The counts a commit writes: `(file, count)`, `None` where the key is deleted (at 0).
pub type NewCounts = Vec<(u32, Option<u64>)>;

impl RunFiles {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            rotate_at: ROTATE_AT,
            state: Mutex::new(FilesState::default()),
        }
    }

    /// Begins a new file once one holds `bytes` (tests).
    #[cfg(test)]
    pub fn rotate_at_for_tests(&mut self, bytes: u64) {
        self.rotate_at = bytes;
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.join(file_name(n))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FilesState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the counts the store holds (at an open, and at a reopen after a failure, when
    /// a commit may have been applied or not) and removes the files nothing names. The next
    /// append begins a new file.
    pub fn load(&self, counts: Counts) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.counts = counts.into_iter().filter(|&(_, c)| c > 0).collect();
        state.current = None;
        let mut highest = state.counts.keys().next_back().copied();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                state.next = highest.map_or(0, |h| h.saturating_add(1));
                return Ok(());
            }
            Err(source) => {
                return Err(StoreError::File {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(n) = name.to_str().and_then(number_of) else {
                continue;
            };
            highest = highest.max(Some(n));
            if !state.counts.contains_key(&n) {
                let path = self.path(n);
                match std::fs::remove_file(&path) {
                    Ok(()) => debug!(file = %path.display(), "run file named by nothing removed"),
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "run file named by nothing not removed; the next start tries again")
                    }
                }
            }
        }
        state.next = highest.map_or(0, |h| h.saturating_add(1));
        Ok(())
    }

    /// Closes the file appended to (the store closed after a failure: no file of the
    /// data_dir stays open for writing, so that it can be remounted); the next append
    /// begins a new file.
    pub fn close(&self) {
        self.lock().current = None;
    }

    /// Moves the runs of `ops` above [`SPILL_ABOVE`] bytes into the file appended to,
    /// synced, and puts references in their place; notes the references each write or
    /// deletion of a run replaces (`old` gives a key's value before the commit). Returns
    /// the counts to write with the commit (`None`: delete the key) and the change to apply
    /// once it is committed. On an error nothing names what was appended.
    pub fn spill<E: From<std::io::Error>>(
        &self,
        ops: &mut [Op],
        mut old: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<(NewCounts, Spill), E> {
        let mut state = self.lock();
        let mut spill = Spill::default();
        let mut appended = false;
        let mut new_file = false;
        let result = (|| -> Result<(), E> {
            for (space, key, value) in ops.iter_mut() {
                if *space != Space::MonthRun {
                    continue;
                }
                if let Some(r) = old(key)?.as_deref().and_then(Reference::parse) {
                    *spill.deltas.entry(r.file).or_default() -= 1;
                }
                let Some(v) = value.as_mut().filter(|v| v.len() > SPILL_ABOVE) else {
                    continue;
                };
                let len = u32::try_from(v.len()).map_err(std::io::Error::other)?;
                let current = self.appending(&mut state, &mut new_file)?;
                let offset = current.len;
                current.file.write_all(v)?;
                current.len += u64::from(len);
                let r = Reference {
                    file: current.number,
                    offset,
                    len,
                    crc: crc32fast::hash(v),
                };
                *v = r.encode();
                *spill.deltas.entry(r.file).or_default() += 1;
                appended = true;
            }
            if let Some(current) = state.current.as_ref().filter(|_| appended) {
                current.file.sync_data()?;
                if new_file {
                    File::open(&self.dir)?.sync_all()?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            // What was appended is named by nothing; the next append begins a new file
            // rather than trust this one's length.
            state.current = None;
            return Err(e);
        }
        let counts = spill
            .deltas
            .iter()
            .filter(|&(_, &d)| d != 0)
            .map(|(&f, &d)| {
                let now = state.counts.get(&f).copied().unwrap_or(0);
                let new = now.saturating_add_signed(d);
                (f, (new > 0).then_some(new))
            })
            .collect();
        Ok((counts, spill))
    }

    /// The file to append to, begun (and its folder made) if there is none or it is full
    /// (then synced first).
    fn appending<'s>(
        &self,
        state: &'s mut FilesState,
        new_file: &mut bool,
    ) -> std::io::Result<&'s mut Appending> {
        if state
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.rotate_at)
        {
            if !self.dir.is_dir() {
                std::fs::create_dir_all(&self.dir)?;
                if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    File::open(parent)?.sync_all()?;
                }
            }
            // A batch may have appended to the full file already: its bytes are synced
            // before it is left, as the last file's are at the batch's end.
            if let Some(full) = &state.current {
                full.file.sync_data()?;
            }
            let number = state.next;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.path(number))?;
            state.next = number.saturating_add(1);
            state.current = Some(Appending {
                number,
                file,
                len: 0,
            });
            *new_file = true;
        }
        // Invariant: set just above when it was none.
        state
            .current
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no run file to append to"))
    }

    /// The commit that `spill` was made for is applied: counts change, and files no
    /// reference names any more (except the one appended to) are removed.
    pub fn committed(&self, spill: Spill) {
        let mut state = self.lock();
        let current = state.current.as_ref().map(|c| c.number);
        for (file, delta) in spill.deltas {
            let count = state.counts.entry(file).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                state.counts.remove(&file);
                if Some(file) != current {
                    let path = self.path(file);
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(file = %path.display(), error = %e, "run file named by nothing not removed; the next start removes it");
                    }
                }
            }
        }
    }

    /// The run `value` is: itself, or the bytes it refers to, read and checked.
    pub fn resolve<'v>(&self, key: &[u8], value: &'v [u8]) -> Result<Cow<'v, [u8]>, StoreError> {
        let Some(r) = Reference::parse(value) else {
            return Ok(Cow::Borrowed(value));
        };
        let path = self.path(r.file);
        let damaged = |detail: String| StoreError::FileDamaged {
            path: path.clone(),
            detail: format!("the run {} ({detail})", hex(key)),
        };
        let file = File::open(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => damaged("its file is missing".into()),
            _ => StoreError::File {
                path: path.clone(),
                source,
            },
        })?;
        let mut bytes = vec![0; r.len as usize];
        file.read_exact_at(&mut bytes, r.offset)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof => damaged(format!(
                    "{} bytes at {} named, the file is shorter",
                    r.len, r.offset
                )),
                _ => StoreError::File {
                    path: path.clone(),
                    source,
                },
            })?;
        if crc32fast::hash(&bytes) != r.crc {
            return Err(damaged(format!(
                "{} bytes at {}: their checksum differs from the one recorded",
                r.len, r.offset
            )));
        }
        Ok(Cow::Owned(bytes))
    }

    /// The bytes of the run files.
    pub fn size(&self) -> u64 {
        super::files::folder_size(&self.dir)
    }

    /// The numbers of the run files in the folder, in order (tests).
    #[cfg(test)]
    pub fn numbers(&self) -> Vec<u32> {
        let mut n: Vec<u32> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(number_of))
                    .collect()
            })
            .unwrap_or_default();
        n.sort_unstable();
        n
    }

    /// The counts held in memory, by file (tests).
    #[cfg(test)]
    pub fn counts_for_tests(&self) -> Vec<(u32, u64)> {
        self.lock().counts.iter().map(|(&f, &c)| (f, c)).collect()
    }

    /// The path of run file `n` (tests).
    #[cfg(test)]
    pub fn path_for_tests(&self, n: u32) -> PathBuf {
        self.path(n)
    }
}

/// A key as hex, for messages (run keys are binary).
fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The counts of `entries`, the meta keys under [`count_prefix`] (without the space's prefix)
/// and their values.
pub fn counts_of<'a>(
    entries: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Counts, StoreError> {
    entries
        .filter_map(|(k, v)| k.strip_prefix(COUNT_KEY).map(|n| (k, n, v)))
        .map(|(k, n, v)| {
            let bad = || StoreError::Decode {
                space: Space::Meta,
                key: String::from_utf8_lossy(k).into_owned(),
                detail: format!(
                    "a run file's count of {} bytes under a number of {} bytes, expected 8 and 4",
                    v.len(),
                    n.len()
                ),
            };
            let n = <[u8; 4]>::try_from(n).map_err(|_| bad())?;
            let v = <[u8; 8]>::try_from(v).map_err(|_| bad())?;
            Ok((u32::from_be_bytes(n), u64::from_be_bytes(v)))
        })
        .collect()
}

/// The prefix of the count keys, for a scan of the meta space.
pub fn count_prefix() -> &'static [u8] {
    COUNT_KEY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_back_and_runs_are_never_taken_for_one() {
        let r = Reference {
            file: 7,
            offset: 1 << 40,
            len: 300_000,
            crc: 0xdead_beef,
        };
        let v = r.encode();
        assert_eq!(v.len(), REFERENCE_LEN);
        assert_eq!(Reference::parse(&v), Some(r));
        // A run begins with its version, whatever its length.
        let mut run = v.clone();
        run[0] = 2;
        assert_eq!(Reference::parse(&run), None);
        assert_eq!(Reference::parse(&v[..REFERENCE_LEN - 1]), None);
        assert_eq!(number_of("00000007.runs"), Some(7));
        assert_eq!(number_of("7.runs"), None);
        assert_eq!(number_of("00000007.runs.tmp"), None);
        assert_eq!(file_name(7), "00000007.runs");
    }
}
