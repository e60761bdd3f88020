//! Evaluating one rule on one entity. Pure: reads state, returns a finding or nothing.
//!
//! `active` tells whether the rule's alert on the entity is pending or firing: hysteresis
//! then applies the (looser) resolve threshold, so a value hovering around the threshold
//! does not flap.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, FixedOffset, TimeZone};
use serde_json::{Value, json};

use super::{Aggregate, Baseline, Group, Limit, Rule, RuleKind, ValueSpec};
use crate::config::Lines;
use crate::model::{CountyCode, Fen, Month, RiskCategory, RiskSet, china_offset, format_yuan};
use crate::regions::county_name;
use crate::state::{EntityRef, Household, Village, World};

/// A household with a firing alert, for county rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringHousehold {
    pub county: CountyCode,
    pub household: String,
    pub risk: RiskCategory,
}

/// What the rules see: the state, the clock, the policy lines and the firing alerts.
pub struct EvalContext<'a> {
    pub world: &'a World,
    pub now: DateTime<FixedOffset>,
    pub lines: &'a Lines,
    /// In a backtest: data counts only up to this month (as published then).
    pub data_until: Option<Month>,
    pub firing: &'a [FiringHousehold],
    /// Unix time of the last record accepted per feed, and of the daemon's start.
    pub feed_last_data: &'a BTreeMap<String, i64>,
    pub started_at: i64,
    /// Which feeds (their tag byte and department) deliver each input, to cite the records
    /// behind a finding.
    pub sources: &'a BTreeMap<super::Input, Vec<EvidenceSource>>,
}

/// A feed as the evidence names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceSource {
    pub feed: String,
    pub department: String,
    pub tag_byte: u8,
}

/// The records behind a finding: per department, the (pseudonymised) tags of the records of
/// the months involved, at most 8 each. A tag is a keyed digest, not the department's id.
fn cite(ctx: &EvalContext<'_>, input: super::Input, buckets: &[crate::state::Bucket<'_>]) -> Value {
    let mut out = Vec::new();
    for src in ctx.sources.get(&input).into_iter().flatten() {
        let tags: Vec<String> = buckets
            .iter()
            .flat_map(|b| b.records().iter())
            .filter(|t| (**t >> 56) as u8 == src.tag_byte)
            .map(|t| format!("{:014x}", t & 0x00ff_ffff_ffff_ffff))
            .collect();
        if tags.is_empty() {
            continue;
        }
        let shown: Vec<String> = tags.iter().take(8).map(|t| t[..8].to_string()).collect();
        let who = if src.department.is_empty() {
            src.feed.clone()
        } else {
            format!("{}（{}）", src.department, src.feed)
        };
        out.push(format!(
            "{who}记录 {}{}",
            shown.join("、"),
            if tags.len() > shown.len() {
                format!(" 等 {} 条", tags.len())
            } else {
                format!("，共 {} 条", tags.len())
            }
        ));
    }
    Value::String(out.join("；"))
}

impl EvalContext<'_> {
    /// The newest month of an indicator that counts now.
    fn data_month(&self, ind: crate::model::Indicator) -> Option<Month> {
        let m = self.world.latest_month(ind)?;
        Some(self.data_until.map_or(m, |u| m.min(u)))
    }
    /// The month event windows end with: events are dated, so the month of the evaluation.
    fn event_month(&self) -> Month {
        Month::of(self.now)
    }
}

/// A rule's condition holds for an entity; `context` holds the evidence and template variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub entity: EntityRef,
    pub county: Option<CountyCode>,
    /// Labels naming the entity (household, village, township, feed).
    pub labels: BTreeMap<String, String>,
    pub context: Value,
}

fn household_context(h: &Household) -> Value {
    json!({
        "county": h.county().to_string(),
        "county_name": county_name(h.county()),
        "village": h.village.to_string(),
        "village_name": h.village_name,
        "household": h.id.as_str(),
        "head": h.head_masked,
        "category": h.category.name_zh(),
        "members": h.members.len(),
    })
}

fn village_context(v: &Village) -> Value {
    json!({
        "county": v.code.county().to_string(),
        "county_name": county_name(v.code.county()),
        "village": v.code.to_string(),
        "village_name": v.name,
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn in_scope(rule: &Rule, h: &Household) -> bool {
    rule.categories
        .as_ref()
        .is_none_or(|c| c.contains(&h.category))
        && rule.covers_county(Some(h.county()))
}

fn household_finding(entity: &EntityRef, h: &Household, extra: Value) -> Finding {
    let mut labels = BTreeMap::new();
    labels.insert("household".into(), h.id.to_string());
    labels.insert("village".into(), h.village.to_string());
    Finding {
        entity: entity.clone(),
        county: Some(h.county()),
        labels,
        context: merge(household_context(h), extra),
    }
}

fn time_text(t: i64) -> String {
    china_offset()
        .timestamp_opt(t, 0)
        .single()
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// Whether an interval is open at `now` (started, and not ended by then).
fn open_at(i: &crate::state::Interval, now: i64) -> bool {
    i.start <= now && i.end.is_none_or(|e| e > now)
}

/// Evaluates `rule` on `entity`; `None` when the condition does not hold (or does not apply).
pub fn evaluate(
    rule: &Rule,
    ctx: &EvalContext<'_>,
    entity: &EntityRef,
    active: bool,
) -> Option<Finding> {
    match (&rule.kind, entity) {
        (
            RuleKind::Threshold {
                value,
                limits,
                resolve_margin,
            },
            EntityRef::Household(id),
        ) => {
            let h = ctx.world.household(id)?;
            if !in_scope(rule, h) {
                return None;
            }
            // The evidence is built only for a limit that is crossed: most checks cross none.
            let (amount, window) = match value {
                ValueSpec::IncomePerCapita => (h.income_per_capita, None),
                ValueSpec::AnnualIncome => (h.annual_income(), None),
                ValueSpec::Indicator {
                    indicator,
                    aggregate,
                    window_months,
                } => {
                    let last = ctx.data_month(*indicator)?;
                    let first = last.minus(window_months - 1);
                    let months = h.values_over(*indicator, first, *window_months);
                    let present: Vec<Fen> = months.iter().flatten().copied().collect();
                    let v = match aggregate {
                        Aggregate::Latest => months.last().copied().flatten()?,
                        Aggregate::Sum => present.iter().sum(),
                        Aggregate::Mean => present.iter().sum::<Fen>() / Fen::from(*window_months),
                        Aggregate::Min => *present.iter().min()?,
                        Aggregate::Max => *present.iter().max()?,
                        Aggregate::Count => present.len() as Fen * 100,
                    };
                    (v, Some((first, last)))
                }
            };
            let year = ctx.now.year();
            let relax = if active { *resolve_margin } else { 0.0 };
            // The crossed limit nearest the value: (limit, above, which, its poverty line).
            let mut crossed: Option<(Fen, bool, &Limit, Option<&crate::config::LineEntry>)> = None;
            for l in limits {
                let (limit, above, line) = match l {
                    Limit::Above(x) => (*x, true, None),
                    Limit::Below(x) => (*x, false, None),
                    Limit::AboveIncomeShare(s) => {
                        let income = h.annual_income();
                        if income <= 0 {
                            continue;
                        }
                        ((income as f64 * s).round() as Fen, true, None)
                    }
                    Limit::Line {
                        name,
                        above,
                        factor,
                        year_offset,
                    } => {
                        let line = ctx.lines.lookup(name, year + year_offset, h.county())?;
                        (
                            (line.value as f64 * factor).round() as Fen,
                            *above,
                            Some(line),
                        )
                    }
                };
                let effective = if above {
                    limit as f64 * (1.0 - relax)
                } else {
                    limit as f64 * (1.0 + relax)
                };
                let holds = if above {
                    amount as f64 > effective
                } else {
                    (amount as f64) < effective
                };
                if holds {
                    let better = crossed
                        .as_ref()
                        .is_none_or(|(l, a, _, _)| if *a { limit < *l } else { limit > *l });
                    if better {
                        crossed = Some((limit, above, l, line));
                    }
                }
            }
            let (limit, above, which, line) = crossed?;
            let value_ctx = match value {
                ValueSpec::IncomePerCapita => json!({"indicator": "人均纯收入"}),
                ValueSpec::AnnualIncome => json!({"indicator": "家庭年收入"}),
                ValueSpec::Indicator {
                    indicator,
                    window_months,
                    ..
                } => {
                    let (first, last) = window?;
                    json!({"indicator": indicator.name_zh(), "first_month": first.to_string(), "last_month": last.to_string(), "window_months": window_months})
                }
            };
            let (basis, extra) = match which {
                Limit::Above(_) | Limit::Below(_) => ("fixed".to_string(), json!({})),
                Limit::AboveIncomeShare(s) => (
                    "income_share".to_string(),
                    json!({"income_share_percent": (s * 100.0).round() as i64}),
                ),
                Limit::Line { name, factor, .. } => {
                    let line = line?;
                    (
                        format!("line:{name}"),
                        json!({"line": name, "line_year": line.year, "line_value": format_yuan(line.value), "line_factor_percent": (factor * 100.0).round() as i64}),
                    )
                }
            };
            let value_text = match value {
                ValueSpec::Indicator {
                    aggregate: Aggregate::Count,
                    ..
                } => (amount / 100).to_string(),
                _ => format_yuan(amount),
            };
            Some(household_finding(
                entity,
                h,
                merge(
                    merge(value_ctx, extra),
                    json!({"value": value_text, "limit": format_yuan(limit), "above": above, "basis": basis,
                           "income": format_yuan(h.annual_income()), "income_per_capita": format_yuan(h.income_per_capita)}),
                ),
            ))
        }
        (
            RuleKind::Drop {
                indicator,
                baseline_months,
                baseline,
                drop_percent,
                drop_amount,
                both,
                consecutive,
                min_baseline,
                resolve_drop_percent,
            },
            EntityRef::Household(id),
        ) => {
            let h = ctx.world.household(id)?;
            if !in_scope(rule, h) {
                return None;
            }
            // The newest month the department has published; a household without a record
            // that month had no such income (a wage feed lists only people who were paid).
            let month = ctx.data_month(*indicator)?;
            let streak_start = month.minus(consecutive - 1);
            let n = *baseline_months;
            let base_months: Vec<Month> = (1..=n).map(|k| streak_start.minus(k)).collect();
            // The baseline and the streak, read in one pass.
            let first = streak_start.minus(n);
            let window = h.values_over(*indicator, first, n + consecutive);
            let value_in = |m: Month| -> Option<Fen> {
                window.get(m.since(first) as usize).copied().flatten()
            };
            let present = base_months
                .iter()
                .filter(|m| value_in(**m).is_some())
                .count() as u32;
            if present * 2 < n {
                return None; // too little history to speak of a drop
            }
            let mut values: Vec<Fen> = base_months
                .iter()
                .map(|m| value_in(*m).unwrap_or(0))
                .collect();
            let base = match baseline {
                Baseline::Mean => values.iter().sum::<Fen>() / Fen::from(n),
                Baseline::Median => {
                    values.sort_unstable();
                    let mid = values.len() / 2;
                    if values.len().is_multiple_of(2) {
                        (values[mid - 1] + values[mid]) / 2
                    } else {
                        values[mid]
                    }
                }
            };
            if base <= 0 || base < *min_baseline {
                return None;
            }
            let percent_limit = match (active, resolve_drop_percent) {
                (true, Some(r)) => Some(*r),
                _ => *drop_percent,
            };
            let mut worst: Option<(Month, Fen, f64)> = None;
            for k in 0..*consecutive {
                let m = streak_start.plus(k);
                let v = value_in(m).unwrap_or(0);
                let pct = (base - v) as f64 / base as f64 * 100.0;
                let amount = base - v;
                let by_pct = percent_limit.map(|p| pct >= p);
                let by_amount = drop_amount.map(|a| amount >= a);
                let holds = match (by_pct, by_amount) {
                    (Some(a), Some(b)) => {
                        if *both {
                            a && b
                        } else {
                            a || b
                        }
                    }
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => false,
                };
                if !holds {
                    return None;
                }
                if m == month {
                    worst = Some((m, v, pct));
                }
            }
            let (m, value, pct) = worst?;
            let series: Vec<Value> = (0..n + consecutive)
                .rev()
                .map(|k| {
                    let mm = month.minus(k);
                    json!({"month": mm.to_string(), "value": format_yuan(h.value(*indicator, mm).unwrap_or(0))})
                })
                .collect();
            let involved: Vec<crate::state::Bucket<'_>> = h
                .months
                .iter()
                .filter(|b| {
                    b.month() >= base_months.last().copied().unwrap_or(month) && b.month() <= month
                })
                .collect();
            let sources = cite(ctx, super::Input::Indicator(*indicator), &involved);
            Some(household_finding(
                entity,
                h,
                json!({
                    "sources": sources,
                    "indicator": indicator.name_zh(),
                    "month": m.to_string(),
                    "value": format_yuan(value),
                    "baseline": format_yuan(base),
                    "baseline_kind": match baseline { Baseline::Mean => "均值", Baseline::Median => "中位数" },
                    "baseline_months": n,
                    "drop_percent": pct.round() as i64,
                    "drop_amount": format_yuan(base - value),
                    "threshold_percent": drop_percent.map(|p| p.round() as i64),
                    "consecutive": consecutive,
                    "series": series,
                }),
            ))
        }
        (
            RuleKind::Event {
                events,
                window_months,
                min_count,
                min_amount,
                cleared_by,
                ..
            },
            e @ (EntityRef::Household(_) | EntityRef::Village(_)),
        ) => {
            let last = ctx.event_month();
            let first = last.minus(window_months - 1);
            // The subject; its context and labels are built only for a finding.
            let (months, household, village) = match e {
                EntityRef::Household(id) => {
                    let h = ctx.world.household(id)?;
                    if !in_scope(rule, h) {
                        return None;
                    }
                    (&h.months, Some(h), None)
                }
                EntityRef::Village(code) => {
                    let v = ctx.world.village(code)?;
                    if !rule.covers_county(Some(code.county())) {
                        return None;
                    }
                    (&v.months, None, Some(v))
                }
                _ => return None,
            };
            let in_window = |b: &crate::state::Bucket<'_>| b.month() >= first && b.month() <= last;
            let mut count = 0u32;
            let mut amount: Fen = 0;
            let mut latest: Option<Month> = None;
            let mut kinds = BTreeSet::new();
            for b in months.iter().filter(in_window) {
                for ev in b.events().filter(|ev| events.contains(&ev.kind)) {
                    count += ev.count;
                    amount += ev.amount;
                    latest = Some(b.month());
                    kinds.insert(ev.kind.name_zh());
                }
            }
            let latest = latest?;
            if count < *min_count || min_amount.is_some_and(|m| amount < m) {
                return None;
            }
            // A later clearing event (a house graded safe again, 低保 restored) ends it.
            let cleared = months
                .iter()
                .filter(|b| b.month() >= latest && b.month() <= last)
                .any(|b| b.month() > latest && b.events().any(|ev| cleared_by.contains(&ev.kind)));
            if cleared {
                return None;
            }
            let involved: Vec<crate::state::Bucket<'_>> = months
                .iter()
                .filter(in_window)
                .filter(|b| b.events().any(|ev| events.contains(&ev.kind)))
                .collect();
            let sources: Vec<String> = events
                .iter()
                .filter_map(|k| {
                    cite(ctx, super::Input::Event(*k), &involved)
                        .as_str()
                        .map(str::to_string)
                })
                .filter(|s| !s.is_empty())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let (base, county, labels) = match (household, village) {
                (Some(h), _) => {
                    let f = household_finding(e, h, json!({}));
                    (f.context, f.county, f.labels)
                }
                (None, Some(v)) => {
                    let mut labels = BTreeMap::new();
                    labels.insert("village".into(), v.code.to_string());
                    (village_context(v), Some(v.code.county()), labels)
                }
                (None, None) => return None,
            };
            Some(Finding {
                entity: e.clone(),
                county,
                labels,
                context: merge(
                    base,
                    json!({
                        "sources": sources.join("；"),
                        "event": kinds.into_iter().collect::<Vec<_>>().join("、"),
                        "count": count,
                        "amount": format_yuan(amount),
                        "latest_month": latest.to_string(),
                        "first_month": first.to_string(),
                        "last_month": last.to_string(),
                        "window_months": window_months,
                    }),
                ),
            })
        }
        (
            RuleKind::Duration {
                interval,
                longer_than,
            },
            EntityRef::Village(code),
        ) => {
            let v = ctx.world.village(code)?;
            if !rule.covers_county(Some(code.county())) {
                return None;
            }
            let now = ctx.now.timestamp();
            let limit = longer_than.as_secs() as i64;
            let open: Vec<&crate::state::Interval> = v
                .intervals
                .iter()
                .filter(|i| i.kind == *interval && open_at(i, now))
                .collect();
            let longest = open
                .iter()
                .filter(|i| now - i.start > limit)
                .min_by_key(|i| i.start)?;
            let mut labels = BTreeMap::new();
            labels.insert("village".into(), code.to_string());
            Some(Finding {
                entity: entity.clone(),
                county: Some(code.county()),
                labels,
                context: merge(
                    village_context(v),
                    json!({
                        "sources": format!("水利 停水事件 {}", longest.id),
                        "interval_id": longest.id,
                        "started": time_text(longest.start),
                        "days": (now - longest.start) / 86_400,
                        "hours": (now - longest.start) / 3_600,
                        "threshold_days": limit / 86_400,
                        "open_intervals": open.len(),
                    }),
                ),
            })
        }
        (
            RuleKind::Spread {
                interval,
                open_longer_than,
                group,
                min_villages,
                resolve_villages,
            },
            e @ (EntityRef::Township(_) | EntityRef::County(_)),
        ) => {
            let county = e.county(ctx.world)?;
            if !rule.covers_county(Some(county)) {
                return None;
            }
            let now = ctx.now.timestamp();
            let min_age = open_longer_than.as_secs() as i64;
            let in_group = |v: &Village| match (group, e) {
                (Group::Township, EntityRef::Township(t)) => v.code.get() / 1000 == *t,
                (Group::County, EntityRef::County(c)) => v.code.county() == *c,
                _ => false,
            };
            let mut hit: Vec<(&str, String)> = ctx
                .world
                .villages()
                .filter(|v| in_group(v))
                .filter(|v| {
                    v.intervals
                        .iter()
                        .any(|i| i.kind == *interval && open_at(i, now) && now - i.start > min_age)
                })
                .map(|v| (v.name.as_str(), v.code.to_string()))
                .collect();
            hit.sort_by(|a, b| a.1.cmp(&b.1));
            let need = if active {
                resolve_villages.unwrap_or(*min_villages)
            } else {
                *min_villages
            };
            if (hit.len() as u32) < need.max(1) {
                return None;
            }
            let mut labels = BTreeMap::new();
            if let EntityRef::Township(t) = e {
                labels.insert("township".into(), format!("{t:09}"));
            }
            Some(Finding {
                entity: e.clone(),
                county: Some(county),
                labels,
                context: json!({
                    "county": county.to_string(),
                    "county_name": county_name(county),
                    "group": match group { Group::Township => "乡镇", Group::County => "县" },
                    "area": match e { EntityRef::Township(t) => format!("{t:09}"), _ => county.to_string() },
                    "villages": hit.len(),
                    "village_names": hit.iter().map(|(n, c)| if n.is_empty() { c.clone() } else { (*n).to_string() }).collect::<Vec<_>>().join("、"),
                    "min_villages": min_villages,
                    "min_days": min_age / 86_400,
                }),
            })
        }
        (
            RuleKind::County {
                risk_categories,
                min_share,
                min_households,
                increase_months,
                min_increase_percent,
                resolve_share,
            },
            EntityRef::County(c),
        ) => {
            if !rule.covers_county(Some(*c)) {
                return None;
            }
            let cv = ctx.world.counties().find(|v| v.code == *c)?;
            let watched: u32 = crate::model::HouseholdCategory::ALL
                .iter()
                .filter(|cat| rule.categories.as_ref().is_none_or(|s| s.contains(cat)))
                .map(|cat| cv.households_by_category[cat.index()])
                .sum();
            if watched == 0 {
                return None;
            }
            let households: BTreeSet<&str> = ctx
                .firing
                .iter()
                .filter(|f| {
                    f.county == *c && risk_categories.as_ref().is_none_or(|s| s.contains(&f.risk))
                })
                .map(|f| f.household.as_str())
                .collect();
            let n = households.len() as u32;
            let share = f64::from(n) / f64::from(watched);
            let share_limit = if active {
                resolve_share.or(*min_share)
            } else {
                *min_share
            };
            if share_limit.is_some_and(|s| share < s) || min_households.is_some_and(|m| n < m) {
                return None;
            }
            let month = Month::of(ctx.now);
            // Compared with the households in the same categories then. A month recorded
            // before the rule watched these categories (or before guardline counted sets)
            // has only the number over every category, which is at least as large: the
            // increase is understated until the rule's own months come.
            let then = month.minus(*increase_months);
            let set = super::watched_risks(risk_categories.as_ref());
            let earlier = cv
                .at_risk_in(then, set)
                .or_else(|| cv.at_risk_in(then, RiskSet::ALL));
            // From none to some is beyond any percentage: the surge the rule is for (its
            // share and household thresholds keep a few households from firing it).
            let increase = earlier.map(|e| match (e, n) {
                (0, 0) => 0.0,
                (0, _) => f64::INFINITY,
                (e, n) => (f64::from(n) - f64::from(e)) / f64::from(e) * 100.0,
            });
            if let Some(p) = min_increase_percent
                && !increase.is_some_and(|i| i >= *p)
            {
                return None;
            }
            Some(Finding {
                entity: entity.clone(),
                county: Some(*c),
                labels: BTreeMap::new(),
                context: json!({
                    "county": c.to_string(),
                    "county_name": county_name(*c),
                    "households": n,
                    "watched": watched,
                    "share_percent": (share * 1000.0).round() / 10.0,
                    "increase_months": increase_months,
                    "earlier": earlier,
                    // None from zero: templates say so instead of a percentage.
                    "increase_percent": increase
                        .filter(|i| i.is_finite())
                        .map(|i| i.round() as i64),
                }),
            })
        }
        (RuleKind::Absent { feed, longer_than }, EntityRef::Feed(name)) if feed == name => {
            let now = ctx.now.timestamp();
            let last = ctx.feed_last_data.get(name).copied();
            let since = last.unwrap_or(ctx.started_at);
            if now - since <= longer_than.as_secs() as i64 {
                return None;
            }
            let mut labels = BTreeMap::new();
            labels.insert("feed".into(), name.clone());
            Some(Finding {
                entity: entity.clone(),
                county: None,
                labels,
                context: json!({
                    "feed": name,
                    "last_data": last.map(time_text).unwrap_or_else(|| "（从未收到）".into()),
                    "days": (now - since) / 86_400,
                    "hours": (now - since) / 3_600,
                    "threshold_days": longer_than.as_secs() / 86_400,
                }),
            })
        }
        _ => None,
    }
}

/// Variables a rule's templates may use, for error messages.
pub fn variables(rule: &Rule) -> Vec<String> {
    let mut v: Vec<String> = sample_context(rule)
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A context with every variable the rule offers, used to test-render templates at load.
pub fn sample_context(rule: &Rule) -> Value {
    let base = json!({
        "rule": rule.name,
        "severity": rule.severity.name_zh(),
        "risk_category": rule.risk.name_zh(),
        "county": "632522",
        "county_name": "同德县",
    });
    let village = json!({"village": "632522100201", "village_name": "示例村"});
    let hh = merge(
        village.clone(),
        json!({"household": "632522100201001", "head": "张*", "category": "脱贫户", "members": 4}),
    );
    let extra = match &rule.kind {
        RuleKind::Drop { .. } => merge(
            hh,
            json!({"indicator": "工资性收入", "month": "2026-09", "value": "900", "baseline": "3,010", "baseline_kind": "均值",
                   "baseline_months": 6, "drop_percent": 70, "drop_amount": "2,110", "threshold_percent": 50,
                   "consecutive": 1, "series": [{"month": "2026-09", "value": "900"}]}),
        ),
        RuleKind::Threshold { .. } => merge(
            hh,
            json!({"indicator": "医疗个人自付", "first_month": "2025-10", "last_month": "2026-09", "window_months": 12,
                   "value": "24,000", "limit": "20,000", "above": true, "basis": "fixed", "income": "40,000",
                   "income_per_capita": "10,000", "income_share_percent": 50, "line": "monitoring_income",
                   "line_year": 2026, "line_value": "7,500", "line_factor_percent": 100}),
        ),
        RuleKind::Event { .. } => merge(
            hh,
            json!({"event": "疑似辍学", "count": 1, "amount": "0", "latest_month": "2026-10", "first_month": "2026-08",
                   "last_month": "2026-10", "window_months": 3}),
        ),
        RuleKind::Duration { .. } => merge(
            village,
            json!({"sources": "水利 停水事件 SL-1", "interval_id": "SL-1", "started": "2026-10-01 08:00", "days": 40, "hours": 960, "threshold_days": 30, "open_intervals": 1}),
        ),
        RuleKind::Spread { .. } => {
            json!({"group": "乡镇", "area": "632522100", "villages": 3, "village_names": "甲村、乙村、丙村",
            "min_villages": 3, "min_days": 1})
        }
        RuleKind::County { .. } => {
            json!({"households": 120, "watched": 3000, "share_percent": 4.0, "increase_months": 3,
            "earlier": 80, "increase_percent": 50})
        }
        RuleKind::Absent { .. } => {
            json!({"feed": "wages", "last_data": "2026-09-01 08:00", "days": 45, "hours": 1080, "threshold_days": 40})
        }
    };
    merge(base, extra)
}

/// Adds the rule's own variables to a finding's context.
pub fn full_context(rule: &Rule, finding: &Finding) -> Value {
    merge(
        json!({
            "rule": rule.name,
            "severity": rule.severity.name_zh(),
            "risk_category": rule.risk.name_zh(),
        }),
        finding.context.clone(),
    )
}
