//! Bad input: a feed that answers HTTP 500, one that answers invalid JSON, and records with
//! a missing or non-numeric field. Each is logged with the feed and the reason, counted in
//! metrics, and nothing else is affected. Also `guardline check` on broken configs.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use std::collections::HashMap;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use support::*;

/// A feed server with a tiny roster, wages with two bad records, a 500 and a garbage feed.
fn start_fault_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route(
                    "/roster",
                    get(|q: Query<HashMap<String, String>>| async move {
                        if q.contains_key("since") {
                            return r#"{"records": [], "next": null}"#;
                        }
                        r#"{"records": [{"record_id": "r1", "hh_id": "632522100201001", "village_code": "632522100201",
                            "village_name": "甲村", "category": "脱贫户", "head_name": "张三",
                            "members": [{"id_number": "632522198001010011"}, {"id_number": "632522198501010022"}],
                            "income_per_capita": 9000}], "next": "1"}"#
                    }),
                )
                .route(
                    "/wages",
                    get(|q: Query<HashMap<String, String>>| async move {
                        if q.contains_key("since") {
                            return r#"{"records": [], "next": null}"#;
                        }
                        r#"{"records": [
                            {"record_id": "w1", "id_number": "632522198001010011", "month": "2026-08", "amount": 3000},
                            {"record_id": "w2", "id_number": "632522198001010011", "month": "2026-09"},
                            {"record_id": "w3", "id_number": "632522198001010011", "month": "2026-10", "amount": "三千"},
                            {"record_id": "w4", "id_number": "632522198501010022", "month": "2026-09", "amount": "2500.5"},
                            {"record_id": "w5", "id_number": "632522198501010022", "month": "2026-10", "amount": 2400}
                        ], "next": "5"}"#
                    }),
                )
                .route("/broken", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database is down") }))
                .route("/garbage", get(|| async { "{\"records\": [ {\"record_id\": 1, " }));
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn fault_config(dir: &std::path::Path, addr: SocketAddr) -> std::path::PathBuf {
    let feed = |name: &str, path: &str, body: &str| {
        format!(
            "[[feeds]]\nname = \"{name}\"\nkind = \"samples\"\nurl = \"http://{addr}/{path}\"\nschedule = \"*/1 * * * * *\"\nretry_initial = \"100ms\"\n{body}\n"
        )
    };
    let samples = "[feeds.map]\nrecord_id = \"record_id\"\nperson = \"id_number\"\ntime = \"month\"\nvalues = [{ indicator = \"wage_income\", field = \"amount\" }]\n";
    let text = format!(
        r#"[daemon]
data_dir = "{data}"
listen = "127.0.0.1:0"
rules_dir = "{rules}"
evaluation_interval = "1s"
pseudonym_key_file = "{data}/key"
create_pseudonym_key = true

[[feeds]]
name = "roster"
kind = "roster"
url = "http://{addr}/roster"
schedule = "*/1 * * * * *"
{roster_map}
{wages}
{broken}
{garbage}
[[receivers]]
name = "log"
type = "file"
path = "notifications.log"

[notify]
receivers = ["log"]
"#,
        data = dir.join("data").display(),
        rules = repo().join("alerts").display(),
        roster_map = ROSTER_MAP,
        wages = feed("wages", "wages", samples),
        broken = feed("broken", "broken", samples),
        garbage = feed("garbage", "garbage", samples),
    );
    let p = dir.join("guardline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_feeds_and_records_are_logged_counted_and_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_fault_server();
    let cfg = fault_config(dir.path(), addr);
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::start(&cfg, &log);
    wait_for(
        Duration::from_secs(60),
        "failed polls of both bad feeds",
        || {
            let t = d.metrics();
            (metric_value(
                &t,
                "guardline_feed_poll_failures_total{feed=\"broken\",reason=\"http_status\"}",
            ) >= 2.0
                && metric_value(
                    &t,
                    "guardline_feed_poll_failures_total{feed=\"garbage\",reason=\"invalid_json\"}",
                ) >= 2.0)
                .then_some(())
        },
    );
    wait_for(Duration::from_secs(30), "the good wage records", || {
        (d.metric("guardline_feed_records_total{feed=\"wages\",outcome=\"accepted\"}") == 3.0)
            .then_some(())
    });
    let t = d.metrics();
    let m = |s: &str| metric_value(&t, s);
    assert_eq!(
        m("guardline_feed_records_total{feed=\"wages\",outcome=\"accepted\"}"),
        3.0,
        "{t}"
    );
    assert_eq!(
        m("guardline_feed_records_total{feed=\"wages\",outcome=\"rejected\"}"),
        2.0
    );
    assert_eq!(
        m("guardline_feed_records_rejected_total{feed=\"wages\",reason=\"missing_field\"}"),
        1.0
    );
    assert_eq!(
        m("guardline_feed_records_rejected_total{feed=\"wages\",reason=\"not_a_number\"}"),
        1.0
    );
    assert_eq!(
        m("guardline_feed_records_total{feed=\"roster\",outcome=\"accepted\"}"),
        1.0
    );
    assert!(m("guardline_feed_polls_total{feed=\"wages\",outcome=\"success\"}") >= 1.0);
    assert!(m("guardline_feed_last_success_timestamp_seconds{feed=\"roster\"}") > 1.7e9);
    // A feed that never succeeded counts from the start of the process, so it turns stale.
    assert_eq!(
        m("guardline_feed_polls_total{feed=\"broken\",outcome=\"success\"}"),
        0.0
    );
    let started = m("process_start_time_seconds");
    let broken = m("guardline_feed_last_success_timestamp_seconds{feed=\"broken\"}");
    assert!(
        broken >= started - 1.0 && broken <= started + 60.0,
        "{broken} vs start {started}"
    );
    assert_eq!(
        m("guardline_households{category=\"lifted\",county=\"632522\"}"),
        1.0
    );

    let text = d.log_text();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle}:\n{text}"))
            .to_string()
    };
    let l = line("feed=broken");
    assert!(
        l.contains("reason=\"http_status\"") && l.contains("HTTP 500"),
        "{l}"
    );
    let l = line("feed=garbage");
    assert!(l.contains("reason=\"invalid_json\""), "{l}");
    let l = line("record=\"w2\"");
    assert!(
        l.contains("feed=wages") && l.contains("missing_field") && l.contains("amount"),
        "{l}"
    );
    let l = line("record=\"w3\"");
    assert!(l.contains("not_a_number"), "{l}");
    assert!(
        !text.contains("632522198001010011"),
        "no ID number in the log"
    );
    assert!(!text.contains("张三"), "no name in the log");

    // Still serving, and the failing feeds keep being retried.
    assert!(d.is_running());
    assert_eq!(
        get_text(&format!("http://{}/healthz", d.http)).unwrap(),
        "ok\n"
    );
    assert!(d.stop().success());
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("guardline.toml");
    std::fs::write(
        &p,
        text.replace("RULES", &repo().join("alerts").display().to_string()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (
        out.status.success(),
        s.replace(&p.display().to_string(), "guardline.toml"),
    )
}

const GOOD: &str = r#"[daemon]
data_dir = "/tmp/unused"
rules_dir = "RULES"
pseudonym_key_file = "/tmp/unused/key"
create_pseudonym_key = true

[[feeds]]
name = "water"
kind = "intervals"
url = "http://127.0.0.1:1/water"
schedule = "0 */5 * * * *"
[feeds.map]
record_id = "id"
village = "v"
interval_id = "id"
start = "s"
end = "e"
"#;

#[test]
fn check_accepts_the_shipped_configs_and_reports_file_line_and_field() {
    let (ok, out) = check(GOOD);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 1 feeds, 0 receivers, 18 rules"), "{out}");
    assert!(
        out.contains("warning:") && out.contains("rule stale_wages watches feed \"wages\""),
        "{out}"
    );

    let (ok, out) = check(&GOOD.replace("schedule =", "shedule ="));
    assert!(!ok);
    assert!(
        out.contains("guardline.toml:11:1: feeds[0].shedule: unknown field `shedule`"),
        "{out}"
    );

    let (ok, out) = check(&GOOD.replace("0 */5 * * * *", "0 0 8 * * 1-5"));
    assert!(!ok);
    assert!(
        out.contains("guardline.toml:11:")
            && out.contains("feeds[0].schedule")
            && out.contains("Sunday=1"),
        "{out}"
    );

    let (ok, out) = check(&GOOD.replace("start = \"s\"\n", ""));
    assert!(!ok);
    assert!(
        out.contains("feeds[0].map.start: a feed of kind \"intervals\" needs map.start"),
        "{out}"
    );

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(repo().join("config/demo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
