//! End to end: the simulator and the daemon as processes over HTTP on loopback, e-mail to a
//! real SMTP server (aiosmtpd) on loopback.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::*;

fn polls_ok(d: &Daemon, feed: &str) -> f64 {
    d.metric(&format!(
        "guardline_feed_polls_total{{feed=\"{feed}\",outcome=\"success\"}}"
    ))
}

/// Waits until the mail server holds a mail per planted case, then 4 s more: nothing more
/// comes, none is sent twice, none is lost.
fn every_case_mailed_once(smtp: &Smtp, cases: &BTreeSet<(String, String)>) {
    let mails = wait_for(
        Duration::from_secs(120),
        "every notification after restart",
        || {
            let m = smtp.messages();
            (m.len() >= cases.len()).then_some(m)
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(smtp.messages().len(), mails.len(), "nothing more comes");
    let got: Vec<(String, String)> = mails.iter().map(announced).collect();
    let unique: BTreeSet<(String, String)> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "none sent twice");
    assert_eq!(&unique, cases, "no alert lost");
}

#[test]
fn planted_cases_fire_once_by_mail_decoys_stay_silent_and_a_restart_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 0);
    let sim = Simulator::start(11, 900);
    let cases = planted_set(&sim, "cases");
    let decoys = planted_set(&sim, "decoys");
    let rules: BTreeSet<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    assert!(
        rules.len() >= 5,
        "the simulator plants cases of most rules: {cases:?}"
    );
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let log = dir.path().join("daemon.log");

    let d = Daemon::start(&cfg, &log);
    let mails = wait_for(
        Duration::from_secs(120),
        "one e-mail per planted case",
        || {
            let m = smtp.messages();
            (m.len() >= cases.len()).then_some(m)
        },
    );
    // Two more poll rounds of every feed: nothing else may arrive.
    let before: Vec<f64> = ["roster", "wages", "medical", "water"]
        .iter()
        .map(|f| polls_ok(&d, f))
        .collect();
    wait_for(
        Duration::from_secs(60),
        "two more polls of every feed",
        || {
            ["roster", "wages", "medical", "water"]
                .iter()
                .zip(&before)
                .all(|(f, b)| polls_ok(&d, f) >= b + 2.0)
                .then_some(())
        },
    );
    let mails_after = smtp.messages();
    assert_eq!(
        mails_after.len(),
        mails.len(),
        "no e-mail beyond the planted cases"
    );

    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in &mails_after {
        let subject = m["subject"].as_str().unwrap();
        assert!(
            subject.starts_with("【返贫风险预警·"),
            "Chinese subject decodes: {subject}"
        );
        assert!(m["auth"].as_bool().unwrap(), "sent with SMTP AUTH");
        assert!(
            m["content_type"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("utf-8"),
            "{m}"
        );
        assert!(m["message_id"].as_str().unwrap().ends_with("@guardline>"));
        let body = m["body"].as_str().unwrap();
        assert!(!body.contains("id_number"), "no ID numbers in mail");
        *seen.entry(announced(m)).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "every alert mailed once: {seen:?}"
    );
    let fired: BTreeSet<(String, String)> = seen.keys().cloned().collect();
    assert_eq!(fired, cases, "exactly the planted cases fire");
    assert!(fired.is_disjoint(&decoys), "no decoy fires");

    // Evidence is in the mail: a wage drop names the month, the value and the baseline.
    let wage = mails_after
        .iter()
        .find(|m| announced(m).0 == "wage_income_drop")
        .unwrap();
    let body = wage["body"].as_str().unwrap();
    assert!(
        body.contains("工资性收入") && body.contains("前6个月均值") && body.contains("下降"),
        "{body}"
    );
    // … and cites the department's records behind it, pseudonymised.
    assert!(body.contains("数据来源：人社（wages）记录 "), "{body}");

    // Metrics: alerts by county/rule/severity/state, notifications sent.
    let text = d.metrics();
    let firing: f64 = text
        .lines()
        .filter(|l| l.starts_with("guardline_alerts{") && l.contains("state=\"firing\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(firing as usize, cases.len(), "{text}");
    // Households with a firing alert: each once per county, and once per risk category.
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let households: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c.1.starts_with("household/"))
        .map(|c| c.1.as_str())
        .collect();
    assert!(!households.is_empty());
    assert_eq!(
        sum("guardline_households_alerted{") as usize,
        households.len(),
        "{text}"
    );
    assert!(
        sum("guardline_households_at_risk{") as usize >= households.len(),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "guardline_notifications_total{outcome=\"sent\",receiver=\"mail\"}"
        ) as usize,
        cases.len(),
        "{text}"
    );
    assert!(
        !text.contains("household="),
        "no household label in metrics"
    );
    let file_log = std::fs::read_to_string(dir.path().join("data/notifications.log")).unwrap();
    assert_eq!(
        file_log.matches("\n=== ").count() + 1,
        cases.len(),
        "the file receiver got every notification"
    );

    // Restart on the same data directory: nothing is sent again.
    assert!(d.stop().success());
    let d = Daemon::start(&cfg, &log);
    wait_for(Duration::from_secs(60), "two polls after restart", || {
        ["roster", "wages", "medical", "water"]
            .iter()
            .all(|f| polls_ok(&d, f) >= 2.0)
            .then_some(())
    });
    assert_eq!(
        smtp.messages().len(),
        cases.len(),
        "a second run sends nothing new"
    );
    let text = d.metrics();
    assert_eq!(
        metric_value(
            &text,
            "guardline_feed_records_total{feed=\"wages\",outcome=\"accepted\"}"
        ),
        0.0
    );
    assert!(d.stop().success());
}

#[test]
fn stopped_mid_delivery_the_daemon_delivers_everything_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The mail server refuses the first 3 deliveries, so the outbox still holds
    // notifications when the daemon is stopped.
    let smtp = Smtp::start(dir.path(), 3);
    let sim = Simulator::start(5, 500);
    let cases = planted_set(&sim, "cases");
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let log = dir.path().join("daemon.log");

    let d = Daemon::start(&cfg, &log);
    wait_for(Duration::from_secs(120), "a refused delivery", || {
        (d.metric("guardline_notifications_total{outcome=\"failed\",receiver=\"mail\"}") >= 1.0)
            .then_some(())
    });
    assert!(d.stop().success(), "SIGTERM stops cleanly");
    let delivered_before = smtp.messages().len();
    assert!(
        delivered_before < cases.len(),
        "stopped mid-run ({delivered_before} of {})",
        cases.len()
    );

    let d = Daemon::start(&cfg, &log);
    every_case_mailed_once(&smtp, &cases);
    assert!(d.log_text().contains("notification failed; will retry"));
    assert!(d.stop().success());
}

#[test]
fn a_delivery_stuck_at_the_stop_is_cut_after_10_s_and_sent_once_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // A mail server that accepts connections and never greets: a delivery waits on it until
    // the receiver's timeout, set past the 10 s the stop gives the delivery in flight.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            for conn in silent.incoming().flatten() {
                held.lock().unwrap().push(conn);
            }
        });
    }
    let sim = Simulator::start(5, 500);
    let cases = planted_set(&sim, "cases");
    let cfg = config(dir.path(), sim.addr, silent_port);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout = \"10s\"", "timeout = \"120s\"");
    assert!(text.contains("timeout = \"120s\""), "{text}");
    std::fs::write(&cfg, &text).unwrap();
    let log = dir.path().join("daemon.log");

    let d = Daemon::start(&cfg, &log);
    wait_for(
        Duration::from_secs(120),
        "a delivery waiting on the silent server",
        || (!held.lock().unwrap().is_empty()).then_some(()),
    );
    let status = d.stop();
    assert!(status.success(), "the stop ends cleanly: {status}");
    let first = std::fs::read_to_string(&log).unwrap();
    let cut = first
        .find("a notification delivery did not finish within 10 s of the stop")
        .unwrap_or_else(|| panic!("the stuck delivery is cut:\n{first}"));
    let stopped = first.rfind("guardline::daemon: stopped");
    assert!(
        stopped.is_some_and(|at| at > cut),
        "the daemon stops after cutting it:\n{first}"
    );
    assert_eq!(held.lock().unwrap().len(), 1, "one delivery at a time");

    // The next start, with a mail server that answers, sends every notification once.
    let smtp = Smtp::start(dir.path(), 0);
    std::fs::write(
        &cfg,
        text.replace(
            &format!("port = {silent_port}"),
            &format!("port = {}", smtp.port),
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, &log);
    every_case_mailed_once(&smtp, &cases);
    assert!(d.stop().success());
}

#[test]
fn mail_goes_over_starttls_with_a_private_ca_and_fails_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start_with(dir.path(), 0, true);
    let sim = Simulator::start(2, 300);
    let cases = planted_set(&sim, "cases");
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let log = dir.path().join("daemon.log");

    // Without the CA the server's certificate is unknown: deliveries fail and are retried.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("tls = \"none\"", "tls = \"starttls\"");
    std::fs::write(&cfg, &text).unwrap();
    let d = Daemon::start(&cfg, &log);
    wait_for(Duration::from_secs(120), "a failed TLS delivery", || {
        (d.metric("guardline_notifications_total{outcome=\"failed\",receiver=\"mail\"}") >= 1.0)
            .then_some(())
    });
    assert!(smtp.messages().is_empty());
    assert!(d.log_text().contains("notification failed; will retry"));
    assert!(d.stop().success());

    // With the CA as ca_file, the queued notifications go out over STARTTLS with AUTH.
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &cfg,
        text.replace(
            "tls = \"starttls\"",
            &format!("tls = \"starttls\"\nca_file = \"{}\"", ca.display()),
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, &log);
    let mails = wait_for(
        Duration::from_secs(120),
        "every notification over STARTTLS",
        || {
            let m = smtp.messages();
            (m.len() >= cases.len()).then_some(m)
        },
    );
    assert!(
        mails
            .iter()
            .all(|m| m["tls"].as_bool().unwrap() && m["auth"].as_bool().unwrap())
    );
    let got: BTreeSet<(String, String)> = mails.iter().map(announced).collect();
    assert_eq!(got, cases);
    assert!(d.stop().success());
}

#[test]
fn killed_with_sigkill_while_the_outbox_is_full_the_daemon_delivers_everything_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 4);
    let sim = Simulator::start(6, 500);
    let cases = planted_set(&sim, "cases");
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let log = dir.path().join("daemon.log");
    let d = Daemon::start(&cfg, &log);
    wait_for(Duration::from_secs(120), "a refused delivery", || {
        (d.metric("guardline_notifications_total{outcome=\"failed\",receiver=\"mail\"}") >= 2.0)
            .then_some(())
    });
    std::process::Command::new("kill")
        .args(["-KILL", &d.pid().to_string()])
        .status()
        .unwrap();
    drop(d);
    let d = Daemon::start(&cfg, &log);
    let mails = wait_for(
        Duration::from_secs(120),
        "every notification after the crash",
        || {
            let m = smtp.messages();
            let unique: BTreeSet<(String, String)> = m.iter().map(announced).collect();
            (unique == cases).then_some(m)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let total = smtp.messages().len();
    assert!(total >= mails.len());
    // A duplicate is possible only for a notification sent but not yet recorded when the
    // daemon died: at most one per receiver; the Message-ID lets the receiver drop it.
    assert!(
        total - cases.len() <= 1,
        "{} mails for {} alerts",
        total,
        cases.len()
    );
    assert!(d.stop().success());
}
