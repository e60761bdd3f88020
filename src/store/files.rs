//! Files kept beside the store's keys, in one folder (`data_dir/store-files` for
//! [`super::SledStore`]): values too large for sled to carry well as keys, such as the
//! months' base (hundreds of MB). sled 0.34 keeps every value above 128 KiB as a blob file
//! of its own and writes it again whenever its leaf splits; a file of our own is written
//! once, sequentially, and holds no lock that commits wait for.
//!
//! Invariants:
//! - A file is whole or absent: [`FileDir::write`] fills a temporary file (`NAME.tmp`),
//!   syncs it, renames it into place and syncs the folder. A crash leaves the temporary
//!   file, which the owner of the name deletes later.
//! - A file counts only once a commit names it (the months' base: the meta key naming its
//!   generation). Files nothing names are what a write cut short, or a commit that failed,
//!   left behind; their owner deletes them, never one that a committed key names.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// What fills a file: writes its bytes into the writer it is handed.
pub type Fill<'a> = dyn FnMut(&mut dyn Write) -> std::io::Result<()> + 'a;

/// The folder of a store's files.
#[derive(Debug, Clone)]
pub struct FileDir {
    dir: PathBuf,
}

impl FileDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The path of the file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Writes the file `name` atomically and durably (see the module's invariants) with the
    /// bytes `fill` writes; returns their number. On a failure before the rename, the
    /// temporary file is removed and the file of that name, if any, is unchanged; on a
    /// failure to sync the folder after it, the new file may be in place or not.
    pub fn write(&self, name: &str, fill: &mut Fill<'_>) -> Result<u64, StoreError> {
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir).map_err(Self::err(&self.dir))?;
            // The new folder's entry is durable once its parent is.
            if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(Self::err(parent))?;
            }
        }
        let path = self.path(name);
        let tmp = self.path(&format!("{name}.tmp"));
        let written = Self::write_to(&tmp, &path, fill);
        if written.is_err() {
            // Best effort: a temporary file left behind is deleted by the name's owner.
            let _ = std::fs::remove_file(&tmp);
        }
        let bytes = written?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::err(&self.dir))?;
        Ok(bytes)
    }

    fn write_to(tmp: &Path, path: &Path, fill: &mut Fill<'_>) -> Result<u64, StoreError> {
        let file = File::create(tmp).map_err(Self::err(tmp))?;
        let mut out = Counted {
            inner: BufWriter::with_capacity(1 << 20, file),
            bytes: 0,
        };
        fill(&mut out).map_err(Self::err(tmp))?;
        let file = out
            .inner
            .into_inner()
            .map_err(|e| Self::err(tmp)(e.into_error()))?;
        file.sync_all().map_err(Self::err(tmp))?;
        drop(file);
        std::fs::rename(tmp, path).map_err(Self::err(path))?;
        Ok(out.bytes)
    }

    /// The names of the files in the folder (none if there is no folder yet).
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::err(&self.dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Self::err(&self.dir))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Removes the file `name`; one that is not there is no error.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// The bytes of the files in the folder.
    pub fn size(&self) -> u64 {
        folder_size(&self.dir)
    }
}

/// The bytes of the files in `dir` (0 if it cannot be read).
pub fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// A writer that counts the bytes written through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileDir::new(dir.path().join("files"));
        assert!(files.names().unwrap().is_empty(), "no folder yet");
        let n = files
            .write("a", &mut |out| out.write_all(b"hello"))
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(std::fs::read(dir.path().join("files/a")).unwrap(), b"hello");
        // A fill that fails leaves the old file and no temporary one.
        let failed = files.write("a", &mut |out| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(
            matches!(&failed, Err(StoreError::File { path, .. }) if path.ends_with("a.tmp")),
            "{failed:?}"
        );
        assert_eq!(files.names().unwrap(), ["a"]);
        assert_eq!(std::fs::read(dir.path().join("files/a")).unwrap(), b"hello");
        assert_eq!(files.size(), 5);
        files.remove("a").unwrap();
        files.remove("a").unwrap();
        assert!(files.names().unwrap().is_empty());
    }
}
