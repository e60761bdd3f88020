//! Departmental feeds for real: every department and format against the simulator over
//! HTTP, drop folders, faults injected by a test feed server, the waiting room for persons
//! not yet on the roster, and the quarantine commands.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use support::*;

fn demo_config_for(dir: &std::path::Path, sim: SocketAddr) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("config/demo.toml"))
        .unwrap()
        .replace("127.0.0.1:18700", &sim.to_string())
        .replace("127.0.0.1:9187", "127.0.0.1:0")
        .replace(
            "../guardline-demo-data",
            &dir.join("data").display().to_string(),
        )
        .replace(
            "\"../alerts\"",
            &format!("\"{}\"", repo().join("alerts").display()),
        )
        .replace("*/20 * * * * *", "*/2 * * * * *")
        // Small pages, so that every paging style turns several pages.
        .replace("paging = \"page\"", "paging = \"page\"\npage_size = 2")
        .replace("paging = \"link\"", "paging = \"link\"\npage_size = 2")
        .replace("paging = \"offset\"", "paging = \"offset\"\npage_size = 37")
        .replace(
            "cursor_field = \"seq\"",
            "cursor_field = \"seq\"\npage_size = 9",
        );
    // The housing export once more, as UTF-8 with a byte-order mark.
    let text = format!(
        "{text}\n[[feeds]]\nname = \"housing_utf8\"\nkind = \"events\"\nurl = \"http://{sim}/feeds/housing.csv?encoding=utf-8&bom=1\"\nschedule = \"*/2 * * * * *\"\nformat = \"csv\"\npaging = \"none\"\n[feeds.map]\nrecord_id = \"记录编号\"\nhousehold = \"户编号\"\ntime = \"鉴定日期\"\nevent_field = \"鉴定等级\"\nevent_values = {{ A = \"house_safe\", B = \"house_safe\", C = \"house_unsafe\", D = \"house_unsafe\" }}\n"
    );
    let p = dir.join("guardline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn accepted(d: &Daemon, feed: &str) -> f64 {
    d.metric(&format!(
        "guardline_feed_records_total{{feed=\"{feed}\",outcome=\"accepted\"}}"
    ))
}

#[test]
fn every_department_and_format_from_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(4, 2500);
    let cfg = demo_config_for(dir.path(), sim.addr);
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    let total = |feed: &str| {
        get_json(&format!("http://{}/feeds/{feed}?limit=1", sim.addr))["total"]
            .as_f64()
            .unwrap()
    };
    let feeds = [
        ("roster", "roster"),
        ("wages", "wages"),
        ("medical", "medical"),
        ("water", "water"),
        ("civil", "civil"),
        ("water_quality", "water_quality"),
        ("education", "education"),
        ("housing", "housing"),
        ("housing_utf8", "housing"),
        ("disability", "disability"),
        ("disaster", "disaster"),
    ];
    for (feed, source) in feeds {
        let want = total(source);
        assert!(want > 0.0, "the simulator serves {source}");
        wait_for(
            Duration::from_secs(120),
            &format!("all {want} records of {feed}"),
            || (accepted(&d, feed) == want).then_some(()),
        );
    }
    // Two more polls: everything is skipped as a duplicate or not fetched at all.
    let polls = |f: &str| {
        d.metric(&format!(
            "guardline_feed_polls_total{{feed=\"{f}\",outcome=\"success\"}}"
        ))
    };
    let before = polls("water_quality");
    wait_for(Duration::from_secs(30), "two more polls", || {
        (polls("water_quality") >= before + 2.0).then_some(())
    });
    let t = d.metrics();
    for (feed, source) in feeds {
        assert_eq!(
            metric_value(
                &t,
                &format!("guardline_feed_records_total{{feed=\"{feed}\",outcome=\"accepted\"}}")
            ),
            total(source),
            "{feed}"
        );
        assert_eq!(
            metric_value(
                &t,
                &format!("guardline_feed_records_total{{feed=\"{feed}\",outcome=\"rejected\"}}")
            ),
            0.0,
            "{feed}"
        );
    }
    // Conditional requests: the unchanged page-numbered feed is answered 304, not re-read.
    assert_eq!(
        metric_value(
            &t,
            "guardline_feed_records_total{feed=\"water_quality\",outcome=\"duplicate\"}"
        ),
        0.0
    );
    // Paging by page number re-reads without validators… the Link-paged feed did re-read.
    assert!(
        metric_value(
            &t,
            "guardline_feed_records_total{feed=\"education\",outcome=\"duplicate\"}"
        ) > 0.0
    );
    // Cursor-paged feeds resume after their cursor: nothing is read twice.
    for feed in ["wages", "disability", "housing"] {
        assert_eq!(
            metric_value(
                &t,
                &format!("guardline_feed_records_total{{feed=\"{feed}\",outcome=\"duplicate\"}}")
            ),
            0.0,
            "{feed}"
        );
    }
    assert!(d.stop().success());

    // `feeds test` shows how the GBK CSV maps, without writing anything.
    let out = Command::new(BIN)
        .args(["feeds", "test", "housing", "--records", "2", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("0: record ZJ") && text.contains("event: household"),
        "{text}"
    );
}

#[test]
fn a_drop_folder_ingests_each_file_once_and_rejects_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("drop");
    let roster_drop = dir.path().join("roster-drop");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::create_dir_all(&roster_drop).unwrap();
    std::fs::write(
        roster_drop.join("roster.json"),
        r#"{"records": [{"record_id": "r1", "hh_id": "632522100201001", "village_code": "632522100201", "category": "脱贫户", "head_name": "王五", "members": ["632522198001010011"], "income_per_capita": 9000}]}"#,
    )
    .unwrap();
    std::fs::write(drop.join("2026-10.csv"), "\u{feff}记录编号,户编号,鉴定等级,鉴定日期\nZJ1,632522100201001,C,2026-10-05\nZJ2,632522100201999,D,2026-10-06\nZJ3,632522100201001,A,2026-10-07,extra\n").unwrap();
    std::fs::write(drop.join("broken.csv"), b"\xff\xfe\x00garbage").unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("guardline.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[daemon]
data_dir = "{data}"
listen = "127.0.0.1:0"
rules_dir = "{rules}"
pseudonym_key_file = "{data}/key"
create_pseudonym_key = true

[[feeds]]
name = "roster"
kind = "roster"
dir = "{roster}"
schedule = "*/1 * * * * *"
{roster_map}
[[feeds]]
name = "housing"
kind = "events"
dir = "{drop}"
schedule = "*/1 * * * * *"
format = "csv"
[feeds.map]
record_id = "记录编号"
household = "户编号"
time = "鉴定日期"
event_field = "鉴定等级"
event_values = {{ A = "house_safe", B = "house_safe", C = "house_unsafe", D = "house_unsafe" }}
"#,
            data = data.display(),
            rules = repo().join("alerts").display(),
            roster_map = ROSTER_MAP,
            roster = roster_drop.display(),
            drop = drop.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    wait_for(Duration::from_secs(30), "both files handled", || {
        (drop.join("done/2026-10.csv").exists() && drop.join("rejected/broken.csv").exists())
            .then_some(())
    });
    let reason = std::fs::read_to_string(drop.join("rejected/broken.csv.reason.txt")).unwrap();
    assert!(reason.contains("invalid UTF-8"), "{reason}");
    assert!(roster_drop.join("done/roster.json").exists());
    // A new file with the same name later is ingested too, and kept beside the first.
    std::fs::write(
        drop.join("2026-10.csv"),
        "记录编号,户编号,鉴定等级,鉴定日期\nZJ4,632522100201001,B,2026-10-20\n",
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "the second file", || {
        (accepted(&d, "housing") == 2.0 && !drop.join("2026-10.csv").exists()).then_some(())
    });
    let t = d.metrics();
    assert_eq!(
        metric_value(
            &t,
            "guardline_feed_records_total{feed=\"housing\",outcome=\"rejected\"}"
        ),
        2.0,
        "{t}"
    );
    assert_eq!(
        metric_value(
            &t,
            "guardline_quarantine_records{feed=\"housing\",reason=\"unknown_household\"}"
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric_value(
            &t,
            "guardline_quarantine_records{feed=\"housing\",reason=\"invalid_csv\"}"
        ),
        1.0,
        "{t}"
    );
    assert_eq!(std::fs::read_dir(drop.join("done")).unwrap().count(), 2);
    assert!(d.log_text().contains("file rejected"));
    assert!(d.stop().success());
}

/// A feed server that misbehaves in every way a department's server can.
#[derive(Default)]
struct Faults {
    flaky: AtomicUsize,
    limited: AtomicUsize,
    roster_complete: AtomicBool,
}

const WAGES: &str = r#"{"records": [
  {"record_id": "w1", "id_number": "632522198001010011", "month": "2026-09", "amount": 3000},
  {"record_id": "w2", "id_number": "632522198501010022", "month": "2026-09", "amount": 2000},
  {"record_id": "w3", "id_number": "632522198501010022", "month": "2026-10", "amount": 2100}], "next": "3"}"#;
const EMPTY: &str = r#"{"records": [], "next": null}"#;

fn start_fault_server() -> (SocketAddr, Arc<Faults>) {
    let state = Arc::new(Faults::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let st = Arc::clone(&state);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let once = |q: &HashMap<String, String>, body: &'static str| if q.contains_key("since") { EMPTY } else { body };
            let app = Router::new()
                .route("/roster", get(|State(s): State<Arc<Faults>>| async move {
                    let second = if s.roster_complete.load(Ordering::SeqCst) {
                        r#", {"record_id": "r2", "hh_id": "632522100201002", "village_code": "632522100201", "category": "一般农户", "head_name": "李四", "members": [{"id_number": "632522198501010022"}], "income_per_capita": 12000}"#
                    } else { "" };
                    format!(r#"{{"records": [{{"record_id": "r1", "hh_id": "632522100201001", "village_code": "632522100201", "category": "脱贫户", "head_name": "张三", "members": [{{"id_number": "632522198001010011"}}], "income_per_capita": 9000}}{second}], "next": null}}"#)
                }))
                .route("/switch", get(|State(s): State<Arc<Faults>>| async move { s.roster_complete.store(true, Ordering::SeqCst); "ok" }))
                .route("/wages", get(move |Query(q): Query<HashMap<String, String>>| async move { once(&q, WAGES) }))
                .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await; EMPTY }))
                .route("/flaky", get(move |State(s): State<Arc<Faults>>, Query(q): Query<HashMap<String, String>>| async move {
                    if s.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                    } else {
                        once(&q, WAGES).into_response()
                    }
                }))
                .route("/limited", get(move |State(s): State<Arc<Faults>>, Query(q): Query<HashMap<String, String>>| async move {
                    if s.limited.fetch_add(1, Ordering::SeqCst) == 0 {
                        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], "slow down").into_response()
                    } else {
                        once(&q, WAGES).into_response()
                    }
                }))
                .route("/notfound", get(|| async { (StatusCode::NOT_FOUND, "no such feed") }))
                .route("/truncated", get(|| async {
                    // Announces 1,000 bytes, sends 40, then the connection breaks.
                    let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                        Ok(Bytes::from_static(b"{\"records\": [{\"record_id\": \"x\", \"id")),
                        Err(std::io::Error::other("connection cut")),
                    ];
                    Response::builder()
                        .header(header::CONTENT_LENGTH, "1000")
                        .body(Body::from_stream(futures_util::stream::iter(parts)))
                        .unwrap()
                }))
                .route("/latin", get(|| async {
                    Response::builder().body(Body::from(b"{\"records\": [{\"record_id\": \"caf\xe9\"}]}".to_vec())).unwrap()
                }))
                .route("/huge", get(|| async {
                    // 200 MB in 1 MB chunks, produced lazily, without a length.
                    let chunks = futures_util::stream::iter(
                        (0..200).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&MEGABYTE))),
                    );
                    Response::builder().body(Body::from_stream(chunks)).unwrap()
                }))
                .route("/bomb", get(|| async {
                    let mut s = String::from("{\"records\": [");
                    s.push_str(&vec!["{}"; 300_000].join(","));
                    s.push_str("], \"next\": \"1\"}");
                    s
                }))
                .route("/repeat", get(|| async { WAGES }))
                .route("/secure", get(move |headers: axum::http::HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
                    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
                    // Bearer t0ken-abc, Basic of hrss:pa55, or the X-Api-Key header.
                    if auth == "Bearer t0ken-abc" || auth == "Basic aHJzczpwYTU1" || key == "k3y-xyz" {
                        once(&q, WAGES).into_response()
                    } else {
                        (StatusCode::UNAUTHORIZED, "who are you").into_response()
                    }
                }))
                .with_state(st);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), state)
}

/// 1 MB of spaces, streamed 200 times for the huge body.
static MEGABYTE: [u8; 1 << 20] = [b' '; 1 << 20];

fn fault_config(
    dir: &std::path::Path,
    addr: SocketAddr,
    feeds: &[(&str, &str, &str)],
    wage_field: &str,
) -> std::path::PathBuf {
    let mut text = format!(
        r#"[daemon]
data_dir = "{data}"
listen = "127.0.0.1:0"
rules_dir = "{rules}"
pseudonym_key_file = "{data}/key"
create_pseudonym_key = true

[[feeds]]
name = "roster"
kind = "roster"
url = "http://{addr}/roster"
schedule = "*/1 * * * * *"
paging = "none"
{roster_map}"#,
        data = dir.join("data").display(),
        rules = repo().join("alerts").display(),
        roster_map = ROSTER_MAP,
    );
    for (name, path, extra) in feeds {
        text.push_str(&format!(
            "\n[[feeds]]\nname = \"{name}\"\nkind = \"samples\"\nurl = \"http://{addr}/{path}\"\nschedule = \"*/1 * * * * *\"\nretry_initial = \"100ms\"\n{extra}\n[feeds.map]\nrecord_id = \"record_id\"\nperson = \"id_number\"\ntime = \"month\"\nvalues = [{{ indicator = \"wage_income\", field = \"{wage_field}\" }}]\n"
        ));
    }
    let p = dir.join("guardline.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn feed_faults_are_survived_counted_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _state) = start_fault_server();
    let feeds = [
        ("slow", "slow", "timeout = \"1s\"\nretries = 0"),
        ("flaky", "flaky", "retries = 3"),
        ("limited", "limited", "retries = 2"),
        ("notfound", "notfound", ""),
        ("truncated", "truncated", "retries = 1"),
        ("latin", "latin", ""),
        ("huge", "huge", ""),
        ("bomb", "bomb", "max_records_per_poll = 100000"),
        ("repeat", "repeat", ""),
    ];
    let cfg = fault_config(dir.path(), addr, &feeds, "amount");
    let mut d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    let failures = |d: &Daemon, feed: &str, reason: &str| {
        d.metric(&format!(
            "guardline_feed_poll_failures_total{{feed=\"{feed}\",reason=\"{reason}\"}}"
        ))
    };
    let expected = [
        ("slow", "timeout"),
        ("notfound", "http_status"),
        ("truncated", "body"),
        ("latin", "invalid_encoding"),
        ("huge", "body_too_large"),
        ("bomb", "too_many_records"),
        ("repeat", "cursor_stuck"),
    ];
    for (feed, reason) in expected {
        wait_for(
            Duration::from_secs(60),
            &format!("{feed} failing with {reason}"),
            || (failures(&d, feed, reason) >= 1.0).then_some(()),
        );
    }
    let t = d.metrics();
    let m = |s: &str| metric_value(&t, s);
    // Transient failures were retried and the polls succeeded.
    assert_eq!(
        m("guardline_feed_retries_total{feed=\"flaky\",reason=\"http_status\"}"),
        2.0,
        "{t}"
    );
    assert_eq!(
        m("guardline_feed_retries_total{feed=\"limited\",reason=\"rate_limited\"}"),
        1.0,
        "{t}"
    );
    assert!(
        m("guardline_feed_retries_total{feed=\"truncated\",reason=\"body\"}") >= 1.0,
        "{t}"
    );
    // A 404 is not retried.
    assert_eq!(
        m("guardline_feed_retries_total{feed=\"notfound\",reason=\"http_status\"}"),
        0.0,
        "{t}"
    );
    // The retried feeds succeed after their retries (429 waits its Retry-After).
    for feed in ["flaky", "limited", "repeat"] {
        wait_for(Duration::from_secs(30), &format!("{feed} applied"), || {
            (accepted(&d, feed) == 1.0).then_some(())
        });
    }
    let t = d.metrics();
    let m = |s: &str| metric_value(&t, s);
    for feed in ["flaky", "limited", "repeat"] {
        assert_eq!(accepted(&d, feed), 1.0, "{feed}: the person on the roster");
        assert_eq!(
            m(&format!(
                "guardline_feed_records_total{{feed=\"{feed}\",outcome=\"waiting\"}}"
            )),
            2.0,
            "{feed}: {t}"
        );
        assert_eq!(
            m(&format!(
                "guardline_feed_records_total{{feed=\"{feed}\",outcome=\"duplicate\"}}"
            )),
            0.0,
            "{feed}: nothing applied twice"
        );
    }
    for feed in ["bomb", "huge", "latin", "truncated"] {
        assert_eq!(
            m(&format!(
                "guardline_feed_records_total{{feed=\"{feed}\",outcome=\"accepted\"}}"
            )),
            0.0,
            "{feed}"
        );
    }
    assert_eq!(m("guardline_waiting_records"), 6.0, "{t}");
    let log = d.log_text();
    for (feed, reason) in expected {
        assert!(
            log.lines().any(|l| l.contains("poll failed")
                && l.contains(&format!("feed={feed}"))
                && l.contains(&format!("reason=\"{reason}\""))),
            "no log line for {feed}: {log}"
        );
    }
    assert!(log.contains("request failed; retrying"));

    // The missing person joins the roster: the waiting records are applied.
    get_text(&format!("http://{addr}/switch")).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the waiting records released",
        || {
            (d.metric("guardline_waiting_records") == 0.0 && accepted(&d, "flaky") == 3.0)
                .then_some(())
        },
    );
    assert_eq!(accepted(&d, "limited"), 3.0);
    assert!(d.is_running());
    assert_eq!(
        get_text(&format!("http://{}/healthz", d.http)).unwrap(),
        "ok\n"
    );
    assert!(d.stop().success());
}

#[test]
fn quarantined_records_are_listed_shown_and_replayed_after_a_mapping_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _state) = start_fault_server();
    get_text(&format!("http://{addr}/switch")).unwrap();
    // The mapping names a field the feed does not have.
    let cfg = fault_config(dir.path(), addr, &[("wages", "wages", "")], "amt");
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    wait_for(Duration::from_secs(30), "three quarantined records", || {
        (d.metric("guardline_quarantine_records{feed=\"wages\",reason=\"missing_field\"}") == 3.0)
            .then_some(())
    });
    assert!(d.stop().success());

    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("quarantine")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    let list = run(&["list"]);
    assert!(
        list.contains("3 quarantined records") && list.contains("missing_field"),
        "{list}"
    );
    let id = list.split_whitespace().next().unwrap().to_string();
    let show = run(&["show", &id]);
    assert!(show.contains("\"id_number\": \"pk:"), "{show}");
    assert!(
        !show.contains("632522198"),
        "no ID number in the quarantine: {show}"
    );

    // Fix the mapping, replay, and the quarantine is empty.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("field = \"amt\"", "field = \"amount\""),
    )
    .unwrap();
    let replay = run(&["replay"]);
    assert!(replay.contains("replayed 3 records (3 applied"), "{replay}");
    assert!(run(&["list"]).contains("0 quarantined records"));
}

#[test]
fn feed_credentials_come_from_the_environment_or_a_file_and_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _state) = start_fault_server();
    get_text(&format!("http://{addr}/switch")).unwrap();
    let secret_file = dir.path().join("hrss-password");
    std::fs::write(&secret_file, "pa55\n").unwrap();
    let feeds = [
        (
            "bearer",
            "secure",
            "[feeds.auth]\ntype = \"bearer\"\ntoken_env = \"FEED_TOKEN\"",
        ),
        (
            "basic",
            "secure",
            &format!(
                "[feeds.auth]\ntype = \"basic\"\nusername = \"hrss\"\npassword_file = \"{}\"",
                secret_file.display()
            ),
        ),
        (
            "header",
            "secure",
            "[feeds.auth]\ntype = \"header\"\nname = \"X-Api-Key\"\nvalue_env = \"FEED_KEY\"",
        ),
        (
            "wrong",
            "secure",
            "[feeds.auth]\ntype = \"bearer\"\ntoken_env = \"WRONG_TOKEN\"",
        ),
    ];
    let feeds: Vec<(&str, &str, &str)> = feeds.iter().map(|(a, b, c)| (*a, *b, *c)).collect();
    let cfg = fault_config(dir.path(), addr, &feeds, "amount");
    // `check` refuses the configuration while a secret is missing.
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("FEED_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && text.contains("feed bearer: auth: environment variable FEED_TOKEN is not set"),
        "{text}"
    );

    let log = dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("FEED_TOKEN", "t0ken-abc")
        .env("FEED_KEY", "k3y-xyz")
        .env("WRONG_TOKEN", "guess")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let metrics_of = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let addr = text
            .lines()
            .find(|l| l.contains("serving /metrics"))?
            .split("address=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_string();
        get_text(&format!("http://{addr}/metrics"))
    };
    let t = wait_for(Duration::from_secs(60), "authenticated polls", || {
        let t = metrics_of()?;
        (["bearer", "basic", "header"].iter().all(|f| {
            metric_value(
                &t,
                &format!("guardline_feed_records_total{{feed=\"{f}\",outcome=\"accepted\"}}"),
            ) == 3.0
        }) && metric_value(
            &t,
            "guardline_feed_poll_failures_total{feed=\"wrong\",reason=\"http_status\"}",
        ) >= 1.0)
            .then_some(t)
    });
    assert_eq!(
        metric_value(
            &t,
            "guardline_feed_retries_total{feed=\"wrong\",reason=\"http_status\"}"
        ),
        0.0,
        "a 401 is not retried"
    );
    let _ = child.0.kill();
    let _ = child.0.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["t0ken-abc", "k3y-xyz", "pa55", "aHJzczpwYTU1", "guess"] {
        assert!(!text.contains(secret), "a secret reached the log: {secret}");
    }
    assert!(text.contains("answered HTTP 401"));
}

#[test]
fn https_feeds_trust_an_extra_ca_only_when_configured() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("roster.json");
    std::fs::write(&body, r#"{"records": [{"record_id": "r1", "hh_id": "632522100201001", "village_code": "632522100201", "category": "脱贫户", "head_name": "张三", "members": [{"id_number": "632522198001010011"}], "income_per_capita": 9000}], "next": null}"#).unwrap();
    let server = Command::new("python3")
        .arg(repo().join("tests/support/https_feed.py"))
        .arg("--dir")
        .arg(dir.path())
        .arg("--body")
        .arg(&body)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("READY ")
        .expect("https feed server starts")
        .parse()
        .unwrap();
    let feed = |name: &str, ca: &str| {
        format!(
            "[[feeds]]\nname = \"{name}\"\nkind = \"roster\"\nurl = \"https://127.0.0.1:{port}/roster\"\nschedule = \"*/1 * * * * *\"\npaging = \"none\"\nretries = 0\n{ca}\n[feeds.map]\nrecord_id = \"record_id\"\nhousehold = \"hh_id\"\nvillage = \"village_code\"\ncategory = \"category\"\nhead_name = \"head_name\"\nmembers = \"members\"\nmember_id = \"id_number\"\nincome_per_capita = \"income_per_capita\"\n"
        )
    };
    let data = dir.path().join("data");
    let cfg = dir.path().join("guardline.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nrules_dir = \"{}\"\npseudonym_key_file = \"{}/key\"\ncreate_pseudonym_key = true\n\n{}\n{}",
            data.display(),
            repo().join("alerts").display(),
            data.display(),
            feed("trusted", &format!("ca_file = \"{}\"", dir.path().join("ca.pem").display())),
            feed("untrusted", "")
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    wait_for(
        Duration::from_secs(60),
        "the trusted feed polled, the untrusted refused",
        || {
            let t = d.metrics();
            (metric_value(
                &t,
                "guardline_feed_records_total{feed=\"trusted\",outcome=\"accepted\"}",
            ) == 1.0
                && metric_value(
                    &t,
                    "guardline_feed_poll_failures_total{feed=\"untrusted\",reason=\"connect\"}",
                ) >= 1.0)
                .then_some(())
        },
    );
    assert!(d.log_text().contains("feed=untrusted"));
    assert!(d.stop().success());
    let _ = server.0.kill();
    let _ = server.0.wait();
}
