//! Departmental feeds: schedules, HTTP fetching with paging, decoding and mapping.
//!
//! Invariants:
//! - Runs of one feed never overlap: each feed has one task that polls, then waits for the
//!   next cron slot after the poll ended (missed slots are not replayed one by one).
//! - A page's records are handed to the sink with the cursor that follows them, and both are
//!   committed in one batch; a poll that fails half-way keeps the cursor of the last
//!   committed page.
//! - Pages are applied in order, one at a time, on one blocking thread per poll. While one
//!   is applied, the next may wait for it (`PAGES_WAITING`) and the one after is fetched,
//!   decoded and mapped; a page's commit waits for the ones before, no page is applied after
//!   one whose commit failed, and an error in fetching a page is returned only after the
//!   pages before are committed.

pub mod decode;
mod dir;
pub mod fetch;
pub mod json;
pub mod map;
mod scan;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use self_cell::self_cell;

use tracing::{debug, info, warn};

pub use fetch::{FeedClient, Fetched, PollError, Validators};
pub use map::{MapError, map_record};

use crate::config::{FeedConfig, FeedSource, Paging};
use crate::model::Record;
use crate::pseudonym::Pseudonymizer;

/// Counts of one ingest step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Records of persons not yet on the roster, kept until the next roster poll.
    pub waiting: u64,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        self.rejected += o.rejected;
        self.waiting += o.waiting;
    }
}

/// A decoded record with what mapping made of it. `raw`, the decoded record (borrowing from
/// the page's text), is kept for the quarantine.
#[derive(Debug)]
pub struct Mapped<'a> {
    pub raw: Option<json::Json<'a>>,
    pub result: Result<Record, MapError>,
}

/// Where a poll delivers its records: the engine, in the daemon.
pub trait Sink {
    /// The saved cursor of a feed.
    fn cursor(&self, feed: &str) -> impl Future<Output = Result<Option<String>, PollError>> + Send;
    /// The HTTP validators saved after the feed's last complete poll.
    fn validators(
        &self,
        feed: &str,
    ) -> impl Future<Output = Result<Option<Validators>, PollError>> + Send;
    fn save_validators(
        &self,
        feed: &str,
        v: &Validators,
    ) -> impl Future<Output = Result<(), PollError>> + Send;
    /// Applies mapped records, quarantines the rejected ones, commits durably. `cursor`, the
    /// feed's cursor after these records, is committed with them: a page and the cursor past
    /// it are saved together or not at all.
    fn ingest(
        &self,
        feed: &FeedConfig,
        records: &[Mapped<'_>],
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Counts, PollError>> + Send;
    /// Called before a poll starts: until it completes, the feed's data may be partial.
    fn poll_started(&self, feed: &str) -> impl Future<Output = ()> + Send;
    /// Called after every poll. `caught_up` is true when the poll reached the end of the
    /// feed, so that rules reading the feed's data can be evaluated on complete data.
    fn poll_done(&self, feed: &str, caught_up: bool) -> impl Future<Output = ()> + Send;
}

/// Below this many records a page is mapped on the calling thread.
const PARALLEL_MIN_RECORDS: usize = 2048;

/// Maps decoded records, keeping failures to report, in the page's order. Records map
/// independently (field paths, parsing, pseudonymizing), so a large page is mapped on every
/// core, each thread over a contiguous share.
pub fn map_page<'a>(
    feed: &FeedConfig,
    records: Vec<Result<json::Json<'a>, MapError>>,
    pseudo: &Pseudonymizer,
) -> Vec<Mapped<'a>> {
    let map = |rec: &json::Json| map_record(&feed.mapping, rec, pseudo);
    // The records that decoded, mapped; `None` for those that did not.
    let mapped = crate::parallel::in_shares(&records, PARALLEL_MIN_RECORDS, |_, part| {
        part.iter()
            .map(|r| r.as_ref().ok().map(map))
            .collect::<Vec<_>>()
    });
    records
        .into_iter()
        .zip(mapped.into_iter().flatten())
        .map(|(r, result)| match r {
            Ok(rec) => Mapped {
                result: result.unwrap_or_else(|| map(&rec)),
                raw: Some(rec),
            },
            Err(e) => Mapped {
                raw: None,
                result: Err(e),
            },
        })
        .collect()
}

fn with_params(base: &reqwest::Url, params: &[(&str, String)]) -> reqwest::Url {
    let mut url = base.clone();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    url
}

/// A fingerprint of a page's records, to notice a feed that serves the same page again.
fn page_fingerprint(records: &[Result<json::Json, MapError>]) -> Option<String> {
    let first = serde_json::to_string(records.first()?.as_ref().ok()?).ok()?;
    let last = serde_json::to_string(records.last()?.as_ref().ok()?).ok()?;
    Some(format!("{}|{first}|{last}", records.len()))
}

/// A page's records, mapped, and what the page says about the pages after it.
struct PageRecords<'a> {
    records: Vec<Mapped<'a>>,
    info: PageInfo,
}

self_cell!(
    /// A page's text and the records mapped from it, which borrow from the text: so that a
    /// page can be applied on another thread while the next one is mapped.
    struct MappedPage {
        owner: String,
        #[covariant]
        dependent: PageRecords,
    }
);

/// What a fetched page says about the pages that follow it.
struct PageInfo {
    records: usize,
    /// The cursor to save once the page is committed (cursor and offset paging).
    next_cursor: Option<String>,
    fingerprint: Option<String>,
    next_link: Option<reqwest::Url>,
}

/// A page handed to the [`Applier`], with its index in the poll and the cursor to save with it.
struct ToApply {
    page: MappedPage,
    index: u32,
    cursor: Option<String>,
}

/// A page the [`Applier`] is done with: what applying it came to, and the page, which the
/// poll frees (freeing a bulk page's decoded records on the applying thread took a tenth of
/// its time).
struct AppliedPage {
    counts: Result<Counts, PollError>,
    page: MappedPage,
    index: u32,
    records: usize,
}

/// Pages handed over but not applied yet that the poll allows before it hands over another:
/// one waits while another is applied, so that the applying thread takes the next page as
/// soon as it is done with one, without waiting for the poll to come back from the page it
/// is mapping, and the poll maps the page after while both are with the applier.
const PAGES_WAITING: usize = 1;

/// Applies a poll's pages in order, one at a time, on a thread of the blocking pool, while
/// the poll fetches, decodes and maps the pages after them.
struct Applier {
    pages: Option<tokio::sync::mpsc::UnboundedSender<ToApply>>,
    done: tokio::sync::mpsc::UnboundedReceiver<AppliedPage>,
    task: tokio::task::JoinHandle<()>,
    /// Pages handed over whose [`AppliedPage`] has not come back.
    outstanding: usize,
}

impl Applier {
    fn start<S: Sink + Clone + Send + Sync + 'static>(feed: &Arc<FeedConfig>, sink: &S) -> Self {
        let (pages, mut to_apply) = tokio::sync::mpsc::unbounded_channel::<ToApply>();
        let (applied, done) = tokio::sync::mpsc::unbounded_channel();
        let (feed, sink) = (Arc::clone(feed), sink.clone());
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            while let Some(next) = to_apply.blocking_recv() {
                let ToApply {
                    page,
                    index,
                    cursor,
                } = next;
                let records = page.borrow_dependent().info.records;
                let counts = page.with_dependent(|_, page| {
                    runtime.block_on(sink.ingest(&feed, &page.records, cursor.as_deref()))
                });
                // No page after one that failed is applied: its cursor would skip the page.
                let failed = counts.is_err();
                let back = AppliedPage {
                    counts,
                    page,
                    index,
                    records,
                };
                if applied.send(back).is_err() || failed {
                    break;
                }
            }
        });
        Applier {
            pages: Some(pages),
            done,
            task,
            outstanding: 0,
        }
    }

    /// Hands `page` over to be applied after the pages before it, once no more than
    /// [`PAGES_WAITING`] of those are left; frees the pages applied meanwhile. The error of
    /// a page before it that failed, if one did.
    async fn hand_over(
        &mut self,
        feed: &FeedConfig,
        page: MappedPage,
        index: u32,
        total: &mut Counts,
    ) -> Result<(), PollError> {
        let info = &page.borrow_dependent().info;
        // Saved with the page; an empty page moves no cursor.
        let cursor = info.next_cursor.clone().filter(|_| info.records > 0);
        while let Ok(done) = self.done.try_recv() {
            self.free(feed, done, total)?;
        }
        while self.outstanding > PAGES_WAITING {
            match self.done.recv().await {
                Some(done) => self.free(feed, done, total)?,
                None => return self.ended().await,
            }
        }
        let sent = self.pages.as_ref().map(|pages| {
            pages.send(ToApply {
                page,
                index,
                cursor,
            })
        });
        match sent {
            Some(Ok(())) => {
                self.outstanding += 1;
                Ok(())
            }
            _ => {
                self.finish(feed, total).await?;
                Err(PollError::Store(format!(
                    "the applying thread ended before page {} was handed to it",
                    index + 1
                )))
            }
        }
    }

    /// Waits until every page handed over is applied, and frees each. The first error.
    async fn finish(&mut self, feed: &FeedConfig, total: &mut Counts) -> Result<(), PollError> {
        self.pages = None;
        while let Some(done) = self.done.recv().await {
            self.free(feed, done, total)?;
        }
        self.ended().await
    }

    /// The applier's thread has ended: how, when it ended before the pages handed to it
    /// came back.
    async fn ended(&mut self) -> Result<(), PollError> {
        (&mut self.task)
            .await
            .map_err(|e| PollError::Store(format!("applying pages: {e}")))?;
        if self.outstanding > 0 {
            return Err(PollError::Store(format!(
                "the applying thread ended with {} pages not applied",
                self.outstanding
            )));
        }
        Ok(())
    }

    /// Frees a page the applier is done with, before the next is handed over: the records
    /// in shares, as they were parsed in shares, on threads that have ended since, and one
    /// thread freeing them all was the slowest part of the poll's thread.
    fn free(
        &mut self,
        feed: &FeedConfig,
        done: AppliedPage,
        total: &mut Counts,
    ) -> Result<(), PollError> {
        self.outstanding -= 1;
        let AppliedPage {
            counts,
            mut page,
            index,
            records,
        } = done;
        let decoded = page.with_dependent_mut(|_, page| std::mem::take(&mut page.records));
        crate::parallel::drop_in_shares(decoded, PARALLEL_MIN_RECORDS);
        drop(page);
        total.add(counts?);
        debug!(feed = %feed.name, page = index, records, "page applied");
        Ok(())
    }
}

/// Polls a feed: from its saved cursor (or from the start) until the end of the feed.
/// Returns the counts and whether the end was reached (not a page limit).
pub async fn poll<S: Sink + Clone + Send + Sync + 'static>(
    feed: &FeedConfig,
    client: &FeedClient,
    pseudo: &Pseudonymizer,
    sink: &S,
) -> Result<(Counts, bool), PollError> {
    let base = match &feed.source {
        FeedSource::Dir(path) => return dir::poll_dir(feed, path, pseudo, sink).await,
        FeedSource::Http(url) => url,
    };
    let shared = Arc::new(feed.clone());
    let mut cursor = sink.cursor(&feed.name).await?;
    let validators = if feed.conditional {
        sink.validators(&feed.name).await?
    } else {
        None
    };
    let size = feed.page_size.to_string();
    let mut total = Counts::default();
    let mut seen: u64 = 0;
    let mut link: Option<reqwest::Url> = None;
    let mut last_page: Option<String> = None;
    let mut fresh_validators = None;
    let mut applier = Applier::start(&shared, sink);
    for i in 0..feed.max_pages_per_poll {
        let page_no = u64::from(i) + 1;
        let url = match feed.paging {
            Paging::Cursor => {
                let mut p = vec![(feed.limit_param.as_str(), size.clone())];
                if let Some(c) = &cursor {
                    p.insert(0, (feed.cursor_param.as_str(), c.clone()));
                }
                with_params(base, &p)
            }
            Paging::Page => with_params(
                base,
                &[
                    (feed.page_param.as_str(), page_no.to_string()),
                    (feed.limit_param.as_str(), size.clone()),
                ],
            ),
            Paging::Offset => with_params(
                base,
                &[
                    (
                        feed.offset_param.as_str(),
                        cursor.clone().unwrap_or_else(|| "0".into()),
                    ),
                    (feed.limit_param.as_str(), size.clone()),
                ],
            ),
            Paging::Link => link
                .take()
                .unwrap_or_else(|| with_params(base, &[(feed.limit_param.as_str(), size.clone())])),
            Paging::None => base.clone(),
        };
        // Fetched, decoded and mapped while the page before is applied; `None`: not modified.
        let fetched = async {
            let (body, headers) = match client
                .get(feed, &url, if i == 0 { validators.as_ref() } else { None })
                .await?
            {
                Fetched::NotModified => return Ok(None),
                Fetched::Body { body, headers } => (body, headers),
            };
            if i == 0 && feed.conditional {
                fresh_validators = Some(Validators::of(&headers));
            }
            let mut shown = url.clone();
            shown.set_query(None);
            let text = decode::to_text(body, feed.encoding, shown.as_str())?;
            let page = MappedPage::try_new(text, |text| {
                let page = decode::decode(text, feed, shown.as_str())?;
                let mut info = check_page(feed, &page, &cursor, &mut seen, &last_page)?;
                info.next_link = fetch::link_next(&headers, &url);
                Ok::<_, PollError>(PageRecords {
                    records: map_page(feed, page.records, pseudo),
                    info,
                })
            })?;
            Ok(Some(page))
        }
        .await;
        // The pages before are committed first, and their error comes first.
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                applier.finish(feed, &mut total).await?;
                return Err(e);
            }
        };
        let Some(page) = fetched else {
            applier.finish(feed, &mut total).await?;
            debug!(feed = %feed.name, "not modified since the last poll");
            return Ok((total, true));
        };
        let info = &page.borrow_dependent().info;
        let n = info.records;
        let next_cursor = info.next_cursor.clone();
        let next_link = info.next_link.clone();
        last_page = info.fingerprint.clone();
        applier.hand_over(feed, page, i, &mut total).await?;
        if let Some(next) = &next_cursor
            && n > 0
        {
            cursor = Some(next.clone());
        }
        let done = match feed.paging {
            Paging::Cursor => n < feed.page_size as usize || next_cursor.is_none(),
            Paging::Page | Paging::Offset => n < feed.page_size as usize,
            Paging::Link => {
                if let Some(next) = &next_link
                    && *next == url
                {
                    applier.finish(feed, &mut total).await?;
                    return Err(PollError::CursorStuck {
                        cursor: next.to_string(),
                    });
                }
                link = next_link;
                link.is_none()
            }
            Paging::None => true,
        };
        if done {
            applier.finish(feed, &mut total).await?;
            if let Some(v) = fresh_validators.filter(|v| !v.is_empty()) {
                sink.save_validators(&feed.name, &v).await?;
            }
            return Ok((total, true));
        }
    }
    applier.finish(feed, &mut total).await?;
    Ok((total, false))
}

/// Checks a decoded page against the poll so far (record limit, a repeated page, a cursor
/// that does not move) and works out the cursor that follows it.
fn check_page(
    feed: &FeedConfig,
    page: &decode::Decoded,
    cursor: &Option<String>,
    seen: &mut u64,
    last_page: &Option<String>,
) -> Result<PageInfo, PollError> {
    let n = page.records.len();
    if *seen + n as u64 > feed.max_records_per_poll {
        return Err(PollError::TooManyRecords {
            records: n as u64,
            limit: feed.max_records_per_poll,
        });
    }
    *seen += n as u64;
    let fingerprint = page_fingerprint(&page.records);
    if fingerprint.is_some() && fingerprint == *last_page {
        return Err(PollError::CursorStuck {
            cursor: cursor.clone().unwrap_or_default(),
        });
    }
    let next_cursor = match feed.paging {
        Paging::Cursor => match &feed.cursor_field {
            // The last record with the field as text or a number gives the cursor.
            Some(f) => {
                page.records
                    .iter()
                    .rev()
                    .find_map(|r| match r.as_ref().ok()?.lookup(f)? {
                        json::Json::String(s) => Some(s.to_string()),
                        json::Json::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
            }
            None => page.next.clone(),
        },
        Paging::Offset => Some(
            (cursor
                .as_deref()
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0)
                + n as u64)
                .to_string(),
        ),
        _ => None,
    };
    if feed.paging == Paging::Cursor && n > 0 && next_cursor.is_some() && next_cursor == *cursor {
        return Err(PollError::CursorStuck {
            cursor: cursor.clone().unwrap_or_default(),
        });
    }
    Ok(PageInfo {
        records: n,
        next_cursor,
        fingerprint,
        next_link: None,
    })
}

/// The time from `now` to the feed's next cron slot.
pub fn until_next(feed: &FeedConfig, now: chrono::DateTime<chrono::FixedOffset>) -> Duration {
    feed.schedule
        .after(&now)
        .next()
        .and_then(|t| (t - now).to_std().ok())
        .unwrap_or(Duration::from_secs(3600))
}

/// The time between the feed's next two cron slots after `now`.
pub fn poll_interval(feed: &FeedConfig, now: chrono::DateTime<chrono::FixedOffset>) -> Duration {
    let mut slots = feed.schedule.after(&now);
    match (slots.next(), slots.next()) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::from_secs(3600)),
        _ => Duration::from_secs(3600),
    }
}

/// Whether each feed's last poll failed, for readiness: a daemon whose every feed fails
/// is not ready (it is cut off from its data).
#[derive(Debug, Default)]
pub struct FeedHealth {
    failing: std::sync::Mutex<std::collections::BTreeMap<String, bool>>,
}

impl FeedHealth {
    /// The configured feeds, none failing yet.
    pub fn new<'a>(feeds: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            failing: std::sync::Mutex::new(
                feeds.into_iter().map(|f| (f.to_string(), false)).collect(),
            ),
        }
    }

    pub fn record(&self, feed: &str, ok: bool) {
        if let Ok(mut m) = self.failing.lock() {
            m.insert(feed.to_string(), !ok);
        }
    }

    /// The feeds whose last poll failed.
    pub fn failing(&self) -> Vec<String> {
        self.failing
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, f)| **f)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when there are feeds and the last poll of every one failed.
    pub fn all_failing(&self) -> bool {
        self.failing
            .lock()
            .map(|m| !m.is_empty() && m.values().all(|f| *f))
            .unwrap_or(false)
    }
}

/// Everything one feed's task needs.
pub struct FeedTask<S> {
    pub feed: FeedConfig,
    pub client: FeedClient,
    pub pseudo: Pseudonymizer,
    pub sink: S,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub health: std::sync::Arc<FeedHealth>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The task waits until this is true (feeds keyed by person wait for the roster).
    pub start: tokio::sync::watch::Receiver<bool>,
    /// Told the feed's name after each poll (the roster reports its first poll).
    pub report: Option<tokio::sync::mpsc::Sender<String>>,
}

/// Runs one feed forever: a poll right away (a start catches up once, not once per missed
/// slot), then one poll per cron slot. Stops when `shutdown` fires, never mid-poll, and
/// begins no poll once it has.
pub async fn run_feed<S: Sink + Clone + Send + Sync + 'static>(task: FeedTask<S>) {
    let FeedTask {
        feed,
        client,
        pseudo,
        sink,
        metrics,
        health,
        mut shutdown,
        mut start,
        report: started,
    } = task;
    while !*start.borrow() {
        tokio::select! {
            r = start.changed() => if r.is_err() { break },
            _ = shutdown.changed() => return,
        }
    }
    let name = feed.name.as_str();
    let mut failures: i64 = 0;
    loop {
        // A stop asked before a poll begins: a poll is never cut, so none is begun.
        if *shutdown.borrow() {
            return;
        }
        let began = Instant::now();
        sink.poll_started(&feed.name).await;
        let result = poll(&feed, &client, &pseudo, &sink).await;
        let secs = began.elapsed().as_secs_f64();
        metrics
            .feed_poll_duration
            .with_label_values(&[feed.name.as_str()])
            .observe(secs);
        match &result {
            Ok((c, caught_up)) => {
                metrics
                    .feed_polls
                    .with_label_values(&[feed.name.as_str(), "success"])
                    .inc();
                metrics
                    .feed_last_success
                    .with_label_values(&[name])
                    .set(crate::model::now().timestamp() as f64);
                failures = 0;
                metrics
                    .feed_caught_up
                    .with_label_values(&[name])
                    .set(i64::from(*caught_up));
                info!(feed = %feed.name, accepted = c.accepted, duplicate = c.duplicate, waiting = c.waiting,
                      rejected = c.rejected, caught_up, seconds = secs, "poll done");
                sink.poll_done(&feed.name, *caught_up).await;
            }
            Err(e) => {
                metrics
                    .feed_polls
                    .with_label_values(&[feed.name.as_str(), "failure"])
                    .inc();
                metrics
                    .feed_poll_failures
                    .with_label_values(&[feed.name.as_str(), e.reason()])
                    .inc();
                failures += 1;
                metrics.feed_caught_up.with_label_values(&[name]).set(0);
                if matches!(e, PollError::StorePaused(_)) {
                    // The store logs once that it refuses writes, not every feed every poll.
                    debug!(feed = %feed.name, error = %e, consecutive_failures = failures,
                           "poll skipped: the store refuses writes");
                } else {
                    warn!(feed = %feed.name, reason = e.reason(), error = %e, consecutive_failures = failures,
                          "poll failed; retrying at the next slot");
                }
                // Records applied before the failure are evaluated once the feed catches up.
                sink.poll_done(&feed.name, false).await;
            }
        }
        metrics
            .feed_consecutive_failures
            .with_label_values(&[name])
            .set(failures);
        health.record(name, result.is_ok());
        if let Some(tx) = &started {
            let _ = tx.try_send(feed.name.clone());
        }
        let wait = until_next(&feed, crate::model::now());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
