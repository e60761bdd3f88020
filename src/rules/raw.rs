//! The serde shape of a rule file and its validation into [`Rule`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{Aggregate, Baseline, EntityKind, Group, Limit, Rule, RuleKind, Severity, ValueSpec};
use crate::config::parse_duration;
use crate::config::source::{FieldPath, Problem, Source};
use crate::model::{
    CountyCode, EventKind, HouseholdCategory, Indicator, IntervalKind, RiskCategory,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Policy lines shipped with the rules; `[[lines]]` of guardline.toml add to and override them.
    #[serde(default)]
    pub lines: Vec<crate::config::RawLineEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub kind: String,
    pub entity: Option<String>,
    pub severity: String,
    pub risk_category: String,
    #[serde(rename = "for", default = "zero")]
    pub hold: String,
    pub summary: String,
    pub description: String,
    pub summary_en: Option<String>,
    pub description_en: Option<String>,
    pub categories: Option<Vec<String>>,
    pub counties: Option<Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    // threshold
    pub indicator: Option<String>,
    pub value: Option<String>,
    pub aggregate: Option<String>,
    pub window_months: Option<u32>,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub above_income_share: Option<f64>,
    pub above_line: Option<String>,
    pub below_line: Option<String>,
    pub line_factor: Option<f64>,
    pub line_year_offset: Option<i32>,
    pub resolve_margin: Option<f64>,
    // drop
    pub baseline_months: Option<u32>,
    pub baseline: Option<String>,
    pub drop_percent: Option<f64>,
    pub drop_amount: Option<f64>,
    pub combine: Option<String>,
    pub consecutive: Option<u32>,
    pub min_baseline: Option<f64>,
    pub resolve_drop_percent: Option<f64>,
    // event
    pub event: Option<String>,
    pub events: Option<Vec<String>>,
    pub min_count: Option<u32>,
    pub min_amount: Option<f64>,
    pub cleared_by: Option<Vec<String>>,
    // duration / spread
    pub interval: Option<String>,
    pub longer_than: Option<String>,
    pub open_longer_than: Option<String>,
    pub group: Option<String>,
    pub min_villages: Option<u32>,
    pub resolve_villages: Option<u32>,
    // county
    pub risk_categories: Option<Vec<String>>,
    pub min_share: Option<f64>,
    pub min_households: Option<u32>,
    pub increase_months: Option<u32>,
    pub min_increase_percent: Option<f64>,
    pub resolve_share: Option<f64>,
    // absent
    pub feed: Option<String>,
}

fn zero() -> String {
    "0s".into()
}

fn yuan_to_fen(y: f64) -> i64 {
    (y * 100.0).round() as i64
}

/// Which optional fields each kind accepts, so that a field of another kind is an error
/// instead of being silently ignored.
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "threshold" => &[
            "indicator",
            "value",
            "aggregate",
            "window_months",
            "above",
            "below",
            "above_income_share",
            "above_line",
            "below_line",
            "line_factor",
            "line_year_offset",
            "resolve_margin",
        ],
        "drop" => &[
            "indicator",
            "baseline_months",
            "baseline",
            "drop_percent",
            "drop_amount",
            "combine",
            "consecutive",
            "min_baseline",
            "resolve_drop_percent",
        ],
        "event" => &[
            "entity",
            "event",
            "events",
            "window_months",
            "min_count",
            "min_amount",
            "cleared_by",
        ],
        "duration" => &["interval", "longer_than"],
        "spread" => &[
            "interval",
            "open_longer_than",
            "group",
            "min_villages",
            "resolve_villages",
        ],
        "county" => &[
            "risk_categories",
            "min_share",
            "min_households",
            "increase_months",
            "min_increase_percent",
            "resolve_share",
        ],
        "absent" => &["feed", "longer_than"],
        _ => &[],
    }
}

/// The largest number a rule takes, in size: yuan, percentages and factors all stay far below.
const MAX_NUMBER: f64 = 1e12;

/// The numeric fields present, with their values.
fn numbers(r: &RawRule) -> Vec<(&'static str, f64)> {
    let mut v = Vec::new();
    macro_rules! num {
        ($($f:ident),*) => { $( if let Some(x) = r.$f { v.push((stringify!($f), x)); } )* };
    }
    num!(
        above,
        below,
        above_income_share,
        line_factor,
        resolve_margin,
        drop_percent,
        drop_amount,
        min_baseline,
        resolve_drop_percent,
        min_amount,
        min_share,
        min_increase_percent,
        resolve_share
    );
    v
}

fn present_fields(r: &RawRule) -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! chk {
        ($($f:ident),*) => { $( if r.$f.is_some() { v.push(stringify!($f)); } )* };
    }
    chk!(
        entity,
        indicator,
        value,
        aggregate,
        window_months,
        above,
        below,
        above_income_share,
        above_line,
        below_line,
        line_factor,
        line_year_offset,
        resolve_margin,
        baseline_months,
        baseline,
        drop_percent,
        drop_amount,
        combine,
        consecutive,
        min_baseline,
        resolve_drop_percent,
        event,
        events,
        min_count,
        min_amount,
        cleared_by,
        interval,
        longer_than,
        open_longer_than,
        group,
        min_villages,
        resolve_villages,
        risk_categories,
        min_share,
        min_households,
        increase_months,
        min_increase_percent,
        resolve_share,
        feed
    );
    v
}

pub fn validate(
    src: &Source,
    path: &FieldPath,
    r: &RawRule,
    problems: &mut Vec<Problem>,
) -> Option<Rule> {
    let before = problems.len();
    let mut p = |field: &str, msg: String| problems.push(src.problem(&path.key(field), msg));
    if r.name.is_empty()
        || !r
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        p(
            "name",
            format!(
                "rule name {:?} must be lower-case letters, digits and _",
                r.name
            ),
        );
    }
    for f in present_fields(r) {
        if !allowed(&r.kind).contains(&f) && !allowed(&r.kind).is_empty() {
            p(
                f,
                format!(
                    "`{f}` has no meaning for a {} rule (it takes: {})",
                    r.kind,
                    allowed(&r.kind).join(", ")
                ),
            );
        }
    }
    for (field, v) in numbers(r) {
        // TOML writes `nan` and `inf`; a threshold of either never or always fires, and a
        // huge one overflows on its way to fen.
        if !v.is_finite() || v.abs() > MAX_NUMBER {
            p(
                field,
                format!(
                    "`{field}` = {v} is not a usable number (finite, at most 10^12 either way)"
                ),
            );
        }
    }
    if let Some(y) = r.line_year_offset
        && !(-50..=50).contains(&y)
    {
        // Added to a year, an offset of billions overflowed.
        p(
            "line_year_offset",
            format!("{y} years is beyond ±50: lines are set per year, a few years apart at most"),
        );
    }
    let severity = match r.severity.as_str() {
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "critical" => Severity::Critical,
        other => {
            p(
                "severity",
                format!("unknown severity {other:?} (info, warning or critical)"),
            );
            Severity::Warning
        }
    };
    let risk = r.risk_category.parse::<RiskCategory>().unwrap_or_else(|e| {
        p("risk_category", e);
        RiskCategory::Other
    });
    let mut duration = |field: &str, v: Option<&String>, required: bool| -> std::time::Duration {
        match v {
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                p(field, e);
                std::time::Duration::ZERO
            }),
            None => {
                if required {
                    p(
                        field,
                        format!("a {} rule needs `{field}`, e.g. \"30d\"", r.kind),
                    );
                }
                std::time::Duration::ZERO
            }
        }
    };
    let hold = duration("for", Some(&r.hold), true);
    let longer_than = duration(
        "longer_than",
        r.longer_than.as_ref(),
        matches!(r.kind.as_str(), "duration" | "absent"),
    );
    let open_longer_than = duration("open_longer_than", r.open_longer_than.as_ref(), false);
    let categories = r.categories.as_ref().map(|cs| {
        cs.iter()
            .filter_map(|c| {
                c.parse::<HouseholdCategory>()
                    .map_err(|e| p("categories", e))
                    .ok()
            })
            .collect::<BTreeSet<_>>()
    });
    let counties = r.counties.as_ref().map(|cs| {
        cs.iter()
            .filter_map(|c| {
                c.parse::<CountyCode>()
                    .map_err(|e| p("counties", e.to_string()))
                    .ok()
            })
            .collect::<BTreeSet<_>>()
    });
    for k in r.labels.keys() {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            p(
                "labels",
                format!("label name {k:?} must be letters, digits and _"),
            );
        }
    }
    let mut indicator = |required: bool| -> Option<Indicator> {
        match r.indicator.as_deref() {
            None => {
                if required {
                    p("indicator", format!("a {} rule needs `indicator`", r.kind));
                }
                None
            }
            Some(s) => s.parse::<Indicator>().map_err(|e| p("indicator", e)).ok(),
        }
    };
    let kind = match r.kind.as_str() {
        "threshold" => {
            let value = match (r.indicator.is_some(), r.value.as_deref()) {
                (true, None) => {
                    let ind = indicator(true);
                    let aggregate = match r.aggregate.as_deref().unwrap_or("sum") {
                        "latest" => Aggregate::Latest,
                        "sum" => Aggregate::Sum,
                        "mean" => Aggregate::Mean,
                        "min" => Aggregate::Min,
                        "max" => Aggregate::Max,
                        "count" => Aggregate::Count,
                        other => {
                            p(
                                "aggregate",
                                format!(
                                    "unknown aggregate {other:?} (latest, sum, mean, min, max or count)"
                                ),
                            );
                            Aggregate::Sum
                        }
                    };
                    let window_months =
                        r.window_months
                            .unwrap_or(if aggregate == Aggregate::Latest {
                                1
                            } else {
                                12
                            });
                    if !(1..=24).contains(&window_months) {
                        p("window_months", "must be between 1 and 24".into());
                    }
                    ind.map(|indicator| ValueSpec::Indicator {
                        indicator,
                        aggregate,
                        window_months,
                    })
                }
                (false, Some("income_per_capita")) => Some(ValueSpec::IncomePerCapita),
                (false, Some("annual_income")) => Some(ValueSpec::AnnualIncome),
                (false, Some(other)) => {
                    p(
                        "value",
                        format!(
                            "unknown value {other:?} (income_per_capita or annual_income; or give `indicator`)"
                        ),
                    );
                    None
                }
                _ => {
                    p("indicator", "a threshold rule needs `indicator` (a monthly indicator) or `value` (income_per_capita, annual_income), not both".into());
                    None
                }
            };
            let factor = r.line_factor.unwrap_or(1.0);
            let year_offset = r.line_year_offset.unwrap_or(0);
            let mut limits = Vec::new();
            if let Some(a) = r.above {
                limits.push(Limit::Above(yuan_to_fen(a)));
            }
            if let Some(b) = r.below {
                limits.push(Limit::Below(yuan_to_fen(b)));
            }
            if let Some(s) = r.above_income_share {
                if !(s > 0.0 && s <= 10.0) {
                    p(
                        "above_income_share",
                        "must be a share such as 0.5 (50 %)".into(),
                    );
                }
                limits.push(Limit::AboveIncomeShare(s));
            }
            if let Some(n) = &r.above_line {
                limits.push(Limit::Line {
                    name: n.clone(),
                    above: true,
                    factor,
                    year_offset,
                });
            }
            if let Some(n) = &r.below_line {
                limits.push(Limit::Line {
                    name: n.clone(),
                    above: false,
                    factor,
                    year_offset,
                });
            }
            if limits.is_empty() {
                p("above", "a threshold rule needs at least one of above, below, above_income_share, above_line, below_line".into());
            }
            let resolve_margin = r.resolve_margin.unwrap_or(0.0);
            if !(0.0..1.0).contains(&resolve_margin) {
                p(
                    "resolve_margin",
                    "must be a share below 1, such as 0.1 (10 %)".into(),
                );
            }
            value.map(|value| RuleKind::Threshold {
                value,
                limits,
                resolve_margin,
            })
        }
        "drop" => {
            let ind = indicator(true);
            let baseline_months = r.baseline_months.unwrap_or(6);
            if !(1..=23).contains(&baseline_months) {
                p("baseline_months", "must be between 1 and 23".into());
            }
            let baseline = match r.baseline.as_deref().unwrap_or("mean") {
                "mean" => Baseline::Mean,
                "median" => Baseline::Median,
                other => {
                    p(
                        "baseline",
                        format!("unknown baseline {other:?} (mean or median)"),
                    );
                    Baseline::Mean
                }
            };
            if r.drop_percent.is_none() && r.drop_amount.is_none() {
                p(
                    "drop_percent",
                    "a drop rule needs drop_percent, drop_amount, or both".into(),
                );
            }
            if r.drop_percent.is_some_and(|d| !(d > 0.0 && d <= 100.0)) {
                p("drop_percent", "must be between 0 and 100".into());
            }
            let both = match r.combine.as_deref().unwrap_or("and") {
                "and" => true,
                "or" => false,
                other => {
                    p("combine", format!("unknown combine {other:?} (and or or)"));
                    true
                }
            };
            let consecutive = r.consecutive.unwrap_or(1);
            if !(1..=12).contains(&consecutive) {
                p("consecutive", "must be between 1 and 12".into());
            }
            ind.map(|indicator| RuleKind::Drop {
                indicator,
                baseline_months,
                baseline,
                drop_percent: r.drop_percent,
                drop_amount: r.drop_amount.map(yuan_to_fen),
                both,
                consecutive,
                min_baseline: yuan_to_fen(r.min_baseline.unwrap_or(0.0)),
                resolve_drop_percent: r.resolve_drop_percent,
            })
        }
        "event" => {
            let parse_events = |list: Vec<&String>,
                                field: &str,
                                p: &mut dyn FnMut(&str, String)|
             -> Vec<EventKind> {
                list.into_iter()
                    .filter_map(|e| e.parse::<EventKind>().map_err(|err| p(field, err)).ok())
                    .collect()
            };
            let mut list: Vec<&String> = r.events.iter().flatten().collect();
            list.extend(r.event.iter());
            let events = parse_events(list, "event", &mut p);
            if events.is_empty() && r.event.is_none() && r.events.is_none() {
                p("event", "an event rule needs `event` or `events`".into());
            }
            let cleared_by = parse_events(
                r.cleared_by.iter().flatten().collect(),
                "cleared_by",
                &mut p,
            );
            let entity = match r.entity.as_deref().unwrap_or("household") {
                "household" => EntityKind::Household,
                "village" => EntityKind::Village,
                other => {
                    p(
                        "entity",
                        format!("an event rule applies to a household or a village, not {other:?}"),
                    );
                    EntityKind::Household
                }
            };
            let window_months = r.window_months.unwrap_or(3);
            if !(1..=24).contains(&window_months) {
                p("window_months", "must be between 1 and 24".into());
            }
            Some(RuleKind::Event {
                entity,
                events,
                window_months,
                min_count: r.min_count.unwrap_or(1).max(1),
                min_amount: r.min_amount.map(yuan_to_fen),
                cleared_by,
            })
        }
        "duration" | "spread" => {
            let interval = r
                .interval
                .as_deref()
                .unwrap_or("water_outage")
                .parse::<IntervalKind>()
                .unwrap_or_else(|e| {
                    p("interval", e);
                    IntervalKind::WaterOutage
                });
            if r.kind == "duration" {
                Some(RuleKind::Duration {
                    interval,
                    longer_than,
                })
            } else {
                let group = match r.group.as_deref().unwrap_or("township") {
                    "township" => Group::Township,
                    "county" => Group::County,
                    other => {
                        p(
                            "group",
                            format!("unknown group {other:?} (township or county)"),
                        );
                        Group::Township
                    }
                };
                let min_villages = r.min_villages.unwrap_or(0);
                if min_villages < 2 {
                    p(
                        "min_villages",
                        "a spread rule needs min_villages of at least 2".into(),
                    );
                }
                if r.resolve_villages.is_some_and(|v| v > min_villages) {
                    p("resolve_villages", "must not be above min_villages".into());
                }
                Some(RuleKind::Spread {
                    interval,
                    open_longer_than,
                    group,
                    min_villages,
                    resolve_villages: r.resolve_villages,
                })
            }
        }
        "county" => {
            let risk_categories = r.risk_categories.as_ref().map(|cs| {
                cs.iter()
                    .filter_map(|c| {
                        c.parse::<RiskCategory>()
                            .map_err(|e| p("risk_categories", e))
                            .ok()
                    })
                    .collect::<BTreeSet<_>>()
            });
            if r.min_share.is_none()
                && r.min_households.is_none()
                && r.min_increase_percent.is_none()
            {
                p(
                    "min_share",
                    "a county rule needs min_share, min_households or min_increase_percent".into(),
                );
            }
            if r.min_share.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
                p("min_share", "must be a share such as 0.03 (3 %)".into());
            }
            let increase_months = r.increase_months.unwrap_or(3);
            if !(1..=23).contains(&increase_months) {
                p("increase_months", "must be between 1 and 23".into());
            }
            Some(RuleKind::County {
                risk_categories,
                min_share: r.min_share,
                min_households: r.min_households,
                increase_months,
                min_increase_percent: r.min_increase_percent,
                resolve_share: r.resolve_share,
            })
        }
        "absent" => match &r.feed {
            Some(f) => Some(RuleKind::Absent {
                feed: f.clone(),
                longer_than,
            }),
            None => {
                p(
                    "feed",
                    "an absent rule needs `feed`: the name of a feed".into(),
                );
                None
            }
        },
        other => {
            p(
                "kind",
                format!(
                    "unknown rule kind {other:?} (threshold, drop, event, duration, spread, county or absent)"
                ),
            );
            None
        }
    };
    let kind = kind?;
    (problems.len() == before).then(|| Rule {
        name: r.name.clone(),
        file: src.path.clone(),
        kind,
        hold,
        severity,
        risk,
        categories,
        counties,
        labels: r.labels.clone(),
    })
}
