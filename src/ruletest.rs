//! `guardline test-rules`: rule unit tests written in TOML.
//!
//! A test file holds `[[tests]]`; each test sets up households, villages and counties with
//! their series and events, then takes steps in time; at each step every rule under test is
//! evaluated on everything (with `for` and hysteresis, as live), and the firing alerts must be
//! exactly those expected, with the labels and rendered texts given. Nothing is stored and
//! nothing is sent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone};
use serde::Deserialize;

use crate::alerts::{Alerts, Status};
use crate::config::source::{Problems, Source};
use crate::config::{Lines, validate_lines};
use crate::model::{
    EventKind, HouseholdCategory, Indicator, IntervalKind, Month, Observation, PersonKey, Record,
    RosterEntry, Subject, china_offset,
};
use crate::rules::{EvalContext, RuleSet};
use crate::state::{EntityRef, World};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Rules to load: a folder (all its *.toml) relative to this file. Default: the folder
    /// above the test file's folder (alerts/ for alerts/tests/x.toml).
    rules_dir: Option<String>,
    #[serde(default)]
    lines: Vec<crate::config::RawLineEntry>,
    #[serde(default)]
    tests: Vec<Test>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Test {
    name: String,
    /// Only these rules are evaluated (default: all).
    rules: Option<Vec<String>>,
    #[serde(default)]
    households: Vec<HouseholdInput>,
    #[serde(default)]
    villages: Vec<VillageInput>,
    #[serde(default)]
    counties: Vec<CountyInput>,
    /// Time of the last record per feed (for absent rules).
    #[serde(default)]
    feeds: BTreeMap<String, String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HouseholdInput {
    id: String,
    village: Option<String>,
    #[serde(default)]
    village_name: String,
    category: Option<String>,
    head: Option<String>,
    members: Option<usize>,
    income_per_capita: Option<f64>,
    #[serde(default)]
    wage_income: BTreeMap<String, f64>,
    #[serde(default)]
    medical_oop: BTreeMap<String, f64>,
    #[serde(default)]
    medical_total: BTreeMap<String, f64>,
    #[serde(default)]
    events: Vec<EventInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput {
    kind: String,
    date: String,
    amount: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VillageInput {
    code: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    outages: Vec<OutageInput>,
    #[serde(default)]
    events: Vec<EventInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageInput {
    id: String,
    start: String,
    end: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountyInput {
    code: String,
    /// Households with a firing alert in earlier months (for increases), in any risk
    /// category: a county rule that watches some categories compares with this number for
    /// the months where it has none of its own.
    #[serde(default)]
    at_risk: BTreeMap<String, u32>,
    /// The same for sets of risk categories: what a county rule that watches those
    /// categories compares with.
    #[serde(default)]
    at_risk_sets: Vec<AtRiskSetInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AtRiskSetInput {
    risk_categories: Vec<String>,
    at_risk: BTreeMap<String, u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at: String,
    /// Inputs that arrive before this step.
    #[serde(default)]
    households: Vec<HouseholdInput>,
    #[serde(default)]
    villages: Vec<VillageInput>,
    #[serde(default)]
    firing: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    rule: String,
    entity: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    summary: Option<String>,
    description: Option<String>,
    #[serde(default)]
    description_contains: Vec<String>,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub text: String,
}

fn time(s: &str) -> Result<DateTime<FixedOffset>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&china_offset()));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    china_offset()
        .from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
        .single()
        .ok_or_else(|| format!("{s:?} is not a valid time"))
}

struct Builder {
    world: World,
    next_id: u64,
    now: DateTime<FixedOffset>,
}

impl Builder {
    fn apply(&mut self, feed: &str, observation: Observation) -> Result<(), String> {
        self.next_id += 1;
        let rec = Record {
            id: format!("t{}", self.next_id),
            observation,
        };
        self.world
            .apply(feed, &rec, self.now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn household(&mut self, h: &HouseholdInput) -> Result<(), String> {
        let id: crate::model::HouseholdId =
            h.id.parse()
                .map_err(|e: crate::model::IdError| e.to_string())?;
        if let Some(village) = &h.village {
            let members = h.members.unwrap_or(1).max(1);
            let seed = crate::state::record_tag("test", &h.id);
            self.apply(
                "roster",
                Observation::Roster(RosterEntry {
                    household: id.clone(),
                    village: village
                        .parse()
                        .map_err(|e: crate::model::IdError| e.to_string())?,
                    village_name: h.village_name.clone(),
                    category: h
                        .category
                        .as_deref()
                        .unwrap_or("脱贫户")
                        .parse::<HouseholdCategory>()?,
                    head_masked: h.head.clone().unwrap_or_else(|| "张*".into()),
                    members: (0..members)
                        .map(|k| {
                            let mut b = [0u8; 16];
                            b[..8].copy_from_slice(&seed.to_be_bytes());
                            b[8] = k as u8;
                            PersonKey(b)
                        })
                        .collect(),
                    income_per_capita: (h.income_per_capita.unwrap_or(12_000.0) * 100.0).round()
                        as i64,
                }),
            )?;
        }
        for (ind, series) in [
            (Indicator::WageIncome, &h.wage_income),
            (Indicator::MedicalOutOfPocket, &h.medical_oop),
            (Indicator::MedicalTotal, &h.medical_total),
        ] {
            for (month, yuan) in series {
                let month: Month = month
                    .parse()
                    .map_err(|e: crate::model::IdError| e.to_string())?;
                self.apply(
                    ind.name(),
                    Observation::Sample {
                        subject: Subject::Household(id.clone()),
                        month,
                        values: vec![(ind, (yuan * 100.0).round() as i64)],
                    },
                )?;
            }
        }
        for e in &h.events {
            self.event(Subject::Household(id.clone()), e)?;
        }
        Ok(())
    }

    fn event(&mut self, subject: Subject, e: &EventInput) -> Result<(), String> {
        self.apply(
            "events",
            Observation::Event {
                subject,
                kind: e.kind.parse::<EventKind>()?,
                time: time(&e.date)?,
                amount: e.amount.map(|a| (a * 100.0).round() as i64),
            },
        )
    }

    fn village(&mut self, v: &VillageInput) -> Result<(), String> {
        let code: crate::model::VillageCode = v
            .code
            .parse()
            .map_err(|e: crate::model::IdError| e.to_string())?;
        if !v.name.is_empty() {
            self.world.set_village_name(code, &v.name);
        }
        for o in &v.outages {
            self.apply(
                "water",
                Observation::Interval {
                    village: code,
                    id: o.id.clone(),
                    kind: IntervalKind::WaterOutage,
                    start: time(&o.start)?,
                    end: o.end.as_deref().map(time).transpose()?,
                },
            )?;
        }
        for e in &v.events {
            self.event(Subject::Village(code), e)?;
        }
        Ok(())
    }
}

/// Runs the tests of one file against the rules of its rules folder (or `rules`).
pub fn run_file(path: &Path, rules: Option<&RuleSet>) -> Result<Report, Problems> {
    let src = Source::read(path)?;
    let file: TestFile = src.parse()?;
    let mut problems = Vec::new();
    let lines = Lines::new(validate_lines(&src, &file.lines, &mut problems));
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let loaded;
    let rules = match (rules, &file.rules_dir) {
        (Some(r), None) => r,
        (_, dir) => {
            let dir: PathBuf = match dir {
                Some(d) => base.join(d),
                None => base.parent().unwrap_or(Path::new(".")).to_path_buf(),
            };
            loaded = RuleSet::load_dir(&dir)?;
            &loaded
        }
    };
    let lines = rules.effective_lines(&lines);
    let mut report = Report::default();
    for (ti, t) in file.tests.iter().enumerate() {
        let result = run_test(t, rules, &lines);
        let label = format!("{}: {}", path.display(), t.name);
        match result {
            Ok(()) => {
                report.passed += 1;
                report.text.push_str(&format!("{label} ... ok\n"));
            }
            Err(e) => {
                report.failed += 1;
                report.text.push_str(&format!(
                    "{label} (tests[{ti}]) ... FAILED\n{}\n",
                    indent(&e)
                ));
            }
        }
    }
    Ok(report)
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_test(t: &Test, rules: &RuleSet, lines: &Lines) -> Result<(), String> {
    if let Some(names) = &t.rules {
        for n in names {
            if rules.rule(n).is_none() {
                return Err(format!("no rule named {n:?} in the rules under test"));
            }
        }
    }
    let first = time(&t.steps.first().ok_or("a test needs at least one step")?.at)?;
    let mut b = Builder {
        world: World::new(24),
        next_id: 0,
        now: first,
    };
    for h in &t.households {
        b.household(h)
            .map_err(|e| format!("household {}: {e}", h.id))?;
    }
    for v in &t.villages {
        b.village(v)
            .map_err(|e| format!("village {}: {e}", v.code))?;
    }
    for c in &t.counties {
        let code = c
            .code
            .parse()
            .map_err(|e: crate::model::IdError| e.to_string())?;
        // `at_risk` counts every category; `at_risk_sets` the categories they name.
        let mut history = vec![(crate::model::RiskSet::ALL, &c.at_risk)];
        for set in &c.at_risk_sets {
            let risks = set
                .risk_categories
                .iter()
                .map(|r| r.parse::<crate::model::RiskCategory>())
                .collect::<Result<Vec<_>, _>>()?;
            history.push((crate::model::RiskSet::of(risks), &set.at_risk));
        }
        for (risks, months) in history {
            for (m, n) in months {
                b.world.set_at_risk(
                    code,
                    m.parse()
                        .map_err(|e: crate::model::IdError| e.to_string())?,
                    risks,
                    *n,
                );
            }
        }
    }
    let feed_last_data: BTreeMap<String, i64> = t
        .feeds
        .iter()
        .map(|(f, at)| time(at).map(|t| (f.clone(), t.timestamp())))
        .collect::<Result<_, _>>()?;
    // The synthetic feeds the builder applies records through, named like departments.
    let mut sources: BTreeMap<crate::rules::Input, Vec<crate::rules::EvidenceSource>> =
        BTreeMap::new();
    for (ind, dept) in [
        (Indicator::WageIncome, "人社"),
        (Indicator::MedicalOutOfPocket, "医保"),
        (Indicator::MedicalTotal, "医保"),
    ] {
        sources
            .entry(crate::rules::Input::Indicator(ind))
            .or_default()
            .push(crate::rules::EvidenceSource {
                feed: ind.name().into(),
                department: dept.into(),
                tag_byte: crate::state::feed_byte(ind.name()),
            });
    }
    for k in EventKind::ALL {
        sources
            .entry(crate::rules::Input::Event(k))
            .or_default()
            .push(crate::rules::EvidenceSource {
                feed: "events".into(),
                department: String::new(),
                tag_byte: crate::state::feed_byte("events"),
            });
    }
    let mut alerts = Alerts::default();
    let under_test = |r: &crate::rules::Rule| t.rules.as_ref().is_none_or(|n| n.contains(&r.name));
    for (si, step) in t.steps.iter().enumerate() {
        let now = time(&step.at)?;
        b.now = now;
        for h in &step.households {
            b.household(h)
                .map_err(|e| format!("step {si}: household {}: {e}", h.id))?;
        }
        for v in &step.villages {
            b.village(v)
                .map_err(|e| format!("step {si}: village {}: {e}", v.code))?;
        }
        let mut entities: BTreeSet<EntityRef> = b
            .world
            .households()
            .map(|h| EntityRef::Household(h.id.clone()))
            .collect();
        for v in b.world.villages() {
            entities.insert(EntityRef::Village(v.code));
            entities.insert(EntityRef::Township(v.code.get() / 1000));
            entities.insert(EntityRef::County(v.code.county()));
        }
        entities.extend(t.feeds.keys().map(|f| EntityRef::Feed(f.clone())));
        for r in &rules.rules {
            if let crate::rules::RuleKind::Absent { feed, .. } = &r.kind {
                entities.insert(EntityRef::Feed(feed.clone()));
            }
        }
        let firing = alerts.firing_households();
        let ctx = EvalContext {
            world: &b.world,
            now,
            lines,
            data_until: None,
            firing: &firing,
            feed_last_data: &feed_last_data,
            started_at: first.timestamp(),
            sources: &sources,
        };
        let entities: Vec<EntityRef> = entities.into_iter().collect();
        alerts
            .pass(rules, &ctx, &entities, under_test)
            .map_err(|e| e.to_string())?;
        // County rules see this step's firing households at the next evaluation, as live.
        let sets = rules.at_risk_sets();
        let counts = alerts.households_in_sets(&sets);
        b.world.record_at_risk(Month::of(now), &sets, &counts);
        let got: BTreeSet<(String, String)> = alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .map(|a| (a.rule.clone(), a.entity.clone()))
            .collect();
        let want: BTreeSet<(String, String)> = step
            .firing
            .iter()
            .map(|e| (e.rule.clone(), e.entity.clone()))
            .collect();
        if got != want {
            let extra: Vec<_> = got.difference(&want).collect();
            let missing: Vec<_> = want.difference(&got).collect();
            return Err(format!(
                "step {si} at {}: firing alerts differ\n  unexpected: {extra:?}\n  missing: {missing:?}",
                step.at
            ));
        }
        for e in &step.firing {
            let fp = crate::alerts::fingerprint(
                &e.rule,
                &EntityRef::parse(&e.entity).ok_or(format!(
                    "entity {:?} is not household/…, village/…, township/…, county/… or feed/…",
                    e.entity
                ))?,
            );
            let a = alerts.get(&fp).ok_or("alert not found")?;
            for (k, v) in &e.labels {
                if a.labels.get(k) != Some(v) {
                    return Err(format!(
                        "step {si}: {} on {}: label {k} is {:?}, expected {v:?}",
                        e.rule,
                        e.entity,
                        a.labels.get(k)
                    ));
                }
            }
            if let Some(s) = &e.summary
                && &a.summary != s
            {
                return Err(format!(
                    "step {si}: {} on {}: summary\n  got:      {}\n  expected: {s}",
                    e.rule, e.entity, a.summary
                ));
            }
            if let Some(d) = &e.description
                && a.description.trim() != d.trim()
            {
                return Err(format!(
                    "step {si}: {} on {}: description\n  got:      {}\n  expected: {d}",
                    e.rule, e.entity, a.description
                ));
            }
            for c in &e.description_contains {
                if !a.description.contains(c.as_str()) {
                    return Err(format!(
                        "step {si}: {} on {}: description does not contain {c:?}:\n{}",
                        e.rule, e.entity, a.description
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `guardline test-rules PATH...`: a folder runs the rules of the folder against the tests in
/// its `tests/` subfolder; a file runs that test file.
pub fn run_paths(paths: &[PathBuf]) -> Result<Report, Problems> {
    let mut total = Report::default();
    for p in paths {
        let (rules, files) = if p.is_dir() {
            let rules = RuleSet::load_dir(p)?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(p.join("tests"))
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            (Some(rules), files)
        } else {
            (None, vec![p.clone()])
        };
        for f in files {
            let r = run_file(&f, rules.as_ref())?;
            total.passed += r.passed;
            total.failed += r.failed;
            total.text.push_str(&r.text);
        }
    }
    total.text.push_str(&format!(
        "test-rules: {} passed, {} failed\n",
        total.passed, total.failed
    ));
    Ok(total)
}
