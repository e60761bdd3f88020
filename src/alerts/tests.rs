use super::*;
use crate::config::source::Source;
use crate::model::china_offset;
use crate::rules::RuleSet;
use crate::store::SledStore;
use chrono::TimeZone;
use serde_json::json;
use std::path::Path;

fn rules(hold: &str) -> RuleSet {
    let text = format!(
        r#"
[[rules]]
name = "water"
kind = "duration"
longer_than = "1d"
for = "{hold}"
severity = "critical"
risk_category = "因安全饮水"
summary = "{{{{ village_name }}}} {{{{ days }}}}"
description = "d"
"#
    );
    RuleSet::from_sources(&[Source::from_text(Path::new("w.toml"), text)]).unwrap()
}

fn finding(days: i64) -> Finding {
    Finding {
        entity: EntityRef::Village("632522100201".parse().unwrap()),
        county: Some("632522".parse().unwrap()),
        labels: Default::default(),
        context: json!({"county": "632522", "county_name": "同德县", "village": "632522100201",
            "village_name": "甲村", "interval_id": "x", "started": "s", "days": days, "hours": 1,
            "threshold_days": 1, "open_intervals": 1}),
    }
}

fn at(h: u32) -> DateTime<FixedOffset> {
    china_offset()
        .with_ymd_and_hms(2026, 11, 28, h, 0, 0)
        .unwrap()
}

#[test]
fn pending_firing_resolved_and_persisted() {
    let rs = rules("2h");
    let rule = rs.rule("water").unwrap();
    let e = EntityRef::Village("632522100201".parse().unwrap());
    let mut a = Alerts::default();
    assert_eq!(
        a.observe(&rs, rule, &e, Some(&finding(2)), at(1)).unwrap(),
        None
    );
    assert_eq!(a.iter().next().unwrap().status, Status::Pending);
    assert_eq!(
        a.observe(&rs, rule, &e, Some(&finding(2)), at(2)).unwrap(),
        None
    );
    let fired = a.observe(&rs, rule, &e, Some(&finding(3)), at(3)).unwrap();
    assert!(matches!(fired, Some(Transition::Fired(ref al)) if al.summary == "甲村 3"));
    assert_eq!(
        a.observe(&rs, rule, &e, Some(&finding(3)), at(4)).unwrap(),
        None,
        "fires once"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut b = Batch::default();
    a.write_changes(&mut b);
    store.commit(b).unwrap();
    let mut again = Alerts::load(&store).unwrap();
    assert_eq!(
        again
            .observe(&rs, rule, &e, Some(&finding(3)), at(5))
            .unwrap(),
        None,
        "no re-fire after restart"
    );
    let resolved = again.observe(&rs, rule, &e, None, at(6)).unwrap();
    assert!(matches!(resolved, Some(Transition::Resolved(_))));
    assert_eq!(again.observe(&rs, rule, &e, None, at(7)).unwrap(), None);
    let al = again.iter().next().unwrap();
    let states: Vec<Status> = al.history.iter().map(|h| h.1).collect();
    assert_eq!(
        states,
        vec![Status::Pending, Status::Firing, Status::Resolved]
    );
}

#[test]
fn pending_that_clears_is_forgotten_silently() {
    let rs = rules("2h");
    let rule = rs.rule("water").unwrap();
    let e = EntityRef::Village("632522100201".parse().unwrap());
    let mut a = Alerts::default();
    a.observe(&rs, rule, &e, Some(&finding(2)), at(1)).unwrap();
    assert_eq!(a.observe(&rs, rule, &e, None, at(2)).unwrap(), None);
    assert_eq!(a.iter().count(), 0);
}

#[test]
fn reminders_follow_each_routes_interval_and_stop_with_a_disposition() {
    let rs = rules("0s");
    let rule = rs.rule("water").unwrap();
    let e = EntityRef::Village("632522100201".parse().unwrap());
    let mut a = Alerts::default();
    a.observe(&rs, rule, &e, Some(&finding(2)), at(1)).unwrap();
    let t0 = at(1).timestamp();
    let routes = |_: &Alert| {
        vec![
            ("root/0".to_string(), 3600),
            ("root/1".to_string(), 7200),
            ("root/2".to_string(), 0),
        ]
    };
    assert!(a.take_repeats(t0 + 3599, routes).is_empty());
    let due = a.take_repeats(t0 + 3600, routes);
    assert_eq!(due[0].1, vec!["root/0".to_string()]);
    let due = a.take_repeats(t0 + 7200, routes);
    assert_eq!(due[0].1, vec!["root/0".to_string(), "root/1".to_string()]);
    assert_eq!(due[0].0.repeats, 2);
    let fp = fingerprint("water", &e);
    a.acknowledge(
        &fp,
        Ack {
            by: "op".into(),
            at: t0,
            disposition: Disposition::Dismissed,
            note: String::new(),
        },
    );
    assert!(
        a.take_repeats(t0 + 100_000, routes).is_empty(),
        "a disposition stops reminders"
    );
}
