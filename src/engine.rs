//! The engine: applies records to state, evaluates rules on what changed, moves alerts
//! through their lifecycle and queues the notifications they cause.
//!
//! Invariants:
//! - State is committed with the cursor covering it, in one batch (see `feeds`); alert states and the
//!   notifications they cause are committed in one batch, before anything is sent.
//! - If a commit fails, the world and the alerts are reloaded from the store before the next
//!   operation, so a retry starts from the durable state.
//! - Rules are evaluated on touched entities after a poll, on time-driven rules and pending
//!   alerts at every tick, and on everything at start (which also covers a crash between a
//!   state commit and its evaluation).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use tracing::{debug, info, warn};

use crate::alerts::{Alerts, Transition};
use crate::config::{FeedConfig, Lines, NotifyConfig};
use crate::feeds::{Counts, Mapped, Validators};
use crate::metrics::Metrics;
use crate::model::{HouseholdCategory, Month, Observation, Record};
use crate::notify::{Outbox, Templates, notifications_for};
use crate::pseudonym::Pseudonymizer;
use crate::quarantine;
use crate::rules::{EntityKind, EvalContext, Input, Rule, RuleSet};
use crate::silence::Silence;
use crate::state::{Applied, EntityRef, Rejection, Touched, World};
use crate::store::{Batch, Space, Store, StoreError, codec};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Alert(#[from] crate::alerts::AlertError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
}

pub struct Engine {
    store: Arc<dyn Store>,
    world: World,
    alerts: Alerts,
    rules: Arc<RuleSet>,
    notify: NotifyConfig,
    templates: Templates,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    /// Entities touched by polls and not yet evaluated.
    pending_eval: Touched,
    /// What each feed delivers, and the feeds that have not caught up (yet, or since a
    /// failed poll): rules reading their data wait.
    feed_inputs: BTreeMap<String, Vec<Input>>,
    busy: BTreeSet<String>,
    /// Entities whose evaluation waits for a feed to catch up.
    deferred: Vec<EntityRef>,
    /// Every household waits too, besides `deferred`: a full evaluation found no household
    /// rule ready (as at a start, before the feeds' first polls). The list of every
    /// household is made only once one is ready: at 3,000,000 households, listing them all
    /// took most of the 0.8 s of the first pass after a start, which checked none of them.
    deferred_households: bool,
    lines: Lines,
    /// Unix time of the last accepted record per feed (persisted), for absent rules.
    feed_last_data: BTreeMap<String, i64>,
    started_at: i64,
    sources: BTreeMap<Input, Vec<crate::rules::EvidenceSource>>,
    silences: Vec<Silence>,
    /// The month of the last full evaluation: a new month moves every window.
    last_full_month: Option<Month>,
    pseudo: Pseudonymizer,
    /// Records of persons not yet on the roster, by quarantine id.
    waiting: BTreeMap<String, quarantine::Waiting>,
    /// Quarantined records: id → (feed, reason), for the gauges.
    quarantined: BTreeMap<String, (String, String)>,
    retention_months: u32,
    /// A commit failed, so memory may hold changes the store does not: the world and the
    /// alerts are reloaded from the store before anything else is done (the store may be
    /// unreadable until it is writable again).
    stale: bool,
    /// Entries of the notification and audit logs older than this are deleted by `tick`;
    /// `None`: kept forever.
    log_retention: Option<std::time::Duration>,
    /// Where the state snapshot is read at the start and written at a clean stop
    /// (`state::snapshot`); `None`: the working set is always loaded from the store.
    snapshot: Option<PathBuf>,
    /// How often the daemon writes the snapshot while running; `None`: only at a clean stop.
    snapshot_every: Option<std::time::Duration>,
    /// When a snapshot was last written (or tried) or read, with the store's count of
    /// journaled keys then; `None`: none since the start.
    snapshot_taken: Option<(Instant, u64)>,
    /// Changed keys the last snapshot lacks beyond those journaled since it was taken (those
    /// a start from it caught up).
    snapshot_backlog: u64,
    /// The least bytes of months' runs worth a new base (`daemon.base_rewrite_bytes`).
    base_rewrite_bytes: u64,
    /// The least time between two snapshots written because the changes grew.
    snapshot_spacing: std::time::Duration,
    /// A base of the months being written on its own thread.
    base_job: Option<BaseJob>,
    /// After a failed base: when it failed, and the wait before the next.
    base_retry: Option<(Instant, std::time::Duration)>,
    /// The wait after the first failed base in a row ([`BASE_RETRY_FIRST`]).
    base_retry_first: std::time::Duration,
    /// The entities a pass commits together ([`EVALUATION_PART`]).
    evaluation_part: usize,
}

/// The wait before a base of the months is tried again after one failed (a full disk may
/// still take sled's small commits, and a base rewrites hundreds of MB); it doubles with
/// each failure in a row, up to [`BASE_RETRY_MAX`].
const BASE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(30);
const BASE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A base of the months being written on its own thread (`Engine::write_base_if_due`).
struct BaseJob {
    handle: std::thread::JoinHandle<Result<crate::state::BaseWritten, StoreError>>,
    started: Instant,
}

impl Drop for Engine {
    /// No writer is left behind: a base being written is finished (or fails) before the
    /// store can be opened again.
    fn drop(&mut self) {
        if let Some(job) = self.base_job.take() {
            let _ = job.handle.join();
        }
    }
}

const LAST_DATA_SUFFIX: &str = "\0last_data";
/// Observation time of the newest record a feed applied (for the cursor lag metric).
const NEWEST_SUFFIX: &str = "\0newest";
const SILENCE_VERSION: u8 = 1;
const AUDIT_VERSION: u8 = 1;

/// One write through the API, kept in the audit log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    pub token: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl AuditEntry {
    /// What `token` did now to `target`.
    pub fn by(token: &crate::api::auth::Token, action: &str, target: &str, detail: &str) -> Self {
        Self {
            at: crate::model::now().timestamp(),
            token: token.name.clone(),
            role: token.role.name().into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        }
    }
}

/// At most this many records wait for the roster; more are quarantined at once.
pub const MAX_WAITING: usize = 200_000;
/// A record waits this long for its person to appear on the roster.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// The entities whose evaluation commits together. A full evaluation of a province commits
/// in parts of this many, so that its transitions, their notifications and the store's
/// batch stay bounded: at 10,000,000 households one batch of a first full evaluation (about
/// 409,000 alerts firing at once) grew the process by more than 10 GB before its commit.
/// A poll's pass (its touched entities) is one part at any scale the bench measures.
const EVALUATION_PART: usize = 100_000;

/// What one evaluation pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvalReport {
    pub checks: u64,
    pub fired: u64,
    pub resolved: u64,
    pub notifications: u64,
}

/// The alert transitions a pass logs one by one at INFO; those past them go to DEBUG, and
/// one INFO line counts them. A province's first evaluation fires hundreds of thousands of
/// alerts at once (409,410 at 10,000,000 households), which journald's rate limit would
/// cut together with every other line of the daemon.
pub const TRANSITIONS_LOGGED_PER_PASS: u64 = 1_000;

/// The least time between two snapshots written because the changes grew (see
/// [`Engine::snapshot_if_due`]).
const SNAPSHOT_SPACING: std::time::Duration = std::time::Duration::from_secs(300);

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        store: Arc<dyn Store>,
        retention_months: u32,
        rules: Arc<RuleSet>,
        notify: NotifyConfig,
        templates: Templates,
        outbox: Arc<Mutex<Outbox>>,
        wake: Arc<tokio::sync::Notify>,
        metrics: Arc<Metrics>,
        pseudo: Pseudonymizer,
        lines: Lines,
        snapshot: Option<PathBuf>,
    ) -> Result<Self, EngineError> {
        // The alerts load on another core meanwhile: at province scale both take seconds of
        // the start (tens of thousands of alerts with their texts).
        let (loaded, alerts) = std::thread::scope(|s| {
            let alerts = s.spawn(|| {
                let alerts = Alerts::load(Arc::clone(&store));
                store.release_cache();
                alerts
            });
            let from_snapshot = snapshot
                .as_deref()
                .and_then(|p| crate::state::snapshot::load(p, store.as_ref(), retention_months));
            let loaded = match from_snapshot {
                Some(l) => Ok((
                    l.world,
                    Some((Instant::now(), store.state_keys_journaled())),
                    l.caught_up as u64,
                )),
                None => World::load(store.as_ref(), retention_months).map(|w| (w, None, 0)),
            };
            // A panic of the load (a bug) is this thread's.
            let alerts = alerts
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (loaded, alerts)
        });
        let (world, snapshot_taken, snapshot_backlog) = loaded?;
        let alerts = alerts?;
        let waiting = quarantine::waiting(store.as_ref())?
            .into_iter()
            .map(|w| (w.id.clone(), w))
            .collect();
        let mut feed_last_data = BTreeMap::new();
        for (k, v) in store.scan(Space::Cursor)? {
            let (Ok(key), Ok(bytes)) = (String::from_utf8(k), <[u8; 8]>::try_from(v.as_slice()))
            else {
                continue;
            };
            let t = i64::from_be_bytes(bytes);
            if let Some(feed) = key.strip_suffix(LAST_DATA_SUFFIX) {
                feed_last_data.insert(feed.to_string(), t);
            } else if let Some(feed) = key.strip_suffix(NEWEST_SUFFIX) {
                metrics.saw_record(feed, t);
            }
        }
        let silences = store
            .scan(Space::Silence)?
            .into_iter()
            .map(|(k, v)| codec::decode(SILENCE_VERSION, Space::Silence, &k, &v))
            .collect::<Result<Vec<Silence>, _>>()?;
        let quarantined = quarantine::entries(store.as_ref())?
            .into_iter()
            .map(|e| (e.id, (e.feed, e.reason)))
            .collect();
        let e = Self {
            store,
            world,
            alerts,
            rules,
            notify,
            templates,
            outbox,
            wake,
            metrics,
            pending_eval: Touched::default(),
            feed_inputs: BTreeMap::new(),
            busy: BTreeSet::new(),
            deferred: Vec::new(),
            deferred_households: false,
            pseudo,
            waiting,
            quarantined,
            lines,
            feed_last_data,
            started_at: crate::model::now().timestamp(),
            sources: BTreeMap::new(),
            silences,
            last_full_month: None,
            retention_months,
            stale: false,
            log_retention: None,
            snapshot,
            snapshot_every: None,
            snapshot_taken,
            snapshot_backlog,
            base_rewrite_bytes: crate::state::DEFAULT_BASE_REWRITE_BYTES,
            snapshot_spacing: SNAPSHOT_SPACING,
            base_job: None,
            base_retry: None,
            base_retry_first: BASE_RETRY_FIRST,
            evaluation_part: EVALUATION_PART,
        };
        e.update_gauges();
        e.update_quarantine_gauges();
        Ok(e)
    }

    /// `r`, marking the engine stale if it failed: the alerts may have moved in memory and
    /// not in the store.
    fn stale_on<T>(&mut self, r: Result<T, StoreError>) -> Result<T, EngineError> {
        if r.is_err() {
            self.stale = true;
        }
        Ok(r?)
    }

    /// After a failed commit: reloads the world and the alerts from the store, so that
    /// memory holds exactly what the store does (`World::rollback` cannot undo a batch once
    /// `take_batch` has drained its undo log).
    fn reload_if_stale(&mut self) -> Result<(), EngineError> {
        if self.stale {
            // A base still being written would change the store under the reload.
            self.collect_base(true);
            self.world = World::load(self.store.as_ref(), self.retention_months)?;
            self.alerts = Alerts::load(Arc::clone(&self.store))?;
            self.stale = false;
            info!(
                households = self.world.n_households(),
                alerts = self.alerts.iter().count(),
                "state reloaded from the store after a failed commit"
            );
            self.update_gauges();
        }
        Ok(())
    }

    /// Starts writing the months' base when the runs since the last one have grown enough
    /// (see `state::month_log`), after a commit or at a tick, on a thread of its own: ingest and
    /// evaluation go on meanwhile, and a start never reads more than half a base of runs.
    /// First takes in a base written meanwhile.
    fn write_base_if_due(&mut self) {
        self.collect_base(false);
        let waiting = self
            .base_retry
            .is_some_and(|(failed, wait)| failed.elapsed() < wait);
        // Never from a world that may not be what the store holds (a failed commit, or one
        // the base before may have changed: `collect_base` says).
        let settled = !self.stale && self.world.is_settled();
        if self.base_job.is_none()
            && !waiting
            && settled
            && self.world.base_due(self.base_rewrite_bytes)
        {
            let source = self.world.base_source();
            let store = Arc::clone(&self.store);
            let spawned = std::thread::Builder::new()
                .name("months-base".into())
                .spawn(move || crate::state::write_base_from(&source, store.as_ref()));
            match spawned {
                Ok(handle) => {
                    self.base_job = Some(BaseJob {
                        handle,
                        started: Instant::now(),
                    })
                }
                Err(e) => {
                    warn!(error = %e, "no thread for the months' base; it is tried again after a later commit or evaluation tick")
                }
            }
        }
        self.metrics.run_bytes.set(self.world.run_bytes() as i64);
    }

    /// Takes in the base being written on its thread, once it is done, or at once with
    /// `wait` (before a snapshot or a reload, which must see the store's base).
    fn collect_base(&mut self, wait: bool) {
        let Some(job) = self.base_job.take() else {
            return;
        };
        if !wait && !job.handle.is_finished() {
            self.base_job = Some(job);
            return;
        }
        let written = job
            .handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let outcome = match written {
            Ok(written) => {
                self.base_retry = None;
                self.world.base_written(written);
                // The last snapshot can no longer be brought up to the store (the runs
                // it would need are in the base now): a start after a crash would read
                // the store. Write the next one as soon as changes that many allow.
                let limit = crate::state::snapshot::catch_up_limit(self.world.n_households());
                self.snapshot_backlog = self.snapshot_backlog.max(limit as u64 + 1);
                "written"
            }
            Err(e) => {
                // A base changes nothing in memory but where the months' log stands, which
                // a commit that failed yet was applied may have moved: read that again
                // (not the whole store), or reload everything once the store can say.
                if self.world.read_log_state(self.store.as_ref()).is_err() {
                    self.stale = true;
                }
                let first = self.base_retry_first;
                let wait = self.base_retry.map_or(first, |(_, w)| {
                    w.saturating_mul(2).min(BASE_RETRY_MAX).max(first)
                });
                self.base_retry = Some((Instant::now(), wait));
                warn!(error = %e, retry_in_seconds = wait.as_secs(), "months' base not written; the runs after the last one stay, and it is tried again after a later commit or evaluation tick once the wait has passed");
                "failed"
            }
        };
        let m = &self.metrics;
        m.base_writes.with_label_values(&[outcome]).inc();
        m.base_write_duration
            .observe(job.started.elapsed().as_secs_f64());
        m.run_bytes.set(self.world.run_bytes() as i64);
    }

    /// Waits for a base of the months being written, if any, and takes it in. (Writing a
    /// snapshot, a reload and dropping the engine wait by themselves.)
    pub fn finish_base(&mut self) {
        self.collect_base(true);
    }

    /// From now on, a failed base of the months is tried again after `first` (doubling with
    /// each failure in a row); a wait already begun is shortened to it.
    pub fn set_base_retry_wait(&mut self, first: std::time::Duration) {
        self.base_retry_first = first;
        if let Some((_, wait)) = &mut self.base_retry {
            *wait = (*wait).min(first);
        }
    }

    /// From now on, a base of the months is written once the runs since the last one hold
    /// more than `bytes` and a quarter of the base (`daemon.base_rewrite_bytes`).
    pub fn set_base_rewrite_bytes(&mut self, bytes: u64) {
        self.base_rewrite_bytes = bytes;
    }

    /// From now on, `tick` deletes entries of the notification and audit logs older than
    /// `keep` (`daemon.log_retention`).
    pub fn set_log_retention(&mut self, keep: std::time::Duration) {
        self.log_retention = Some(keep);
    }

    /// Deletes the log entries older than the log retention; their keys begin with the time.
    fn prune_logs(&self, now: i64) {
        let Some(keep) = self.log_retention else {
            return;
        };
        let before = now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
        for (space, log) in [(Space::NotifyLog, "notifications"), (Space::Audit, "audit")] {
            // At most one day of entries per pass: a backlog of years (a first start with a
            // retention, a clock set forward) is worked off pass by pass instead of holding
            // the engine for one long deletion.
            let oldest = match self.store.first_key_from(space, &[]) {
                Ok(Some(k)) => k
                    .first_chunk::<8>()
                    .map(|t| i64::from_be_bytes(*t))
                    .unwrap_or(i64::MIN),
                Ok(None) => continue,
                Err(e) => {
                    warn!(log, error = %e, "reading the oldest log entry failed; retrying at the next pass");
                    continue;
                }
            };
            if oldest >= before {
                continue;
            }
            let bound = before.min(oldest.saturating_add(86_400));
            match crate::store::prune_before(
                self.store.as_ref(),
                space,
                &bound.to_be_bytes(),
                10_000,
            ) {
                Ok(0) => {}
                Ok(n) => info!(
                    log,
                    entries = n,
                    "log entries past daemon.log_retention deleted"
                ),
                Err(e) => {
                    warn!(log, error = %e, "deleting old log entries failed; retrying at the next pass")
                }
            }
        }
    }

    /// Writes the state snapshot (at a clean stop, after the last commit, and while running),
    /// so that the next start reads one file instead of the store's month keys. Returns
    /// whether it wrote one: not without a snapshot path, nor while memory may differ from
    /// the store.
    pub fn save_snapshot(&mut self) -> Result<bool, crate::state::snapshot::SnapshotError> {
        // A snapshot taken before a base that is then written would be set aside at the
        // next start: wait for it.
        if self.snapshot.is_some() {
            self.collect_base(true);
        }
        match &self.snapshot {
            Some(path) if !self.stale && self.world.is_settled() => {
                // Also when the write fails: the next try waits for the interval.
                self.snapshot_taken = Some((Instant::now(), self.store.state_keys_journaled()));
                crate::state::snapshot::save(&self.world, self.store.as_ref(), path)?;
                self.snapshot_backlog = 0;
                Ok(true)
            }
            Some(_) => {
                info!(
                    "state snapshot not written: memory may differ from the store after a failed commit; the next start loads the store"
                );
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// From now on, [`Engine::snapshot_if_due`] writes the snapshot every `every` while the
    /// state changes (`daemon.snapshot_interval`).
    pub fn set_snapshot_interval(&mut self, every: std::time::Duration) {
        self.snapshot_every = Some(every);
    }

    /// From now on, snapshots written because the changes grew are at least `spacing` apart
    /// (`SNAPSHOT_SPACING` by default).
    pub fn set_snapshot_spacing(&mut self, spacing: std::time::Duration) {
        self.snapshot_spacing = spacing;
    }

    /// Writes the state snapshot when it is due, so that a start after a crash reads it
    /// too: at the first call after a start that loaded the store, then once the interval
    /// has passed with the state changed, or sooner (but not within the spacing,
    /// `SNAPSHOT_SPACING` by default, of the last, so that a bulk ingest is not slowed
    /// by a write at every tick) when the changes since the last one approach what a start
    /// would read again
    /// ([`crate::state::snapshot::catch_up_limit`]), or a base of the months was written
    /// since (the runs the last one would need are gone).
    pub fn snapshot_if_due(&mut self) -> Result<bool, crate::state::snapshot::SnapshotError> {
        let Some(every) = self.snapshot_every else {
            return Ok(false);
        };
        let due = match self.snapshot_taken {
            None => true,
            Some((at, journaled)) => {
                let changes = self.snapshot_backlog
                    + self.store.state_keys_journaled().saturating_sub(journaled);
                let limit = crate::state::snapshot::catch_up_limit(self.world.n_households());
                changes > 0
                    && (at.elapsed() >= every
                        || (changes >= limit as u64 / 2
                            && at.elapsed() >= self.snapshot_spacing.min(every)))
            }
        };
        if !due {
            return Ok(false);
        }
        let began = Instant::now();
        let written = self.save_snapshot()?;
        if written {
            info!(
                seconds = began.elapsed().as_secs_f64(),
                households = self.world.n_households(),
                "state snapshot written"
            );
        }
        Ok(written)
    }

    /// Commits a pass's results every `entities` entities instead of every
    /// [`EVALUATION_PART`]: the tests' way to make a small world's pass commit in parts.
    #[doc(hidden)]
    pub fn set_evaluation_part(&mut self, entities: usize) {
        self.evaluation_part = entities.max(1);
    }

    /// Declares the feeds; until each has caught up once, rules reading its data wait.
    pub fn set_feeds(&mut self, feeds: &[FeedConfig]) {
        self.feed_inputs = feeds.iter().map(|f| (f.name.clone(), f.inputs())).collect();
        self.sources = crate::rules::sources_of(feeds);
        self.busy = self.feed_inputs.keys().cloned().collect();
    }

    pub fn poll_started(&mut self, feed: &str) {
        self.busy.insert(feed.to_string());
    }

    pub fn poll_finished(&mut self, feed: &str, caught_up: bool) {
        if caught_up {
            self.busy.remove(feed);
        }
    }

    fn blocked_inputs(&self) -> BTreeSet<Input> {
        self.busy
            .iter()
            .filter_map(|f| self.feed_inputs.get(f))
            .flatten()
            .copied()
            .collect()
    }

    pub fn world(&self) -> &World {
        &self.world
    }
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    pub fn cursor(&self, feed: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .get(Space::Cursor, feed.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Applies records and commits the changed state, and `cursor` (the feed's cursor after
    /// these records) in the same commit. Rejected records go to the quarantine (logged and
    /// counted); records of persons not yet on the roster wait for the next roster poll, up
    /// to [`MAX_WAITING`] of them.
    pub fn ingest(
        &mut self,
        feed: &FeedConfig,
        records: Vec<Mapped<'_>>,
        now: DateTime<FixedOffset>,
        cursor: Option<&str>,
    ) -> Result<Counts, EngineError> {
        self.ingest_page(feed, &records, now, cursor)
    }

    /// [`Engine::ingest`], leaving the records to the caller: a poll frees a page's records on
    /// its own thread, not the engine's (freeing a bulk page's decoded records took a tenth of
    /// the applying thread's time).
    pub fn ingest_page(
        &mut self,
        feed: &FeedConfig,
        records: &[Mapped<'_>],
        now: DateTime<FixedOffset>,
        cursor: Option<&str>,
    ) -> Result<Counts, EngineError> {
        let mut counts = Counts::default();
        let mut rejected: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut extra = Batch::default();
        let mut new_waiting = Vec::new();
        let mut new_quarantine = Vec::new();
        let mut newest: Option<i64> = None;
        // A sample's time is the start of its month: the newest month is kept, and turned
        // into a time once, not for every record (a calendar conversion each).
        let mut newest_month: Option<Month> = None;
        self.reload_if_stale()?;
        self.world.begin();
        let mapped: Vec<Option<&Record>> = records.iter().map(|m| m.result.as_ref().ok()).collect();
        let looked_up = self.world.person_slots(mapped.iter().copied());
        let applied = self.world.apply_page(&feed.name, &mapped, now, &looked_up);
        drop((mapped, looked_up));
        for ((i, m), applied) in records.iter().enumerate().zip(applied) {
            let outcome = match (&m.result, applied) {
                (Err(e), _) => Err((e.reason, e.to_string())),
                (Ok(rec), applied) => applied
                    // Invariant: `apply_page` answers every record that mapped; one it did
                    // not would be applied here, on its own.
                    .unwrap_or_else(|| self.world.apply(&feed.name, rec, now))
                    .map_err(|e| (e.reason(), e.to_string())),
            };
            let record_id = || match &m.result {
                Ok(x) => Some(x.id.clone()),
                Err(e) => e.record.clone(),
            };
            // The redacted raw record is kept only for records that wait or are rejected.
            let raw = || {
                m.raw
                    .as_ref()
                    .and_then(|r| serde_json::to_value(r).ok())
                    .map(|v| quarantine::redact(&v, &feed.mapping, &self.pseudo).to_string())
            };
            if outcome.is_ok()
                && let Ok(rec) = &m.result
            {
                if let Observation::Sample { month, .. } = &rec.observation {
                    newest_month = Some(newest_month.map_or(*month, |n| n.max(*month)));
                } else {
                    let t = rec.observation.time().unwrap_or(now.timestamp());
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
            match outcome {
                Ok(Applied::Changed) => counts.accepted += 1,
                Ok(Applied::Duplicate) => counts.duplicate += 1,
                Err(("unknown_person", _))
                    if self.waiting.len() + new_waiting.len() < MAX_WAITING =>
                {
                    counts.waiting += 1;
                    let record_id = record_id();
                    let raw = raw();
                    if let Ok(record) = &m.result {
                        let w = quarantine::Waiting {
                            id: quarantine::entry_id(
                                &feed.name,
                                record_id.as_deref(),
                                &format!("#{i}"),
                            ),
                            feed: feed.name.clone(),
                            record: record.clone(),
                            raw,
                            since: now.timestamp(),
                        };
                        quarantine::put_waiting(&mut extra, &w);
                        new_waiting.push(w);
                    }
                }
                Err((reason, detail)) => {
                    let record_id = record_id();
                    counts.rejected += 1;
                    *rejected.entry(reason).or_default() += 1;
                    // The record id is the department's, not personal data; field values are never logged.
                    warn!(feed = %feed.name, record = record_id.as_deref().unwrap_or(""), index = i, reason,
                          error = %detail, "record rejected");
                    let raw = raw();
                    let e = quarantine::Entry {
                        id: quarantine::entry_id(
                            &feed.name,
                            record_id.as_deref(),
                            &raw.clone().unwrap_or_else(|| detail.clone()),
                        ),
                        feed: feed.name.clone(),
                        record_id,
                        reason: reason.to_string(),
                        detail,
                        raw,
                        at: now.timestamp(),
                    };
                    quarantine::put_entry(&mut extra, &e);
                    new_quarantine.push(e);
                }
            }
        }
        if let Some(t) = newest_month.map(Month::start_time) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
        let (mut batch, touched) = self.world.take_batch();
        batch.ops.extend(extra.ops);
        if let Some(c) = cursor {
            batch.put(
                Space::Cursor,
                feed.name.as_bytes().to_vec(),
                c.as_bytes().to_vec(),
            );
        }
        if counts.accepted > 0 {
            batch.put(
                Space::Cursor,
                format!("{}{LAST_DATA_SUFFIX}", feed.name).into_bytes(),
                now.timestamp().to_be_bytes().to_vec(),
            );
        }
        let newest = newest.map(|t| {
            self.metrics
                .newest_record(&feed.name)
                .map_or(t, |known| known.max(t))
        });
        if let Some(t) = newest {
            batch.put(
                Space::Cursor,
                format!("{}{NEWEST_SUFFIX}", feed.name).into_bytes(),
                t.to_be_bytes().to_vec(),
            );
        }
        if let Err(e) = self.store.commit(batch) {
            self.stale = true;
            return Err(e.into());
        }
        self.write_base_if_due();
        if counts.accepted > 0 {
            self.feed_last_data
                .insert(feed.name.clone(), now.timestamp());
        }
        if let Some(t) = newest {
            self.metrics.saw_record(&feed.name, t);
        }
        for w in new_waiting {
            self.waiting.insert(w.id.clone(), w);
        }
        for e in new_quarantine {
            self.quarantined.insert(e.id.clone(), (e.feed, e.reason));
        }
        let name = feed.name.as_str();
        let m = &self.metrics;
        for (outcome, n) in [
            ("accepted", counts.accepted),
            ("duplicate", counts.duplicate),
            ("rejected", counts.rejected),
            ("waiting", counts.waiting),
        ] {
            m.feed_records.with_label_values(&[name, outcome]).inc_by(n);
        }
        for (reason, n) in rejected {
            m.feed_records_rejected
                .with_label_values(&[name, reason])
                .inc_by(n);
        }
        self.update_quarantine_gauges();
        self.pending_eval.absorb(touched);
        Ok(counts)
    }

    /// Re-applies records waiting for their person to appear on the roster. Those still
    /// unknown after [`MAX_WAIT`] go to the quarantine.
    pub fn retry_waiting(&mut self, now: DateTime<FixedOffset>) -> Result<Counts, EngineError> {
        let mut counts = Counts::default();
        if self.waiting.is_empty() {
            return Ok(counts);
        }
        self.reload_if_stale()?;
        let mut batch = Batch::default();
        let mut done = Vec::new();
        let mut to_quarantine = Vec::new();
        self.world.begin();
        for (id, w) in &self.waiting {
            match self.world.apply(&w.feed, &w.record, now) {
                Ok(Applied::Changed) => {
                    counts.accepted += 1;
                    self.metrics
                        .feed_records
                        .with_label_values(&[w.feed.as_str(), "accepted"])
                        .inc();
                    done.push(id.clone());
                }
                Ok(Applied::Duplicate) => done.push(id.clone()),
                Err(Rejection::UnknownPerson)
                    if now.timestamp() - w.since < MAX_WAIT.as_secs() as i64 => {}
                Err(e) => {
                    counts.rejected += 1;
                    warn!(feed = %w.feed, record = %w.record.id, reason = e.reason(), error = %e, "waiting record rejected");
                    to_quarantine.push(quarantine::Entry {
                        id: id.clone(),
                        feed: w.feed.clone(),
                        record_id: Some(w.record.id.clone()),
                        reason: e.reason().to_string(),
                        detail: format!(
                            "{e} (waited since {})",
                            crate::alerts::format_time(w.since)
                        ),
                        raw: w.raw.clone(),
                        at: now.timestamp(),
                    });
                    done.push(id.clone());
                }
            }
        }
        let (state, touched) = self.world.take_batch();
        batch.ops.extend(state.ops);
        for id in &done {
            batch.delete(Space::Waiting, id.as_bytes().to_vec());
        }
        for e in &to_quarantine {
            quarantine::put_entry(&mut batch, e);
        }
        if let Err(e) = self.store.commit(batch) {
            self.stale = true;
            return Err(e.into());
        }
        self.write_base_if_due();
        for id in done {
            self.waiting.remove(&id);
        }
        for e in to_quarantine {
            self.metrics
                .feed_records_rejected
                .with_label_values(&[e.feed.as_str(), e.reason.as_str()])
                .inc();
            self.quarantined.insert(e.id, (e.feed, e.reason));
        }
        self.update_quarantine_gauges();
        self.pending_eval
            .absorb(Touched::of_households(touched.households));
        Ok(counts)
    }

    /// Whether a feed delivers the roster (its polls release waiting records).
    pub fn is_roster_feed(&self, feed: &str) -> bool {
        self.feed_inputs
            .get(feed)
            .is_some_and(|i| i.contains(&Input::Roster))
    }

    /// Removes quarantine entries (they were replayed successfully).
    pub fn forget_quarantined(&mut self, ids: &[String]) -> Result<(), EngineError> {
        let mut b = Batch::default();
        for id in ids {
            b.delete(Space::Quarantine, id.as_bytes().to_vec());
        }
        self.store.commit(b)?;
        for id in ids {
            self.quarantined.remove(id);
        }
        self.update_quarantine_gauges();
        Ok(())
    }

    fn update_quarantine_gauges(&self) {
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (feed, reason) in self.quarantined.values() {
            *counts.entry((feed.as_str(), reason.as_str())).or_default() += 1;
        }
        self.metrics.quarantine.reset();
        for ((feed, reason), n) in counts {
            self.metrics
                .quarantine
                .with_label_values(&[feed, reason])
                .set(n);
        }
        self.metrics.waiting.set(self.waiting.len() as i64);
    }

    pub fn validators(&self, feed: &str) -> Result<Option<Validators>, StoreError> {
        Ok(self
            .store
            .get(Space::Cursor, format!("{feed}\0validators").as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn save_validators(&self, feed: &str, v: &Validators) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.put(
            Space::Cursor,
            format!("{feed}\0validators").into_bytes(),
            serde_json::to_vec(v).unwrap_or_default(),
        );
        self.store.commit(b)
    }

    /// Evaluates the entities touched since the last call (and those deferred while a feed
    /// was catching up) with every rule whose inputs are complete.
    pub fn evaluate_touched(
        &mut self,
        now: DateTime<FixedOffset>,
    ) -> Result<EvalReport, EngineError> {
        self.reload_if_stale()?;
        if self.deferred_households && self.household_rule_ready() {
            let others = std::mem::take(&mut self.deferred);
            self.deferred = self.with_every_household(others);
            self.deferred_households = false;
        }
        let t = std::mem::take(&mut self.pending_eval);
        let deferred = std::mem::take(&mut self.deferred);
        // Each once (deferred lists are without repeats); the order does not matter, as
        // transitions are reported in rule and entity order.
        // While every household waits unlisted, the touched ones wait with them: no rule of
        // theirs is ready, and they are listed with all the others once one is.
        let households = if self.deferred_households {
            Vec::new()
        } else {
            t.households
        };
        let mut touched: Vec<EntityRef> = households
            .into_iter()
            .map(EntityRef::Household)
            .chain(t.villages.into_iter().map(EntityRef::Village))
            .collect();
        // Polls since the last pass may have touched an entity more than once.
        touched.sort_unstable();
        touched.dedup();
        let entities = if deferred.is_empty() {
            touched
        } else if touched.is_empty() {
            // The first pass after a start: every entity deferred, none touched yet.
            deferred
        } else {
            // The touched entities not deferred already, found by a walk over the deferred
            // ones against a set of the few touched: a set of the deferred (a province's
            // households) took about 0.4 s at 3,000,000 households.
            let mut left: HashSet<&EntityRef> = touched.iter().collect();
            for e in &deferred {
                if left.is_empty() {
                    break;
                }
                left.remove(e);
            }
            let extra: Vec<EntityRef> = touched
                .iter()
                .filter(|e| left.contains(e))
                .cloned()
                .collect();
            let mut all = deferred;
            all.extend(extra);
            all
        };
        if entities.is_empty() {
            return Ok(EvalReport::default());
        }
        let blocked = self.blocked_inputs();
        let ready = |r: &Rule| !r.kind.inputs().iter().any(|i| blocked.contains(i));
        let any_waiting = self.rules.rules.iter().any(|r| !ready(r));
        let result = self.evaluate_set(&entities, ready, now, "poll");
        if any_waiting || result.is_err() {
            self.deferred = entities;
        } else {
            // Nothing waits: no household rule, or every one ready (and listed above).
            self.deferred_households = false;
        }
        result
    }

    /// Whether some household rule has all its inputs (no feed it reads is catching up).
    fn household_rule_ready(&self) -> bool {
        let blocked = self.blocked_inputs();
        self.rules.rules.iter().any(|r| {
            r.kind.entity() == EntityKind::Household
                && !r.kind.inputs().iter().any(|i| blocked.contains(i))
        })
    }

    /// `deferred` with every household (and every entity a full evaluation lists), each once.
    fn with_every_household(&self, deferred: Vec<EntityRef>) -> Vec<EntityRef> {
        let mut all = self.all_entities(true);
        // The households are all in; the other entities are few.
        let listed: HashSet<&EntityRef> = all
            .iter()
            .filter(|e| !matches!(e, EntityRef::Household(_)))
            .collect();
        let extra: Vec<EntityRef> = deferred
            .into_iter()
            .filter(|e| !matches!(e, EntityRef::Household(_)) && !listed.contains(e))
            .collect();
        all.extend(extra);
        all
    }

    /// Every entity any rule may apply to, and those of existing alerts; households only
    /// when asked (the periodic pass needs none, and there are many).
    /// Each once. Households come in the order of the household index, which is the order
    /// of memory: a full pass reads it front to back.
    fn all_entities(&self, households: bool) -> Vec<EntityRef> {
        let mut others: BTreeSet<EntityRef> = BTreeSet::new();
        for v in self.world.villages() {
            others.insert(EntityRef::Village(v.code));
            others.insert(EntityRef::Township(v.code.get() / 1000));
            others.insert(EntityRef::County(v.code.county()));
        }
        others.extend(self.world.counties().map(|c| EntityRef::County(c.code)));
        for r in &self.rules.rules {
            // Only feeds of this configuration: a rule about another feed does not apply.
            if let crate::rules::RuleKind::Absent { feed, .. } = &r.kind
                && self.feed_inputs.contains_key(feed)
            {
                others.insert(EntityRef::Feed(feed.clone()));
            }
        }
        // Alerts whose entity is gone must resolve too.
        for e in self
            .alerts
            .iter()
            .filter_map(|a| EntityRef::parse(&a.entity))
        {
            match &e {
                EntityRef::Household(_) if !households => {}
                EntityRef::Household(id) if self.world.household(id).is_some() => {}
                _ => {
                    others.insert(e);
                }
            }
        }
        let mut entities: Vec<EntityRef> = Vec::new();
        if households {
            entities.extend(
                self.world
                    .households()
                    .map(|h| EntityRef::Household(h.id.clone())),
            );
        }
        entities.extend(others);
        entities
    }

    /// Evaluates every entity with every rule (at start, after a rules change, and when a
    /// new month starts, as windows move).
    pub fn evaluate_all(&mut self, now: DateTime<FixedOffset>) -> Result<EvalReport, EngineError> {
        self.reload_if_stale()?;
        // Every entity, once: it supersedes what was deferred (the deferred list must stay
        // without repeats, or a blocked feed would make it grow by a province each time).
        // The households are listed only once a rule of theirs is ready (`evaluate_touched`).
        let ready = self.household_rule_ready();
        self.deferred = self.all_entities(ready);
        self.deferred_households = !ready;
        self.last_full_month = Some(Month::of(now));
        self.evaluate_touched(now)
    }

    /// The periodic pass: a full evaluation when a month begins; time-driven rules on their
    /// entities; entities with pending alerts (for `for`).
    pub fn tick(&mut self, now: DateTime<FixedOffset>) -> Result<EvalReport, EngineError> {
        self.collect_base(false);
        self.reload_if_stale()?;
        // A base that failed is tried again once its wait has passed, also when no commit
        // comes (the feeds may have nothing new for hours).
        self.write_base_if_due();
        let mut report = if self.last_full_month != Some(Month::of(now)) {
            self.evaluate_all(now)?
        } else {
            self.evaluate_touched(now)?
        };
        let blocked = self.blocked_inputs();
        let ready = |r: &Rule| !r.kind.inputs().iter().any(|i| blocked.contains(i));
        if self.rules.rules.iter().any(|r| r.kind.time_driven()) {
            let entities = self.all_entities(false);
            let r = self.evaluate_set(
                &entities,
                |rule| rule.kind.time_driven() && ready(rule),
                now,
                "tick",
            )?;
            add(&mut report, r);
        }
        let mut by_rule: BTreeMap<String, BTreeSet<EntityRef>> = BTreeMap::new();
        for (rule, entity) in self.alerts.pending_entities() {
            if let Some(e) = EntityRef::parse(&entity) {
                by_rule.entry(rule).or_default().insert(e);
            }
        }
        for (rule, ents) in by_rule {
            let ents: Vec<EntityRef> = ents.into_iter().collect();
            let r = self.evaluate_set(&ents, |r| r.name == rule && ready(r), now, "tick")?;
            add(&mut report, r);
        }
        self.alerts.expire_resolved(now.timestamp());
        self.prune_logs(now.timestamp());
        let mut b = Batch::default();
        let mut queued = Vec::new();
        if !self.notify.escalate_to.is_empty() {
            let before = now.timestamp() - self.notify.escalate_after.as_secs() as i64;
            let escalations = self.alerts.take_escalations(before, now.timestamp());
            for a in self.stale_on(escalations)? {
                if let Some(reason) = self.muted(&a, now.timestamp()) {
                    self.metrics
                        .notifications_suppressed
                        .with_label_values(&[reason])
                        .inc();
                    continue;
                }
                warn!(rule = %a.rule, fingerprint = %a.fingerprint, "warning without disposition past the time limit: escalated");
                self.metrics
                    .escalations
                    .with_label_values(&[a.rule.as_str()])
                    .inc();
                queued.extend(crate::notify::escalation_for(
                    &a,
                    &self.notify,
                    &self.templates,
                    self.store.as_ref(),
                    now.timestamp(),
                    &mut b,
                )?);
            }
        }
        let global = self.notify.repeat_interval.as_secs() as i64;
        let route = self.notify.route.clone();
        let due = self.alerts.take_repeats(now.timestamp(), |a| {
            route
                .resolve(&a.labels)
                .into_iter()
                .map(|r| {
                    (
                        r.path.clone(),
                        r.grouping
                            .repeat_interval
                            .map_or(global, |d| d.as_secs() as i64),
                    )
                })
                .collect()
        });
        for (a, routes) in self.stale_on(due)? {
            if let Some(reason) = self.muted(&a, now.timestamp()) {
                self.metrics
                    .notifications_suppressed
                    .with_label_values(&[reason])
                    .inc();
                continue;
            }
            info!(rule = %a.rule, fingerprint = %a.fingerprint, repeat = a.repeats, "reminder: warning still without a disposition");
            queued.extend(crate::notify::repeat_for(
                &a,
                &routes,
                &self.notify,
                &self.templates,
                self.store.as_ref(),
                now.timestamp(),
                &mut b,
            )?);
        }
        let written = self.alerts.write_changes(&mut b);
        self.stale_on(written)?;
        if let Err(e) = self.store.commit(b) {
            self.stale = true;
            return Err(e.into());
        }
        self.enqueue(queued);
        self.metrics
            .store_size
            .set(self.store.size_on_disk() as i64);
        Ok(report)
    }

    /// Replaces the rules and policy lines (a reload) and evaluates everything with them.
    pub fn replace_rules(
        &mut self,
        rules: Arc<RuleSet>,
        lines: Lines,
        now: DateTime<FixedOffset>,
    ) -> Result<EvalReport, EngineError> {
        self.rules = rules;
        self.lines = lines;
        self.evaluate_all(now)
    }

    pub fn set_notify(&mut self, notify: NotifyConfig, templates: Templates) {
        self.notify = notify;
        self.templates = templates;
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Evaluates the rules that pass `rule_filter` on `entities` (each once, in any order),
    /// committing every [`EVALUATION_PART`] entities' transitions and notifications together.
    fn evaluate_set(
        &mut self,
        entities: &[EntityRef],
        rule_filter: impl Fn(&Rule) -> bool,
        now: DateTime<FixedOffset>,
        trigger: &str,
    ) -> Result<EvalReport, EngineError> {
        let began = Instant::now();
        let mut report = EvalReport::default();
        let rules = Arc::clone(&self.rules);
        // Only county rules read the firing households, and only county entities have them:
        // a poll's pass (households and villages) skips the walk over every alert. Taken once
        // for all the parts, so a county rule sees the households as they were before this
        // pass, wherever its county falls in the list.
        let firing = if entities.iter().any(|e| matches!(e, EntityRef::County(_))) {
            self.alerts.firing_households()
        } else {
            Vec::new()
        };
        for part in entities.chunks(self.evaluation_part) {
            let logged = report.fired + report.resolved;
            let r = self.evaluate_part(part, &rules, &rule_filter, &firing, now, logged)?;
            add(&mut report, r);
        }
        let transitions = report.fired + report.resolved;
        if transitions > TRANSITIONS_LOGGED_PER_PASS {
            info!(
                trigger,
                transitions,
                logged = TRANSITIONS_LOGGED_PER_PASS,
                "alert transitions past the first of this pass logged at debug level only (GUARDLINE_LOG=guardline=debug); every alert is in the alerts API and the metrics"
            );
        }
        let seconds = began.elapsed().as_secs_f64();
        self.metrics
            .evaluation_duration
            .with_label_values(&[trigger])
            .observe(seconds);
        self.metrics
            .rule_checks
            .with_label_values(&[trigger])
            .inc_by(report.checks);
        self.update_gauges();
        if report.checks > 0 {
            info!(
                trigger,
                entities = entities.len(),
                checks = report.checks,
                fired = report.fired,
                resolved = report.resolved,
                notifications = report.notifications,
                seconds,
                "rules evaluated"
            );
        }
        Ok(report)
    }

    /// One part of [`Engine::evaluate_set`]: the rules on `entities`, then their transitions,
    /// the notifications these cause and the alerts' changes committed in one batch, and
    /// the notifications queued once that commit is durable. `logged`: the transitions of
    /// the pass's earlier parts (see [`TRANSITIONS_LOGGED_PER_PASS`]).
    fn evaluate_part(
        &mut self,
        entities: &[EntityRef],
        rules: &RuleSet,
        rule_filter: impl Fn(&Rule) -> bool,
        firing: &[crate::rules::FiringHousehold],
        now: DateTime<FixedOffset>,
        logged: u64,
    ) -> Result<EvalReport, EngineError> {
        let mut report = EvalReport::default();
        let passed = {
            let ctx = EvalContext {
                world: &self.world,
                now,
                lines: &self.lines,
                data_until: None,
                firing,
                feed_last_data: &self.feed_last_data,
                started_at: self.started_at,
                sources: &self.sources,
            };
            self.alerts.pass(rules, &ctx, entities, rule_filter)
        };
        let (checks, transitions) = self.stale_on(passed)?;
        report.checks = checks;
        let mut batch = Batch::default();
        let mut queued = Vec::new();
        for t in &transitions {
            let (state, alert) = match t {
                Transition::Fired(a) => ("firing", a),
                Transition::Resolved(a) => ("resolved", a),
            };
            match t {
                Transition::Fired(_) => report.fired += 1,
                Transition::Resolved(_) => report.resolved += 1,
            }
            let county = alert.county.map(|c| c.to_string()).unwrap_or_default();
            if logged + report.fired + report.resolved <= TRANSITIONS_LOGGED_PER_PASS {
                info!(rule = %alert.rule, county = %county, fingerprint = %alert.fingerprint, state, "alert transition");
            } else {
                debug!(rule = %alert.rule, county = %county, fingerprint = %alert.fingerprint, state, "alert transition");
            }
            self.metrics
                .alert_transitions
                .with_label_values(&[alert.rule.as_str(), state])
                .inc();
            queued.extend(notifications_for(
                t,
                &self.notify,
                &self.templates,
                self.store.as_ref(),
                now.timestamp(),
                &mut batch,
            )?);
        }
        let written = self.alerts.write_changes(&mut batch);
        self.stale_on(written)?;
        self.record_at_risk(now);
        let (state_batch, _) = self.world.take_batch();
        batch.ops.extend(state_batch.ops);
        if let Err(e) = self.store.commit(batch) {
            self.stale = true;
            return Err(e.into());
        }
        report.notifications = queued.len() as u64;
        self.enqueue(queued);
        Ok(report)
    }

    fn enqueue(&self, queued: Vec<crate::notify::Notification>) {
        if queued.is_empty() {
            return;
        }
        if let Ok(mut o) = self.outbox.lock() {
            for n in &queued {
                o.insert(n);
            }
            self.metrics.set_outbox(o.len(), o.oldest_created());
        }
        self.wake.notify_one();
    }

    /// Why an alert's notifications are withheld: an active silence, or an inhibition.
    fn muted(&self, alert: &crate::alerts::Alert, now: i64) -> Option<&'static str> {
        if self
            .silences
            .iter()
            .any(|s| s.active(now) && s.matches(&alert.labels))
        {
            return Some("silenced");
        }
        if self.notify.inhibit.is_empty() {
            return None;
        }
        let firing: Vec<&BTreeMap<String, String>> = self
            .alerts
            .iter()
            .filter(|a| a.status == crate::alerts::Status::Firing)
            .map(|a| &a.labels)
            .collect();
        self.notify
            .inhibit
            .iter()
            .any(|i| i.mutes(&alert.labels, firing.iter().copied()))
            .then_some("inhibited")
    }

    /// The firing alerts routed to `receiver` and not muted, as Alertmanager takes them, ending
    /// `hold` seconds from now unless re-sent.
    ///
    /// The description of each comes from the store; while it cannot be read (the store
    /// closed after a failed write), the alerts go without it rather than not at all, so
    /// that Alertmanager does not take them for resolved.
    pub fn firing_for(&self, receiver: &str, now: i64, hold: i64) -> Vec<serde_json::Value> {
        let mut unread = 0usize;
        let mut last_error = None;
        let out = self
            .alerts
            .iter()
            .filter(|a| a.status == crate::alerts::Status::Firing)
            .filter(|a| {
                self.notify
                    .route
                    .receivers_for(&a.labels)
                    .iter()
                    .any(|r| r == receiver)
            })
            .filter(|a| self.muted(a, now).is_none())
            .map(|a| {
                let description = match self.alerts.full(&a.fingerprint) {
                    Ok(full) => full.map(|f| f.description).unwrap_or_default(),
                    Err(e) => {
                        unread += 1;
                        last_error = Some(e);
                        String::new()
                    }
                };
                crate::notify::am_alert(
                    &a.labels,
                    &a.summary,
                    &description,
                    a.fired_at.unwrap_or(a.active_since),
                    now + hold,
                )
            })
            .collect();
        if let Some(e) = last_error {
            warn!(receiver, alerts = unread, error = %e, "descriptions of firing alerts not read from the store: sent without them");
        }
        out
    }

    pub fn silences(&self) -> &[Silence] {
        &self.silences
    }

    pub fn add_silence(&mut self, s: Silence) -> Result<(), EngineError> {
        let mut b = Batch::default();
        b.put(
            Space::Silence,
            s.id.as_bytes().to_vec(),
            codec::encode(SILENCE_VERSION, &s),
        );
        self.store.commit(b)?;
        self.silences.retain(|x| x.id != s.id);
        self.silences.push(s);
        Ok(())
    }

    /// Ends a silence now; `false` if there is no such silence.
    pub fn expire_silence(&mut self, id: &str, now: i64) -> Result<bool, EngineError> {
        let Some(mut s) = self.silences.iter().find(|s| s.id == id).cloned() else {
            return Ok(false);
        };
        s.ends_at = s.ends_at.min(now);
        self.add_silence(s)?;
        Ok(true)
    }

    /// Records a disposition; the alert stops being escalated.
    pub fn acknowledge(
        &mut self,
        fingerprint: &str,
        ack: crate::alerts::Ack,
    ) -> Result<Option<crate::alerts::Alert>, EngineError> {
        self.reload_if_stale()?;
        let acknowledged = self.alerts.acknowledge(fingerprint, ack);
        let Some(a) = self.stale_on(acknowledged)? else {
            return Ok(None);
        };
        let mut b = Batch::default();
        let written = self.alerts.write_changes(&mut b);
        self.stale_on(written)?;
        if let Err(e) = self.store.commit(b) {
            self.stale = true;
            return Err(e.into());
        }
        self.update_gauges();
        Ok(Some(a))
    }

    pub fn audit(&self, e: &AuditEntry) -> Result<(), EngineError> {
        let mut b = Batch::default();
        let mut k = e.at.to_be_bytes().to_vec();
        k.extend_from_slice(&self.store.next_id()?.to_be_bytes());
        b.put(Space::Audit, k, codec::encode(AUDIT_VERSION, e));
        self.store.commit(b)?;
        info!(token = %e.token, action = %e.action, target = %e.target, "audit");
        Ok(())
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, EngineError> {
        let mut v: Vec<AuditEntry> = self
            .store
            .scan(Space::Audit)?
            .into_iter()
            .map(|(k, v)| codec::decode(AUDIT_VERSION, Space::Audit, &k, &v))
            .collect::<Result<_, _>>()?;
        v.reverse();
        v.truncate(limit);
        Ok(v)
    }

    pub fn notification_log(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::notify::Delivered>, EngineError> {
        Ok(crate::notify::delivered(self.store.as_ref(), limit)?)
    }

    /// Households with a firing alert per county, in any risk category and in those of each
    /// county rule, for the county values of this month.
    fn record_at_risk(&mut self, now: DateTime<FixedOffset>) {
        let sets = self.rules.at_risk_sets();
        let counts = self.alerts.households_in_sets(&sets);
        self.world.begin();
        self.world.record_at_risk(Month::of(now), &sets, &counts);
    }

    fn update_gauges(&self) {
        let (per_county, per_risk) = self.alerts.households_at_risk();
        let m = &self.metrics;
        m.run_bytes.set(self.world.run_bytes() as i64);
        m.alerts.reset();
        for ((county, rule, severity, status), n) in self.alerts.counts() {
            m.alerts
                .with_label_values(&[
                    county.map(|c| c.to_string()).unwrap_or_default().as_str(),
                    rule,
                    severity,
                    status.name(),
                ])
                .set(n as i64);
        }
        m.dispositions.reset();
        m.rule_dispositions.reset();
        m.precision.reset();
        m.households_at_risk.reset();
        m.households_alerted.reset();
        // Every county on the roster has a value, 0 included.
        for c in self.world.counties() {
            let county = c.code.to_string();
            m.households_alerted.with_label_values(&[county.as_str()]);
            for d in crate::alerts::Disposition::ALL {
                m.dispositions
                    .with_label_values(&[county.as_str(), d.name()]);
            }
            for risk in crate::model::RiskCategory::ALL {
                m.households_at_risk
                    .with_label_values(&[county.as_str(), risk.slug()]);
            }
        }
        for r in &self.rules.rules {
            for d in crate::alerts::Disposition::ALL {
                m.rule_dispositions
                    .with_label_values(&[r.name.as_str(), d.name()]);
            }
        }
        let mut per_rule: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for ((county, rule, d), n) in self.alerts.dispositions() {
            let county = county.map(|c| c.to_string()).unwrap_or_default();
            m.dispositions
                .with_label_values(&[county.as_str(), d.name()])
                .add(n as i64);
            m.rule_dispositions
                .with_label_values(&[rule, d.name()])
                .add(n as i64);
            let e = per_rule.entry(rule).or_default();
            e.1 += n;
            if d == crate::alerts::Disposition::Enrolled {
                e.0 += n;
            }
        }
        for (rule, (enrolled, total)) in per_rule {
            m.precision
                .with_label_values(&[rule])
                .set(enrolled as f64 / total as f64);
        }
        for (county, n) in &per_county {
            m.households_alerted
                .with_label_values(&[county.to_string().as_str()])
                .set(*n as i64);
        }
        for ((county, risk), n) in &per_risk {
            m.households_at_risk
                .with_label_values(&[county.to_string().as_str(), risk.slug()])
                .set(*n as i64);
        }
        m.households.reset();
        for c in self.world.counties() {
            for cat in HouseholdCategory::ALL {
                let n = c.households_by_category[cat.index()];
                m.households
                    .with_label_values(&[c.code.to_string().as_str(), cat.slug()])
                    .set(i64::from(n));
            }
        }
    }
}

fn add(a: &mut EvalReport, b: EvalReport) {
    a.checks += b.checks;
    a.fired += b.fired;
    a.resolved += b.resolved;
    a.notifications += b.notifications;
}
