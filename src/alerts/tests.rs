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
    finding_of(days, 1)
}

/// A finding whose `hours` is in the evidence only, not in the rule's texts.
fn finding_of(days: i64, hours: i64) -> Finding {
    Finding {
        entity: EntityRef::Village("632522100201".parse().unwrap()),
        county: Some("632522".parse().unwrap()),
        labels: Default::default(),
        context: json!({"county": "632522", "county_name": "同德县", "village": "632522100201",
            "village_name": "甲村", "interval_id": "x", "started": "s", "days": days, "hours": hours,
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
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let mut b = Batch::default();
    a.write_changes(&mut b).unwrap();
    store.commit(b).unwrap();
    let mut again = Alerts::load(store).unwrap();
    assert_numbers_are_the_keys(&again);
    assert_eq!(again.numbers.len(), 1);
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
    assert!(a.take_repeats(t0 + 3599, routes).unwrap().is_empty());
    let due = a.take_repeats(t0 + 3600, routes).unwrap();
    assert_eq!(due[0].1, vec!["root/0".to_string()]);
    let due = a.take_repeats(t0 + 7200, routes).unwrap();
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
    )
    .unwrap();
    assert!(
        a.take_repeats(t0 + 100_000, routes).unwrap().is_empty(),
        "a disposition stops reminders"
    );
}

/// The gauges' tally is kept as alerts change; it must equal a count from scratch after
/// every kind of change: pending, firing, a pending alert that clears, resolving, a new
/// episode over a resolved alert, dispositions, expiry. Two rules of one risk category
/// fire on the same households, so households must count once per category and county.
#[test]
fn the_tally_always_equals_a_count_from_scratch() {
    let text = r#"
[[rules]]
name = "a"
kind = "duration"
longer_than = "1d"
severity = "critical"
risk_category = "因安全饮水"
summary = "{{ days }}"
description = "d"

[[rules]]
name = "b"
kind = "duration"
longer_than = "1d"
for = "2h"
severity = "warning"
risk_category = "因安全饮水"
summary = "{{ days }}"
description = "d"

[[rules]]
name = "c"
kind = "duration"
longer_than = "1d"
severity = "warning"
risk_category = "因病"
summary = "{{ days }}"
description = "d"
"#;
    let rs = RuleSet::from_sources(&[Source::from_text(Path::new("t.toml"), text.into())]).unwrap();
    let entities: Vec<EntityRef> = (0..6)
        .map(|i| EntityRef::Household(format!("H{i}").parse().unwrap()))
        .chain([EntityRef::Village("632522100201".parse().unwrap())])
        .collect();
    let mut a = Alerts::default();
    let mut seed: u64 = 7;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut acked = 0;
    for step in 0..400u32 {
        let now = at(0) + chrono::Duration::hours(i64::from(step));
        let rule = &rs.rules[next(3) as usize];
        let e = &entities[next(entities.len() as u64) as usize];
        let found = (next(3) > 0).then(|| finding(i64::from(step)));
        a.observe(&rs, rule, e, found.as_ref(), now).unwrap();
        if next(10) == 0 {
            let fp = fingerprint(&rule.name, e);
            if a.get(&fp).is_some() {
                let ack = Ack {
                    by: "op".into(),
                    at: now.timestamp(),
                    disposition: Disposition::ALL[next(3) as usize],
                    note: String::new(),
                };
                a.acknowledge(&fp, ack).unwrap();
                acked += 1;
            }
        }
        if step % 50 == 49 {
            a.expire_resolved(now.timestamp() + RESOLVED_RETENTION_SECS - 24 * 3600);
        }
        assert_eq!(a.tally, Tally::of(a.alerts.values()), "after step {step}");
        assert_numbers_are_the_keys(&a);
    }
    assert!(acked > 5, "the sequence records dispositions");
    let (per_county, per_risk) = a.households_at_risk();
    let mut distinct = HashSet::new();
    let mut distinct_risk = HashSet::new();
    for x in a.iter().filter(|x| x.status == Status::Firing) {
        if x.entity.starts_with("household/") {
            distinct.insert(x.entity.clone());
            distinct_risk.insert((x.entity.clone(), x.risk_category.clone()));
        }
    }
    assert!(!distinct.is_empty(), "households fire at the end");
    assert_eq!(per_county.values().sum::<u64>(), distinct.len() as u64);
    assert_eq!(per_risk.values().sum::<u64>(), distinct_risk.len() as u64);
    // Households in a set of categories count once, however many of its categories fire.
    let water = RiskSet::of([RiskCategory::DrinkingWater]);
    let both = RiskSet::of([RiskCategory::DrinkingWater, RiskCategory::Illness]);
    let in_sets = a.households_in_sets(&[water, both, RiskSet::ALL]);
    let count = |set: RiskSet| {
        distinct_risk
            .iter()
            .filter(|(_, r)| set.contains(r.parse().unwrap()))
            .map(|(h, _)| h)
            .collect::<HashSet<_>>()
            .len() as u64
    };
    for set in [water, both, RiskSet::ALL] {
        let got: u64 = in_sets
            .iter()
            .filter(|((_, s), _)| *s == set)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(got, count(set), "{set:?}");
    }
    assert!(
        count(both) < count(water) + count(RiskSet::of([RiskCategory::Illness])),
        "a household fires in both categories at the end"
    );
}

/// The checks' index of fingerprints as numbers holds exactly the alerts' keys.
fn assert_numbers_are_the_keys(a: &Alerts) {
    let keys: HashSet<u64> = a
        .alerts
        .keys()
        .map(|k| u64::from_str_radix(k, 16).unwrap())
        .collect();
    let numbers: HashSet<u64> = a.numbers.iter().copied().collect();
    assert_eq!(numbers, keys);
}

#[test]
fn a_fingerprint_is_its_number_in_16_hex_digits_and_nothing_else_has_one() {
    let e = EntityRef::Household("H1".parse().unwrap());
    let n = fingerprint_number("water", &e);
    assert_eq!(fingerprint("water", &e), format!("{n:016x}"));
    assert_eq!(number_of(&fingerprint("water", &e)), Some(n));
    assert_eq!(number_of("00000000000000ff"), Some(255));
    for odd in [
        "ff",
        "00000000000000FF",
        "+000000000000000",
        "00000000000000fg",
        "",
    ] {
        assert_eq!(number_of(odd), None, "{odd}");
    }
}

/// Alerts loaded or written keep their description and evidence in the store only: every
/// write still holds them (read back for a change of the lifecycle alone), a new evidence is
/// written, an unchanged firing alert is not, and the transitions, escalations and
/// dispositions hand them out whole.
#[test]
fn texts_are_shed_once_written_and_read_back_whole() {
    let rs = rules("0s");
    let rule = rs.rule("water").unwrap();
    let e = EntityRef::Village("632522100201".parse().unwrap());
    let fp = fingerprint("water", &e);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let stored = || -> Alert {
        let v = store.get(Space::Alert, fp.as_bytes()).unwrap().unwrap();
        codec::decode(ALERT_VERSION, Space::Alert, fp.as_bytes(), &v).unwrap()
    };
    let commit = |a: &mut Alerts| -> usize {
        let mut b = Batch::default();
        a.write_changes(&mut b).unwrap();
        let n = b.ops.len();
        store.commit(b).unwrap();
        n
    };
    let mut a = Alerts::load(Arc::clone(&store)).unwrap();
    let fired = a.observe(&rs, rule, &e, Some(&finding(2)), at(1)).unwrap();
    assert!(
        matches!(fired, Some(Transition::Fired(ref al)) if al.description == "d" && al.evidence.contains("\"hours\":1"))
    );
    assert_eq!(commit(&mut a), 1);
    assert_eq!(a.get(&fp).unwrap().description, "", "shed once written");
    assert_eq!(a.get(&fp).unwrap().evidence, "");
    assert_eq!(a.get(&fp).unwrap().summary, "甲村 2", "the summary stays");
    let full = a.full(&fp).unwrap().unwrap();
    assert_eq!(full.description, "d");
    assert!(full.evidence.contains("\"hours\":1"));

    a.observe(&rs, rule, &e, Some(&finding(2)), at(2)).unwrap();
    assert_eq!(commit(&mut a), 0, "nothing changed: nothing written");
    assert_eq!(a.get(&fp).unwrap().evidence, "", "still shed");

    a.observe(&rs, rule, &e, Some(&finding_of(2, 5)), at(3))
        .unwrap();
    assert_eq!(commit(&mut a), 1, "a new evidence is written");
    assert!(stored().evidence.contains("\"hours\":5"));

    let escalated = a
        .take_escalations(at(3).timestamp(), at(3).timestamp())
        .unwrap();
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].description, "d");
    assert_eq!(commit(&mut a), 1);
    let s = stored();
    assert!(s.escalated_at.is_some());
    assert_eq!(s.description, "d", "a shed alert's write holds its texts");
    assert!(s.evidence.contains("\"hours\":5"));

    let ack = Ack {
        by: "op".into(),
        at: at(4).timestamp(),
        disposition: Disposition::Enrolled,
        note: String::new(),
    };
    let acked = a.acknowledge(&fp, ack).unwrap().unwrap();
    assert_eq!(acked.description, "d");
    assert_eq!(commit(&mut a), 1);
    let s = stored();
    assert!(s.ack.is_some());
    assert_eq!(s.description, "d");

    let mut again = Alerts::load(Arc::clone(&store)).unwrap();
    assert_eq!(again.get(&fp).unwrap().description, "", "shed when loaded");
    again
        .observe(&rs, rule, &e, Some(&finding_of(2, 5)), at(5))
        .unwrap();
    assert_eq!(
        commit(&mut again),
        0,
        "the digest of the loaded texts matches"
    );
    let resolved = again.observe(&rs, rule, &e, None, at(6)).unwrap();
    assert!(
        matches!(resolved, Some(Transition::Resolved(ref al)) if al.description == "d" && al.evidence.contains("\"hours\":5"))
    );
    assert_eq!(commit(&mut again), 1);
    let s = stored();
    assert_eq!(s.status, Status::Resolved);
    assert_eq!(s.description, "d");

    // A shed alert whose key is gone (a commit failed, not yet reloaded) is an error, not
    // an alert without texts.
    let mut b = Batch::default();
    b.delete(Space::Alert, fp.clone().into_bytes());
    store.commit(b).unwrap();
    let err = again.full(&fp).unwrap_err().to_string();
    assert!(err.contains("is missing"), "{err}");
    assert!(again.write_changes(&mut Batch::default()).is_ok());
    again.changed.insert(fp.clone());
    assert!(again.write_changes(&mut Batch::default()).is_err());

    // Without a store (a backtest), nothing is shed.
    let mut memory = Alerts::default();
    memory
        .observe(&rs, rule, &e, Some(&finding(2)), at(1))
        .unwrap();
    memory.write_changes(&mut Batch::default()).unwrap();
    assert_eq!(memory.get(&fp).unwrap().description, "d");
}
