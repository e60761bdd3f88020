//! `guardline backtest`: replays the stored history through a rule set as if live (with
//! `for` and hysteresis) and reports what would have fired, when and for how long; with a
//! second rule set, the difference.
//!
//! Invariant: a backtest reads the store and writes nothing; it sends nothing. Limits: the
//! roster's attributes (income, category) are the current ones; at time T, monthly data is
//! taken as published up to the month before T; rules about missing feed data are skipped.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, FixedOffset};
use serde::Serialize;

use crate::alerts::{Alerts, Transition};
use crate::config::Lines;
use crate::model::Month;
use crate::rules::{EvalContext, RuleKind, RuleSet};
use crate::state::{EntityRef, World};

/// One alert episode: fired at a time, resolved later or still firing at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Episode {
    pub rule: String,
    pub entity: String,
    pub county: Option<String>,
    pub fired_at: i64,
    pub resolved_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rule: String,
    pub county: String,
    pub alerts: usize,
    pub first_fired: String,
    pub last_fired: String,
    /// Mean days an episode lasted (still-firing episodes count up to the end).
    pub mean_days: f64,
    pub firing_at_end: usize,
}

/// Replays `rules` over `world` from `from` to `to` in steps of `step`.
pub fn replay(
    world: &mut World,
    rules: &RuleSet,
    lines: &Lines,
    sources: &BTreeMap<crate::rules::Input, Vec<crate::rules::EvidenceSource>>,
    from: DateTime<FixedOffset>,
    to: DateTime<FixedOffset>,
    step: Duration,
) -> Result<Vec<Episode>, crate::store::StoreError> {
    let mut alerts = Alerts::default();
    let mut open: BTreeMap<(String, String), Episode> = BTreeMap::new();
    let mut done = Vec::new();
    let mut entities: BTreeSet<EntityRef> = world
        .households()
        .map(|h| EntityRef::Household(h.id.clone()))
        .collect();
    for v in world.villages() {
        entities.insert(EntityRef::Village(v.code));
        entities.insert(EntityRef::Township(v.code.get() / 1000));
        entities.insert(EntityRef::County(v.code.county()));
    }
    let entities: Vec<EntityRef> = entities.into_iter().collect();
    let no_feeds = BTreeMap::new();
    let mut t = from;
    while t <= to {
        let firing = alerts.firing_households();
        let (_, transitions) = {
            let ctx = EvalContext {
                world,
                now: t,
                lines,
                data_until: Some(Month::of(t).minus(1)),
                firing: &firing,
                feed_last_data: &no_feeds,
                started_at: from.timestamp(),
                sources,
            };
            alerts.pass(rules, &ctx, &entities, |r| {
                !matches!(r.kind, RuleKind::Absent { .. })
            })?
        };
        for tr in transitions {
            match tr {
                Transition::Fired(a) => {
                    open.insert(
                        (a.rule.clone(), a.entity.clone()),
                        Episode {
                            rule: a.rule,
                            entity: a.entity,
                            county: a.county.map(|c| c.to_string()),
                            fired_at: t.timestamp(),
                            resolved_at: None,
                        },
                    );
                }
                Transition::Resolved(a) => {
                    if let Some(mut e) = open.remove(&(a.rule, a.entity)) {
                        e.resolved_at = Some(t.timestamp());
                        done.push(e);
                    }
                }
            }
        }
        // County rules compare with earlier months, as the live daemon records them.
        world.begin();
        let sets = rules.at_risk_sets();
        world.record_at_risk(Month::of(t), &sets, &alerts.households_in_sets(&sets));
        t += step;
    }
    done.extend(open.into_values());
    done.sort_by(|a, b| (&a.rule, &a.entity, a.fired_at).cmp(&(&b.rule, &b.entity, b.fired_at)));
    Ok(done)
}

fn day(t: i64) -> String {
    crate::alerts::format_time(t)
        .get(..10)
        .unwrap_or_default()
        .to_string()
}

/// Episodes per rule and county.
pub fn summarize(episodes: &[Episode], end: i64) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, String), Vec<&Episode>> = BTreeMap::new();
    for e in episodes {
        groups
            .entry((e.rule.clone(), e.county.clone().unwrap_or_default()))
            .or_default()
            .push(e);
    }
    groups
        .into_iter()
        .map(|((rule, county), es)| {
            let days: f64 = es
                .iter()
                .map(|e| (e.resolved_at.unwrap_or(end) - e.fired_at) as f64 / 86_400.0)
                .sum();
            Summary {
                alerts: es.len(),
                first_fired: day(es.iter().map(|e| e.fired_at).min().unwrap_or(0)),
                last_fired: day(es.iter().map(|e| e.fired_at).max().unwrap_or(0)),
                mean_days: (days / es.len() as f64 * 10.0).round() / 10.0,
                firing_at_end: es.iter().filter(|e| e.resolved_at.is_none()).count(),
                rule,
                county,
            }
        })
        .collect()
}

/// The difference between two runs: alerts only in the second, only in the first, and
/// those in both whose episodes differ.
#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub added: Vec<Episode>,
    pub removed: Vec<Episode>,
    pub changed: Vec<(Episode, Episode)>,
}

pub fn diff(a: &[Episode], b: &[Episode]) -> Diff {
    let key = |e: &Episode| (e.rule.clone(), e.entity.clone());
    let ka: BTreeMap<_, Vec<&Episode>> = a.iter().fold(BTreeMap::new(), |mut m, e| {
        m.entry(key(e)).or_insert_with(Vec::new).push(e);
        m
    });
    let kb: BTreeMap<_, Vec<&Episode>> = b.iter().fold(BTreeMap::new(), |mut m, e| {
        m.entry(key(e)).or_insert_with(Vec::new).push(e);
        m
    });
    let mut d = Diff::default();
    for (k, eb) in &kb {
        match ka.get(k) {
            None => d.added.extend(eb.iter().map(|e| (*e).clone())),
            Some(ea) if ea != eb => d.changed.push(((*ea[0]).clone(), (*eb[0]).clone())),
            Some(_) => {}
        }
    }
    for (k, ea) in &ka {
        if !kb.contains_key(k) {
            d.removed.extend(ea.iter().map(|e| (*e).clone()));
        }
    }
    d
}

/// The summary as a text table.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = format!(
        "{:<32} {:<8} {:>6} {:<10} {:<10} {:>9} {:>6}\n",
        "rule", "county", "alerts", "first", "last", "mean days", "at end"
    );
    for s in summaries {
        out.push_str(&format!(
            "{:<32} {:<8} {:>6} {:<10} {:<10} {:>9.1} {:>6}\n",
            s.rule, s.county, s.alerts, s.first_fired, s.last_fired, s.mean_days, s.firing_at_end
        ));
    }
    let total: usize = summaries.iter().map(|s| s.alerts).sum();
    out.push_str(&format!("{total} alerts\n"));
    out
}

/// Episodes as CSV.
pub fn csv(episodes: &[Episode]) -> String {
    let mut out = String::from("rule,entity,county,fired_at,resolved_at\n");
    for e in episodes {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            e.rule,
            e.entity,
            e.county.clone().unwrap_or_default(),
            crate::alerts::format_time(e.fired_at),
            e.resolved_at
                .map(crate::alerts::format_time)
                .unwrap_or_default()
        ));
    }
    out
}
