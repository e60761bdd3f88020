//! A poll's pages over HTTP on loopback, into a sink that records what it is asked to do:
//! the order of commits and cursors while the next page is fetched during a commit.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;

/// What the sink and the feed server saw, in order.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the server has served the page at `hold_until` (by default the page after
    /// the first, `c1`); the first page's commit waits for it, so a poll that fetched
    /// nothing during a commit fails the test.
    second_fetched: Arc<(Mutex<bool>, Condvar)>,
    hold_until: Option<&'static str>,
    /// The commit of the page starting with this record fails.
    fail_commit_of: Option<&'static str>,
}

impl Recorder {
    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Where `line` is in the log; panics with the log if it is not there.
    fn at(&self, line: &str) -> usize {
        let lines = self.lines();
        lines
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line:?} missing from {lines:#?}"))
    }
}

impl Sink for Recorder {
    async fn cursor(&self, _feed: &str) -> Result<Option<String>, PollError> {
        Ok(None)
    }

    async fn validators(&self, _feed: &str) -> Result<Option<Validators>, PollError> {
        Ok(None)
    }

    async fn save_validators(&self, _feed: &str, _v: &Validators) -> Result<(), PollError> {
        Ok(())
    }

    async fn ingest(
        &self,
        _feed: &FeedConfig,
        records: &[Mapped<'_>],
        cursor: Option<&str>,
    ) -> Result<Counts, PollError> {
        let ids: Vec<String> = records
            .iter()
            .map(|m| m.result.as_ref().map(|r| r.id.clone()).unwrap())
            .collect();
        let first = ids[0].clone();
        self.push(format!("apply {}", ids.join(",")));
        if first == "A1" {
            let (fetched, cv) = &*self.second_fetched;
            let (fetched, _) = cv
                .wait_timeout_while(fetched.lock().unwrap(), Duration::from_secs(30), |f| !*f)
                .unwrap();
            if !*fetched {
                self.push("the next page was not fetched during the commit".into());
            }
        }
        if self.fail_commit_of == Some(first.as_str()) {
            self.push(format!("failed {first}"));
            return Err(PollError::Store("disk full".into()));
        }
        self.push(format!("committed {first}"));
        // The cursor after the page, committed with it.
        if let Some(cursor) = cursor {
            self.push(format!("save {cursor}"));
        }
        Ok(Counts {
            accepted: ids.len() as u64,
            ..Counts::default()
        })
    }

    async fn poll_started(&self, _feed: &str) {}

    async fn poll_done(&self, _feed: &str, _caught_up: bool) {}
}

/// The feed's pages: the cursor that asks for each, and its body.
type Pages = Arc<[(Option<&'static str>, String); 3]>;

/// Serves three pages of two, two and one records by cursor (`since`); the page after
/// `c1` is broken when `broken` is set.
async fn serve(rec: Recorder, broken: bool) -> std::net::SocketAddr {
    let page = |ids: &[&str], next: &str| {
        let records: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"id": "{id}", "hh": "632522100201001", "date": "2026-03-05"}}"#))
            .collect();
        format!(
            r#"{{"records": [{}], "next": "{next}"}}"#,
            records.join(",")
        )
    };
    let pages: Pages = Arc::new([
        (None, page(&["A1", "A2"], "c1")),
        (Some("c1"), page(&["A3", "A4"], "c2")),
        (Some("c2"), page(&["A5"], "c3")),
    ]);
    let app = axum::Router::new()
        .route(
            "/feed",
            get(
                move |State((rec, pages)): State<(Recorder, Pages)>,
                      Query(q): Query<std::collections::BTreeMap<String, String>>| async move {
                    let since = q.get("since").map(String::as_str);
                    rec.push(format!("fetch {}", since.unwrap_or("start")));
                    let body = match pages.iter().find(|(c, _)| *c == since) {
                        Some(_) if broken && since == Some("c1") => "{broken".to_string(),
                        Some((_, body)) => body.clone(),
                        None => r#"{"records": []}"#.to_string(),
                    };
                    if since == Some(rec.hold_until.unwrap_or("c1")) {
                        let (fetched, cv) = &*rec.second_fetched;
                        *fetched.lock().unwrap() = true;
                        cv.notify_all();
                    }
                    body
                },
            ),
        )
        .with_state((rec, pages));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn feed(addr: std::net::SocketAddr, dir: &std::path::Path) -> FeedConfig {
    let p = dir.join("g.toml");
    std::fs::write(
        &p,
        format!(
            "[[feeds]]\nname = \"f\"\nkind = \"events\"\nurl = \"http://{addr}/feed\"\nschedule = \"0 * * * * *\"\npage_size = 2\nretries = 0\n[feeds.map]\nrecord_id = \"id\"\nhousehold = \"hh\"\ntime = \"date\"\nevent = \"house_unsafe\"\n"
        ),
    )
    .unwrap();
    Config::load(&p).unwrap().feeds.remove(0)
}

async fn poll_with(rec: &Recorder, broken: bool) -> Result<(Counts, bool), PollError> {
    let dir = tempfile::tempdir().unwrap();
    let feed = feed(serve(rec.clone(), broken).await, dir.path());
    let client = FeedClient::build(&feed, Arc::new(Metrics::new())).unwrap();
    let pseudo = Pseudonymizer::from_key(b"test key of sixteen+ bytes");
    poll(&feed, &client, &pseudo, rec).await
}

/// Polls the three pages with the first page's commit held until the server has served the
/// page at `hold`, and checks what every good poll does: the fetch came during the commit,
/// the five records were applied, each page once and in order, its cursor committed with it
/// (the sink logs it after the page) and before the next page is applied.
async fn poll_holding_the_first_commit_until(hold: &'static str) {
    let rec = Recorder {
        hold_until: Some(hold),
        ..Recorder::default()
    };
    let (counts, caught_up) = poll_with(&rec, false).await.unwrap();
    assert_eq!((counts.accepted, caught_up), (5, true));
    let lines = rec.lines();
    assert!(
        !lines.iter().any(|l| l.contains("not fetched")),
        "{lines:#?}"
    );
    assert!(
        rec.at(&format!("fetch {hold}")) < rec.at("committed A1"),
        "{lines:#?}"
    );
    for (page, cursor, next) in [
        ("A1", "c1", Some("A3,A4")),
        ("A3", "c2", Some("A5")),
        ("A5", "c3", None),
    ] {
        assert!(
            rec.at(&format!("committed {page}")) < rec.at(&format!("save {cursor}")),
            "{lines:#?}"
        );
        if let Some(next) = next {
            assert!(
                rec.at(&format!("save {cursor}")) < rec.at(&format!("apply {next}")),
                "{lines:#?}"
            );
        }
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("apply")).count(),
        3,
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_commit_in_order_while_the_next_is_fetched() {
    poll_holding_the_first_commit_until("c1").await;
}

/// The applying thread finds the next page waiting: while the first page is committed, the
/// second is handed over and the third fetched. (Without a page waiting, the poll would hand
/// the second over only after the first's commit, and fetch the third after that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_waits_while_the_one_before_is_applied_and_the_one_after_is_fetched() {
    poll_holding_the_first_commit_until("c2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_page_fails_the_poll_after_the_page_before_is_committed() {
    let rec = Recorder::default();
    let e = poll_with(&rec, true).await.unwrap_err();
    assert!(matches!(e, PollError::InvalidJson { .. }), "{e}");
    let lines = rec.lines();
    assert!(rec.at("committed A1") < rec.at("save c1"), "{lines:#?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("apply A3") || l == "save c2"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_saves_no_cursor_and_applies_nothing_after_it() {
    let rec = Recorder {
        fail_commit_of: Some("A1"),
        ..Recorder::default()
    };
    let e = poll_with(&rec, false).await.unwrap_err();
    assert!(matches!(e, PollError::Store(_)), "{e}");
    let lines = rec.lines();
    // The second page was fetched and mapped meanwhile, but never applied.
    assert!(rec.at("fetch c1") < rec.at("failed A1"), "{lines:#?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("save") || l.starts_with("apply A3")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_asked_to_stop_before_a_poll_begins_fetches_nothing() {
    let rec = Recorder::default();
    let dir = tempfile::tempdir().unwrap();
    let feed = feed(serve(rec.clone(), false).await, dir.path());
    let metrics = Arc::new(Metrics::new());
    let task = |shutdown, start| FeedTask {
        feed: feed.clone(),
        client: FeedClient::build(&feed, Arc::clone(&metrics)).unwrap(),
        pseudo: Pseudonymizer::from_key(b"test key of sixteen+ bytes"),
        sink: rec.clone(),
        metrics: Arc::clone(&metrics),
        health: Arc::new(FeedHealth::new(["f"])),
        shutdown,
        start,
        report: None,
    };
    // Asked to stop while it waited for its gate, which then opens: the stop wins.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (open, start) = tokio::sync::watch::channel(false);
    let waiting = tokio::spawn(run_feed(task(shutdown, start)));
    stop.send_replace(true);
    // The feed may have stopped already and dropped its gate: `send` would fail then.
    open.send_replace(true);
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the feed stopped")
        .unwrap();
    // Asked to stop with its gate open, before its first poll began.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    stop.send_replace(true);
    let (_open, start) = tokio::sync::watch::channel(true);
    tokio::time::timeout(Duration::from_secs(30), run_feed(task(shutdown, start)))
        .await
        .expect("the feed stopped");
    assert_eq!(rec.lines(), Vec::<String>::new());

    // Not asked to stop, it polls (the test would pass for a feed that never polls else).
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (_open, start) = tokio::sync::watch::channel(true);
    let polling = tokio::spawn(run_feed(task(shutdown, start)));
    while !rec.lines().iter().any(|l| l == "save c3") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(30), polling)
        .await
        .expect("the feed stopped after its poll")
        .unwrap();
    assert_eq!(rec.at("fetch start"), 0);
}
