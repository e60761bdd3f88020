//! `guardline demo` runs the simulator and the daemon in one process and shows real alerts.

mod support;

use std::process::Command;

use support::*;

#[test]
fn demo_prints_an_alert_for_every_planted_case() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, api) = demo_config(dir.path(), 1500);
    let out = Command::new(BIN)
        .args(["demo", "--exit-after", "25s", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{api}/metrics")),
        "{stdout}"
    );
    let planted = Command::new(BIN)
        .args([
            "simulate",
            "--list-planted",
            "--seed",
            "1",
            "--households",
            "1500",
        ])
        .output()
        .unwrap();
    let planted: serde_json::Value = serde_json::from_slice(&planted.stdout).unwrap();
    let cases = planted["cases"].as_array().unwrap().len();
    let alerts = stdout
        .lines()
        .filter(|l| l.starts_with("【返贫风险预警"))
        .count();
    assert_eq!(alerts, cases, "{stdout}");
    let log = std::fs::read_to_string(dir.path().join("data/notifications.log")).unwrap();
    assert_eq!(log.matches("=== ").count(), cases);
}
