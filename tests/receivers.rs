//! Routing and receivers: a routing tree sends each alert to the receivers its labels match;
//! an Alertmanager-style webhook, a WeCom robot and a DingTalk robot (signed) receive them
//! over loopback; a robot's rate limit is retried, a refusal is not.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use support::*;

#[derive(Default)]
struct Inbox {
    by_receiver: Mutex<BTreeMap<String, Vec<serde_json::Value>>>,
    requests: Mutex<BTreeMap<String, usize>>,
}

const DING_SECRET: &str = "SEC-test-signing-secret";

fn start_receivers() -> (SocketAddr, Arc<Inbox>) {
    let inbox = Arc::new(Inbox::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let st = Arc::clone(&inbox);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route(
                    "/{which}",
                    post(|State(s): State<Arc<Inbox>>, Path(which): Path<String>, Query(q): Query<HashMap<String, String>>, headers: HeaderMap, body: String| async move {
                        let n = {
                            let mut r = s.requests.lock().unwrap();
                            let c = r.entry(which.clone()).or_default();
                            *c += 1;
                            *c
                        };
                        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                        let ok = match which.as_str() {
                            "hook" => headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer hook-token"),
                            "wecom" => q.get("key").map(String::as_str) == Some("wecom-key"),
                            "ding" => {
                                use base64::Engine;
                                use hmac::{Hmac, Mac};
                                let ts = q.get("timestamp").cloned().unwrap_or_default();
                                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(DING_SECRET.as_bytes()).unwrap();
                                mac.update(format!("{ts}\n{DING_SECRET}").as_bytes());
                                let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                                q.get("access_token").map(String::as_str) == Some("ding-token") && q.get("sign") == Some(&want)
                            }
                            _ => false,
                        };
                        if which == "bad" {
                            return (StatusCode::BAD_REQUEST, "malformed").into_response();
                        }
                        if !ok {
                            return (StatusCode::FORBIDDEN, "bad credentials").into_response();
                        }
                        // The WeCom robot is rate limited on its first message.
                        if which == "wecom" && n == 1 {
                            return axum::Json(serde_json::json!({"errcode": 45009, "errmsg": "api freq out of limit"})).into_response();
                        }
                        s.by_receiver.lock().unwrap().entry(which).or_default().push(json);
                        axum::Json(serde_json::json!({"errcode": 0, "errmsg": "ok"})).into_response()
                    }),
                )
                .with_state(st);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), inbox)
}

#[test]
fn the_routing_tree_sends_each_alert_to_its_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 0);
    let (rcv, inbox) = start_receivers();
    let sim = Simulator::start(21, 700);
    let cfg = config(dir.path(), sim.addr, smtp.port);
    // Replace the flat receiver list with a routing tree and three more receivers.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[notify]\nreceivers = [\"log\", \"mail\"]", "[notify]");
    let text = format!(
        r#"{text}
[[receivers]]
name = "hook"
type = "webhook"
url = "http://{rcv}/hook"
bearer_env = "HOOK_TOKEN"

[[receivers]]
name = "wecom"
type = "wecom"
url = "http://{rcv}/wecom"
key_env = "WECOM_KEY"

[[receivers]]
name = "ding"
type = "dingtalk"
url = "http://{rcv}/ding"
token_env = "DING_TOKEN"
secret_env = "DING_SECRET"

[[receivers]]
name = "bad"
type = "webhook"
url = "http://{rcv}/bad"

[route]
receivers = ["log"]
[[route.routes]]
matchers = ['rule="water_outage_long"']
receivers = ["bad"]
continue = true
[[route.routes]]
matchers = ['severity="critical"']
receivers = ["hook"]
continue = true
[[route.routes]]
matchers = ['risk_category="因病"']
receivers = ["wecom"]
[[route.routes]]
matchers = ['county=~"63.*"']
receivers = ["ding", "mail"]
"#
    );
    std::fs::write(&cfg, text).unwrap();

    // `routes test` shows the way of an alert.
    let out = Command::new(BIN)
        .args([
            "routes",
            "test",
            "severity=critical",
            "risk_category=因病",
            "county=632522",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("route root/1 [severity=\"critical\"] -> hook"),
        "{shown}"
    );
    assert!(shown.contains("receivers: hook, wecom"), "{shown}");

    let log = dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("SMTP_PASSWORD", "s3cret")
        .env("HOOK_TOKEN", "hook-token")
        .env("WECOM_KEY", "wecom-key")
        .env("DING_TOKEN", "ding-token")
        .env("DING_SECRET", DING_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    // The file receiver gets the alerts no child route took; all others went elsewhere.
    let planted: Vec<serde_json::Value> = sim.planted()["cases"].as_array().unwrap().clone();
    let four = [
        "income_below_line",
        "wage_income_drop",
        "medical_burden",
        "medical_burden_policy_lifted",
        "medical_burden_policy_ordinary",
        "water_outage_long",
        "water_outage_spread",
    ];
    let expected: Vec<&serde_json::Value> = planted
        .iter()
        .filter(|c| four.contains(&c["rule"].as_str().unwrap()))
        .collect();
    let critical = ["medical_burden", "water_outage_long", "water_outage_spread"];
    let illness = [
        "medical_burden",
        "medical_burden_policy_lifted",
        "medical_burden_policy_ordinary",
    ];
    let want = |pred: &dyn Fn(&str) -> bool| -> BTreeSet<(String, String)> {
        expected
            .iter()
            .filter(|c| pred(c["rule"].as_str().unwrap()))
            .map(|c| {
                (
                    c["rule"].as_str().unwrap().to_string(),
                    c["entity"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let hook_want = want(&|r| critical.contains(&r));
    let wecom_want = want(&|r| illness.contains(&r));
    let ding_want = want(&|r| !illness.contains(&r));
    let got = |which: &str| {
        inbox
            .by_receiver
            .lock()
            .unwrap()
            .get(which)
            .cloned()
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(120), "every receiver served", || {
        (got("hook").len() == hook_want.len()
            && got("wecom").len() == wecom_want.len()
            && got("ding").len() == ding_want.len())
        .then_some(())
    });

    // The webhook speaks Alertmanager's JSON, version 4.
    let hook: BTreeSet<(String, String)> = got("hook")
        .iter()
        .map(|p| {
            assert_eq!(p["version"], "4");
            assert_eq!(p["status"], "firing");
            assert!(p["groupKey"].as_str().unwrap().starts_with("root/1:"));
            assert!(p["notificationKey"].as_str().unwrap().ends_with(".firing"));
            let a = &p["alerts"][0];
            assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
            assert!(
                a["annotations"]["summary"].as_str().unwrap().contains("户")
                    || a["annotations"]["summary"]
                        .as_str()
                        .unwrap()
                        .contains("停水")
            );
            assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
            let l = &a["labels"];
            let entity = match (l.get("household"), l.get("township")) {
                (Some(h), _) => format!("household/{}", h.as_str().unwrap()),
                (None, Some(t)) => format!("township/{}", t.as_str().unwrap()),
                _ => format!("village/{}", l["village"].as_str().unwrap()),
            };
            (l["rule"].as_str().unwrap().to_string(), entity)
        })
        .collect();
    assert_eq!(hook, hook_want);
    // Robots get markdown, with no ID numbers.
    for p in got("wecom") {
        assert_eq!(p["msgtype"], "markdown");
        let md = p["markdown"]["content"].as_str().unwrap();
        assert!(
            md.starts_with("#### 【返贫风险预警") && md.contains("户编号："),
            "{md}"
        );
    }
    for p in got("ding") {
        assert_eq!(p["msgtype"], "markdown");
        assert!(
            p["markdown"]["title"]
                .as_str()
                .unwrap()
                .starts_with("【返贫风险预警")
        );
    }
    // E-mail goes with DingTalk, as the route says (it may arrive a moment later).
    wait_for(
        Duration::from_secs(60),
        "the e-mails of the DingTalk route",
        || {
            let mails: BTreeSet<(String, String)> = smtp.messages().iter().map(announced).collect();
            (mails == ding_want).then_some(())
        },
    );

    let addr = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .unwrap()
        .split("address=")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let t = get_text(&format!("http://{addr}/metrics")).unwrap();
    // The rate-limited robot message was retried; the refusing webhook was not.
    assert!(
        metric_value(
            &t,
            "guardline_notifications_total{outcome=\"failed\",receiver=\"wecom\"}"
        ) >= 1.0,
        "{t}"
    );
    let long = want(&|r| r == "water_outage_long").len();
    let t = wait_for(Duration::from_secs(30), "the refusals counted", || {
        let t = get_text(&format!("http://{addr}/metrics"))?;
        (metric_value(
            &t,
            "guardline_notifications_total{outcome=\"rejected\",receiver=\"bad\"}",
        ) as usize
            == long)
            .then_some(t)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        metric_value(
            &t,
            "guardline_notifications_total{outcome=\"rejected\",receiver=\"bad\"}"
        ) as usize,
        long,
        "{t}"
    );
    assert_eq!(
        inbox
            .requests
            .lock()
            .unwrap()
            .get("bad")
            .copied()
            .unwrap_or(0),
        long,
        "a refusal is not retried"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["hook-token", "wecom-key", "ding-token", DING_SECRET] {
        assert!(!text.contains(secret), "{secret} reached the log");
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
}
