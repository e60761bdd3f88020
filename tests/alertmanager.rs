//! A real Alertmanager (Debian's prometheus-alertmanager) receives the alerts guardline
//! pushes, and keeps them active because guardline re-sends them.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn alertmanager_receives_the_pushed_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let am_dir = dir.path().join("am");
    std::fs::create_dir_all(&am_dir).unwrap();
    std::fs::write(
        am_dir.join("am.yml"),
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let am = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", am_dir.join("am.yml").display()))
        .arg(format!("--storage.path={}", am_dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager runs (scripts/test installs it from Debian)");
    let _am = KillOnDrop(am);
    let am_api = format!("http://127.0.0.1:{am_port}/api/v2/alerts");
    wait_for(Duration::from_secs(30), "Alertmanager up", || {
        get_text(&format!("http://127.0.0.1:{am_port}/-/ready")).map(|_| ())
    });

    let smtp = Smtp::start(dir.path(), 0);
    let sim = Simulator::start(3, 500);
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[notify]\nreceivers = [\"log\", \"mail\"]",
        "[notify]\nreceivers = [\"log\", \"am\"]",
    ) + &format!(
        "\n[[receivers]]\nname = \"am\"\ntype = \"alertmanager\"\nurls = [\"http://127.0.0.1:{am_port}/\"]\nresend_interval = \"2s\"\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let four = [
        "income_below_line",
        "wage_income_drop",
        "medical_burden",
        "medical_burden_policy_lifted",
        "medical_burden_policy_ordinary",
        "water_outage_long",
        "water_outage_spread",
    ];
    let cases: BTreeSet<String> = sim.planted()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| four.contains(&c["rule"].as_str().unwrap()))
        .map(|c| c["rule"].as_str().unwrap().to_string())
        .collect();
    let expected = sim.planted()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| four.contains(&c["rule"].as_str().unwrap()))
        .count();

    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    let alerts = wait_for(
        Duration::from_secs(60),
        "every alert in Alertmanager",
        || {
            let v: serde_json::Value = serde_json::from_str(&get_text(&am_api)?).ok()?;
            let a = v.as_array()?.clone();
            (a.len() == expected).then_some(a)
        },
    );
    let names: BTreeSet<String> = alerts
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, cases);
    for a in &alerts {
        assert_eq!(a["status"]["state"], "active", "{a}");
        assert!(a["annotations"]["summary"].as_str().unwrap().len() > 5);
        assert!(a["labels"]["county"].as_str().unwrap().len() == 6);
    }
    // Re-sent: the alerts are still there, with a later end, after several intervals.
    let first_end = alerts[0]["endsAt"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&get_text(&am_api).unwrap()).unwrap();
    let again = v.as_array().unwrap();
    assert_eq!(again.len(), expected);
    let fp = alerts[0]["fingerprint"].as_str().unwrap();
    let later = again.iter().find(|a| a["fingerprint"] == fp).unwrap()["endsAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(later > first_end, "{later} after {first_end}");
    assert!(
        d.log_text()
            .contains("firing alerts re-sent to Alertmanager")
    );
    assert!(d.stop().success());
}
