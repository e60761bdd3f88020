//! Service behaviour under load: SIGHUP reloads while feeds are being polled, and SIGTERM
//! stops in the middle of polls, lose nothing: the records applied, the alerts and the
//! e-mails equal those of a run that was never disturbed.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use support::*;

/// Records applied according to the log: `accepted` of every poll, plus the waiting
/// records released after roster polls.
fn applied_in_log(log: &str) -> u64 {
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .map(|l| {
            if l.contains("poll done") {
                field(l, "accepted=")
            } else if l.contains("waiting records re-applied") {
                field(l, "released=")
            } else {
                0
            }
        })
        .sum()
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn firing(d: &Daemon) -> f64 {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with("guardline_alerts{") && l.contains("state=\"firing\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn households(d: &Daemon) -> f64 {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with("guardline_households{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Mails per (rule, entity).
fn mailed(smtp: &Smtp) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for m in smtp.messages() {
        *seen.entry(announced(&m)).or_default() += 1;
    }
    seen
}

/// Waits until every feed has caught up twice more and the outbox is empty.
fn settle(d: &Daemon) {
    let feeds = ["roster", "wages", "medical", "water"];
    let polls = |d: &Daemon| -> Vec<f64> {
        feeds
            .iter()
            .map(|f| {
                d.metric(&format!(
                    "guardline_feed_polls_total{{feed=\"{f}\",outcome=\"success\"}}"
                ))
            })
            .collect()
    };
    let before = polls(d);
    wait_for(
        Duration::from_secs(180),
        "two quiet polls of every feed",
        || {
            let text = d.metrics();
            let now = polls(d);
            (now.iter().zip(&before).all(|(n, b)| *n >= b + 2.0)
                && metric_value(&text, "guardline_outbox_notifications") == 0.0)
                .then_some(())
        },
    );
}

#[test]
fn reloads_and_graceful_stops_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(23, 2500);

    // The undisturbed run.
    let quiet = dir.path().join("quiet");
    std::fs::create_dir(&quiet).unwrap();
    let smtp_quiet = Smtp::start(&quiet, 0);
    let cfg = config(&quiet, sim.addr, smtp_quiet.port);
    let d = Daemon::start(&cfg, &quiet.join("daemon.log"));
    settle(&d);
    let (want_firing, want_households) = (firing(&d), households(&d));
    assert!(d.stop().success());
    let want_applied = applied_in_log(&std::fs::read_to_string(quiet.join("daemon.log")).unwrap());
    let want_mail = mailed(&smtp_quiet);
    assert!(
        want_applied > 10_000,
        "a loaded run: {want_applied} records"
    );
    assert!(want_mail.len() >= 5, "{want_mail:?}");
    assert!(want_mail.values().all(|n| *n == 1));

    // The disturbed run: reloads in bursts while the first polls run, stops mid-poll.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    let smtp = Smtp::start(&busy, 0);
    let cfg = config(&busy, sim.addr, smtp.port);
    let log = busy.join("daemon.log");
    for (round, stop_after_ms) in [(0, 400), (1, 900), (2, 1500)] {
        let d = Daemon::start(&cfg, &log);
        for _ in 0..5 {
            signal(d.pid(), "-HUP");
            std::thread::sleep(Duration::from_millis(stop_after_ms / 5));
        }
        let status = d.stop();
        assert!(status.success(), "round {round}: {status}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.matches("SIGHUP received").count() >= 10,
        "the reloads were received"
    );
    assert!(
        text.matches("configuration reloaded").count() >= 10,
        "and applied"
    );
    assert!(!text.contains(" ERROR "), "{text}");
    let d = Daemon::start(&cfg, &log);
    for _ in 0..3 {
        signal(d.pid(), "-HUP");
        std::thread::sleep(Duration::from_millis(200));
    }
    settle(&d);
    assert_eq!(firing(&d), want_firing, "the same alerts fire");
    assert_eq!(households(&d), want_households, "the same households");
    assert!(d.stop().success());

    let applied = applied_in_log(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(
        applied, want_applied,
        "every record applied exactly once across the stops"
    );
    let got_mail = mailed(&smtp);
    assert_eq!(
        got_mail, want_mail,
        "the same e-mails, each exactly once (a graceful stop sends nothing twice)"
    );
}
