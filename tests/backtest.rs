//! `guardline backtest` over the simulator's history: it finds every planted case, the
//! decoys stay silent, and a looser wage-drop threshold adds exactly the wage decoys.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use support::*;

fn set(v: &serde_json::Value, rule: Option<&str>) -> BTreeSet<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|c| RULES_OF_FOUR_FEEDS.contains(&c["rule"].as_str().unwrap()))
        .filter(|c| rule.is_none_or(|r| c["rule"] == r))
        .map(|c| {
            (
                c["rule"].as_str().unwrap().to_string(),
                c["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn backtest_finds_the_planted_cases_and_reports_a_threshold_change() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 0);
    let sim = Simulator::start(9, 900);
    let planted = sim.planted();
    let cases = set(&planted["cases"], None);
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    wait_for(Duration::from_secs(120), "the live alerts", || {
        (smtp.messages().len() >= cases.len()).then_some(())
    });
    assert!(d.stop().success());
    let log_before = std::fs::read_to_string(dir.path().join("data/notifications.log")).unwrap();

    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive();
    let from = (today - chrono::Duration::days(1)).to_string();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args([
                "backtest",
                "--from",
                &from,
                "--to",
                &today.to_string(),
                "--config",
            ])
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let report: serde_json::Value = serde_json::from_str(&run(&["--format", "json"])).unwrap();
    let firing_at_end: BTreeSet<(String, String)> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resolved_at"].is_null())
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_string(),
                e["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        firing_at_end, cases,
        "the backtest finds exactly the planted cases"
    );
    let all: BTreeSet<(String, String)> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_string(),
                e["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        all.is_disjoint(&set(&planted["decoys"], None)),
        "no decoy fires in the backtest"
    );

    // A looser wage-drop threshold (25 %) catches the near misses (28-38 % drops) and
    // nothing else.
    let looser = dir.path().join("looser");
    std::fs::create_dir_all(&looser).unwrap();
    for e in std::fs::read_dir(repo().join("alerts")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("drop_percent = 50", "drop_percent = 25")
                .replace("resolve_drop_percent = 40", "resolve_drop_percent = 20");
            std::fs::write(looser.join(p.file_name().unwrap()), text).unwrap();
        }
    }
    let looser_arg = looser.display().to_string();
    let report: serde_json::Value =
        serde_json::from_str(&run(&["--against", &looser_arg, "--format", "json"])).unwrap();
    let added: BTreeSet<(String, String)> = report["diff"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_string(),
                e["entity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let wage_decoys = set(&planted["decoys"], Some("wage_income_drop"));
    assert!(!wage_decoys.is_empty());
    assert_eq!(added, wage_decoys, "exactly the wage near misses are added");
    assert!(report["diff"]["removed"].as_array().unwrap().is_empty());
    let table = run(&["--against", &looser_arg]);
    assert!(
        table.contains(&format!(
            "{} added, 0 removed, 0 changed",
            wage_decoys.len()
        )),
        "{table}"
    );
    let csv = run(&["--format", "csv"]);
    assert!(
        csv.starts_with("rule,entity,county,fired_at,resolved_at\n"),
        "{csv}"
    );

    // Nothing was sent or written.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/notifications.log")).unwrap(),
        log_before
    );
    assert_eq!(smtp.messages().len(), cases.len());
}
