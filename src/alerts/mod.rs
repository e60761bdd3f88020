//! Alert lifecycle: pending → firing → resolved, keyed by rule and entity, persisted.
//!
//! Invariants:
//! - An alert's identity is its fingerprint, a hash of the rule name and the entity key, so
//!   the same risk of the same household is always the same alert.
//! - A transition to firing or resolved is reported exactly once per episode: the caller
//!   commits the alert state and the notifications it causes in one batch, so after a restart
//!   a firing alert is known to be firing and is not announced again.
//! - An alert's description and evidence (most of its bytes) are in memory only while they
//!   are not yet in the store: those of an alert loaded, or written with
//!   [`Alerts::write_changes`], are *shed* and read back from the alert's key when needed
//!   ([`Alerts::full`], the transitions, escalations and reminders, the next write), with a
//!   digest of them kept to tell whether a new rendering changes them. So every write of an
//!   alert holds its texts, and the caller commits every batch it writes alerts into, or
//!   reloads the alerts from the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, TimeZone};
use serde::{Deserialize, Serialize};

use crate::model::{CountyCode, RiskCategory, RiskSet, china_offset};
use crate::rules::{
    EntityKind, EvalContext, Finding, FiringHousehold, Rule, RuleSet, evaluate, full_context,
};
use crate::state::EntityRef;
use crate::store::{Batch, Space, Store, StoreError, codec};

mod tally;
use tally::Tally;

const ALERT_VERSION: u8 = 1;
/// Resolved alerts are kept this long for history, then forgotten.
pub const RESOLVED_RETENTION_SECS: i64 = 30 * 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Firing,
    Resolved,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert as stored. Times are Unix seconds.
///
/// Those [`Alerts::iter`] and [`Alerts::get`] lend may have their `description` and
/// `evidence` shed (empty): [`Alerts::full`] reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule: String,
    /// `household/<id>` or `village/<code>`.
    pub entity: String,
    /// `None` for alerts about something outside any county (a feed).
    pub county: Option<CountyCode>,
    pub severity: String,
    pub risk_category: String,
    pub status: Status,
    pub active_since: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub summary: String,
    pub description: String,
    /// The evidence as JSON (values, periods, thresholds).
    pub evidence: String,
    pub labels: BTreeMap<String, String>,
    /// Transitions of this alert: (time, status).
    pub history: Vec<(i64, Status)>,
    /// The operator's disposition, once recorded.
    pub ack: Option<Ack>,
    /// When the warning was escalated for lack of a disposition.
    pub escalated_at: Option<i64>,
    /// When it was last notified as firing, and how many repeats were sent.
    pub notified_at: Option<i64>,
    pub repeats: u32,
    /// When each route last reminded of it (route path → time).
    pub reminded: BTreeMap<String, i64>,
}

/// What an operator found (处置结果).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Disposition {
    /// 纳入监测: enrolled as a monitored object.
    Enrolled,
    /// 核实排除: dismissed after verification.
    Dismissed,
    /// 风险消除: the risk was eliminated.
    Eliminated,
}

impl Disposition {
    pub const ALL: [Disposition; 3] = [Self::Enrolled, Self::Dismissed, Self::Eliminated];
    pub fn name(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::Dismissed => "dismissed",
            Self::Eliminated => "eliminated",
        }
    }
    pub fn name_zh(self) -> &'static str {
        match self {
            Self::Enrolled => "纳入监测",
            Self::Dismissed => "核实排除",
            Self::Eliminated => "风险消除",
        }
    }
}

impl std::str::FromStr for Disposition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s || d.name_zh() == s)
            .ok_or_else(|| format!("unknown disposition {s:?} (enrolled/纳入监测, dismissed/核实排除, eliminated/风险消除)"))
    }
}

/// An acknowledgement with its disposition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub by: String,
    pub at: i64,
    pub disposition: Disposition,
    pub note: String,
}

/// A change that must be announced.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Fired(Alert),
    Resolved(Alert),
}

pub fn fingerprint(rule: &str, entity: &EntityRef) -> String {
    format!("{:016x}", fingerprint_number(rule, entity))
}

/// The number a fingerprint writes in 16 hex digits: FNV-1a over the rule's name, a zero
/// byte and the entity's key.
fn fingerprint_number(rule: &str, entity: &EntityRef) -> u64 {
    /// FNV-1a over what is written to it.
    struct Fnv(u64);
    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for b in s.bytes() {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    // Writing to `Fnv` cannot fail.
    let _ = std::fmt::Write::write_str(&mut h, rule);
    let _ = std::fmt::Write::write_str(&mut h, "\0");
    let _ = entity.write_key(&mut h);
    h.0
}

/// The number of a fingerprint [`fingerprint`] wrote; `None` for text of another form.
fn number_of(fingerprint: &str) -> Option<u64> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if fingerprint.len() != 16 || !fingerprint.bytes().all(hex) {
        return None;
    }
    u64::from_str_radix(fingerprint, 16).ok()
}

/// The kind of an entity, to match rules to the entities they apply to.
pub fn entity_kind(e: &EntityRef) -> EntityKind {
    match e {
        EntityRef::Household(_) => EntityKind::Household,
        EntityRef::Village(_) => EntityKind::Village,
        EntityRef::Township(_) => EntityKind::Township,
        EntityRef::County(_) => EntityKind::County,
        EntityRef::Feed(_) => EntityKind::Feed,
    }
}

pub fn format_time(t: i64) -> String {
    china_offset()
        .timestamp_opt(t, 0)
        .single()
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("rendering the templates of rule {rule}: {source}")]
    Template {
        rule: String,
        source: minijinja::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A digest of an alert's description and evidence, to tell whether a new rendering
/// changes those the store holds. (SipHash with fixed keys: the same in every process,
/// though digests are only ever compared within one.)
fn texts_digest(description: &str, evidence: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    description.hash(&mut h);
    evidence.hash(&mut h);
    h.finish()
}

/// Reads the description and evidence of the alert `fp` back from the store into `a`, if
/// they were shed (see the module's invariants).
fn fill_texts(
    store: Option<&Arc<dyn Store>>,
    shed: &HashMap<String, u64>,
    fp: &str,
    a: &mut Alert,
) -> Result<(), StoreError> {
    let Some(store) = store else { return Ok(()) };
    if !shed.contains_key(fp) {
        return Ok(());
    }
    // Shed only once written, so only a commit that failed (and a reload not yet made)
    // leaves a shed alert without its key.
    let v = store
        .get(Space::Alert, fp.as_bytes())?
        .ok_or_else(|| StoreError::Missing {
            space: Space::Alert,
            key: fp.to_string(),
            detail: "its description and evidence were shed from memory as written, and a \
                     commit that failed did not write them; the alerts are reloaded from the \
                     store before the next evaluation"
                .into(),
        })?;
    let stored: Alert = codec::decode(ALERT_VERSION, Space::Alert, fp.as_bytes(), &v)?;
    a.description = stored.description;
    a.evidence = stored.evidence;
    Ok(())
}

/// [`fill_texts`] into the alert in memory, which keeps them until its next write: for an
/// alert about to be written, so that the write reads them once.
fn unshed(
    store: Option<&Arc<dyn Store>>,
    shed: &mut HashMap<String, u64>,
    fp: &str,
    a: &mut Alert,
) -> Result<(), StoreError> {
    fill_texts(store, shed, fp, a)?;
    shed.remove(fp);
    Ok(())
}

/// Sheds the description and evidence of the alert `fp`, which the store holds: only their
/// digest stays in memory.
fn shed_texts(shed: &mut HashMap<String, u64>, fp: String, a: &mut Alert) {
    let digest = texts_digest(&a.description, &a.evidence);
    a.description = String::new();
    a.evidence = String::new();
    shed.insert(fp, digest);
}

/// A finding made ready for the lifecycle: its county and the alert's texts and labels,
/// rendered from the rule's templates. It does not touch the alerts, so that the checks of a
/// pass (and their rendering) can run on several threads.
struct Found {
    county: Option<CountyCode>,
    summary: String,
    description: String,
    evidence: String,
    labels: BTreeMap<String, String>,
}

impl Found {
    fn of(rules: &RuleSet, rule: &Rule, f: &Finding) -> Result<Self, AlertError> {
        let ctx = full_context(rule, f);
        // Converted once for both templates.
        let values = minijinja::Value::from_serialize(&ctx);
        let render = |field: &str| {
            rules
                .render(&rule.name, field, &values)
                .map_err(|source| AlertError::Template {
                    rule: rule.name.clone(),
                    source,
                })
        };
        let summary = render("summary")?;
        let description = render("description")?;
        let mut labels = rule.labels.clone();
        labels.insert("rule".into(), rule.name.clone());
        if let Some(c) = f.county {
            labels.insert("county".into(), c.to_string());
        }
        labels.insert("severity".into(), rule.severity.name().into());
        labels.insert("risk_category".into(), rule.risk.name_zh().into());
        labels.extend(f.labels.clone());
        Ok(Self {
            county: f.county,
            summary,
            description,
            evidence: ctx.to_string(),
            labels,
        })
    }
}

/// A check whose outcome may move an alert: something was found, or the rule's alert on
/// the entity is active. Checks that found nothing on an entity without an active alert
/// change nothing and are only counted.
struct Checked {
    rule: usize,
    entity: usize,
    fingerprint: String,
    found: Option<Result<Found, AlertError>>,
}

/// Below this many entities a pass runs on the calling thread (`parallel::in_shares`).
const PARALLEL_MIN_ENTITIES: usize = 256;

/// All alerts that are pending, firing, or recently resolved.
#[derive(Default)]
pub struct Alerts {
    alerts: HashMap<String, Alert>,
    /// The keys of `alerts` as the numbers they write ([`fingerprint_number`]), kept
    /// wherever an alert is added or removed. A check asks here first and makes a
    /// fingerprint's text only for an entity that has an alert of the rule or a finding: at
    /// province scale 99.6 % of checks have neither, and making and looking up every one's
    /// text was a third of a full evaluation. (A key of another form, which no fingerprint
    /// made here could equal, has no number and was never found by a check either.)
    numbers: HashSet<u64, rustc_hash::FxBuildHasher>,
    changed: HashSet<String>,
    removed: HashSet<String>,
    /// Counts for the gauges, kept as the alerts change (see `tally`).
    tally: Tally,
    /// The alerts whose description and evidence are shed, with their digest.
    shed: HashMap<String, u64>,
    /// Where shed texts are read back from. Without it (alerts never loaded from a store,
    /// as in a backtest) nothing is shed.
    store: Option<Arc<dyn Store>>,
}

impl Alerts {
    /// Loads the alerts of `store`, their texts shed: at province scale they are tens of
    /// thousands, about 5 KB each with their texts.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let mut a = Self::default();
        store.for_each_in(Space::Alert, &[], None, &mut |k, v| {
            let mut alert: Alert = codec::decode(ALERT_VERSION, Space::Alert, k, v)?;
            shed_texts(&mut a.shed, alert.fingerprint.clone(), &mut alert);
            a.note_added(&alert.fingerprint);
            a.alerts.insert(alert.fingerprint.clone(), alert);
            Ok(())
        })?;
        a.tally = Tally::of(a.alerts.values());
        a.store = Some(store);
        Ok(a)
    }

    /// The alerts, their description and evidence possibly shed (empty).
    pub fn iter(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// The alert `fingerprint`, its description and evidence possibly shed (empty).
    pub fn get(&self, fingerprint: &str) -> Option<&Alert> {
        self.alerts.get(fingerprint)
    }

    /// Keeps `numbers` with an alert added to `alerts` under `fingerprint`.
    fn note_added(&mut self, fingerprint: &str) {
        if let Some(n) = number_of(fingerprint) {
            self.numbers.insert(n);
        }
    }

    /// Keeps `numbers` with the alert under `fingerprint` removed. No two keys have one
    /// number: a key is its number's only text.
    fn note_removed(&mut self, fingerprint: &str) {
        if let Some(n) = number_of(fingerprint) {
            self.numbers.remove(&n);
        }
    }

    /// The alert `fingerprint` whole, its texts read from the store if shed.
    pub fn full(&self, fingerprint: &str) -> Result<Option<Alert>, StoreError> {
        let Some(a) = self.alerts.get(fingerprint) else {
            return Ok(None);
        };
        let mut a = a.clone();
        fill_texts(self.store.as_ref(), &self.shed, fingerprint, &mut a)?;
        Ok(Some(a))
    }

    /// Entities with a pending alert: they must be re-evaluated on every tick for `for`.
    pub fn pending_entities(&self) -> Vec<(String, String)> {
        self.alerts
            .values()
            .filter(|a| a.status == Status::Pending)
            .map(|a| (a.rule.clone(), a.entity.clone()))
            .collect()
    }

    /// Feeds one evaluation result into the lifecycle.
    pub fn observe(
        &mut self,
        rules: &RuleSet,
        rule: &Rule,
        entity: &EntityRef,
        finding: Option<&Finding>,
        now: DateTime<FixedOffset>,
    ) -> Result<Option<Transition>, AlertError> {
        let fp = fingerprint(&rule.name, entity);
        let found = finding.map(|f| Found::of(rules, rule, f)).transpose()?;
        Ok(self.observe_found(rule, entity, fp, found, now)?)
    }

    /// [`Alerts::observe`] with the fingerprint computed and the finding's texts rendered.
    fn observe_found(
        &mut self,
        rule: &Rule,
        entity: &EntityRef,
        fp: String,
        found: Option<Found>,
        now: DateTime<FixedOffset>,
    ) -> Result<Option<Transition>, StoreError> {
        let t = now.timestamp();
        let existing = self.alerts.get(&fp);
        let active = existing.is_some_and(|a| a.status != Status::Resolved);
        match (found, active) {
            (None, false) => Ok(None),
            (None, true) => {
                // Invariant: `active` implies the alert exists.
                let Some(a) = self.alerts.get_mut(&fp) else {
                    return Ok(None);
                };
                self.tally.remove(a);
                if a.status == Status::Pending {
                    self.alerts.remove(&fp);
                    self.note_removed(&fp);
                    self.shed.remove(&fp);
                    self.changed.remove(&fp);
                    self.removed.insert(fp);
                    return Ok(None);
                }
                a.status = Status::Resolved;
                a.resolved_at = Some(t);
                a.history.push((t, Status::Resolved));
                self.tally.add(a);
                unshed(self.store.as_ref(), &mut self.shed, &fp, a)?;
                let out = a.clone();
                self.changed.insert(fp);
                Ok(Some(Transition::Resolved(out)))
            }
            (Some(f), _) => {
                let Found {
                    county,
                    summary,
                    description,
                    evidence,
                    labels,
                } = f;
                let a = match self.alerts.get_mut(&fp) {
                    Some(a) if a.status != Status::Resolved => a,
                    previous => {
                        if let Some(p) = &previous {
                            self.tally.remove(p);
                        }
                        let history = previous.map(|p| p.history.clone()).unwrap_or_default();
                        let mut history = history;
                        history.push((t, Status::Pending));
                        self.note_added(&fp);
                        self.alerts.insert(
                            fp.clone(),
                            Alert {
                                fingerprint: fp.clone(),
                                rule: rule.name.clone(),
                                entity: entity.key(),
                                county,
                                severity: rule.severity.name().into(),
                                risk_category: rule.risk.name_zh().into(),
                                status: Status::Pending,
                                active_since: t,
                                fired_at: None,
                                resolved_at: None,
                                summary: String::new(),
                                description: String::new(),
                                evidence: String::new(),
                                labels: BTreeMap::new(),
                                history,
                                ack: None,
                                escalated_at: None,
                                notified_at: None,
                                repeats: 0,
                                reminded: BTreeMap::new(),
                            },
                        );
                        self.removed.remove(&fp);
                        // Invariant: inserted just above.
                        let a = self.alerts.get_mut(&fp).expect("inserted");
                        self.tally.add(a);
                        a
                    }
                };
                let texts_changed = match self.shed.get(&fp) {
                    Some(digest) => *digest != texts_digest(&description, &evidence),
                    None => a.description != description || a.evidence != evidence,
                };
                let content_changed = a.summary != summary || texts_changed;
                a.summary = summary;
                a.labels = labels;
                // A firing alert that nothing changes is not written: its texts, the same
                // as the store's, stay shed. Every other is written, with these.
                if content_changed || a.status != Status::Firing {
                    a.description = description;
                    a.evidence = evidence;
                    self.shed.remove(&fp);
                }
                let mut transition = None;
                if a.status == Status::Pending && t - a.active_since >= rule.hold.as_secs() as i64 {
                    self.tally.remove(a);
                    a.status = Status::Firing;
                    a.fired_at = Some(t);
                    a.notified_at = Some(t);
                    a.repeats = 0;
                    a.reminded.clear();
                    a.ack = None;
                    a.escalated_at = None;
                    a.history.push((t, Status::Firing));
                    self.tally.add(a);
                    transition = Some(Transition::Fired(a.clone()));
                }
                if transition.is_some() || content_changed || a.status == Status::Pending {
                    self.changed.insert(fp);
                }
                Ok(transition)
            }
        }
    }

    /// Records an operator's disposition on an alert; the change is written with the next batch.
    pub fn acknowledge(
        &mut self,
        fingerprint: &str,
        ack: Ack,
    ) -> Result<Option<Alert>, StoreError> {
        let Some(a) = self.alerts.get_mut(fingerprint) else {
            return Ok(None);
        };
        self.tally.remove(a);
        a.ack = Some(ack);
        self.tally.add(a);
        self.changed.insert(fingerprint.to_string());
        unshed(self.store.as_ref(), &mut self.shed, fingerprint, a)?;
        Ok(Some(a.clone()))
    }

    /// Firing alerts without a disposition that fired before `before` and were not escalated;
    /// they are marked escalated at `now`.
    pub fn take_escalations(&mut self, before: i64, now: i64) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        for a in self.alerts.values_mut() {
            if a.status == Status::Firing
                && a.ack.is_none()
                && a.escalated_at.is_none()
                && a.fired_at.is_some_and(|f| f <= before)
            {
                a.escalated_at = Some(now);
                let fp = a.fingerprint.clone();
                unshed(self.store.as_ref(), &mut self.shed, &fp, a)?;
                out.push(a.clone());
                self.changed.insert(a.fingerprint.clone());
            }
        }
        Ok(out)
    }

    /// Firing alerts without a disposition with the routes due to remind of them:
    /// `intervals` gives each route of an alert and its reminder interval (0: none); a
    /// route is due when that long has passed since it last reminded (or since the alert
    /// fired). A disposition stops the reminders.
    pub fn take_repeats(
        &mut self,
        now: i64,
        intervals: impl Fn(&Alert) -> Vec<(String, i64)>,
    ) -> Result<Vec<(Alert, Vec<String>)>, StoreError> {
        let mut out = Vec::new();
        for a in self.alerts.values_mut() {
            if a.status != Status::Firing || a.ack.is_some() {
                continue;
            }
            let Some(notified) = a.notified_at else {
                continue;
            };
            let due: Vec<String> = intervals(a)
                .into_iter()
                .filter(|(route, every)| {
                    *every > 0 && now - a.reminded.get(route).copied().unwrap_or(notified) >= *every
                })
                .map(|(route, _)| route)
                .collect();
            if due.is_empty() {
                continue;
            }
            for r in &due {
                a.reminded.insert(r.clone(), now);
            }
            a.repeats += 1;
            let fp = a.fingerprint.clone();
            unshed(self.store.as_ref(), &mut self.shed, &fp, a)?;
            out.push((a.clone(), due));
            self.changed.insert(a.fingerprint.clone());
        }
        Ok(out)
    }

    /// Counts of recorded dispositions per (county, rule, disposition), for metrics.
    pub fn dispositions(&self) -> BTreeMap<(Option<CountyCode>, &str, Disposition), u64> {
        self.tally.dispositions()
    }

    /// Households with a firing alert per county, and per (county, risk category); those
    /// without any are absent.
    pub fn households_at_risk(
        &self,
    ) -> (
        BTreeMap<CountyCode, u64>,
        BTreeMap<(CountyCode, RiskCategory), u64>,
    ) {
        (
            self.tally.households_per_county(),
            self.tally.households_per_risk(),
        )
    }

    /// Households with a firing alert in any category of each of `sets`, per (county, set);
    /// those without any are absent.
    pub fn households_in_sets(&self, sets: &[RiskSet]) -> BTreeMap<(CountyCode, RiskSet), u64> {
        let mut out = BTreeMap::new();
        for set in sets {
            for (county, n) in self.tally.households_in(*set) {
                out.insert((county, *set), n);
            }
        }
        out
    }

    /// Forgets resolved alerts older than the retention.
    pub fn expire_resolved(&mut self, now: i64) {
        let old: Vec<String> = self
            .alerts
            .values()
            .filter(|a| {
                a.status == Status::Resolved
                    && a.resolved_at
                        .is_some_and(|r| now - r > RESOLVED_RETENTION_SECS)
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        for fp in old {
            if let Some(a) = self.alerts.remove(&fp) {
                self.tally.remove(&a);
                self.note_removed(&fp);
            }
            self.shed.remove(&fp);
            self.changed.remove(&fp);
            self.removed.insert(fp);
        }
    }

    /// Writes changed alerts into `batch`, each with its description and evidence (read
    /// back from the store if shed), then sheds those texts from memory. The caller commits
    /// `batch`, or reloads the alerts from the store if the commit fails.
    pub fn write_changes(&mut self, batch: &mut Batch) -> Result<(), StoreError> {
        let mut changed: Vec<String> = self.changed.drain().collect();
        // In key order, as a commit's keys are best written.
        changed.sort_unstable();
        for fp in changed {
            let Some(a) = self.alerts.get_mut(&fp) else {
                continue;
            };
            unshed(self.store.as_ref(), &mut self.shed, &fp, a)?;
            batch.put(
                Space::Alert,
                fp.clone().into_bytes(),
                codec::encode(ALERT_VERSION, &*a),
            );
            if self.store.is_some() {
                shed_texts(&mut self.shed, fp, a);
            }
        }
        for fp in self.removed.drain() {
            batch.delete(Space::Alert, fp.into_bytes());
        }
        Ok(())
    }

    /// Households with a firing alert, for county rules.
    pub fn firing_households(&self) -> Vec<FiringHousehold> {
        self.firing_household_refs()
            .map(|(county, risk, household)| FiringHousehold {
                county,
                household: household.to_string(),
                risk,
            })
            .collect()
    }

    /// [`Alerts::firing_households`] without copying the entity keys: (county, risk
    /// category, entity key).
    fn firing_household_refs(&self) -> impl Iterator<Item = (CountyCode, RiskCategory, &str)> + '_ {
        self.alerts
            .values()
            .filter(|a| a.status == Status::Firing && a.entity.starts_with("household/"))
            .filter_map(|a| Some((a.county?, a.risk_category.parse().ok()?, a.entity.as_str())))
    }

    /// Evaluates the rules that pass `filter` on the entities of their kind and moves the
    /// alerts; returns the number of checks and the transitions to announce.
    ///
    /// The checks, and the rendering of what they find, read only the state and the alerts:
    /// they run on every core, each thread over a contiguous share of `entities`. The alerts
    /// then move on this thread, so the outcome does not depend on the number of threads.
    pub fn pass(
        &mut self,
        rules: &RuleSet,
        ctx: &EvalContext<'_>,
        entities: &[EntityRef],
        filter: impl Fn(&Rule) -> bool,
    ) -> Result<(u64, Vec<Transition>), StoreError> {
        let on: Vec<(usize, &Rule)> = rules
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| filter(r))
            .collect();
        let shares = crate::parallel::in_shares(entities, PARALLEL_MIN_ENTITIES, |first, part| {
            self.check(rules, ctx, first, part, &on)
        });
        let mut checks = 0;
        let mut transitions: Vec<(usize, usize, Transition)> = Vec::new();
        for (n, share) in shares {
            checks += n;
            for c in share {
                let (ri, rule) = on[c.rule];
                let found = match c.found.transpose() {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, error = %e, "rule evaluation failed");
                        continue;
                    }
                };
                let entity = &entities[c.entity];
                if let Some(t) = self.observe_found(rule, entity, c.fingerprint, found, ctx.now)? {
                    transitions.push((ri, c.entity, t));
                }
            }
        }
        // In rule order and entity order, as announced, whatever the order of `entities`.
        transitions.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| entities[a.1].cmp(&entities[b.1]))
        });
        Ok((checks, transitions.into_iter().map(|(_, _, t)| t).collect()))
    }

    /// The checks of a share of a pass's entities (the first at index `first`) with the rules
    /// `on`: their number, and those that may move an alert, in entity order. Entity by
    /// entity, so that an entity's data is read once into the cache for all its rules.
    fn check(
        &self,
        rules: &RuleSet,
        ctx: &EvalContext<'_>,
        first: usize,
        entities: &[EntityRef],
        on: &[(usize, &Rule)],
    ) -> (u64, Vec<Checked>) {
        let mut checks = 0;
        let mut out = Vec::new();
        for (ei, entity) in (first..).zip(entities) {
            let kind = entity_kind(entity);
            for (oi, (_, rule)) in on.iter().enumerate() {
                if rule.kind.entity() != kind {
                    continue;
                }
                checks += 1;
                let number = fingerprint_number(&rule.name, entity);
                let fp = self
                    .numbers
                    .contains(&number)
                    .then(|| format!("{number:016x}"));
                let active = fp
                    .as_ref()
                    .and_then(|fp| self.alerts.get(fp))
                    .is_some_and(|a| a.status != Status::Resolved);
                let finding = evaluate(rule, ctx, entity, active);
                if finding.is_none() && !active {
                    continue;
                }
                out.push(Checked {
                    rule: oi,
                    entity: ei,
                    fingerprint: fp.unwrap_or_else(|| format!("{number:016x}")),
                    found: finding.map(|f| Found::of(rules, rule, &f)),
                });
            }
        }
        (checks, out)
    }

    /// Counts per (county, rule, severity, status), for metrics.
    pub fn counts(&self) -> BTreeMap<(Option<CountyCode>, &str, &str, Status), u64> {
        self.tally.counts()
    }
}

#[cfg(test)]
mod tests;
