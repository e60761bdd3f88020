use super::*;
use crate::model::{IntervalKind, Observation, PersonKey, Record, Subject, china_offset};
use crate::state::tests::roster_record;
use crate::state::{EntityRef, World};
use chrono::TimeZone;

fn default_rules() -> RuleSet {
    RuleSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts")).unwrap()
}

fn now() -> chrono::DateTime<chrono::FixedOffset> {
    china_offset()
        .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .unwrap()
}

fn world_with(wages: &[i64], oop: &[(&str, i64)], members: usize, income: i64) -> World {
    let mut w = World::new(24);
    let keys: Vec<PersonKey> = (0..members).map(|i| PersonKey([i as u8; 16])).collect();
    w.apply("roster", &roster_record("H1", keys.clone(), income), now())
        .unwrap();
    let last: crate::model::Month = "2026-10".parse().unwrap();
    for (i, yuan) in wages.iter().enumerate() {
        let m = last.minus((wages.len() - 1 - i) as u32);
        w.apply(
            "wages",
            &Record {
                id: format!("w{i}"),
                observation: Observation::Sample {
                    subject: Subject::Person(keys[0]),
                    month: m,
                    values: vec![(crate::model::Indicator::WageIncome, yuan * 100)],
                },
            },
            now(),
        )
        .unwrap();
    }
    for (i, (month, yuan)) in oop.iter().enumerate() {
        w.apply(
            "med",
            &Record {
                id: format!("m{i}"),
                observation: Observation::Sample {
                    subject: Subject::Person(keys[0]),
                    month: month.parse().unwrap(),
                    values: vec![(crate::model::Indicator::MedicalOutOfPocket, yuan * 100)],
                },
            },
            now(),
        )
        .unwrap();
    }
    w
}

fn eval(rules: &RuleSet, name: &str, w: &World, e: EntityRef) -> Option<Finding> {
    let lines = crate::config::Lines::default();
    let last = std::collections::BTreeMap::new();
    let ctx = EvalContext {
        world: w,
        now: now(),
        lines: &lines,
        data_until: None,
        firing: &[],
        feed_last_data: &last,
        started_at: now().timestamp(),
        sources: &Default::default(),
    };
    evaluate(rules.rule(name).unwrap(), &ctx, &e, false)
}

fn hh() -> EntityRef {
    EntityRef::Household("H1".parse().unwrap())
}

#[test]
fn wage_drop_fires_with_evidence_and_not_at_the_boundary() {
    let rules = default_rules();
    let w = world_with(&[3000, 3100, 2900, 3050, 3000, 3010, 900], &[], 3, 9000);
    let f = eval(&rules, "wage_income_drop", &w, hh()).expect("a 70% drop fires");
    let text = rules
        .render(
            "wage_income_drop",
            "description",
            &full_context(rules.rule("wage_income_drop").unwrap(), &f),
        )
        .unwrap();
    assert!(
        text.starts_with("2026-10 工资性收入 900 元，前6个月均值 3,010 元，下降 70%"),
        "{text}"
    );

    // Exactly 50 % fires (≥), 49 % does not.
    let w = world_with(&[2000, 2000, 2000, 2000, 2000, 2000, 1000], &[], 3, 9000);
    assert!(eval(&rules, "wage_income_drop", &w, hh()).is_some());
    let w = world_with(&[2000, 2000, 2000, 2000, 2000, 2000, 1020], &[], 3, 9000);
    assert!(eval(&rules, "wage_income_drop", &w, hh()).is_none());
    // A small baseline is ignored.
    let w = world_with(&[800, 800, 800, 800, 800, 800, 0], &[], 3, 9000);
    assert!(eval(&rules, "wage_income_drop", &w, hh()).is_none());
}

#[test]
fn medical_burden_fixed_and_relative() {
    let rules = default_rules();
    // Rich household: income 4 × 20,000 = 80,000, half is 40,000 > fixed 20,000.
    let w = world_with(&[], &[("2026-01", 12_000), ("2026-09", 8_001)], 4, 20_000);
    let f = eval(&rules, "medical_burden", &w, hh()).expect("above 20,000");
    assert_eq!(f.context["basis"], "fixed");
    let w = world_with(&[], &[("2026-01", 12_000), ("2026-09", 8_000)], 4, 20_000);
    assert!(
        eval(&rules, "medical_burden", &w, hh()).is_none(),
        "20,000 is not above 20,000"
    );
    // Poor household: income 2 × 7,000 = 14,000; half is 7,000.
    let w = world_with(&[], &[("2026-03", 7_500)], 2, 7_000);
    let f = eval(&rules, "medical_burden", &w, hh()).expect("above half the income");
    assert_eq!(f.context["basis"], "income_share");
    assert_eq!(f.context["limit"], "7,000");
    // Costs older than 12 months do not count.
    let w = world_with(&[], &[("2025-10", 30_000), ("2026-10", 10)], 4, 20_000);
    assert!(eval(&rules, "medical_burden", &w, hh()).is_none());
}

#[test]
fn water_outage_duration() {
    let rules = default_rules();
    let mut w = World::new(24);
    let outage = |days: i64, end: bool| Record {
        id: "x".into(),
        observation: Observation::Interval {
            village: "632522100201".parse().unwrap(),
            id: format!("o{days}"),
            kind: IntervalKind::WaterOutage,
            start: now() - chrono::Duration::days(days),
            end: end.then(now),
        },
    };
    let v = EntityRef::Village("632522100201".parse().unwrap());
    w.apply("water", &outage(29, false), now()).unwrap();
    assert!(eval(&rules, "water_outage_long", &w, v.clone()).is_none());
    w.apply("water", &outage(45, true), now()).unwrap();
    assert!(
        eval(&rules, "water_outage_long", &w, v.clone()).is_none(),
        "closed outages do not fire"
    );
    w.apply("water", &outage(31, false), now()).unwrap();
    let f = eval(&rules, "water_outage_long", &w, v).expect("31 days open");
    assert_eq!(f.context["days"], 31);
    assert_eq!(f.context["open_intervals"], 2);
}

/// A drop rule file whose summary (on line 9) is `summary`.
fn drop_rule_with_summary(summary: &str) -> String {
    format!(
        r#"
[[rules]]
name = "x"
kind = "drop"
indicator = "wage_income"
drop_percent = 50
severity = "warning"
risk_category = "因务工就业不稳"
summary = "{summary}"
description = "ok"
"#
    )
}

#[test]
fn rule_errors_are_located() {
    let text = drop_rule_with_summary("{{ nosuch }}");
    let src = Source::from_text(Path::new("a.toml"), text.clone());
    let err = RuleSet::from_sources(&[src]).unwrap_err().to_string();
    assert!(err.starts_with("a.toml:9:"), "{err}");
    assert!(err.contains("rules[0].summary"), "{err}");
    assert!(err.contains("undefined"), "{err}");

    let src = Source::from_text(
        Path::new("b.toml"),
        text.replace("drop_percent", "drop_pct"),
    );
    let err = RuleSet::from_sources(&[src]).unwrap_err().to_string();
    assert!(
        err.contains("b.toml:6:1: rules[0].drop_pct: unknown field"),
        "{err}"
    );
}

#[test]
fn english_templates_are_used_when_configured_and_chinese_otherwise() {
    let mut rules = default_rules();
    let w = world_with(&[3000, 3100, 2900, 3050, 3000, 3010, 900], &[], 3, 9000);
    let f = eval(&rules, "wage_income_drop", &w, hh()).unwrap();
    let ctx = full_context(rules.rule("wage_income_drop").unwrap(), &f);
    assert!(
        rules
            .render("wage_income_drop", "summary", &ctx)
            .unwrap()
            .contains("工资性收入骤降 70%")
    );
    rules.set_language(crate::config::Language::En);
    let en = rules.render("wage_income_drop", "summary", &ctx).unwrap();
    assert!(en.contains("wage income down 70%"), "{en}");
    // A rule without English templates falls back to Chinese.
    assert!(
        rules
            .render("dropout", "summary", &sample(&rules, "dropout"))
            .unwrap()
            .contains("疑似辍学")
    );
}

fn sample(rules: &RuleSet, name: &str) -> serde_json::Value {
    super::eval::sample_context(rules.rule(name).unwrap())
}

#[test]
fn a_runaway_template_loop_is_refused_at_load_instead_of_hanging() {
    // Noticed while writing the rule parser's fuzz target: nested loops ran for minutes.
    let text = drop_rule_with_summary(
        "{% for a in range(100000) %}{% for b in range(100000) %}.{% endfor %}{% endfor %}",
    );
    let src = Source::from_text(Path::new("a.toml"), text);
    let err = RuleSet::from_sources(&[src]).unwrap_err().to_string();
    assert!(err.contains("rules[0].summary"), "{err}");
    assert!(err.contains("fuel"), "{err}");
}

#[test]
fn numbers_that_are_not_finite_or_absurdly_large_are_refused_with_their_place() {
    for bad in ["nan", "inf", "-inf", "1e13", "-2e12"] {
        let text = drop_rule_with_summary("ok")
            .replace("drop_percent = 50", &format!("drop_percent = {bad}"));
        let src = Source::from_text(Path::new("a.toml"), text);
        let err = RuleSet::from_sources(&[src]).unwrap_err().to_string();
        assert!(err.contains("rules[0].drop_percent"), "{bad}: {err}");
        assert!(err.contains("not a usable number"), "{bad}: {err}");
    }
    let text = drop_rule_with_summary("ok").replace("drop_percent = 50", "drop_percent = 50.5");
    assert!(RuleSet::from_sources(&[Source::from_text(Path::new("a.toml"), text)]).is_ok());
}

#[test]
fn a_line_year_offset_beyond_fifty_years_is_refused() {
    let text = r#"
[[rules]]
name = "x"
kind = "threshold"
value = "income_per_capita"
below_line = "monitoring"
line_year_offset = 2000000000
severity = "warning"
risk_category = "其他"
summary = "ok"
description = "ok"
"#;
    let err = RuleSet::from_sources(&[Source::from_text(Path::new("a.toml"), text.into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("rules[0].line_year_offset"), "{err}");
    assert!(err.contains("beyond ±50"), "{err}");
    let ok = text.replace("2000000000", "-1");
    assert!(RuleSet::from_sources(&[Source::from_text(Path::new("a.toml"), ok)]).is_ok());
}

/// A county rule compares its households now with the households of the same risk
/// categories months earlier, not with those of every category; a month recorded before it
/// had its own number falls back to every category's.
#[test]
fn a_county_rule_compares_the_same_risk_categories_as_months_earlier() {
    use crate::model::{Month, RiskSet};
    let rules = default_rules();
    let rule = rules.rule("county_relapse_surge").unwrap();
    let RuleKind::County {
        risk_categories, ..
    } = &rule.kind
    else {
        panic!("county_relapse_surge is a county rule");
    };
    let watched = watched_risks(risk_categories.as_ref());
    assert_ne!(
        watched,
        RiskSet::ALL,
        "the demo's rule watches some categories"
    );
    assert!(watched.contains(RiskCategory::UnstableEmployment));
    assert_eq!(rules.at_risk_sets(), vec![watched, RiskSet::ALL]);
    let county: CountyCode = "632522".parse().unwrap();
    let then = Month::of(now()).minus(3);
    // 300 households on the roster; `earlier`: what was recorded three months ago.
    let world = |earlier: &[(RiskSet, u32)]| {
        let mut w = World::new(24);
        for i in 0..300u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            w.apply(
                "roster",
                &roster_record(&format!("H{i}"), vec![PersonKey(key)], 10_000),
                now(),
            )
            .unwrap();
        }
        for (set, n) in earlier {
            w.set_at_risk(county, then, *set, *n);
        }
        w
    };
    // Now 30 households warned in a watched category: 10 % of the roster.
    let firing: Vec<FiringHousehold> = (0..30)
        .map(|i| FiringHousehold {
            county,
            household: format!("household/H{i}"),
            risk: RiskCategory::UnstableEmployment,
        })
        .collect();
    let lines = crate::config::Lines::default();
    let last = std::collections::BTreeMap::new();
    let sources = Default::default();
    let check = |w: &World| {
        let ctx = EvalContext {
            world: w,
            now: now(),
            lines: &lines,
            data_until: None,
            firing: &firing,
            feed_last_data: &last,
            started_at: now().timestamp(),
            sources: &sources,
        };
        evaluate(rule, &ctx, &EntityRef::County(county), false)
    };
    // Three months ago 100 households were warned, 15 of them in the watched categories:
    // 30 against 15 is a surge.
    let f = check(&world(&[(RiskSet::ALL, 100), (watched, 15)]))
        .expect("30 against 15 in the same categories is a surge");
    assert_eq!(f.context["earlier"], 15);
    assert_eq!(f.context["increase_percent"], 100);
    assert!(
        check(&world(&[(RiskSet::ALL, 15), (watched, 25)])).is_none(),
        "30 against 25 in the same categories is no surge, whatever every category's number"
    );
    // A month recorded before the rule had a number of its own: every category's.
    assert!(check(&world(&[(RiskSet::ALL, 100)])).is_none());
    let f = check(&world(&[(RiskSet::ALL, 15)])).expect("compared with every category's 15");
    assert_eq!(f.context["earlier"], 15);
    let text = |f: &Finding| {
        rules
            .render(&rule.name, "description", &full_context(rule, f))
            .unwrap()
    };
    assert!(
        text(&f).contains("3 个月前为 15 户，增加 100%。"),
        "{}",
        text(&f)
    );
    // Ten households warned three months ago, none in the watched categories: from none
    // to 30 is a surge, and the message says so without a percentage.
    let f = check(&world(&[(RiskSet::ALL, 10), (watched, 0)])).expect("from none to 30");
    assert_eq!(f.context["earlier"], 0);
    assert!(f.context["increase_percent"].is_null());
    assert!(text(&f).contains("3 个月前为 0 户。"), "{}", text(&f));
}
