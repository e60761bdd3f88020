//! The serde shape of a rule file and its validation into [`Rule`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{Rule, RuleKind, Severity, parse_rule_duration};
use crate::config::source::{FieldPath, Problem, Source};
use crate::model::{CountyCode, HouseholdCategory, Indicator, IntervalKind, RiskCategory};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub kind: String,
    pub severity: String,
    pub risk_category: String,
    #[serde(rename = "for", default = "zero")]
    pub hold: String,
    pub summary: String,
    pub description: String,
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    #[serde(default)]
    pub counties: Option<Vec<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    // drop / threshold
    pub indicator: Option<String>,
    pub baseline_months: Option<u32>,
    pub drop_percent: Option<f64>,
    pub min_baseline: Option<f64>,
    pub window_months: Option<u32>,
    pub above: Option<f64>,
    pub above_income_share: Option<f64>,
    // duration
    pub interval: Option<String>,
    pub longer_than: Option<String>,
}

fn zero() -> String {
    "0s".into()
}

fn yuan_to_fen(y: f64) -> i64 {
    (y * 100.0).round() as i64
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
    let hold = parse_rule_duration(&r.hold).unwrap_or_else(|e| {
        p("for", e);
        std::time::Duration::ZERO
    });
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
    let mut indicator = || -> Indicator {
        match r.indicator.as_deref() {
            None => {
                p("indicator", format!("a {} rule needs `indicator`", r.kind));
                Indicator::WageIncome
            }
            Some(s) => s.parse::<Indicator>().unwrap_or_else(|e| {
                p("indicator", e);
                Indicator::WageIncome
            }),
        }
    };
    let kind = match r.kind.as_str() {
        "drop" => {
            let ind = indicator();
            let baseline_months = r.baseline_months.unwrap_or(6);
            let drop_percent = r.drop_percent.unwrap_or(f64::NAN);
            if !(1..=23).contains(&baseline_months) {
                p("baseline_months", "must be between 1 and 23".into());
            }
            if !(drop_percent > 0.0 && drop_percent <= 100.0) {
                p(
                    "drop_percent",
                    "a drop rule needs drop_percent between 0 and 100".into(),
                );
            }
            Some(RuleKind::Drop {
                indicator: ind,
                baseline_months,
                drop_percent,
                min_baseline: yuan_to_fen(r.min_baseline.unwrap_or(0.0)),
            })
        }
        "threshold" => {
            let ind = indicator();
            let window_months = r.window_months.unwrap_or(12);
            if !(1..=24).contains(&window_months) {
                p("window_months", "must be between 1 and 24".into());
            }
            if r.above.is_none() && r.above_income_share.is_none() {
                p(
                    "above",
                    "a threshold rule needs `above` (yuan), `above_income_share`, or both".into(),
                );
            }
            if r.above_income_share
                .is_some_and(|s| !(s > 0.0 && s <= 10.0))
            {
                p(
                    "above_income_share",
                    "must be a share such as 0.5 (50 %)".into(),
                );
            }
            Some(RuleKind::Threshold {
                indicator: ind,
                window_months,
                above: r.above.map(yuan_to_fen),
                above_income_share: r.above_income_share,
            })
        }
        "duration" => {
            let interval = r
                .interval
                .as_deref()
                .unwrap_or("water_outage")
                .parse::<IntervalKind>()
                .unwrap_or_else(|e| {
                    p("interval", e);
                    IntervalKind::WaterOutage
                });
            let longer_than = match r.longer_than.as_deref() {
                None => {
                    p(
                        "longer_than",
                        "a duration rule needs `longer_than`, e.g. \"30d\"".into(),
                    );
                    std::time::Duration::ZERO
                }
                Some(s) => parse_rule_duration(s).unwrap_or_else(|e| {
                    p("longer_than", e);
                    std::time::Duration::ZERO
                }),
            };
            Some(RuleKind::Duration {
                interval,
                longer_than,
            })
        }
        other => {
            p(
                "kind",
                format!("unknown rule kind {other:?} (drop, threshold or duration)"),
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
