//! Alerting rules: loaded from `alerts/*.toml`, validated, evaluated against state.
//!
//! Invariants: rules read state, never feeds; evaluating a rule has no side effect (it returns
//! a [`Finding`] or nothing); every threshold comes from a rule file, none is built in.
//! Templates are compiled at load with strict undefined variables and test-rendered, so a
//! typo in a template is a load error, not a broken notification.

mod eval;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use eval::{EvalContext, Finding, evaluate, full_context};

use crate::config::parse_duration;
use crate::config::source::{FieldPath, Problem, Problems, Source};
use crate::model::{CountyCode, Fen, HouseholdCategory, Indicator, IntervalKind, RiskCategory};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
    pub fn name_zh(self) -> &'static str {
        match self {
            Self::Info => "提示",
            Self::Warning => "预警",
            Self::Critical => "严重",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Household,
    Village,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    /// The latest month's value against the mean of the previous `baseline_months`.
    Drop {
        indicator: Indicator,
        baseline_months: u32,
        drop_percent: f64,
        min_baseline: Fen,
    },
    /// A sum over `window_months` above a fixed amount or a share of annual household income.
    Threshold {
        indicator: Indicator,
        window_months: u32,
        above: Option<Fen>,
        above_income_share: Option<f64>,
    },
    /// An open interval (e.g. a water outage) lasting longer than `longer_than`.
    Duration {
        interval: IntervalKind,
        longer_than: Duration,
    },
}

/// A kind of data a rule reads; a rule is evaluated only when every feed that delivers one
/// of its inputs has caught up, so that it never judges a half-loaded history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    Roster,
    Indicator(Indicator),
    Intervals(IntervalKind),
    Event(crate::model::EventKind),
}

impl RuleKind {
    pub fn inputs(&self) -> Vec<Input> {
        match self {
            Self::Drop { indicator, .. } | Self::Threshold { indicator, .. } => {
                vec![Input::Roster, Input::Indicator(*indicator)]
            }
            Self::Duration { interval, .. } => vec![Input::Intervals(*interval)],
        }
    }
    pub fn entity(&self) -> EntityKind {
        match self {
            Self::Drop { .. } | Self::Threshold { .. } => EntityKind::Household,
            Self::Duration { .. } => EntityKind::Village,
        }
    }
    /// Rules whose outcome changes with the clock alone are re-evaluated on every tick.
    pub fn time_driven(&self) -> bool {
        matches!(self, Self::Duration { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub file: PathBuf,
    pub kind: RuleKind,
    pub hold: Duration,
    pub severity: Severity,
    pub risk: RiskCategory,
    pub categories: Option<BTreeSet<HouseholdCategory>>,
    pub counties: Option<BTreeSet<CountyCode>>,
    pub labels: BTreeMap<String, String>,
}

/// All rules of a rules directory with their compiled templates.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    env: minijinja::Environment<'static>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules)
            .finish()
    }
}

impl RuleSet {
    /// Loads every `*.toml` file of `dir` (not recursing), in name order.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Problems> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| {
                Problems(vec![Problem {
                    file: dir.to_path_buf(),
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: format!("cannot read the rules directory: {e}"),
                }])
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let sources = files
            .iter()
            .map(|f| Source::read(f))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_sources(&sources)
    }

    pub fn from_sources(sources: &[Source]) -> Result<RuleSet, Problems> {
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
        for src in sources {
            let file: raw::RawRuleFile = match src.parse() {
                Ok(f) => f,
                Err(p) => {
                    problems.extend(p.0);
                    continue;
                }
            };
            for (i, r) in file.rules.iter().enumerate() {
                let path = FieldPath::root().key("rules").index(i);
                if let Some(other) = names.get(&r.name) {
                    problems.push(src.problem(
                        &path.key("name"),
                        format!(
                            "rule {:?} is already defined in {}",
                            r.name,
                            other.display()
                        ),
                    ));
                    continue;
                }
                names.insert(r.name.clone(), src.path.clone());
                let before = problems.len();
                let rule = raw::validate(src, &path, r, &mut problems);
                for (field, text) in [("summary", &r.summary), ("description", &r.description)] {
                    let name = format!("{}.{field}", r.name);
                    if let Err(e) = env.add_template_owned(name.clone(), text.clone()) {
                        problems
                            .push(src.problem(&path.key(field), format!("template error: {e}")));
                    }
                }
                if let (Some(rule), true) = (rule, problems.len() == before) {
                    // Render once with a sample context so undefined variables fail now.
                    let sample = eval::sample_context(&rule);
                    for field in ["summary", "description"] {
                        let name = format!("{}.{field}", r.name);
                        if let Err(e) = env.get_template(&name).and_then(|t| t.render(&sample)) {
                            problems.push(src.problem(
                                &path.key(field),
                                format!(
                                    "template does not render: {e}; the variables a {} rule offers are: {}",
                                    r.kind,
                                    eval::variables(&rule).join(", ")
                                ),
                            ));
                        }
                    }
                    rules.push(rule);
                }
            }
        }
        if problems.is_empty() {
            Ok(RuleSet { rules, env })
        } else {
            Err(Problems(problems))
        }
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Renders a rule's summary or description for a finding's context.
    pub fn render(
        &self,
        rule: &str,
        field: &str,
        ctx: &serde_json::Value,
    ) -> Result<String, minijinja::Error> {
        self.env
            .get_template(&format!("{rule}.{field}"))
            .and_then(|t| t.render(ctx))
    }

    /// Whether any rule needs evaluation on every tick (durations).
    pub fn any_time_driven(&self) -> bool {
        self.rules.iter().any(|r| r.kind.time_driven())
    }
}

pub(crate) fn parse_rule_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

#[cfg(test)]
mod tests;
