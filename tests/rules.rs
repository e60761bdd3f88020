//! `guardline test-rules`: the shipped rules pass their shipped tests, and a wrong
//! expectation fails with a message that says what differs.

mod support;

use std::process::Command;

use support::*;

#[test]
fn the_default_rules_pass_their_tests() {
    let out = Command::new(BIN)
        .args(["test-rules"])
        .arg(repo().join("alerts"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
    // Every default rule is exercised by at least one test that expects it to fire.
    let rules = std::fs::read_dir(repo().join("alerts"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .flat_map(|p| {
            let t: toml::Value = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            t.get("rules")
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default()
        })
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let tests: String = std::fs::read_dir(repo().join("alerts/tests"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for r in &rules {
        assert!(
            tests.contains(&format!("rule = \"{r}\"")),
            "no test expects {r} to fire"
        );
    }
}

#[test]
fn a_wrong_expectation_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("wrong.toml");
    std::fs::write(
        &f,
        format!(
            r#"rules_dir = "{}"
[[tests]]
name = "expects a drop that is not there"
rules = ["wage_income_drop"]
[[tests.households]]
id = "632522100201001"
village = "632522100201"
wage_income = {{ "2026-08" = 3000, "2026-09" = 3000, "2026-10" = 2900 }}
[[tests.steps]]
at = "2026-11-05T09:00:00+08:00"
firing = [{{ rule = "wage_income_drop", entity = "household/632522100201001" }}]
"#,
            repo().join("alerts").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["test-rules"])
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAILED") && text.contains("missing: [(\"wage_income_drop\""),
        "{text}"
    );
    assert!(text.contains("0 passed, 1 failed"), "{text}");
}
