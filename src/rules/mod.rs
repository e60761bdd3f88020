//! Alerting rules: loaded from `alerts/*.toml`, validated, evaluated against state.
//!
//! Invariants: rules read state, never feeds; evaluating a rule has no side effect (it returns
//! a [`Finding`] or nothing); every threshold comes from a rule file or a policy line of the
//! configuration, none is built in. Templates (Chinese, and English where given) are compiled
//! at load with strict undefined variables and test-rendered, so a typo in a template is a
//! load error, not a broken notification.

mod eval;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use eval::{EvalContext, EvidenceSource, Finding, FiringHousehold, evaluate, full_context};

use crate::config::source::{FieldPath, Problem, Problems, Source};
use crate::config::{Language, Lines};
use crate::model::{
    CountyCode, EventKind, Fen, HouseholdCategory, Indicator, IntervalKind, RiskCategory, RiskSet,
};

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

/// What a rule is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Household,
    Village,
    Township,
    County,
    Feed,
}

/// The value a threshold rule compares.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSpec {
    /// A monthly indicator aggregated over the `window_months` ending with the newest
    /// published month.
    Indicator {
        indicator: Indicator,
        aggregate: Aggregate,
        window_months: u32,
    },
    /// The roster's annual per-capita net income (人均纯收入).
    IncomePerCapita,
    /// Per-capita income times members.
    AnnualIncome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Latest,
    Sum,
    Mean,
    Min,
    Max,
    /// Months with a value.
    Count,
}

/// One way a threshold is crossed; a threshold rule fires when any of its limits is.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    Above(Fen),
    Below(Fen),
    /// Above a share of the household's annual income.
    AboveIncomeShare(f64),
    /// Above or below `factor` × a policy line of the configuration for the year of the
    /// evaluation plus `year_offset` (e.g. -1: the previous year's reference income).
    Line {
        name: String,
        above: bool,
        factor: f64,
        year_offset: i32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Mean,
    Median,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Township,
    County,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    Threshold {
        value: ValueSpec,
        limits: Vec<Limit>,
        /// Hysteresis: while the alert is active, limits are relaxed by this share.
        resolve_margin: f64,
    },
    /// The newest month(s) against a baseline of the `baseline_months` before them.
    Drop {
        indicator: Indicator,
        baseline_months: u32,
        baseline: Baseline,
        drop_percent: Option<f64>,
        drop_amount: Option<Fen>,
        /// With both a percent and an amount: both must hold (true) or either (false).
        both: bool,
        /// The drop must hold for this many consecutive months.
        consecutive: u32,
        min_baseline: Fen,
        /// Hysteresis: while the alert is active, a drop of this percent keeps it.
        resolve_drop_percent: Option<f64>,
    },
    /// Events of some kinds within a window, not cleared by a later event.
    Event {
        entity: EntityKind,
        events: Vec<EventKind>,
        window_months: u32,
        min_count: u32,
        min_amount: Option<Fen>,
        cleared_by: Vec<EventKind>,
    },
    /// An open interval (e.g. a water outage) lasting longer than `longer_than`.
    Duration {
        interval: IntervalKind,
        longer_than: Duration,
    },
    /// At least `min_villages` villages of a township or county with an open interval
    /// older than `open_longer_than` (整村连片停水断水).
    Spread {
        interval: IntervalKind,
        open_longer_than: Duration,
        group: Group,
        min_villages: u32,
        resolve_villages: Option<u32>,
    },
    /// Households of a county with a firing alert of some risk categories: their share or
    /// number, and their increase over a window (规模性返贫). All given conditions must hold.
    County {
        risk_categories: Option<BTreeSet<RiskCategory>>,
        min_share: Option<f64>,
        min_households: Option<u32>,
        increase_months: u32,
        min_increase_percent: Option<f64>,
        resolve_share: Option<f64>,
    },
    /// A feed that delivered no record for longer than `longer_than`.
    Absent { feed: String, longer_than: Duration },
}

/// The risk categories a county rule counts households of: those it names, or every one.
pub fn watched_risks(risk_categories: Option<&BTreeSet<RiskCategory>>) -> RiskSet {
    risk_categories.map_or(RiskSet::ALL, |s| RiskSet::of(s.iter().copied()))
}

impl RuleKind {
    pub fn entity(&self) -> EntityKind {
        match self {
            Self::Threshold { .. } | Self::Drop { .. } => EntityKind::Household,
            Self::Event { entity, .. } => *entity,
            Self::Duration { .. } => EntityKind::Village,
            Self::Spread {
                group: Group::Township,
                ..
            } => EntityKind::Township,
            Self::Spread {
                group: Group::County,
                ..
            }
            | Self::County { .. } => EntityKind::County,
            Self::Absent { .. } => EntityKind::Feed,
        }
    }

    /// Rules whose outcome changes with the clock or with other alerts, re-evaluated on
    /// every tick.
    pub fn time_driven(&self) -> bool {
        matches!(
            self,
            Self::Duration { .. } | Self::Spread { .. } | Self::County { .. } | Self::Absent { .. }
        )
    }

    /// The kinds of data the rule reads.
    pub fn inputs(&self) -> Vec<Input> {
        match self {
            Self::Threshold { value, .. } => match value {
                ValueSpec::Indicator { indicator, .. } => {
                    vec![Input::Roster, Input::Indicator(*indicator)]
                }
                _ => vec![Input::Roster],
            },
            Self::Drop { indicator, .. } => vec![Input::Roster, Input::Indicator(*indicator)],
            Self::Event {
                events,
                cleared_by,
                entity,
                ..
            } => {
                let mut v: Vec<Input> = events
                    .iter()
                    .chain(cleared_by)
                    .map(|e| Input::Event(*e))
                    .collect();
                if *entity == EntityKind::Household {
                    v.push(Input::Roster);
                }
                v
            }
            Self::Duration { interval, .. } | Self::Spread { interval, .. } => {
                vec![Input::Intervals(*interval)]
            }
            Self::County { .. } => vec![Input::Roster],
            Self::Absent { .. } => vec![],
        }
    }
}

/// Which feeds deliver each input, for the evidence of findings.
pub fn sources_of(feeds: &[crate::config::FeedConfig]) -> BTreeMap<Input, Vec<EvidenceSource>> {
    let mut m: BTreeMap<Input, Vec<EvidenceSource>> = BTreeMap::new();
    for f in feeds {
        for i in f.inputs() {
            m.entry(i).or_default().push(EvidenceSource {
                feed: f.name.clone(),
                department: f.department.clone(),
                tag_byte: crate::state::feed_byte(&f.name),
            });
        }
    }
    m
}

/// A kind of data a rule reads; a rule is evaluated only when every feed that delivers one
/// of its inputs has caught up, so that it never judges a half-loaded history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    Roster,
    Indicator(Indicator),
    Intervals(IntervalKind),
    Event(EventKind),
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

impl Rule {
    /// Whether the county filter lets `county` through.
    pub fn covers_county(&self, county: Option<CountyCode>) -> bool {
        match (&self.counties, county) {
            (None, _) => true,
            (Some(set), Some(c)) => set.contains(&c),
            (Some(_), None) => false,
        }
    }
}

/// All rules of a rules directory with their compiled templates.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// Policy lines shipped in rule files.
    pub lines: Lines,
    env: minijinja::Environment<'static>,
    language: Language,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules)
            .finish()
    }
}

impl RuleSet {
    /// The sets of risk categories whose at-risk households a county records each month:
    /// every category, and those of each county rule, each once. County rules compare
    /// their count now with the count of the same set months earlier.
    pub fn at_risk_sets(&self) -> Vec<RiskSet> {
        let mut sets = vec![RiskSet::ALL];
        for r in &self.rules {
            if let RuleKind::County {
                risk_categories, ..
            } = &r.kind
            {
                sets.push(watched_risks(risk_categories.as_ref()));
            }
        }
        sets.sort_unstable();
        sets.dedup();
        sets
    }

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
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
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
        // A template is text with a few loops over evidence: a budget of instructions per
        // render stops a runaway loop (`range(100000)` nested) instead of hanging.
        env.set_fuel(Some(crate::notify::TEMPLATE_FUEL));
        let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut lines = Vec::new();
        for src in sources {
            let file: raw::RawRuleFile = match src.parse() {
                Ok(f) => f,
                Err(p) => {
                    problems.extend(p.0);
                    continue;
                }
            };
            lines.extend(crate::config::validate_lines(
                src,
                &file.lines,
                &mut problems,
            ));
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
                let templates = [
                    ("summary", Some(&r.summary)),
                    ("description", Some(&r.description)),
                    ("summary_en", r.summary_en.as_ref()),
                    ("description_en", r.description_en.as_ref()),
                ];
                for (field, text) in templates {
                    if let Some(text) = text {
                        let name = format!("{}.{field}", r.name);
                        if let Err(e) = env.add_template_owned(name, text.clone()) {
                            problems.push(
                                src.problem(&path.key(field), format!("template error: {e}")),
                            );
                        }
                    }
                }
                if let (Some(rule), true) = (rule, problems.len() == before) {
                    // Render once with a sample context so undefined variables fail now.
                    let sample = eval::sample_context(&rule);
                    for (field, text) in templates {
                        if text.is_none() {
                            continue;
                        }
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
            Ok(RuleSet {
                rules,
                lines: Lines::new(lines),
                env,
                language: Language::Zh,
            })
        } else {
            Err(Problems(problems))
        }
    }

    /// The language templates are rendered in (English falls back to Chinese for a rule
    /// without English templates).
    pub fn set_language(&mut self, language: Language) {
        self.language = language;
    }

    /// The lines rules see: those of the rule files, with the configuration's on top.
    pub fn effective_lines(&self, config: &Lines) -> Lines {
        self.lines.merged(config)
    }

    /// Problems of rules that name a policy line neither the rule files nor the
    /// configuration define.
    pub fn check_lines(&self, config: &Lines) -> Vec<String> {
        let lines = self.effective_lines(config);
        let known = lines.names();
        let mut out = Vec::new();
        for r in &self.rules {
            if let RuleKind::Threshold { limits, .. } = &r.kind {
                for l in limits {
                    if let Limit::Line { name, .. } = l
                        && !known.contains(name.as_str())
                    {
                        out.push(format!(
                            "{}: rule {}: line {name:?} is not defined in the configuration's [[lines]] (defined: {})",
                            r.file.display(),
                            r.name,
                            known.iter().copied().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
        out
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Renders a rule's summary or description for a finding's context.
    /// `ctx` is best a `minijinja::Value` converted once, when it serves several templates.
    pub fn render(
        &self,
        rule: &str,
        field: &str,
        ctx: &impl serde::Serialize,
    ) -> Result<String, minijinja::Error> {
        if self.language == Language::En
            && let Ok(t) = self.env.get_template(&format!("{rule}.{field}_en"))
        {
            return t.render(ctx);
        }
        self.env
            .get_template(&format!("{rule}.{field}"))
            .and_then(|t| t.render(ctx))
    }
}

#[cfg(test)]
mod tests;
