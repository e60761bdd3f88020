//! Evaluating one rule on one entity. Pure: reads state, returns a finding or nothing.

use chrono::{DateTime, FixedOffset, TimeZone};
use serde_json::{Value, json};

use super::{Rule, RuleKind};
use crate::model::{CountyCode, Fen, china_offset, format_yuan};
use crate::regions::county_name;
use crate::state::{EntityRef, Household, Village, World};

/// What the rules see: the state and the clock.
pub struct EvalContext<'a> {
    pub world: &'a World,
    pub now: DateTime<FixedOffset>,
}

/// A rule's condition holds for an entity; `context` holds the evidence and template variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub entity: EntityRef,
    pub county: CountyCode,
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
        && rule
            .counties
            .as_ref()
            .is_none_or(|c| c.contains(&h.county()))
}

/// Evaluates `rule` on `entity`; `None` when the condition does not hold (or does not apply).
pub fn evaluate(rule: &Rule, ctx: &EvalContext<'_>, entity: &EntityRef) -> Option<Finding> {
    match (&rule.kind, entity) {
        (
            RuleKind::Drop {
                indicator,
                baseline_months,
                drop_percent,
                min_baseline,
            },
            EntityRef::Household(id),
        ) => {
            let h = ctx.world.household(id)?;
            if !in_scope(rule, h) {
                return None;
            }
            // The newest month the department has published; a household without a record
            // that month had no such income (a wage feed lists only people who were paid).
            let month = ctx.world.latest_month(*indicator)?;
            let n = *baseline_months;
            let present = (1..=n)
                .filter(|k| h.value(*indicator, month.minus(*k)).is_some())
                .count() as u32;
            if present * 2 < n {
                return None; // too little history to speak of a drop
            }
            let baseline_sum: Fen = (1..=n)
                .map(|k| h.value(*indicator, month.minus(k)).unwrap_or(0))
                .sum();
            let baseline = baseline_sum / Fen::from(n);
            if baseline <= 0 || baseline < *min_baseline {
                return None;
            }
            let value = h.value(*indicator, month).unwrap_or(0);
            let drop = (baseline - value) as f64 / baseline as f64 * 100.0;
            if drop < *drop_percent {
                return None;
            }
            let series: Vec<Value> = (0..=n)
                .rev()
                .map(|k| {
                    let m = month.minus(k);
                    json!({"month": m.to_string(), "value": format_yuan(h.value(*indicator, m).unwrap_or(0))})
                })
                .collect();
            Some(Finding {
                entity: entity.clone(),
                county: h.county(),
                context: merge(
                    household_context(h),
                    json!({
                        "indicator": indicator.name_zh(),
                        "month": month.to_string(),
                        "value": format_yuan(value),
                        "baseline": format_yuan(baseline),
                        "baseline_months": n,
                        "drop_percent": drop.round() as i64,
                        "threshold_percent": drop_percent,
                        "series": series,
                    }),
                ),
            })
        }
        (
            RuleKind::Threshold {
                indicator,
                window_months,
                above,
                above_income_share,
            },
            EntityRef::Household(id),
        ) => {
            let h = ctx.world.household(id)?;
            if !in_scope(rule, h) {
                return None;
            }
            let last = ctx.world.latest_month(*indicator)?;
            let first = last.minus(window_months - 1);
            let total = h.sum(*indicator, last, *window_months);
            let income = h.annual_income();
            let share_limit = above_income_share
                .filter(|_| income > 0)
                .map(|s| (income as f64 * s).round() as Fen);
            let (limit, basis) = match (above, share_limit) {
                (Some(a), Some(s)) if total > s && s < *a => (s, "income_share"),
                (Some(a), _) if total > *a => (*a, "fixed"),
                (_, Some(s)) if total > s => (s, "income_share"),
                _ => return None,
            };
            Some(Finding {
                entity: entity.clone(),
                county: h.county(),
                context: merge(
                    household_context(h),
                    json!({
                        "indicator": indicator.name_zh(),
                        "first_month": first.to_string(),
                        "last_month": last.to_string(),
                        "window_months": window_months,
                        "value": format_yuan(total),
                        "limit": format_yuan(limit),
                        "basis": basis,
                        "income": format_yuan(income),
                        "income_share_percent": above_income_share.map(|s| (s * 100.0).round() as i64),
                        "fixed_limit": above.map(format_yuan),
                        "members": h.members.len(),
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
            if rule
                .counties
                .as_ref()
                .is_some_and(|c| !c.contains(&code.county()))
            {
                return None;
            }
            let now = ctx.now.timestamp();
            let limit = longer_than.as_secs() as i64;
            let longest = v
                .open(*interval)
                .filter(|i| now - i.start > limit)
                .min_by_key(|i| i.start)?;
            let started = china_offset()
                .timestamp_opt(longest.start, 0)
                .single()
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default();
            let open_count = v.open(*interval).count();
            Some(Finding {
                entity: entity.clone(),
                county: code.county(),
                context: merge(
                    village_context(v),
                    json!({
                        "interval_id": longest.id,
                        "started": started,
                        "days": (now - longest.start) / 86_400,
                        "hours": (now - longest.start) / 3_600,
                        "threshold_days": limit / 86_400,
                        "open_intervals": open_count,
                    }),
                ),
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
        "village": "632522100201",
        "village_name": "示例村",
    });
    let hh = json!({"household": "632522100201001", "head": "张*", "category": "脱贫户"});
    let extra = match &rule.kind {
        RuleKind::Drop { .. } => merge(
            hh,
            json!({"indicator": "工资性收入", "month": "2026-09", "value": "900", "baseline": "3,010",
                   "baseline_months": 6, "drop_percent": 70, "threshold_percent": 50.0,
                   "series": [{"month": "2026-09", "value": "900"}]}),
        ),
        RuleKind::Threshold { .. } => merge(
            hh,
            json!({"indicator": "医疗个人自付", "first_month": "2025-10", "last_month": "2026-09",
                   "window_months": 12, "value": "24,000", "limit": "20,000", "basis": "fixed",
                   "income": "40,000", "income_share_percent": 50, "fixed_limit": "20,000", "members": 4}),
        ),
        RuleKind::Duration { .. } => json!({"interval_id": "SL-1", "started": "2026-10-01 08:00",
            "days": 40, "hours": 960, "threshold_days": 30, "open_intervals": 1}),
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
