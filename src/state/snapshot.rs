//! The state snapshot: a copy of the working set in one file, written when the daemon stops
//! cleanly and read at the next start instead of the store's millions of month keys.
//!
//! The daemon also writes it while running (`daemon.snapshot_interval`), so that a start
//! after a crash reads it too.
//!
//! The file is a cache, never the truth. It carries the store's state stamp
//! ([`Store::state_stamp`]) of the moment it was written; every commit that changes the
//! state writes a new stamp and names the keys it changed in the store's journal
//! ([`crate::store::journal`]). A snapshot whose stamp is still the store's is the state; an
//! older one is brought up to the store by reading again the keys the journal names since
//! its stamp (`World::catch_up`), as long as the journal's chain leads from it to the
//! store's stamp and names no more than [`catch_up_limit`] keys. A snapshot that is missing,
//! that the journal cannot bring up, of another format or damaged (each frame has a CRC-32)
//! is set aside with a log line (and removed), and the working set is loaded from the store
//! as before. Writing a snapshot forgets the journal's entries it covers.
//!
//! Layout: the magic bytes, then frames of `[u32 length][u32 CRC-32][bytes]`, all
//! little-endian (`frames`): a header, the households in pairs of frames of
//! `HOUSEHOLDS_PER_FRAME` each (their roster parts in postcard, then their ids and months'
//! packed words as they are, `frames::encode_months`), the villages, the counties. Frames
//! keep the memory of writing and reading small; the months' words are copied, not decoded.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::frames::{self, FrameError, write_frame};
use super::households::{Households, Slot};
use super::persons::Persons;
use super::{CountyValue, Household, Map, Months, Village, World, list_person, note_latest};
use crate::model::{HouseholdId, Indicator, Month, PersonKey};
use crate::store::journal::StateChanges;
use crate::store::{SCHEMA_VERSION, Store, StoreError};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "state.snapshot";
const MAGIC: &[u8; 8] = b"GLSTATE\x01";
/// Version of the frames' contents; a snapshot of another format is set aside. 1 held the
/// months in postcard beside each household; 2 holds their packed words; 3 the same, with
/// narrow months (`months.rs`), which a reader of format 2 would misread. Format 2 is read
/// too: its words are wide months, packed again as they are read.
const FORMAT: u32 = 3;
/// The oldest format read.
const OLDEST_FORMAT_READ: u32 = 2;
const HOUSEHOLDS_PER_FRAME: usize = 4096;

/// The most keys a start reads again to bring a snapshot of `households` households up to
/// the store: beyond, loading the whole store is about as fast. Each key is a point read;
/// the snapshot is rewritten before its changes grow this many (`Engine`).
pub fn catch_up_limit(households: usize) -> usize {
    20_000 + households / 8
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("state snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state snapshot {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    schema: u32,
    /// The versions of the value types whose encoding the frames share with the store
    /// (household, month, village, county): a change to one of them sets old snapshots
    /// aside, as postcard's bytes do not say which fields they hold.
    values: [u8; 4],
    stamp: u64,
    households: u64,
    /// Entries of the person index: what the reader reserves for it (format 2).
    persons: u64,
}

/// The first field of every format's header.
#[derive(Deserialize)]
struct Format {
    format: u32,
}

/// See [`Header::values`].
const VALUES: [u8; 4] = [
    super::HOUSEHOLD_VERSION,
    super::HOUSEHOLD_MONTH_VERSION,
    super::VILLAGE_VERSION,
    super::COUNTY_VERSION,
];

/// The snapshot's path in `data_dir`.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Writes `world` to `path`, stamped with the store's state stamp, which `world` must
/// reflect (all its changes committed). Atomic: a temporary file, synced, then renamed
/// over the old snapshot, which serves (with the journal) until then: a crash or a failed
/// write leaves it in place, and the disk holds both for the seconds of the write.
pub fn save(world: &World, store: &dyn Store, path: &Path) -> Result<(), SnapshotError> {
    let stamp = match store.state_stamp()? {
        Some(s) => s,
        None => store.renew_state_stamp()?,
    };
    let tmp = temporary(path);
    let written = write(world, stamp, &tmp, path);
    if written.is_err() {
        remove(&tmp);
    }
    written?;
    // The journal's entries up to this stamp are in the file now. Failing to forget them
    // costs space, not correctness: the next snapshot forgets them.
    match store.forget_state_changes_through(stamp) {
        Ok(n) => info!(
            entries = n,
            "state journal entries covered by the snapshot forgotten"
        ),
        Err(e) => {
            warn!(error = %e, "cannot forget the state journal's entries the snapshot covers")
        }
    }
    Ok(())
}

/// Where a snapshot is written before it is renamed into place.
fn temporary(path: &Path) -> PathBuf {
    path.with_extension("snapshot.tmp")
}

/// Removes a file if it is there; a file that cannot be removed is only logged (a snapshot
/// left behind is set aside by its stamp).
fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(file = %path.display(), error = %e, "cannot remove an old state snapshot"),
    }
}

fn write(world: &World, stamp: u64, tmp: &Path, path: &Path) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: tmp.to_path_buf(),
        source,
    };
    let file = File::create(tmp).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC).map_err(io)?;
    let mut frame = Vec::new();
    let header = Header {
        format: FORMAT,
        schema: SCHEMA_VERSION,
        values: VALUES,
        stamp,
        households: world.households.len() as u64,
        persons: world.persons.len() as u64,
    };
    write_frame(&mut out, &mut frame, &header).map_err(io)?;
    let mut chunk: Vec<&Household> = Vec::with_capacity(HOUSEHOLDS_PER_FRAME);
    let mut write_chunk = |out: &mut BufWriter<File>, chunk: &[&Household]| {
        write_frame(out, &mut frame, chunk)?;
        frames::encode_months(chunk.iter().map(|h| (&h.id, &h.months)), &mut frame)?;
        frames::write_raw_frame(out, &frame)
    };
    for h in world.households.values() {
        chunk.push(h);
        if chunk.len() == HOUSEHOLDS_PER_FRAME {
            write_chunk(&mut out, &chunk).map_err(io)?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        write_chunk(&mut out, &chunk).map_err(io)?;
    }
    let villages: Vec<&Village> = world.villages.values().collect();
    write_frame(&mut out, &mut frame, &villages).map_err(io)?;
    let counties: Vec<&CountyValue> = world.counties.values().collect();
    write_frame(&mut out, &mut frame, &counties).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(tmp, path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SnapshotError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// The working set from the snapshot at `path`, if there is one that is current or that
/// the store's journal can bring up to the store. Anything else is logged, the file removed,
/// and answered with `None`: the caller loads the store.
pub fn load(path: &Path, store: &dyn Store, retention_months: u32) -> Option<Loaded> {
    let stamp = match store.state_stamp() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the store's state stamp; loading the store");
            return None;
        }
    };
    // A temporary file is what a write cut short left.
    remove(&temporary(path));
    let began = std::time::Instant::now();
    let outcome = read(path, store, stamp, retention_months);
    match outcome {
        Ok(Outcome::Loaded(loaded)) => {
            info!(file = %path.display(), households = loaded.world.n_households(),
                  caught_up = loaded.caught_up, seconds = began.elapsed().as_secs_f64(),
                  catch_up_seconds = loaded.catch_up_seconds,
                  "working set loaded from the state snapshot");
            // Kept: until the next one replaces it, it serves every start, each bringing
            // it up to the store with the journal.
            Some(*loaded)
        }
        Ok(Outcome::Missing) => None,
        Ok(Outcome::Stale(reason)) => {
            info!(file = %path.display(), reason, "state snapshot not current; loading the store");
            remove(path);
            None
        }
        Err(SnapshotError::Store(e)) => {
            // The store's fault (its journal or a changed key unreadable), or memory's (the
            // working set full while catching up), not the file's: kept for the next start.
            warn!(error = %e, "cannot bring the state snapshot up to the store; loading the store");
            None
        }
        Err(e) => {
            warn!(error = %e, "state snapshot unusable; loading the store");
            remove(path);
            None
        }
    }
}

/// A working set read from a snapshot.
pub struct Loaded {
    pub world: World,
    /// How many changed keys were read again from the store to bring it up to date (they
    /// stay in the journal until the next snapshot).
    pub caught_up: usize,
    /// The seconds that took.
    pub catch_up_seconds: f64,
}

enum Outcome {
    Loaded(Box<Loaded>),
    Missing,
    Stale(&'static str),
}

fn read(
    path: &Path,
    store: &dyn Store,
    stamp: Option<u64>,
    retention_months: u32,
) -> Result<Outcome, SnapshotError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Missing),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let len = file
        .metadata()
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut frames = Frames {
        input: BufReader::with_capacity(1 << 20, file),
        buf: Vec::new(),
        path,
        len: usize::try_from(len).unwrap_or(usize::MAX),
    };
    let mut magic = [0u8; 8];
    frames.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Ok(Outcome::Stale("not a snapshot of this format"));
    }
    // The format first: the header of another format may hold other fields.
    frames::read_raw_frame(&mut frames.input, &mut frames.buf)
        .map_err(|e| frames.frame_error(e))?;
    let format: Format =
        postcard::from_bytes(&frames.buf).map_err(|e| frames.frame_error(FrameError::Decode(e)))?;
    if !(OLDEST_FORMAT_READ..=FORMAT).contains(&format.format) {
        return Ok(Outcome::Stale("written by another version of guardline"));
    }
    let header: Header =
        postcard::from_bytes(&frames.buf).map_err(|e| frames.frame_error(FrameError::Decode(e)))?;
    if header.schema != SCHEMA_VERSION || header.values != VALUES {
        return Ok(Outcome::Stale("written by another version of guardline"));
    }
    let n = usize::try_from(header.households).map_err(|_| frames.damaged("household count"))?;
    // Asked before the households are read: the journal is small, the file is not.
    let changed = match stamp {
        None => return Ok(Outcome::Stale("the store has no state stamp")),
        Some(s) if s == header.stamp => Vec::new(),
        Some(_) => match store.state_changes_since(header.stamp, catch_up_limit(n))? {
            StateChanges::Keys(keys) => keys,
            StateChanges::TooMany => {
                return Ok(Outcome::Stale(
                    "the store changed more since it was written than reading the changes again would save",
                ));
            }
            StateChanges::Unknown => {
                return Ok(Outcome::Stale(
                    "the store changed after it was written, and its journal cannot tell how",
                ));
            }
        },
    };
    if super::month_log::crosses_base(store, &changed)? {
        return Ok(Outcome::Stale(
            "the months' base was written again since it was written",
        ));
    }
    let mut w = World::new(retention_months);
    // A count its file cannot hold is damage, not a reservation to try.
    w.households
        .try_reserve(n.min(frames.len / 8))
        .map_err(|_| frames.damaged("a household count beyond memory"))?;
    // What is derived from the households is built as they are read; the journal's changes,
    // applied after, keep the person index up to date.
    // The header's count is only what to reserve: capped at what the file could hold (16
    // bytes a member), and not reserved at all if memory refuses it (`Derived::reserve`).
    let persons = usize::try_from(header.persons).map_or(0, |p| p.min(frames.len / 16));
    let mut frames = read_households(frames, n, persons, &mut w)?;
    if w.households.len() != n {
        return Err(frames.damaged("more households than its header says"));
    }
    let villages: Vec<Village> = frames.next()?;
    w.villages = villages.into_iter().map(|v| (v.code, v)).collect();
    let counties: Vec<CountyValue> = frames.next()?;
    w.counties = counties.into_iter().map(|c| (c.code, c)).collect();
    if !frames::at_end(&mut frames.input).map_err(|e| frames.frame_error(e))? {
        return Err(frames.damaged("bytes after the last frame"));
    }
    let began = std::time::Instant::now();
    if !changed.is_empty() {
        w.catch_up(store, &changed)?;
    }
    w.read_log_state(store)?;
    Ok(Outcome::Loaded(Box::new(Loaded {
        world: w,
        caught_up: changed.len(),
        catch_up_seconds: began.elapsed().as_secs_f64(),
    })))
}

/// Reads the frames of `n` households into `w`. A second thread reads and decodes the
/// frames (most of the time: decoding allocates the households' memory) while this one
/// puts each decoded frame's households in the table, a few frames behind. The first damage in
/// the file's order is the error: the table's errors come from frames before the one the
/// reader stopped at.
///
/// This thread also builds what is derived from the households ([`World::recompute_latest`]'s
/// person index, `persons` entries reserved, and newest months) as it fills the table, while
/// the reader decodes the next frames: at 600,000 households a start took 0.45 s instead of
/// 0.54 s, where a walk after the read took 0.15 s. (Built on the reader's thread instead,
/// it took 0.70 s: the reader is then the slower of the two.)
fn read_households<'a>(
    mut frames: Frames<'a>,
    n: usize,
    persons: usize,
    w: &mut World,
) -> Result<Frames<'a>, SnapshotError> {
    let damaged = |detail: &str| SnapshotError::Damaged {
        path: frames.path.to_path_buf(),
        detail: detail.to_string(),
    };
    let mut derived = Derived::reserve(persons);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Household>>(4);
    let (read, inserted) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut read = 0;
            while read < n {
                let mut chunk: Vec<Household> = frames.next()?;
                if chunk.is_empty() {
                    return Err(frames.damaged("an empty frame of households"));
                }
                let months = frames.next_months()?;
                if months.len() != chunk.len() {
                    return Err(frames.damaged("a frame of months of other households"));
                }
                for (h, (id, months)) in chunk.iter_mut().zip(months) {
                    if h.id != id {
                        return Err(frames.damaged("a frame of months of other households"));
                    }
                    h.months = months;
                }
                read += chunk.len();
                if tx.send(chunk).is_err() {
                    break; // the table refused a household: its error is the one to report
                }
            }
            Ok(frames)
        });
        let mut inserted = Ok(());
        'frames: for chunk in rx {
            for h in chunk {
                match w.households.insert(h) {
                    Ok((slot, None)) => derived.add(&w.households, slot),
                    Ok((_, Some(_))) => {
                        inserted = Err(damaged("a household twice"));
                        break 'frames;
                    }
                    Err(e) => {
                        inserted = Err(damaged(&format!("no room for its households: {e}")));
                        break 'frames;
                    }
                }
            }
        }
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read, inserted)
    });
    inserted?;
    let frames = read?;
    w.persons = derived.persons;
    w.shared = derived.shared;
    w.latest = derived.latest;
    Ok(frames)
}

/// What [`World::recompute_latest`] derives from the households, built as they are put in
/// the table.
struct Derived {
    persons: Persons,
    shared: Map<PersonKey, BTreeSet<HouseholdId>>,
    latest: [Option<Month>; Indicator::COUNT],
}

impl Derived {
    fn reserve(persons: usize) -> Self {
        let mut index = Persons::default();
        // A reservation memory refuses is left to the index's own growth.
        let _ = index.try_reserve(persons);
        Self {
            persons: index,
            shared: Map::default(),
            latest: [None; Indicator::COUNT],
        }
    }

    /// The members and months of the household just put in `slot` of `households`.
    fn add(&mut self, households: &Households, slot: Slot) {
        let Some(h) = households.at(slot) else {
            return;
        };
        for m in &h.members {
            list_person(&mut self.persons, &mut self.shared, households, *m, slot);
        }
        note_latest(&mut self.latest, &h.months);
    }
}

struct Frames<'a> {
    input: BufReader<File>,
    buf: Vec<u8>,
    path: &'a Path,
    /// The file's length in bytes.
    len: usize,
}

impl Frames<'_> {
    fn io(&self, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn damaged(&self, detail: &str) -> SnapshotError {
        SnapshotError::Damaged {
            path: self.path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    fn frame_error(&self, e: FrameError) -> SnapshotError {
        match e {
            FrameError::Io(source) => self.io(source),
            damage => self.damaged(&damage.to_string()),
        }
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), SnapshotError> {
        frames::read_exact(&mut self.input, out).map_err(|e| self.frame_error(e))
    }

    fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, SnapshotError> {
        frames::read_frame(&mut self.input, &mut self.buf).map_err(|e| self.frame_error(e))
    }

    /// The next frame, of households' months ([`frames::encode_months`]).
    fn next_months(&mut self) -> Result<Vec<(HouseholdId, Months)>, SnapshotError> {
        frames::read_raw_frame(&mut self.input, &mut self.buf).map_err(|e| self.frame_error(e))?;
        frames::decode_months(&self.buf).map_err(|detail| self.damaged(detail))
    }
}
