//! Self-monitoring against the real thing: Debian's Prometheus scrapes `guardline demo`,
//! loads guardline's own alerting rules, and answers every query of every dashboard with
//! data; `promtool` checks the live metrics, the rules and the rules' tests.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn promtool(args: &[&str], stdin: Option<&str>, dir: &Path) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed: scripts/test installs it");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let dir = repo().join("alerts/prometheus");
    let (ok, out) = promtool(&["check", "rules", "guardline.rules.yml"], None, &dir);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "tests/guardline.test.yml"], None, &dir);
    assert!(ok, "{out}");

    // The tests can fail: a rule file with a looser threshold breaks them.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir(scratch.path().join("tests")).unwrap();
    let rules = std::fs::read_to_string(dir.join("guardline.rules.yml"))
        .unwrap()
        .replace(
            "guardline_feed_consecutive_failures{job=\"guardline\"} >= 3",
            "guardline_feed_consecutive_failures{job=\"guardline\"} >= 1",
        );
    std::fs::write(scratch.path().join("guardline.rules.yml"), rules).unwrap();
    std::fs::copy(
        dir.join("tests/guardline.test.yml"),
        scratch.path().join("tests/guardline.test.yml"),
    )
    .unwrap();
    let (ok, out) = promtool(
        &["test", "rules", "tests/guardline.test.yml"],
        None,
        scratch.path(),
    );
    assert!(!ok, "a changed threshold must fail the tests:\n{out}");
    assert!(out.contains("GuardlineFeedFailing"), "{out}");
}

/// Every `expr` of a dashboard's panels (rows included), and its variables' queries.
fn dashboard_queries(d: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>, name: &str) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| {
                    panic!("{name}: panel {:?} has a target without expr", p["title"])
                });
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{name}: panel {:?} uses the datasource variable",
                    p["title"]
                );
                out.push(expr.to_string());
            }
            walk(&p["panels"], out, name);
        }
    }
    let name = d["title"].as_str().unwrap_or("?").to_string();
    let mut exprs = Vec::new();
    walk(&d["panels"], &mut exprs, &name);
    let vars = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    (exprs, vars)
}

/// Grafana's variables as a test substitutes them: every county and prefecture ("All").
fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for v in ["prefecture", "county"] {
        for form in [
            format!("${{{v}:regex}}"),
            format!("${{{v}:pipe}}"),
            format!("${{{v}}}"),
            format!("${v}"),
        ] {
            s = s.replace(&form, ".*");
        }
    }
    s.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
}

/// `label_values(selector, label)` as an instant query that returns one series per value.
fn variable_query(q: &str) -> String {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query is label_values(…): {q}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    format!(
        "count by ({}) ({})",
        label.trim(),
        substitute(selector.trim())
    )
}

fn query(prom: u16, expr: &str) -> Result<usize, String> {
    let mut url = reqwest::Url::parse(&format!("http://127.0.0.1:{prom}/api/v1/query")).unwrap();
    url.query_pairs_mut().append_pair("query", expr);
    let text = get_text(url.as_str()).ok_or("no answer")?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().map_or(0, |r| r.len()))
}

#[test]
fn prometheus_scrapes_the_demo_and_every_dashboard_query_returns_data() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, api) = demo_config(dir.path(), 1500);
    let demo_log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let _demo = KillOnDrop(
        Command::new(BIN)
            .args(["demo", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(demo_log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{api}");
    // Every feed polled twice: the demo's alerts are out and the counters have moved.
    let metrics = wait_for(
        Duration::from_secs(120),
        "two polls of every demo feed",
        || {
            let text = get_text(&format!("{base}/metrics"))?;
            let polls: Vec<f64> = text
                .lines()
                .filter(|l| {
                    l.starts_with("guardline_feed_polls_total{")
                        && l.contains("outcome=\"success\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            (polls.len() == 10 && polls.iter().all(|n| *n >= 2.0)).then_some(text)
        },
    );
    assert_eq!(get_text(&format!("{base}/readyz")).unwrap(), "ready\n");
    assert!(metrics.contains("guardline_ready 1"), "{metrics}");

    // promtool has nothing to say about the live output.
    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics), dir.path());
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );
    // Every metric of the catalogue is documented, and every documented one is served.
    let catalogue = std::fs::read_to_string(repo().join("METRICS.md")).unwrap();
    let served: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &served {
        assert!(
            catalogue.contains(&format!("`{name}`")) || name.starts_with("process_"),
            "{name} is missing from METRICS.md"
        );
    }
    // Rows that say "absent" describe series that appear with their first event.
    for line in catalogue
        .lines()
        .filter(|l| l.starts_with("| `guardline_") && !l.contains("absent"))
    {
        let name = line[3..].split('`').next().unwrap();
        assert!(
            served.contains(name),
            "METRICS.md lists {name}, /metrics has none"
        );
    }

    // Debian's Prometheus scrapes the demo every second and evaluates guardline's rules.
    let prom_port = free_port();
    let rules = repo().join("alerts/prometheus/guardline.rules.yml");
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: guardline\n    static_configs:\n      - targets: [\"127.0.0.1:{api}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .expect("prometheus (Debian package) is installed: scripts/test installs it"),
    );
    wait_for(
        Duration::from_secs(60),
        "Prometheus scraping guardline",
        || (query(prom_port, "up{job=\"guardline\"} == 1").ok()? == 1).then_some(()),
    );

    // The dashboards: current schema, datasource/prefecture/county variables, provisioned.
    let provisioning =
        std::fs::read_to_string(repo().join("dashboards/provisioning.yaml")).unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    let mut uids = BTreeSet::new();
    for name in [
        "guardline-province.json",
        "guardline-county.json",
        "guardline-operations.json",
    ] {
        let d: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("dashboards").join(name)).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(d["schemaVersion"].as_u64().unwrap() >= 39, "{name}: schema");
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid"
        );
        let vars: BTreeSet<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for v in ["datasource", "prefecture", "county"] {
            assert!(vars.contains(v), "{name}: variable {v}");
        }
        let (panel_exprs, var_queries) = dashboard_queries(&d);
        assert!(panel_exprs.len() >= 8, "{name}: {panel_exprs:?}");
        exprs.extend(
            panel_exprs
                .into_iter()
                .map(|e| (name.to_string(), substitute(&e))),
        );
        exprs.extend(
            var_queries
                .iter()
                .map(|q| (format!("{name} variable"), variable_query(q))),
        );
    }
    assert!(provisioning.contains("providers:"), "{provisioning}");

    // Every query is valid PromQL and returns data (rates need a few scrapes: retry).
    let mut failing: Vec<String> = Vec::new();
    for _ in 0..60 {
        failing = exprs
            .iter()
            .filter_map(|(name, e)| match query(prom_port, e) {
                Ok(n) if n > 0 => None,
                Ok(_) => Some(format!("{name}: no series: {e}")),
                Err(err) => Some(format!("{name}: {err}: {e}")),
            })
            .collect();
        if failing.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        failing.is_empty(),
        "{} of {} queries fail:\n{}",
        failing.len(),
        exprs.len(),
        failing.join("\n")
    );

    // Prometheus loaded guardline's rules and evaluates them without errors; with the demo
    // healthy, none of them fires.
    let rules = get_json(&format!("http://127.0.0.1:{prom_port}/api/v1/rules"));
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 12, "{rules}");
    for r in &loaded {
        assert_ne!(r["health"], "err", "{r}");
    }
    let alerts = get_json(&format!("http://127.0.0.1:{prom_port}/api/v1/alerts"));
    let firing: Vec<&serde_json::Value> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "{firing:?}");
}
