//! Drop-folder feeds: a department puts export files into a folder; each file is ingested
//! once and then moved to `done/`, or to `rejected/` with a `<file>.reason.txt` when it
//! cannot be read at all. Rejected records of a good file go to the quarantine.
//!
//! A crash between ingest and the move re-ingests the file at the next poll, which changes
//! nothing: record ids already applied are skipped.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::{Counts, PollError, Sink, decode, map_page};
use crate::config::FeedConfig;
use crate::pseudonym::Pseudonymizer;

fn io_err(path: &Path, e: std::io::Error) -> PollError {
    PollError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// A destination in `folder` that does not overwrite an earlier file of the same name.
fn destination(folder: &Path, name: &str) -> PathBuf {
    let first = folder.join(name);
    if !first.exists() {
        return first;
    }
    let stamp = crate::model::now().format("%Y%m%dT%H%M%S");
    (1..)
        .map(|i| folder.join(format!("{name}.{stamp}.{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

pub async fn poll_dir<S: Sink + Sync>(
    feed: &FeedConfig,
    dir: &Path,
    pseudo: &Pseudonymizer,
    sink: &S,
) -> Result<(Counts, bool), PollError> {
    let done = dir.join("done");
    let rejected = dir.join("rejected");
    for d in [&done, &rejected] {
        tokio::fs::create_dir_all(d)
            .await
            .map_err(|e| io_err(d, e))?;
    }
    let mut files = Vec::new();
    let mut rd = tokio::fs::read_dir(dir).await.map_err(|e| io_err(dir, e))?;
    while let Some(entry) = rd.next_entry().await.map_err(|e| io_err(dir, e))? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry
            .file_type()
            .await
            .map_err(|e| io_err(&entry.path(), e))?;
        if ft.is_file()
            && !name.starts_with('.')
            && !name.ends_with(".part")
            && !name.ends_with(".tmp")
        {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    let mut total = Counts::default();
    for (name, path) in files {
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|e| io_err(&path, e))?
            .len();
        let origin = path.display().to_string();
        let bytes = match size > feed.max_body_bytes {
            true => None,
            false => Some(tokio::fs::read(&path).await.map_err(|e| io_err(&path, e))?),
        };
        let text = bytes.map(|b| decode::to_text(b, feed.encoding, &origin));
        let outcome = match &text {
            None => Err(format!(
                "the file has {size} bytes, more than max_body_bytes = {}",
                feed.max_body_bytes
            )),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(text)) => match decode::decode(text, feed, &origin) {
                Err(e) => Err(e.to_string()),
                Ok(d) if d.records.len() as u64 > feed.max_records_per_poll => Err(format!(
                    "the file has {} records, more than max_records_per_poll = {}",
                    d.records.len(),
                    feed.max_records_per_poll
                )),
                Ok(d) => Ok(d),
            },
        };
        match outcome {
            Ok(decoded) => {
                let mapped = map_page(feed, decoded.records, pseudo);
                let counts = sink.ingest(feed, &mapped, None).await?;
                total.add(counts);
                let to = destination(&done, &name);
                tokio::fs::rename(&path, &to)
                    .await
                    .map_err(|e| io_err(&path, e))?;
                info!(feed = %feed.name, file = %name, accepted = counts.accepted, rejected = counts.rejected, "file ingested");
            }
            Err(reason) => {
                let to = destination(&rejected, &name);
                tokio::fs::rename(&path, &to)
                    .await
                    .map_err(|e| io_err(&path, e))?;
                let note = to.with_file_name(format!(
                    "{}.reason.txt",
                    to.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ));
                tokio::fs::write(&note, format!("{reason}\n"))
                    .await
                    .map_err(|e| io_err(&note, e))?;
                warn!(feed = %feed.name, file = %name, reason = %reason, "file rejected");
            }
        }
    }
    Ok((total, true))
}
