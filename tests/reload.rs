//! Hot reload: a broken rule file is refused (logged with file and line, counted) and the
//! running rules stay; a fixed one with a looser threshold applies at once, by SIGHUP or
//! `POST /-/reload`, without a restart.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use support::*;

fn post(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new().post(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn a_broken_rule_file_is_refused_and_a_fixed_one_applies_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path(), 0);
    let sim = Simulator::start(13, 700);
    let planted = sim.planted();
    let four = [
        "income_below_line",
        "wage_income_drop",
        "medical_burden",
        "medical_burden_policy_lifted",
        "medical_burden_policy_ordinary",
        "water_outage_long",
        "water_outage_spread",
    ];
    let pick = |key: &str, rule: Option<&str>| -> BTreeSet<(String, String)> {
        planted[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                four.contains(&c["rule"].as_str().unwrap()) && rule.is_none_or(|r| c["rule"] == r)
            })
            .map(|c| {
                (
                    c["rule"].as_str().unwrap().to_string(),
                    c["entity"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let cases = pick("cases", None);
    let wage_decoys = pick("decoys", Some("wage_income_drop"));
    assert!(!wage_decoys.is_empty());

    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for e in std::fs::read_dir(repo().join("alerts")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, rules.join(p.file_name().unwrap())).unwrap();
        }
    }
    let cfg = config(dir.path(), sim.addr, smtp.port);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &repo().join("alerts").display().to_string(),
        &rules.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, &dir.path().join("daemon.log"));
    wait_for(Duration::from_secs(120), "the planted alerts", || {
        (smtp.messages().len() == cases.len()).then_some(())
    });

    // A broken rule file: refused on SIGHUP, with the file and line in the log.
    let income = rules.join("income.toml");
    let good = std::fs::read_to_string(&income).unwrap();
    std::fs::write(&income, format!("{good}\n[[rules]]\nname = \"broken\"\nkind = \"nonsense\"\nseverity = \"warning\"\nrisk_category = \"其他\"\nsummary = \"x\"\ndescription = \"x\"\n")).unwrap();
    Command::new("kill")
        .args(["-HUP", &d_pid(&d)])
        .status()
        .unwrap();
    wait_for(Duration::from_secs(30), "the refused reload", || {
        (d.metric("guardline_config_reloads_total{outcome=\"failure\"}") == 1.0).then_some(())
    });
    assert_eq!(d.metric("guardline_config_last_reload_successful"), 0.0);
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .expect("a log line for the refused reload");
    assert!(
        line.contains("income.toml:")
            && line.contains("rules[2].kind")
            && line.contains("unknown rule kind"),
        "{line}"
    );
    // Over HTTP too, with the problems in the answer.
    let (status, body) = post(&format!("http://{}/-/reload", d.http));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown rule kind"), "{body}");
    // The running rules stay: still every planted alert, nothing new.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.messages().len(), cases.len());

    // Fixed, with a looser wage-drop threshold: applies at once and the near misses fire.
    std::fs::write(
        &income,
        good.replace("drop_percent = 50", "drop_percent = 25")
            .replace("resolve_drop_percent = 40", "resolve_drop_percent = 20"),
    )
    .unwrap();
    let (status, body) = post(&format!("http://{}/-/reload", d.http));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("reloaded 18 rules"), "{body}");
    let mails = wait_for(Duration::from_secs(60), "the near misses fired", || {
        let m = smtp.messages();
        (m.len() == cases.len() + wage_decoys.len()).then_some(m)
    });
    let fired: BTreeSet<(String, String)> = mails.iter().map(announced).collect();
    assert!(wage_decoys.is_subset(&fired));
    assert_eq!(d.metric("guardline_config_last_reload_successful"), 1.0);

    // Back to the stricter threshold: the near misses resolve (their drop is below the
    // resolve threshold of 40 %) and a resolved notice goes out for each.
    std::fs::write(&income, &good).unwrap();
    let (status, body) = post(&format!("http://{}/-/reload", d.http));
    assert_eq!(status, 200, "{body}");
    let resolved = wait_for(Duration::from_secs(60), "the resolved notices", || {
        let m: Vec<serde_json::Value> = smtp
            .messages()
            .into_iter()
            .filter(|m| m["subject"].as_str().unwrap().starts_with("【预警解除】"))
            .collect();
        (m.len() == wage_decoys.len()).then_some(m)
    });
    let notices: BTreeSet<(String, String)> = resolved.iter().map(announced).collect();
    assert_eq!(notices, wage_decoys);
    assert!(resolved.iter().all(|m| {
        m["message_id"]
            .as_str()
            .unwrap()
            .ends_with(".resolved@guardline>")
    }));
    assert!(d.stop().success());
}

fn d_pid(d: &Daemon) -> String {
    d.pid().to_string()
}
