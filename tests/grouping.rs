//! Grouping: alerts of one county go out together, after group_wait, as one e-mail (to a
//! real SMTP server) and one webhook call listing every alert of the group.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use support::*;

fn start_hook() -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let st = Arc::clone(&got);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route(
                    "/hook",
                    post(|State(s): State<Arc<Mutex<Vec<serde_json::Value>>>>, body: String| async move {
                        s.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                        "ok"
                    }),
                )
                .with_state(st);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), got)
}

#[test]
fn alerts_of_a_county_go_out_together_after_group_wait() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 0);
    let (hook, got) = start_hook();
    let sim = Simulator::start(8, 600);
    let four = [
        "income_below_line",
        "wage_income_drop",
        "medical_burden",
        "medical_burden_policy_lifted",
        "medical_burden_policy_ordinary",
        "water_outage_long",
        "water_outage_spread",
    ];
    let mut per_county: BTreeMap<String, usize> = BTreeMap::new();
    for c in sim.planted()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| four.contains(&c["rule"].as_str().unwrap()))
    {
        *per_county
            .entry(c["county"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        per_county.values().any(|n| *n > 1),
        "a county with several cases: {per_county:?}"
    );
    let total: usize = per_county.values().sum();
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[notify]\nreceivers = [\"log\", \"mail\"]", "[notify]")
        + &format!(
            "\n[[receivers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://{hook}/hook\"\n\n[route]\nreceivers = [\"mail\", \"hook\"]\ngroup_by = [\"county\"]\ngroup_wait = \"4s\"\ngroup_interval = \"1h\"\n"
        );
    std::fs::write(&cfg, text).unwrap();
    let began = Instant::now();
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    wait_for(Duration::from_secs(60), "a first e-mail", || {
        (!smtp.messages().is_empty()).then_some(())
    });
    assert!(
        began.elapsed() >= Duration::from_secs(4),
        "the first message waited group_wait"
    );
    let payloads = wait_for(Duration::from_secs(60), "every alert by webhook", || {
        let g = got.lock().unwrap().clone();
        (g.iter()
            .map(|p| p["alerts"].as_array().unwrap().len())
            .sum::<usize>()
            == total)
            .then_some(g)
    });
    std::thread::sleep(Duration::from_secs(2));
    // One webhook call and one e-mail per county, each with all of the county's alerts.
    assert_eq!(payloads.len(), per_county.len(), "{payloads:?}");
    for p in &payloads {
        let county = p["commonLabels"]["county"].as_str().unwrap();
        assert_eq!(p["alerts"].as_array().unwrap().len(), per_county[county]);
        assert_eq!(p["groupKey"], format!("root:{{county={county}}}"));
    }
    let mails = smtp.messages();
    assert_eq!(mails.len(), per_county.len());
    for m in &mails {
        let subject = m["subject"].as_str().unwrap();
        let body = m["body"].as_str().unwrap();
        let n = body.matches("预警编号：").count();
        if n > 1 {
            assert!(subject.contains(&format!("同组共 {n} 条")), "{subject}");
        }
    }
    assert_eq!(
        mails
            .iter()
            .map(|m| m["body"].as_str().unwrap().matches("预警编号：").count())
            .sum::<usize>(),
        total
    );
    assert!(d.stop().success());
}
