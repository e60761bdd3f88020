//! Crash suite: the daemon against the simulator, killed with SIGKILL at random moments (during
//! its first polls, page commits, rule evaluations and deliveries; some lives stop cleanly
//! with SIGTERM, writing the state snapshot, and some are killed while they stop) and
//! restarted each time (from the state snapshot, which the daemon also writes at its first
//! tick after loading the store, brought up to the store by its journal after a kill), ends where a run without crashes ends: the same stored records, alerts and notifications.
//! Kills come in rounds, each on a fresh data folder: a round's first life is killed within
//! 0.6 s (the roster's first poll, page after page), the others within 3 s; then the daemon
//! settles and everything is compared with the run without crashes: /metrics, the mail (which
//! alerts, which notifications, their subjects), the file receiver, the store read offline,
//! `guardline report` and `guardline backtest`.
//!
//! A duplicate delivery is allowed only in the documented at-least-once window (a kill after a
//! receiver accepted a notification and before the outbox recorded it): each kill can cause at
//! most one, so duplicates are counted, printed and bounded by the number of kills.
//!
//! Environment: `GUARDLINE_CRASH_SEED` repeats a campaign (the seed is printed),
//! `GUARDLINE_CRASH_KILLS` sets the number of kills (default 8; `scripts/crash-campaign`
//! runs a long campaign by hand), `GUARDLINE_CRASH_ROUND` the kills per fresh data folder
//! (default 8), `GUARDLINE_CRASH_KEEP` keeps the runs' folders (they are kept anyway when the
//! test fails).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guardline::state::{Household, MonthBucket, Months, Village, World};
use guardline::store::{Space, Store};
use support::*;

const FEEDS: [&str; 4] = ["roster", "wages", "medical", "water"];
const SIM_SEED: u64 = 23;
const HOUSEHOLDS: u32 = 3000;
/// Kills land this long after the daemon was spawned, at random below it: the first polls,
/// commits, evaluations and deliveries of a life.
const KILL_WITHIN_MS: u64 = 3000;
/// The first life of a round (the only one that sees the roster's first poll, page after
/// page, before the other feeds start) is killed sooner.
const FIRST_KILL_WITHIN_MS: u64 = 600;
/// The same key in both data folders, so that person keys compare.
const PSEUDONYM_KEY: &str = "crash-suite-pseudonym-key-0123456789abcdef";
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// One run's folder: its data, its SMTP server, its configuration and log.
struct Run {
    dir: PathBuf,
    smtp: Smtp,
    cfg: PathBuf,
    log: PathBuf,
}

impl Run {
    fn new(root: &Path, name: &str, sim: &Simulator) -> Run {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/pseudonym.key"), PSEUDONYM_KEY).unwrap();
        let smtp = Smtp::start(&dir, 0);
        let cfg = config(&dir, sim.addr, smtp.port);
        let log = dir.join("daemon.log");
        Run {
            dir,
            smtp,
            cfg,
            log,
        }
    }
}

fn polls_ok(text: &str, feed: &str) -> f64 {
    metric_value(
        text,
        &format!("guardline_feed_polls_total{{feed=\"{feed}\",outcome=\"success\"}}"),
    )
}

/// The series that change while records are applied, alerts move or notifications go out.
fn progress(text: &str) -> String {
    text.lines()
        .filter(|l| {
            (l.starts_with("guardline_feed_records_total{") && !l.contains("\"duplicate\""))
                || l.starts_with("guardline_alert_transitions_total{")
                || l.starts_with("guardline_notifications_total{")
                || l.starts_with("guardline_alerts{")
                || l.starts_with("guardline_outbox_notifications ")
                || l.starts_with("guardline_waiting_records ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until every feed has polled successfully at least twice after the last change and
/// the outbox is empty; returns the metrics then.
fn settle(d: &Daemon) -> String {
    let mut last: Option<(String, Vec<f64>)> = None;
    wait_for(SETTLE_LIMIT, "the daemon to settle", || {
        let text = d.metrics();
        if !text.contains("guardline_feed_polls_total") {
            return None;
        }
        let now = progress(&text);
        let polls: Vec<f64> = FEEDS.iter().map(|f| polls_ok(&text, f)).collect();
        match &last {
            Some((p, base)) if *p == now => {
                let quiet = polls.iter().zip(base).all(|(n, b)| *n >= b + 2.0);
                let empty = metric_value(&text, "guardline_outbox_notifications") == 0.0;
                (quiet && empty).then_some(text)
            }
            _ => {
                last = Some((now, polls));
                None
            }
        }
    })
}

/// A label's value in one sample line.
fn label<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(&format!("{name}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
}

fn sample(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// (a) the state as /metrics shows it.
#[derive(Debug, PartialEq)]
struct Gauges {
    households: f64,
    firing: BTreeMap<String, f64>,
    waiting: f64,
    quarantined: f64,
}

fn gauges(text: &str) -> Gauges {
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(sample)
            .sum()
    };
    let mut firing = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("guardline_alerts{") && l.contains("state=\"firing\""))
    {
        *firing.entry(label(l, "rule").to_string()).or_insert(0.0) += sample(l);
    }
    firing.retain(|_, n| *n > 0.0);
    Gauges {
        households: sum("guardline_households{"),
        firing,
        waiting: sum("guardline_waiting_records "),
        quarantined: sum("guardline_quarantine_records{"),
    }
}

/// A notification across runs: the alert it announces and its status (its Message-ID is
/// `<fingerprint>.<episode>.<status>@guardline>`; the episode is a time, so it differs
/// between runs, while a re-send within a run keeps it).
type Notice = (String, String, String);

struct Mails {
    /// Notice → the Message-IDs received, one per delivery.
    by_notice: BTreeMap<Notice, Vec<String>>,
    /// Notice → the subjects received (household, village and county names, figures).
    subjects: BTreeMap<Notice, BTreeSet<String>>,
}

fn mails(smtp: &Smtp) -> Mails {
    let mut by_notice: BTreeMap<Notice, Vec<String>> = BTreeMap::new();
    let mut subjects: BTreeMap<Notice, BTreeSet<String>> = BTreeMap::new();
    for m in smtp.messages() {
        let (rule, entity) = announced(&m);
        let id = m["message_id"].as_str().unwrap().to_string();
        let status = id
            .trim_end_matches("@guardline>")
            .rsplit('.')
            .next()
            .unwrap()
            .to_string();
        let notice = (rule, entity, status);
        subjects
            .entry(notice.clone())
            .or_default()
            .insert(m["subject"].as_str().unwrap().to_string());
        by_notice.entry(notice).or_default().push(id);
    }
    Mails {
        by_notice,
        subjects,
    }
}

/// The file receiver's entries: `key=<fingerprint>.<episode>.<status>` → how many.
fn file_entries(dir: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(dir.join("data/notifications.log")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("=== ")) {
        let key = l.split(" key=").nth(1).unwrap_or(l).to_string();
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// A key without the episode: `<fingerprint>.<status>`.
fn across_runs(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    format!("{}.{}", parts[0], parts[parts.len() - 1])
}

/// (d) what the store holds, read offline once the daemon has stopped: households and
/// villages with their monthly buckets (record tags in order), county aggregates, alerts, the
/// notification log, waiting and quarantined records, cursors.
#[derive(Debug, PartialEq)]
struct Stored {
    households: BTreeMap<String, Household>,
    villages: BTreeMap<String, Village>,
    counties: BTreeMap<String, String>,
    alerts: BTreeSet<(String, String, String)>,
    delivered: BTreeMap<(String, String, String), usize>,
    waiting: BTreeSet<(String, String)>,
    quarantined: BTreeSet<(String, String, String)>,
    cursors: BTreeMap<String, Vec<u8>>,
    outbox: usize,
}

/// The buckets with their record tags sorted: a restart may apply records in another order.
fn canonical(months: &mut Months) {
    let mut owned: Vec<MonthBucket> = months.iter().map(|b| b.to_bucket()).collect();
    for b in &mut owned {
        b.records.sort_unstable();
    }
    *months = Months::from_buckets(&owned);
}

fn stored(data: &Path) -> Stored {
    let store = guardline::store::open(data).unwrap();
    let world = World::load(&store, 24).unwrap();
    let households = world
        .households()
        .map(|h| {
            let mut h = h.clone();
            canonical(&mut h.months);
            (h.id.to_string(), h)
        })
        .collect();
    let villages = world
        .villages()
        .map(|v| {
            let mut v = v.clone();
            canonical(&mut v.months);
            (v.code.to_string(), v)
        })
        .collect();
    let counties = world
        .counties()
        .map(|c| (c.code.to_string(), format!("{c:?}")))
        .collect();
    let mut delivered = BTreeMap::new();
    for d in guardline::notify::delivered(&store, usize::MAX).unwrap() {
        *delivered
            .entry((d.receiver, d.fingerprint, d.status.name().to_string()))
            .or_insert(0) += 1;
    }
    let waiting = guardline::quarantine::waiting(&store)
        .unwrap()
        .into_iter()
        .map(|w| (w.feed, w.id))
        .collect();
    let quarantined = guardline::quarantine::entries(&store)
        .unwrap()
        .into_iter()
        .map(|e| (e.feed, e.record_id.unwrap_or_default(), e.reason))
        .collect();
    // Times of the clock differ between runs: when a feed last brought data, and the roster's
    // newest record (a roster record counts at its poll).
    let cursors = store
        .scan(Space::Cursor)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .filter(|(k, _)| !k.ends_with("\0last_data") && k != "roster\0newest")
        .collect();
    let outbox = store.scan(Space::Outbox).unwrap().len();
    // Last, as it takes the store. Every alert's texts are read back whole: a write of an
    // alert whose texts were shed from memory must not have lost them.
    let alerts = guardline::alerts::Alerts::load(std::sync::Arc::new(store)).unwrap();
    for a in alerts.iter() {
        let full = alerts.full(&a.fingerprint).unwrap().unwrap();
        assert!(
            !full.summary.is_empty() && !full.description.is_empty() && !full.evidence.is_empty(),
            "alert {} of rule {} stored without its texts",
            a.fingerprint,
            a.rule
        );
    }
    let alerts = alerts
        .iter()
        .map(|a| {
            (
                a.rule.clone(),
                a.entity.clone(),
                a.status.name().to_string(),
            )
        })
        .collect();
    Stored {
        households,
        villages,
        counties,
        alerts,
        delivered,
        waiting,
        quarantined,
        cursors,
        outbox,
    }
}

/// The first differences between two stored states, for the failure message.
fn stored_diff(a: &Stored, b: &Stored) -> String {
    fn map_diff<V: PartialEq + std::fmt::Debug>(
        what: &str,
        a: &BTreeMap<String, V>,
        b: &BTreeMap<String, V>,
        out: &mut String,
    ) {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let differing: Vec<&&String> = keys.iter().filter(|k| a.get(**k) != b.get(**k)).collect();
        if differing.is_empty() {
            return;
        }
        out.push_str(&format!(
            "{what}: {} in the reference, {} after the crashes, {} differ; the first:\n",
            a.len(),
            b.len(),
            differing.len()
        ));
        for k in differing.iter().take(3) {
            out.push_str(&format!(
                "  {k}:\n    reference: {:?}\n    crashed:   {:?}\n",
                a.get(**k),
                b.get(**k)
            ));
        }
    }
    let mut out = String::new();
    map_diff("households", &a.households, &b.households, &mut out);
    map_diff("villages", &a.villages, &b.villages, &mut out);
    map_diff("counties", &a.counties, &b.counties, &mut out);
    let cursors = |s: &Stored| -> BTreeMap<String, String> {
        s.cursors
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    };
    map_diff("cursors", &cursors(a), &cursors(b), &mut out);
    let set_diff = |what: &str, x: Vec<String>, y: Vec<String>, out: &mut String| {
        if x != y {
            let (xs, ys): (BTreeSet<_>, BTreeSet<_>) = (x.iter().collect(), y.iter().collect());
            out.push_str(&format!(
                "{what}: only in the reference {:?}; only after the crashes {:?}\n",
                xs.difference(&ys).take(10).collect::<Vec<_>>(),
                ys.difference(&xs).take(10).collect::<Vec<_>>()
            ));
        }
    };
    let dbg = |v: &dyn Fn(&Stored) -> Vec<String>| (v(a), v(b));
    let (x, y) = dbg(&|s| s.alerts.iter().map(|e| format!("{e:?}")).collect());
    set_diff("alerts", x, y, &mut out);
    let (x, y) = dbg(&|s| s.delivered.iter().map(|e| format!("{e:?}")).collect());
    set_diff("notification log", x, y, &mut out);
    let (x, y) = dbg(&|s| s.waiting.iter().map(|e| format!("{e:?}")).collect());
    set_diff("waiting records", x, y, &mut out);
    let (x, y) = dbg(&|s| s.quarantined.iter().map(|e| format!("{e:?}")).collect());
    set_diff("quarantine", x, y, &mut out);
    if a.outbox != b.outbox {
        out.push_str(&format!("outbox: {} vs {}\n", a.outbox, b.outbox));
    }
    out
}

/// What a run ends with.
struct Outcome {
    gauges: Gauges,
    mails: Mails,
    file: BTreeMap<String, usize>,
    stored: Stored,
    report: String,
    backtest: String,
}

/// Settles the daemon, reads its metrics and mail, stops it and reads its store offline
/// (`guardline report`, `guardline backtest` and the store itself).
fn finish(run: &Run, d: Daemon, days: (&str, &str)) -> Outcome {
    let text = settle(&d);
    let gauges = gauges(&text);
    assert!(d.stop().success(), "SIGTERM stops the daemon cleanly");
    let cfg = run.cfg.to_str().unwrap();
    let report = offline(&["report", "--json", "--config", cfg]);
    let backtest = offline(&[
        "backtest", "--from", days.0, "--to", days.1, "--format", "json", "--config", cfg,
    ]);
    Outcome {
        gauges,
        mails: mails(&run.smtp),
        file: file_entries(&run.dir),
        stored: stored(&run.dir.join("data")),
        report,
        backtest,
    }
}

/// What the log of one life says it was doing last: the last line's message, with the feed,
/// receiver or trigger it names.
fn phase(segment: &str) -> String {
    const KNOWN: [(&str, &str); 11] = [
        ("months' base written", ""),
        ("poll done", "feed"),
        ("poll failed", "feed"),
        ("waiting records re-applied", "feed"),
        ("rules evaluated", "trigger"),
        ("alert transition", "rule"),
        ("notification delivered", "receiver"),
        ("notification failed", "receiver"),
        ("state loaded and evaluated", ""),
        ("serving /metrics", ""),
        ("reminder", ""),
    ];
    let Some(last) = segment.lines().rev().find(|l| !l.trim().is_empty()) else {
        return "start-up (no log line yet)".into();
    };
    for (msg, field) in KNOWN {
        if last.contains(msg) {
            let value = last
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{field}=")))
                .filter(|_| !field.is_empty())
                .map(|v| format!(" {}", v.trim_matches('"')))
                .unwrap_or_default();
            return format!("after \"{msg}\"{value}");
        }
    }
    let text = last.split_once(": ").map_or(last, |(_, m)| m);
    format!("after \"{}\"", text.chars().take(60).collect::<String>())
}

/// A temporary folder kept when the test fails or `GUARDLINE_CRASH_KEEP` is set (its path is
/// printed), for the logs, mail and stores of both runs.
struct KeepOnFailure(Option<tempfile::TempDir>);

impl KeepOnFailure {
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("GUARDLINE_CRASH_KEEP").is_some())
            && let Some(dir) = self.0.take()
        {
            eprintln!("crash suite: kept {} for inspection", dir.keep().display());
        }
    }
}

/// The guardline binary's size and modification time: another build replacing it in the
/// middle of a campaign (a newer store schema, say) would look like a crash bug.
fn binary_stamp() -> (u64, std::time::SystemTime) {
    let m = std::fs::metadata(BIN).unwrap();
    (m.len(), m.modified().unwrap())
}

/// One kill of the campaign.
struct Kill {
    delay_ms: u64,
    phase: String,
    polls: usize,
    transitions: usize,
    delivered: usize,
}

/// What the whole test shares: the simulator, the reference, the days backtests replay.
struct Ctx<'a> {
    root: &'a Path,
    sim: &'a Simulator,
    want: &'a Outcome,
    days: (&'a str, &'a str),
    seed: u64,
    binary: (u64, std::time::SystemTime),
}

impl Ctx<'_> {
    fn check_binary(&self) {
        assert!(
            binary_stamp() == self.binary,
            "{BIN} was rebuilt during the campaign: the results are void; run it again when no build is running"
        );
    }
}

/// What a round of kills saw.
struct Round {
    kills: Vec<Kill>,
    duplicates: usize,
    /// Starts from a snapshot that the journal brought up to the store.
    caught_up_starts: usize,
    /// Bases of the months written in all the round's lives.
    bases: usize,
}

/// One round: a fresh data folder, `kills` lives each killed with SIGKILL at a random
/// moment, then a last life that settles; its outcome must equal the reference.
fn round(ctx: &Ctx, number: usize, kills: usize, rng: &mut Rng) -> Round {
    let want = ctx.want;
    let began = Instant::now();
    let crashed = Run::new(ctx.root, &format!("crashed-{number}"), ctx.sim);
    // Bases of the months from 64 KiB of runs on (64 MiB by default, which these 3,000
    // households never write), so that kills also land while a base is written, between
    // its commits. The reference keeps the default: its outcome must not depend on them.
    let cfg = std::fs::read_to_string(&crashed.cfg).unwrap();
    std::fs::write(
        &crashed.cfg,
        cfg.replacen("[daemon]\n", "[daemon]\nbase_rewrite_bytes = 65536\n", 1),
    )
    .unwrap();
    let mut log: Vec<Kill> = Vec::new();
    let snapshot_file = crashed.dir.join("data/state.snapshot");
    let mut unused_snapshot: Vec<usize> = Vec::new();
    let mut snapshot_starts = 0;
    let mut caught_up_starts = 0;
    for i in 0..kills {
        ctx.check_binary();
        let offset = std::fs::metadata(&crashed.log).map_or(0, |m| m.len()) as usize;
        // A snapshot renamed into place is complete: this start must read it, whether the
        // life before stopped cleanly or was killed after writing it.
        let snapshot_there = snapshot_file.exists();
        let mut child = spawn_daemon(&crashed.cfg, &crashed.log);
        let delay_ms = rng.below(if i == 0 {
            FIRST_KILL_WITHIN_MS
        } else {
            KILL_WITHIN_MS
        });
        // A life that stops cleanly, and one that starts with a snapshot there, first load
        // their state (so that the stop writes a snapshot, and the start is seen to read
        // it); the random moment counts from there.
        let how = match i % 4 {
            2 => "clean stop",
            3 => "stop cut short",
            _ => "",
        };
        if how == "clean stop" || snapshot_there {
            wait_for(Duration::from_secs(60), "the state to load", || {
                let text = std::fs::read_to_string(&crashed.log).unwrap_or_default();
                text[offset.min(text.len())..]
                    .contains("state loaded and evaluated")
                    .then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        if let Some(status) = child.0.try_wait().unwrap() {
            let text = std::fs::read_to_string(&crashed.log).unwrap();
            panic!(
                "round {number}, life {i}: the daemon exited by itself ({status}) before its kill:\n{}",
                &text[offset.min(text.len())..]
            );
        }
        // Some lives end with SIGTERM, which writes the state snapshot the next life starts
        // from; some are killed while they stop, which may cut the snapshot's writing short.
        if !how.is_empty() {
            sigterm(child.0.id());
        }
        if how == "clean stop" {
            let status = wait_for(Duration::from_secs(60), "a clean stop", || {
                child.0.try_wait().unwrap()
            });
            assert!(
                status.success(),
                "round {number}, life {i}: SIGTERM gave {status}"
            );
        } else {
            if how == "stop cut short" {
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
            }
            sigkill(child.0.id());
            child.0.wait().unwrap();
        }
        let text = std::fs::read_to_string(&crashed.log).unwrap();
        let segment = &text[offset.min(text.len())..];
        // A start with a snapshot there must have used it: after a clean stop it is
        // current, after a kill the journal brings it up to the store.
        if snapshot_there {
            match segment
                .lines()
                .find(|l| l.contains("working set loaded from the state snapshot"))
            {
                Some(line) => {
                    snapshot_starts += 1;
                    if !line.contains("caught_up=0") {
                        caught_up_starts += 1;
                    }
                }
                // Legitimate: more changes since than reading them again would save (the
                // snapshot of an empty world, written just before the first ingest).
                None if segment.contains("than reading the changes again would save") => {}
                // Legitimate too: a base of the months written since the snapshot holds the
                // runs it would need (the engine writes the next one once five minutes have
                // passed since the last).
                None if segment.contains("the months' base was written again since") => {}
                None => unused_snapshot.push(i),
            }
        }
        log.push(Kill {
            delay_ms,
            phase: if how.is_empty() {
                phase(segment)
            } else {
                format!("{how}, {}", phase(segment))
            },
            polls: segment.matches(" poll done ").count(),
            transitions: segment.matches(" alert transition ").count(),
            delivered: segment.matches(" notification delivered ").count(),
        });
    }
    let campaign_secs = began.elapsed().as_secs_f64();
    ctx.check_binary();
    let d = Daemon::start(&crashed.cfg, &crashed.log);
    let got = finish(&crashed, d, ctx.days);
    let settle_secs = began.elapsed().as_secs_f64() - campaign_secs;

    // Duplicates: deliveries beyond the reference's.
    let mut mail_dups = 0;
    let mut resent_with_new_id = Vec::new();
    for (notice, ids) in &got.mails.by_notice {
        let want_n = want.mails.by_notice.get(notice).map_or(0, Vec::len);
        if ids.len() > want_n && want_n > 0 {
            mail_dups += ids.len() - want_n;
            let distinct: BTreeSet<&String> = ids.iter().collect();
            if distinct.len() > want_n {
                resent_with_new_id.push((notice.clone(), ids.clone()));
            }
        }
    }
    let file_dups: usize = got.file.values().map(|n| n - 1).sum();
    let bases = std::fs::read_to_string(&crashed.log)
        .unwrap()
        .matches("months' base written")
        .count();

    // The summary, before any assertion, so that a failing run is diagnosable.
    let mut summary = format!(
        "crash suite, round {number} (seed {}): {kills} kills in {campaign_secs:.1} s, settled {settle_secs:.1} s later\n",
        ctx.seed
    );
    for (i, k) in log.iter().enumerate() {
        summary.push_str(&format!(
            "  kill {i:>3} at {:>4} ms: {:<42} (this life: {} polls done, {} transitions, {} deliveries)\n",
            k.delay_ms, k.phase, k.polls, k.transitions, k.delivered
        ));
    }
    summary.push_str(&format!(
        "  duplicates: {mail_dups} e-mails, {file_dups} file entries (at most {kills}, one per kill)\n  starts from the state snapshot: {snapshot_starts}, {caught_up_starts} of them brought up by the journal\n  bases of the months written: {bases}"
    ));
    eprintln!("{summary}");

    assert!(
        unused_snapshot.is_empty(),
        "lives {unused_snapshot:?} loaded the store although a state snapshot was there\n{summary}"
    );
    // Each clean stop that is not a round's last life is followed by a start from its
    // snapshot.
    let clean_stops = (0..kills).filter(|i| i % 4 == 2 && i + 1 < kills).count();
    assert!(
        snapshot_starts >= clean_stops,
        "{snapshot_starts} starts from a state snapshot, after {clean_stops} clean stops\n{summary}"
    );
    // (a) the state in /metrics.
    assert_eq!(got.gauges, want.gauges, "metrics differ\n{summary}");
    // (b) every alert announced by mail, none lost and none extra.
    let alerts = |m: &Mails| -> BTreeSet<(String, String)> {
        m.by_notice
            .keys()
            .map(|(r, e, _)| (r.clone(), e.clone()))
            .collect()
    };
    assert_eq!(
        alerts(&got.mails),
        alerts(&want.mails),
        "the alerts announced by mail differ\n{summary}"
    );
    // (c) every reference notification arrived, duplicates only as re-sends, bounded.
    let notices = |m: &Mails| -> BTreeSet<Notice> { m.by_notice.keys().cloned().collect() };
    assert_eq!(
        notices(&got.mails),
        notices(&want.mails),
        "the notifications differ\n{summary}"
    );
    for (notice, ids) in &want.mails.by_notice {
        assert!(
            got.mails.by_notice[notice].len() >= ids.len(),
            "{notice:?} lost\n{summary}"
        );
    }
    let texts: Vec<_> = want
        .mails
        .subjects
        .iter()
        .filter(|(n, s)| got.mails.subjects.get(*n) != Some(*s))
        .map(|(n, s)| (n, s, got.mails.subjects.get(n)))
        .collect();
    assert!(
        texts.is_empty(),
        "the subjects differ (notice, reference, after the crashes): {texts:?}\n{summary}"
    );
    assert!(
        resent_with_new_id.is_empty(),
        "extra notifications, not re-sends of the same one: {resent_with_new_id:?}\n{summary}"
    );
    let file_keys = |f: &BTreeMap<String, usize>| -> BTreeSet<String> {
        f.keys().map(|k| across_runs(k)).collect()
    };
    assert_eq!(
        file_keys(&got.file),
        file_keys(&want.file),
        "the file receiver's notifications differ\n{summary}"
    );
    assert!(
        mail_dups + file_dups <= kills,
        "more duplicates than kills\n{summary}"
    );
    // (d) the store: no record lost or applied twice, the same alerts, each notification
    // recorded as delivered once, nothing left in the outbox.
    assert!(
        got.stored == want.stored,
        "the stored state differs:\n{}\n{summary}",
        stored_diff(&want.stored, &got.stored)
    );
    assert!(
        got.stored.delivered.values().all(|n| *n == 1),
        "a notification recorded as delivered twice\n{summary}"
    );
    // … and as the offline commands see it.
    assert_eq!(
        got.report, want.report,
        "guardline report differs\n{summary}"
    );
    assert_eq!(
        got.backtest, want.backtest,
        "guardline backtest differs\n{summary}"
    );
    // A passing round's folder is not needed any more (a long campaign has many).
    let dir = crashed.dir.clone();
    drop(crashed);
    if std::env::var_os("GUARDLINE_CRASH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Round {
        kills: log,
        duplicates: mail_dups + file_dups,
        caught_up_starts,
        bases,
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_record_and_no_alert() {
    let seed = env_u64("GUARDLINE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007
    });
    let kills = env_u64("GUARDLINE_CRASH_KILLS").unwrap_or(8) as usize;
    let per_round = env_u64("GUARDLINE_CRASH_ROUND").unwrap_or(8).max(1) as usize;
    eprintln!(
        "crash suite: seed {seed} (GUARDLINE_CRASH_SEED={seed} repeats it), {kills} kills in rounds of {per_round}, {HOUSEHOLDS} households"
    );
    let mut rng = Rng(seed.max(1) ^ 0x9e37_79b9_7f4a_7c15);

    let binary = binary_stamp();
    let root = KeepOnFailure(Some(tempfile::tempdir().unwrap()));
    let sim = Simulator::start(SIM_SEED, HOUSEHOLDS);
    // Backtests of every run replay the same two days.
    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive();
    let (from, to) = (
        (today - chrono::Duration::days(1)).to_string(),
        today.to_string(),
    );

    // The reference: one run without crashes.
    let began = Instant::now();
    let reference = Run::new(root.path(), "reference", &sim);
    let d = Daemon::start(&reference.cfg, &reference.log);
    let want = finish(&reference, d, (&from, &to));
    let records: usize = want
        .stored
        .households
        .values()
        .flat_map(|h| &h.months)
        .map(|b| b.records().len())
        .sum();
    eprintln!(
        "crash suite: the reference settled in {:.1} s: {} households with {records} records, {} notifications by mail, {} in the file, firing {:?}",
        began.elapsed().as_secs_f64(),
        want.gauges.households,
        want.mails.by_notice.len(),
        want.file.len(),
        want.gauges.firing
    );
    assert!(
        !want.mails.by_notice.is_empty()
            && want.gauges.households == HOUSEHOLDS as f64
            && records > HOUSEHOLDS as usize,
        "the reference run stored records, fired alerts and watched every household: {:?}",
        want.gauges
    );
    assert!(
        want.file.values().all(|n| *n == 1)
            && want.mails.by_notice.values().all(|ids| ids.len() == 1),
        "the reference run delivered each notification once"
    );

    // The campaign: rounds of kills, each on a fresh data folder, so that the kills keep
    // landing in the first polls, commits, evaluations and deliveries.
    let ctx = Ctx {
        root: root.path(),
        sim: &sim,
        want: &want,
        days: (&from, &to),
        seed,
        binary,
    };
    let began = Instant::now();
    let mut all: Vec<Kill> = Vec::new();
    let mut duplicates = 0;
    let mut caught_up_starts = 0;
    let mut bases = 0;
    let mut number = 0;
    while all.len() < kills {
        let r = round(&ctx, number, per_round.min(kills - all.len()), &mut rng);
        all.extend(r.kills);
        duplicates += r.duplicates;
        caught_up_starts += r.caught_up_starts;
        bases += r.bases;
        number += 1;
    }
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &all {
        *phases.entry(k.phase.as_str()).or_default() += 1;
    }
    let mut summary = format!(
        "crash suite: seed {seed}: {} kills in {number} rounds, {:.1} s; {duplicates} duplicate deliveries; the last log line before each kill:\n",
        all.len(),
        began.elapsed().as_secs_f64()
    );
    for (p, n) in &phases {
        summary.push_str(&format!("  {n:>5}  {p}\n"));
    }
    // How often a kill fell between a snapshot and later commits depends on the moments
    // drawn (the simulator's world is ingested within a second or two); the journal's
    // catching up is checked at every point of a run by `tests/property.rs`.
    summary.push_str(&format!(
        "  starts from a state snapshot brought up by the journal: {caught_up_starts}\n  bases of the months written: {bases}\n"
    ));
    eprintln!("{summary}");
    // Each round ingests a few MB of months: with `base_rewrite_bytes` at 64 KiB, bases are
    // written and some kills fall among their commits.
    assert!(
        bases > 0,
        "no base of the months was written: daemon.base_rewrite_bytes had no effect"
    );
}
