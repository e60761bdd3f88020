//! The daemon: builds every part from the validated configuration and runs them until
//! shutdown. Start-up order: store → engine (full evaluation) → HTTP → outbox → feeds
//! (roster feeds first, then the feeds that join through the roster) → evaluation ticks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::api::{self, ApiState};
use crate::config::{Config, FeedConfig, MappingTarget};
use crate::engine::{Engine, EngineError};
use crate::feeds::{self, Counts, FeedClient, Mapped, PollError, Sink, Validators};
use crate::metrics::Metrics;
use crate::model::now;
use crate::notify::{self, Outbox, Receiver, Templates};
use crate::pseudonym::Pseudonymizer;
use crate::rules::RuleSet;
use crate::sd_notify;
use crate::store::{self, Store};
use crate::supervise::Supervisor;

/// What a running daemon reports back to its caller (tests and `demo`).
#[derive(Debug, Clone)]
pub struct Started {
    pub http: SocketAddr,
}

/// The key file: from the config, or the systemd credential `pseudonym-key`.
pub fn pseudonymizer(config: &Config) -> anyhow::Result<Pseudonymizer> {
    let path = match &config.daemon.pseudonym_key_file {
        Some(p) => p.clone(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join("pseudonym-key"),
            None => anyhow::bail!(
                "{}: daemon.pseudonym_key_file is not set and there is no systemd credential \
                 (CREDENTIALS_DIRECTORY); set pseudonym_key_file to a file with at least 16 random bytes",
                config.file.display()
            ),
        },
    };
    let p = if config.daemon.create_pseudonym_key {
        Pseudonymizer::load_or_create(&path)?
    } else {
        Pseudonymizer::load(&path)?
    };
    Ok(p)
}

/// Where polls deliver: the engine, behind the lock the API and the ticks share.
#[derive(Clone)]
pub(crate) struct EngineSink {
    pub(crate) engine: Arc<tokio::sync::Mutex<Engine>>,
    /// Polls wait while it refuses writes.
    pub(crate) store: Arc<dyn Store>,
}

/// A store error as a poll error: a store that refuses writes pauses the poll.
fn poll_error(e: impl Into<EngineError>) -> PollError {
    match e.into() {
        EngineError::Store(e) if e.is_not_writable() => PollError::StorePaused(e.to_string()),
        e => PollError::Store(e.to_string()),
    }
}

/// Whether an engine error is the store refusing writes (which the store logs once).
fn store_refuses(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(e) if e.is_not_writable())
}

impl EngineSink {
    /// Ingest is paused while the store refuses writes: a poll fetches and applies nothing.
    fn store_writable(&self) -> Result<(), PollError> {
        self.store.writable().map_err(poll_error)
    }
}

impl Sink for EngineSink {
    async fn cursor(&self, feed: &str) -> Result<Option<String>, PollError> {
        self.store_writable()?;
        self.engine.lock().await.cursor(feed).map_err(poll_error)
    }

    async fn validators(&self, feed: &str) -> Result<Option<Validators>, PollError> {
        self.engine
            .lock()
            .await
            .validators(feed)
            .map_err(poll_error)
    }

    async fn save_validators(&self, feed: &str, v: &Validators) -> Result<(), PollError> {
        self.engine
            .lock()
            .await
            .save_validators(feed, v)
            .map_err(poll_error)
    }

    async fn ingest(
        &self,
        feed: &FeedConfig,
        records: &[Mapped<'_>],
        cursor: Option<&str>,
    ) -> Result<Counts, PollError> {
        self.store_writable()?;
        self.engine
            .lock()
            .await
            .ingest_page(feed, records, now(), cursor)
            .map_err(poll_error)
    }

    async fn poll_started(&self, feed: &str) {
        self.engine.lock().await.poll_started(feed);
    }

    async fn poll_done(&self, feed: &str, caught_up: bool) {
        let mut engine = self.engine.lock().await;
        engine.poll_finished(feed, caught_up);
        if self.store.writable().is_err() {
            // Nothing was applied; evaluating would write alerts the store refuses.
            return;
        }
        if engine.is_roster_feed(feed) {
            match engine.retry_waiting(now()) {
                Ok(c) if c.accepted + c.rejected > 0 => info!(
                    feed,
                    released = c.accepted,
                    quarantined = c.rejected,
                    "waiting records re-applied after roster poll"
                ),
                Ok(_) => {}
                Err(e) if store_refuses(&e) => {
                    debug!(feed, error = %e, "waiting records not re-applied: the store refuses writes")
                }
                Err(e) => {
                    error!(feed, error = %e, "re-applying waiting records failed; retried after the next roster poll")
                }
            }
        }
        // The evaluation logs its own summary line.
        match engine.evaluate_touched(now()) {
            Ok(_) => {}
            Err(e) if store_refuses(&e) => {
                debug!(feed, error = %e, "rules not evaluated: the store refuses writes")
            }
            Err(e) => {
                error!(feed, error = %e, "rule evaluation after poll failed; it will be retried")
            }
        }
    }
}

/// A reload request; the answer says what happened.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

/// Runs the daemon until `shutdown_asked` becomes true. `started` receives the bound address.
/// `config_path` is read again on SIGHUP and `POST /-/reload`.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    rules: RuleSet,
    shutdown_asked: watch::Receiver<bool>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.daemon.data_dir)
        .with_context(|| format!("creating data_dir {}", config.daemon.data_dir.display()))?;
    let pseudo = pseudonymizer(&config)?;
    let metrics = Arc::new(Metrics::new());
    let opening = std::time::Instant::now();
    let store = store::open(&config.daemon.data_dir)?;
    debug!(seconds = opening.elapsed().as_secs_f64(), "store opened");
    store.observe(Arc::clone(&metrics) as Arc<dyn store::WriteObserver>);
    let store: Arc<dyn Store> = Arc::new(store);
    {
        let feeds: Vec<&str> = config.feeds.iter().map(|f| f.name.as_str()).collect();
        let receivers: Vec<&str> = config.receivers.iter().map(|r| r.name()).collect();
        let rule_names: Vec<&str> = rules.rules.iter().map(|r| r.name.as_str()).collect();
        metrics.declare(&feeds, &receivers, &rule_names);
        for f in &config.feeds {
            metrics
                .feed_poll_interval
                .with_label_values(&[f.name.as_str()])
                .set(feeds::poll_interval(f, now()).as_secs_f64());
        }
    }
    let feed_health = Arc::new(feeds::FeedHealth::new(
        config.feeds.iter().map(|f| f.name.as_str()),
    ));
    let mut receivers = BTreeMap::new();
    for r in &config.receivers {
        receivers.insert(r.name().to_string(), Receiver::build(r)?);
    }
    let outbox = Arc::new(Mutex::new(Outbox::default()));
    let wake = Arc::new(tokio::sync::Notify::new());
    let rules = Arc::new(rules);
    let templates = Templates::with_receivers(config.daemon.language, &config.notify.templates)
        .context("compiling the receivers' templates")?;
    let loading = std::time::Instant::now();
    // The outbox is read on another core while the engine reads the working set: after a
    // crash at province scale it holds a notification per alert fired before the crash, and
    // took 0.45 s at 3,000,000 households read first.
    let (engine, waiting) = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let loading = std::time::Instant::now();
            let outbox = Outbox::load(store.as_ref());
            store.release_cache();
            outbox.map(|o| (o, loading.elapsed().as_secs_f64()))
        });
        let engine = Engine::open(
            Arc::clone(&store),
            config.daemon.retention_months,
            Arc::clone(&rules),
            config.notify.clone(),
            templates,
            Arc::clone(&outbox),
            Arc::clone(&wake),
            Arc::clone(&metrics),
            pseudo.clone(),
            rules.effective_lines(&config.lines),
            Some(crate::state::snapshot::path_in(&config.daemon.data_dir)),
        );
        // A panic of the load (a bug) is this thread's.
        let waiting = waiting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (engine, waiting)
    });
    let mut engine = engine?;
    let (waiting, seconds) = waiting?;
    debug!(seconds, notifications = waiting.len(), "outbox loaded");
    outbox
        .lock()
        .map_err(|_| anyhow::anyhow!("the outbox's lock was poisoned while the state loaded"))?
        .merge(waiting);
    debug!(
        seconds = loading.elapsed().as_secs_f64(),
        "working set, alerts and outbox loaded"
    );
    engine.set_feeds(&config.feeds);
    engine.set_log_retention(config.daemon.log_retention);
    engine.set_snapshot_interval(config.daemon.snapshot_interval);
    engine.set_base_rewrite_bytes(config.daemon.base_rewrite_bytes);
    let report = engine.evaluate_all(now())?;
    info!(
        seconds = opening.elapsed().as_secs_f64(),
        households = engine.world().n_households(),
        rules = rules.rules.len(),
        checks = report.checks,
        fired = report.fired,
        resolved = report.resolved,
        "state loaded and evaluated"
    );
    let engine = Arc::new(tokio::sync::Mutex::new(engine));

    // The tasks below stop on this daemon's own signal: the caller's shutdown, passed on at
    // once (not by the loop below, which may be in an evaluation then: the feeds would start
    // polls the stop then waits for), or the end of a task that should have run until then
    // (`supervise`). A dropped caller's sender stops the daemon too.
    let (stop, shutdown) = watch::channel(false);
    let stop = Arc::new(stop);
    {
        let stop = Arc::clone(&stop);
        let mut caller = shutdown_asked;
        tokio::spawn(async move {
            let _ = caller.wait_for(|v| *v).await;
            let _ = stop.send(true);
        });
    }
    let mut stopping = shutdown.clone();
    let mut supervisor = Supervisor::default();

    let ready = Arc::new(AtomicBool::new(false));
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    #[cfg(unix)]
    {
        let tx = reload_tx.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP received: reloading");
                let (answer, _) = tokio::sync::oneshot::channel();
                if tx.send(answer).await.is_err() {
                    break;
                }
            }
        });
    }
    let running_feeds = feed_fingerprint(&config);
    let (http, http_task) = {
        let mut sd = shutdown.clone();
        api::serve(
            ApiState {
                metrics: Arc::clone(&metrics),
                ready: Arc::clone(&ready),
                feeds: Arc::clone(&feed_health),
                store: Some(Arc::clone(&store)),
                reload: Some(reload_tx.clone()),
                engine: Some(Arc::clone(&engine)),
                tokens: match &config.daemon.tokens_file {
                    Some(p) => Some(Arc::new(crate::api::auth::Tokens::load(p)?)),
                    None => None,
                },
            },
            config.daemon.listen,
            async move {
                let _ = sd.wait_for(|v| *v).await;
            },
        )
        .await
        .with_context(|| {
            format!(
                "binding the HTTP listener {} (daemon.listen)",
                config.daemon.listen
            )
        })?
    };
    info!(address = %http, "serving /metrics, /healthz and /readyz");
    let http_task = supervisor.watch("the HTTP server", http_task);

    let outbox_task = supervisor.spawn(
        "the outbox",
        notify::run_outbox(
            Arc::clone(&outbox),
            Arc::clone(&wake),
            receivers,
            Arc::clone(&store),
            config.notify.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ),
    );

    let mut clients = BTreeMap::new();
    for f in &config.feeds {
        clients.insert(f.name.clone(), FeedClient::build(f, Arc::clone(&metrics))?);
    }
    // Feeds keyed by person wait for the roster's first poll, so that their records can
    // be joined to households.
    let roster_feeds: Vec<String> = config
        .feeds
        .iter()
        .filter(|f| matches!(f.mapping.target, MappingTarget::Roster { .. }))
        .map(|f| f.name.clone())
        .collect();
    let (open_tx, open_rx) = watch::channel(roster_feeds.is_empty());
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<String>(64);
    let mut feed_tasks = Vec::new();
    let sink = EngineSink {
        engine: Arc::clone(&engine),
        store: Arc::clone(&store),
    };
    for f in &config.feeds {
        let is_roster = roster_feeds.contains(&f.name);
        let (gate, report) = if is_roster {
            (watch::channel(true).1, Some(first_tx.clone()))
        } else {
            (open_rx.clone(), None)
        };
        feed_tasks.push(supervisor.spawn(
            format!("the poller of feed {}", f.name),
            feeds::run_feed(feeds::FeedTask {
                feed: f.clone(),
                client: clients[&f.name].clone(),
                pseudo: pseudo.clone(),
                sink: sink.clone(),
                metrics: Arc::clone(&metrics),
                health: Arc::clone(&feed_health),
                shutdown: shutdown.clone(),
                start: gate,
                report,
            }),
        ));
    }
    drop(first_tx);
    tokio::spawn(async move {
        let mut waiting: std::collections::BTreeSet<String> = roster_feeds.into_iter().collect();
        while !waiting.is_empty() {
            match first_rx.recv().await {
                Some(name) => {
                    waiting.remove(&name);
                }
                None => break,
            }
        }
        let _ = open_tx.send(true);
        // Keep the channel drained.
        while first_rx.recv().await.is_some() {}
    });

    // Alertmanager forgets an alert it is not told about again: re-send the firing ones.
    for am in config.receivers.iter().filter_map(|r| match r {
        crate::config::ReceiverConfig::Alertmanager(a) => Some(a.clone()),
        _ => None,
    }) {
        let engine = Arc::clone(&engine);
        let mut sd = shutdown.clone();
        let client = reqwest::Client::builder()
            .timeout(am.timeout)
            .build()
            .context("building the Alertmanager client")?;
        tokio::spawn(async move {
            let hold = 4 * am.resend_interval.as_secs() as i64;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(am.resend_interval) => {}
                    _ = sd.wait_for(|v| *v) => return,
                }
                let alerts = engine
                    .lock()
                    .await
                    .firing_for(&am.name, now().timestamp(), hold);
                if alerts.is_empty() {
                    continue;
                }
                match crate::notify::push_alertmanager(&am, &client, &alerts).await {
                    Ok(()) => {
                        info!(receiver = %am.name, alerts = alerts.len(), "firing alerts re-sent to Alertmanager")
                    }
                    Err(e) => {
                        warn!(receiver = %am.name, error = %e, "re-sending to Alertmanager failed; retrying at the next interval")
                    }
                }
            }
        });
    }

    ready.store(true, Ordering::SeqCst);
    tell_systemd(sd_notify::ready(), "READY=1");
    tell_systemd(
        sd_notify::status(&format!(
            "watching {} households with {} rules; serving on {http}",
            engine.lock().await.world().n_households(),
            rules.rules.len()
        )),
        "STATUS",
    );
    if let Some(every) = sd_notify::watchdog_interval() {
        // The watchdog is fed only while the engine can be locked: a stuck evaluation or
        // a deadlock stops the pings, and systemd restarts the service.
        let engine = Arc::clone(&engine);
        let mut sd = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = sd.wait_for(|v| *v) => return,
                }
                match tokio::time::timeout(every, engine.lock()).await {
                    Ok(_guard) => tell_systemd(sd_notify::watchdog(), "WATCHDOG=1"),
                    Err(_) => warn!(
                        waited_seconds = every.as_secs_f64(),
                        "engine busy for longer than half the watchdog interval; watchdog not fed"
                    ),
                }
            }
        });
    }
    if let Some(tx) = started {
        let _ = tx.send(Started { http });
    }

    let mut failure = None;
    let mut ticker = tokio::time::interval(config.daemon.evaluation_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                // While the store refuses writes, nothing is evaluated (its transitions could
                // not be kept); asking also reopens the store when it is due.
                if store.writable().is_ok() {
                    let mut e = engine.lock().await;
                    match e.tick(now()) {
                        Ok(_) => {}
                        Err(err) if store_refuses(&err) => {
                            debug!(error = %err, "tick skipped: the store refuses writes")
                        }
                        Err(err) => error!(error = %err, "tick evaluation failed; retrying at the next tick"),
                    }
                    // So that a start after a crash reads the snapshot too.
                    if let Err(err) = e.snapshot_if_due() {
                        warn!(error = %err, "cannot write the state snapshot; retrying after the snapshot interval");
                    }
                }
            }
            Some(answer) = reload_rx.recv() => {
                tell_systemd(sd_notify::reloading(), "RELOADING=1");
                let outcome = reload(&config_path, &running_feeds, &engine, &metrics).await;
                // Ready again whether the new set applied or was refused (the old one runs).
                tell_systemd(sd_notify::ready(), "READY=1");
                let _ = answer.send(outcome);
            }
            Some(ended) = supervisor.next_end() => {
                if *shutdown.borrow() {
                    // Asked to stop: the tasks end because of it.
                    break;
                }
                error!(
                    task = %ended.task,
                    ending = %ended.how,
                    "a task that runs until the stop has ended; exiting, so that the service manager starts the daemon again"
                );
                failure = Some(ended);
                break;
            }
            _ = stopping.wait_for(|v| *v) => break,
        }
    }
    // Every task stops on this (already sent when the caller asked).
    let _ = stop.send(true);
    if let Some(ended) = failure {
        // A task that panicked may have held the engine's lock halfway through a page: its
        // state is not to be evaluated or written to the snapshot. The daemon ends as after
        // a crash, which loses nothing committed (the next start reads the snapshot and the
        // store's journal); the tasks go with the runtime.
        ready.store(false, Ordering::SeqCst);
        tell_systemd(sd_notify::stopping(), "STOPPING=1");
        anyhow::bail!(
            "{ended} while the daemon ran, so it stopped at once, as after a crash: nothing is lost \
             that was committed, and the next start resumes from the store. The log above says why it ended"
        );
    }

    info!("shutting down: waiting for polls in flight");
    ready.store(false, Ordering::SeqCst);
    tell_systemd(sd_notify::stopping(), "STOPPING=1");
    // One deadline for all feeds, not 60 s each: ten stuck feeds would otherwise outlast
    // systemd's stop timeout, and the final evaluation and the state snapshot would be cut.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for t in feed_tasks {
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            warn!(
                "a feed poll did not finish within 60 s of the stop; its uncommitted page will be fetched again"
            );
        }
    }
    {
        let mut e = engine.lock().await;
        if let Err(err) = e.evaluate_touched(now()) {
            error!(error = %err, "final evaluation failed; it runs again at the next start");
        }
        // The next start reads the working set from one file instead of the store.
        let saving = std::time::Instant::now();
        match e.save_snapshot() {
            Ok(true) => info!(
                seconds = saving.elapsed().as_secs_f64(),
                "state snapshot written"
            ),
            Ok(false) => {}
            Err(err) => {
                warn!(error = %err, "cannot write the state snapshot; the next start loads the store")
            }
        }
    }
    // The outbox stops after the delivery in flight. One stuck longer (a receiver that
    // neither answers nor times out) is cut: its notifications stay in the outbox, and the
    // next start sends them again, the documented window for a duplicate delivery.
    let mut outbox_task = outbox_task;
    if tokio::time::timeout(Duration::from_secs(10), &mut outbox_task)
        .await
        .is_err()
    {
        outbox_task.abort();
        // Waited for, so that what the cut pass logs as it is dropped comes before this.
        let _ = outbox_task.await;
        warn!(
            "a notification delivery did not finish within 10 s of the stop; it is sent again at the next start"
        );
    }
    http_task.await;
    info!("stopped");
    Ok(())
}

/// Logs a failed message to systemd; nothing to do when not run by systemd.
fn tell_systemd(result: std::io::Result<bool>, what: &str) {
    if let Err(e) = result {
        warn!(message = what, error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// What must restart to change: feeds and receivers (their tasks and connections).
fn feed_fingerprint(c: &Config) -> String {
    let feeds: Vec<String> = c.feeds.iter().map(|f| format!("{f:?}")).collect();
    let receivers: Vec<String> = c.receivers.iter().map(|r| format!("{r:?}")).collect();
    format!("{feeds:?}{receivers:?}{:?}", c.daemon.listen)
}

/// Reads the configuration and rules again. A set that does not validate is refused with
/// its problems logged and counted, and the running set stays; a valid one replaces the
/// rules, policy lines and notification settings and is evaluated on everything.
async fn reload(
    path: &std::path::Path,
    running_feeds: &str,
    engine: &tokio::sync::Mutex<Engine>,
    metrics: &Metrics,
) -> Result<String, String> {
    let loaded = crate::commands::load(path);
    let (config, rules) = match loaded {
        Ok(x) => x,
        Err(e) => {
            metrics.reloads.with_label_values(&["failure"]).inc();
            metrics.reload_success.set(0);
            let text = format!("{e:#}");
            for line in text.lines() {
                error!(problem = %line, "reload refused; the running configuration and rules stay");
            }
            return Err(text);
        }
    };
    let lines = rules.effective_lines(&config.lines);
    let n = rules.rules.len();
    let rule_names: Vec<&str> = rules.rules.iter().map(|r| r.name.as_str()).collect();
    metrics.declare(&[], &[], &rule_names);
    let mut e = engine.lock().await;
    let templates = Templates::with_receivers(config.daemon.language, &config.notify.templates)
        .map_err(|err| err.to_string())?;
    e.set_notify(config.notify.clone(), templates);
    let report = e
        .replace_rules(Arc::new(rules), lines, now())
        .map_err(|err| err.to_string())?;
    metrics.reloads.with_label_values(&["success"]).inc();
    metrics.reload_success.set(1);
    metrics.reload_timestamp.set(now().timestamp() as f64);
    let mut msg = format!(
        "reloaded {n} rules; evaluated {} checks, {} fired, {} resolved",
        report.checks, report.fired, report.resolved
    );
    if feed_fingerprint(&config) != running_feeds {
        warn!("feeds, receivers or the listen address changed: restart guardline to apply them");
        msg.push_str("; feeds, receivers or the listen address changed: restart to apply them");
    }
    info!(
        rules = n,
        fired = report.fired,
        resolved = report.resolved,
        "configuration reloaded"
    );
    Ok(msg)
}

/// A watch channel that turns true on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        error!(error = %e, "cannot listen for SIGTERM");
                        let _ = tokio::signal::ctrl_c().await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => info!("interrupt received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
    });
    rx
}
