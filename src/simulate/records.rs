//! A generated feed's records, kept as JSON lines rather than JSON trees.
//!
//! A `serde_json::Value` tree costs about ten times its text, so a province of 600,000
//! households held as trees took 16 GB. Each record is serialised once, when generated,
//! into one buffer of lines, or into a file for worlds larger than memory (`guardline bench`
//! at millions of households); the server copies lines into its pages without re-encoding.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where a feed's lines live.
enum Lines {
    Memory(Vec<u8>),
    File(File),
}

/// One feed's records in publication order: record `i` has `"seq": i + 1`.
pub struct Records {
    lines: Lines,
    /// The end offset of each record's line (the byte after its `\n`).
    ends: Vec<u64>,
}

enum Out {
    Memory(Vec<u8>),
    File(BufWriter<File>, PathBuf),
}

/// Appends records one at a time; `finish` makes them servable.
pub struct RecordsBuilder {
    out: Out,
    ends: Vec<u64>,
    written: u64,
}

impl RecordsBuilder {
    /// Lines go to memory, or to `<spill>/<feed>.ndjson` when a spill folder is given.
    pub fn new(spill: Option<&Path>, feed: &str) -> io::Result<Self> {
        let out = match spill {
            None => Out::Memory(Vec::new()),
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{feed}.ndjson"));
                let file = File::options()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)?;
                Out::File(BufWriter::with_capacity(1 << 20, file), path)
            }
        };
        Ok(Self {
            out,
            ends: Vec::new(),
            written: 0,
        })
    }

    /// How many records were pushed.
    pub fn pushed(&self) -> usize {
        self.ends.len()
    }

    /// Appends a record, numbered with the next `seq` (its 1-based position).
    pub fn push(&mut self, mut record: Value) -> io::Result<()> {
        if let Some(o) = record.as_object_mut() {
            o.insert("seq".into(), Value::from(self.ends.len() as u64 + 1));
        }
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        match &mut self.out {
            Out::Memory(buf) => buf.extend_from_slice(&line),
            Out::File(w, _) => w.write_all(&line)?,
        }
        self.written += line.len() as u64;
        self.ends.push(self.written);
        Ok(())
    }

    pub fn finish(self) -> io::Result<Records> {
        let lines = match self.out {
            Out::Memory(mut buf) => {
                buf.shrink_to_fit();
                Lines::Memory(buf)
            }
            Out::File(w, path) => {
                let file = w.into_inner().map_err(|e| {
                    io::Error::other(format!("writing {}: {}", path.display(), e.error()))
                })?;
                file.sync_data()?;
                Lines::File(file)
            }
        };
        let mut ends = self.ends;
        ends.shrink_to_fit();
        Ok(Records { lines, ends })
    }
}

impl Records {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The lines of the records in `range` (clamped to the feed), each ending with `\n`.
    pub fn lines(&self, range: Range<usize>) -> io::Result<Vec<u8>> {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        if start == end {
            return Ok(Vec::new());
        }
        let from = if start == 0 { 0 } else { self.ends[start - 1] };
        let to = self.ends[end - 1];
        match &self.lines {
            Lines::Memory(buf) => Ok(buf[from as usize..to as usize].to_vec()),
            Lines::File(file) => {
                let mut out = vec![0; (to - from) as usize];
                file.read_exact_at(&mut out, from)?;
                Ok(out)
            }
        }
    }

    /// The records in `range` as JSON values.
    pub fn values(&self, range: Range<usize>) -> io::Result<Vec<Value>> {
        let bytes = self.lines(range)?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(io::Error::from))
            .collect()
    }

    /// One record as a JSON value.
    pub fn get(&self, i: usize) -> Option<Value> {
        self.values(i..i + 1).ok()?.pop()
    }

    /// Calls `f` with every record in order, reading a chunk at a time; stops when `f`
    /// answers false.
    pub fn each(&self, mut f: impl FnMut(Value) -> bool) -> io::Result<()> {
        const CHUNK: usize = 10_000;
        for start in (0..self.len()).step_by(CHUNK) {
            for v in self.values(start..start + CHUNK)? {
                if !f(v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filled(spill: Option<&Path>) -> Records {
        let mut b = RecordsBuilder::new(spill, "wages").unwrap();
        for i in 0..25_000u32 {
            b.push(json!({"record_id": format!("R{i}"), "note": "含\n换行"}))
                .unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn memory_and_file_give_the_same_lines_and_number_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let (m, f) = (filled(None), filled(Some(dir.path())));
        assert_eq!(m.len(), 25_000);
        assert_eq!(m.lines(0..25_000).unwrap(), f.lines(0..25_000).unwrap());
        assert_eq!(
            m.lines(24_990..30_000).unwrap(),
            f.lines(24_990..30_000).unwrap()
        );
        assert!(m.lines(30_000..40_000).unwrap().is_empty());
        let v = f.get(12_345).unwrap();
        assert_eq!(v["record_id"], "R12345");
        assert_eq!(v["seq"], 12_346);
        // A newline inside a value is escaped, so lines split records exactly.
        assert_eq!(v["note"], "含\n换行");
        assert_eq!(m.values(10..20).unwrap().len(), 10);
        let mut n = 0;
        f.each(|r| {
            assert_eq!(r["seq"], n + 1);
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 25_000);
    }
}
