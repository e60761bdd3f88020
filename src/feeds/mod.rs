//! Departmental feeds: schedules, HTTP fetching with paging, decoding and mapping.
//!
//! Invariants:
//! - Runs of one feed never overlap: each feed has one task that polls, then waits for the
//!   next cron slot after the poll ended (missed slots are not replayed one by one).
//! - A page's records are handed to the sink and committed before the cursor that follows
//!   them is saved; a poll that fails half-way keeps the cursor of the last committed page.

pub mod fetch;
pub mod map;

use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, info, warn};

pub use fetch::{Page, PollError, fetch_page};
pub use map::{MapError, map_record};

use crate::config::FeedConfig;
use crate::model::Record;
use crate::pseudonym::Pseudonymizer;

/// Counts of one ingest step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        self.rejected += o.rejected;
    }
}

/// Where a poll delivers its records: the engine, in the daemon.
pub trait Sink {
    /// The saved cursor of a feed.
    fn cursor(&self, feed: &str) -> impl Future<Output = Result<Option<String>, PollError>> + Send;
    /// Applies mapped records (and mapping failures, to count and log them) and commits
    /// the resulting state durably.
    fn ingest(
        &self,
        feed: &FeedConfig,
        records: Vec<Result<Record, MapError>>,
    ) -> impl Future<Output = Result<Counts, PollError>> + Send;
    /// Saves the cursor after the state it covers is durable.
    fn save_cursor(
        &self,
        feed: &str,
        cursor: &str,
    ) -> impl Future<Output = Result<(), PollError>> + Send;
    /// Called before a poll starts: until it completes, the feed's data may be partial.
    fn poll_started(&self, feed: &str) -> impl Future<Output = ()> + Send;
    /// Called after every poll. `caught_up` is true when the poll reached the end of the
    /// feed, so that rules reading the feed's data can be evaluated on complete data.
    fn poll_done(&self, feed: &str, caught_up: bool) -> impl Future<Output = ()> + Send;
}

/// Maps a page's records, keeping failures to report.
pub fn map_page(
    feed: &FeedConfig,
    records: &[Value],
    pseudo: &Pseudonymizer,
) -> Vec<Result<Record, MapError>> {
    records
        .iter()
        .map(|r| map_record(&feed.mapping, r, pseudo))
        .collect()
}

/// Polls a feed from its saved cursor until a page comes back short (or empty).
/// Returns the counts and whether the end of the feed was reached (not the page limit).
pub async fn poll<S: Sink + Sync>(
    feed: &FeedConfig,
    client: &reqwest::Client,
    pseudo: &Pseudonymizer,
    sink: &S,
) -> Result<(Counts, bool), PollError> {
    let mut cursor = sink.cursor(&feed.name).await?;
    let mut total = Counts::default();
    for page_no in 0..feed.max_pages_per_poll {
        let page = fetch_page(client, feed, cursor.as_deref()).await?;
        let n = page.records.len();
        if n > 0 && page.next.is_some() && page.next == cursor {
            return Err(PollError::CursorStuck {
                cursor: cursor.unwrap_or_default(),
            });
        }
        let mapped = map_page(feed, &page.records, pseudo);
        drop(page.records);
        let counts = sink.ingest(feed, mapped).await?;
        total.add(counts);
        if let Some(next) = &page.next {
            sink.save_cursor(&feed.name, next).await?;
            cursor = Some(next.clone());
        }
        debug!(feed = %feed.name, page = page_no, records = n, "page applied");
        if n < feed.page_size as usize || page.next.is_none() {
            return Ok((total, true));
        }
    }
    Ok((total, false))
}

/// The time from `now` to the feed's next cron slot.
pub fn until_next(feed: &FeedConfig, now: chrono::DateTime<chrono::FixedOffset>) -> Duration {
    feed.schedule
        .after(&now)
        .next()
        .and_then(|t| (t - now).to_std().ok())
        .unwrap_or(Duration::from_secs(3600))
}

/// Everything one feed's task needs.
pub struct FeedTask<S> {
    pub feed: FeedConfig,
    pub client: reqwest::Client,
    pub pseudo: Pseudonymizer,
    pub sink: S,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The task waits until this is true (feeds keyed by person wait for the roster).
    pub start: tokio::sync::watch::Receiver<bool>,
    /// Told the feed's name after each poll (the roster reports its first poll).
    pub report: Option<tokio::sync::mpsc::Sender<String>>,
}

/// Runs one feed forever: a poll right away (a start catches up once, not once per missed
/// slot), then one poll per cron slot. Stops when `shutdown` fires, never mid-poll.
pub async fn run_feed<S: Sink + Sync>(task: FeedTask<S>) {
    let FeedTask {
        feed,
        client,
        pseudo,
        sink,
        metrics,
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
    loop {
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
                    .with_label_values(&[feed.name.as_str()])
                    .set(crate::model::now().timestamp() as f64);
                info!(feed = %feed.name, accepted = c.accepted, duplicate = c.duplicate,
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
                warn!(feed = %feed.name, reason = e.reason(), error = %e, "poll failed; retrying at the next slot");
                // Records applied before the failure are evaluated once the feed catches up.
                sink.poll_done(&feed.name, false).await;
            }
        }
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
