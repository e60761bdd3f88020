//! Notifications: rendered from alert transitions, kept in a persistent outbox, delivered by
//! receivers with retries.
//!
//! Invariants:
//! - A notification is written to the store (in the same batch as the alert transition that
//!   caused it) before any attempt to send it, and removed only after a receiver accepted it.
//!   Delivery is therefore at-least-once; a duplicate happens only if the daemon dies between
//!   a successful send and the removal. Every notification carries a stable key
//!   (Message-ID `<fingerprint.fired_at.status@guardline>`) so a receiver can drop it.
//! - Notify reads notifications, never rules or state.

mod receivers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

pub use receivers::{Receiver, SendError, am_alert, push_alertmanager};

use crate::alerts::{Alert, Status, Transition, format_time};
use crate::config::{Language, NotifyConfig};
use crate::metrics::Metrics;
use crate::model::CountyCode;
use crate::regions::county_name;
use crate::store::{Batch, Space, Store, StoreError, codec};

const NOTIFICATION_VERSION: u8 = 1;
/// The identification time limit of the plan: a warning must be verified within 15 days.
const IDENTIFICATION_DAYS: i64 = 15;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    pub receiver: String,
    pub fingerprint: String,
    pub status: Status,
    pub rule: String,
    pub county: Option<CountyCode>,
    /// Stable across retries and restarts; receivers may deduplicate on it.
    pub key: String,
    pub subject: String,
    pub body: String,
    /// The alert as webhook receivers describe it.
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub description: String,
    pub starts_at: i64,
    pub ends_at: Option<i64>,
    /// The route that sent it, e.g. `root/0` (webhooks' groupKey).
    pub route: String,
    /// Sent because the warning had no disposition within the identification time limit.
    pub escalation: bool,
    /// Notifications of one receiver and group go out together, at most once per
    /// `group_interval` seconds.
    pub group: String,
    pub group_interval: u64,
    /// The other notifications of a group sent as one message (only while sending).
    #[serde(skip)]
    pub grouped: Vec<Box<Notification>>,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_error: Option<String>,
}

/// Renders notification subjects and bodies (Chinese by default, English available).
pub struct Templates {
    env: minijinja::Environment<'static>,
    lang: &'static str,
}

/// Instructions a template may run per render (normal ones need a few thousand).
pub const TEMPLATE_FUEL: u64 = 200_000;

impl Templates {
    pub fn new(language: Language) -> Self {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // A template is text with a few loops over evidence: a budget of instructions per
        // render stops a runaway loop (`range(100000)` nested) instead of hanging.
        env.set_fuel(Some(crate::notify::TEMPLATE_FUEL));
        for (name, src) in [
            ("zh.subject", include_str!("templates/zh.subject.j2")),
            ("zh.body", include_str!("templates/zh.body.j2")),
            ("en.subject", include_str!("templates/en.subject.j2")),
            ("en.body", include_str!("templates/en.body.j2")),
        ] {
            // Invariant: the built-in templates are tested to compile (tests below).
            env.add_template(name, src)
                .expect("built-in template compiles");
        }
        let lang = match language {
            Language::Zh => "zh",
            Language::En => "en",
        };
        Self { env, lang }
    }

    /// The built-in templates, and a receiver's own where the configuration gives them.
    pub fn with_receivers(
        language: Language,
        own: &BTreeMap<String, (String, String)>,
    ) -> Result<Self, minijinja::Error> {
        let mut t = Self::new(language);
        for (receiver, (subject, body)) in own {
            t.env
                .add_template_owned(format!("receiver:{receiver}.subject"), subject.clone())?;
            t.env
                .add_template_owned(format!("receiver:{receiver}.body"), body.clone())?;
        }
        Ok(t)
    }

    /// Compiles and test-renders a receiver's templates with a sample alert.
    pub fn check(subject: &str, body: &str) -> Result<(), minijinja::Error> {
        let own: BTreeMap<String, (String, String)> =
            [("check".to_string(), (subject.to_string(), body.to_string()))].into();
        let t = Self::with_receivers(Language::Zh, &own)?;
        let a = sample_alert();
        t.render_for(&a, Status::Firing, false, Some("check"))
            .map(|_| ())
    }

    pub fn render(
        &self,
        alert: &Alert,
        status: Status,
    ) -> Result<(String, String), minijinja::Error> {
        self.render_with(alert, status, false)
    }

    pub fn render_with(
        &self,
        alert: &Alert,
        status: Status,
        escalation: bool,
    ) -> Result<(String, String), minijinja::Error> {
        self.render_for(alert, status, escalation, None)
    }

    /// Renders with `receiver`'s own templates if it has them, else the built-in ones.
    pub fn render_for(
        &self,
        alert: &Alert,
        status: Status,
        escalation: bool,
        receiver: Option<&str>,
    ) -> Result<(String, String), minijinja::Error> {
        self.render_context(&self.context(alert, status, escalation), receiver)
    }

    /// Whether `receiver` has templates of its own.
    pub fn has_own(&self, receiver: &str) -> bool {
        self.env
            .get_template(&format!("receiver:{receiver}.subject"))
            .is_ok()
    }

    /// What the templates see of an alert, converted once for all the templates rendered
    /// with it.
    fn context(&self, alert: &Alert, status: Status, escalation: bool) -> minijinja::Value {
        let fired = alert.fired_at.unwrap_or(alert.active_since);
        let severity = match (self.lang, alert.severity.as_str()) {
            ("zh", "critical") => "严重",
            ("zh", "warning") => "预警",
            ("zh", _) => "提示",
            (_, s) => s,
        };
        // Of the evidence, only two texts: the other fields are skipped, not built.
        let evidence: EvidenceTexts = serde_json::from_str(&alert.evidence).unwrap_or_default();
        let text_of = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => s,
            _ => String::new(),
        };
        let village_name = text_of(evidence.village_name);
        let sources = text_of(evidence.sources);
        let label = |k: &str| alert.labels.get(k).cloned().unwrap_or_default();
        minijinja::context! {
            status => status.name(),
            summary => &alert.summary,
            description => &alert.description,
            risk_category => &alert.risk_category,
            severity => severity,
            county => alert.county.map(|c| c.to_string()).unwrap_or_default(),
            county_name => alert.county.map(county_name).unwrap_or_default(),
            village => label("village"),
            village_name => village_name,
            household => label("household"),
            township => label("township"),
            feed => label("feed"),
            rule => &alert.rule,
            fired_at => format_time(fired),
            resolved_at => alert.resolved_at.map(format_time).unwrap_or_default(),
            deadline => format_time(fired + IDENTIFICATION_DAYS * 86_400).get(..10).unwrap_or_default().to_string(),
            fingerprint => &alert.fingerprint,
            sources => sources,
            escalation => escalation,
            ack => alert.ack.as_ref().map(|a| a.disposition.name_zh()).unwrap_or_default(),
        }
    }

    /// Renders `ctx` ([`Templates::context`]) with `receiver`'s own templates if it has
    /// them, else the built-in ones.
    fn render_context(
        &self,
        ctx: &minijinja::Value,
        receiver: Option<&str>,
    ) -> Result<(String, String), minijinja::Error> {
        let prefix = match receiver {
            Some(r) if self.has_own(r) => format!("receiver:{r}"),
            _ => self.lang.to_string(),
        };
        let subject = self
            .env
            .get_template(&format!("{prefix}.subject"))?
            .render(ctx)?;
        let body = self
            .env
            .get_template(&format!("{prefix}.body"))?
            .render(ctx)?;
        Ok((subject.trim().replace('\n', " "), body))
    }
}

/// The texts of an alert's evidence that its notifications show; a field that is missing or
/// not text shows as empty.
#[derive(Default, Deserialize)]
struct EvidenceTexts {
    #[serde(default)]
    village_name: Option<serde_json::Value>,
    #[serde(default)]
    sources: Option<serde_json::Value>,
}

/// Notifications waiting for delivery; mirrors the store's outbox space.
///
/// Memory holds only what decides when each one goes out (`Queued`); its texts (subject,
/// body, summary, description, labels: about 4 KB) stay in the store and are read when its
/// group goes out. After a province's first evaluation the outbox holds a notification
/// per firing alert: 25,000 of them took 105 MB at 600,000 households, held whole.
#[derive(Default)]
pub struct Outbox {
    items: BTreeMap<u64, Queued>,
}

/// A waiting notification as the outbox keeps it in memory.
#[derive(Debug, Clone, PartialEq)]
struct Queued {
    receiver: String,
    group: String,
    group_interval: u64,
    created_at: i64,
    attempts: u32,
    next_attempt: i64,
}

impl Queued {
    fn of(n: &Notification) -> Self {
        Self {
            receiver: n.receiver.clone(),
            group: n.group.clone(),
            group_interval: n.group_interval,
            created_at: n.created_at,
            attempts: n.attempts,
            next_attempt: n.next_attempt,
        }
    }
}

impl Outbox {
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut o = Self::default();
        // Key by key, not every value read first: after a province's first evaluation the
        // outbox holds a notification, with its texts, per firing alert.
        store.for_each(Space::Outbox, &mut |k, v| {
            let n: Notification = codec::decode(NOTIFICATION_VERSION, Space::Outbox, k, v)?;
            o.insert(&n);
            Ok(())
        })?;
        Ok(o)
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Adds the notifications of `other`, read from the store while this one took what the
    /// engine queued meanwhile.
    pub fn merge(&mut self, other: Outbox) {
        for (id, queued) in other.items {
            // What memory holds is the newer: the engine queued it after the store was read.
            self.items.entry(id).or_insert(queued);
        }
    }
    /// Adds a notification the store already holds (the engine commits, then enqueues).
    pub fn insert(&mut self, n: &Notification) {
        self.items.insert(n.id, Queued::of(n));
    }
    pub fn oldest_created(&self) -> Option<i64> {
        self.items.values().map(|n| n.created_at).min()
    }
}

/// Reads a waiting notification whole from the store's outbox space; `None` if the store
/// no longer holds it.
fn read_queued(store: &dyn Store, id: u64) -> Result<Option<Notification>, StoreError> {
    let key = id.to_be_bytes();
    store
        .get(Space::Outbox, &key)?
        .map(|v| codec::decode(NOTIFICATION_VERSION, Space::Outbox, &key, &v))
        .transpose()
}

pub fn put(batch: &mut Batch, n: &Notification) {
    batch.put(
        Space::Outbox,
        n.id.to_be_bytes().to_vec(),
        codec::encode(NOTIFICATION_VERSION, n),
    );
}

/// Creates the notifications a transition causes, one per receiver, and adds them to `batch`.
pub fn notifications_for(
    transition: &Transition,
    cfg: &NotifyConfig,
    templates: &Templates,
    store: &dyn Store,
    now: i64,
    batch: &mut Batch,
) -> Result<Vec<Notification>, NotifyError> {
    let (alert, status) = match transition {
        Transition::Fired(a) => (a, Status::Firing),
        Transition::Resolved(a) => (a, Status::Resolved),
    };
    targets_and_build(alert, status, None, cfg, templates, store, now, batch)
}

#[allow(clippy::too_many_arguments)]
fn targets_and_build(
    alert: &Alert,
    status: Status,
    only_routes: Option<&[String]>,
    cfg: &NotifyConfig,
    templates: &Templates,
    store: &dyn Store,
    now: i64,
    batch: &mut Batch,
) -> Result<Vec<Notification>, NotifyError> {
    let routes: Vec<&crate::dispatch::Route> = cfg
        .route
        .resolve(&alert.labels)
        .into_iter()
        .filter(|r| {
            status != Status::Resolved || r.grouping.send_resolved.unwrap_or(cfg.send_resolved)
        })
        .filter(|r| only_routes.is_none_or(|o| o.contains(&r.path)))
        .collect();
    let mut receivers: Vec<String> = Vec::new();
    for r in &routes {
        for name in &r.receivers {
            if !receivers.contains(name) {
                receivers.push(name.clone());
            }
        }
    }
    let targets: Vec<Target> = receivers
        .into_iter()
        .map(
            |receiver| match routes.iter().find(|r| r.receivers.contains(&receiver)) {
                Some(r) => Target {
                    receiver,
                    route: r.path.clone(),
                    group: r.group_key(&alert.labels, &alert.fingerprint),
                    wait: r.grouping.wait.as_secs() as i64,
                    interval: r.grouping.interval.as_secs(),
                },
                None => Target {
                    receiver,
                    route: "root".into(),
                    group: format!("root:{}", alert.fingerprint),
                    wait: 0,
                    interval: 0,
                },
            },
        )
        .collect();
    build(alert, status, false, &targets, templates, store, now, batch)
}

/// A reminder of a firing warning still without a disposition, to the receivers of the
/// routes due to remind.
pub fn repeat_for(
    alert: &Alert,
    routes: &[String],
    cfg: &NotifyConfig,
    templates: &Templates,
    store: &dyn Store,
    now: i64,
    batch: &mut Batch,
) -> Result<Vec<Notification>, NotifyError> {
    targets_and_build(
        alert,
        Status::Firing,
        Some(routes),
        cfg,
        templates,
        store,
        now,
        batch,
    )
}

/// The escalation of a warning left without a disposition, to `escalate_to`.
pub fn escalation_for(
    alert: &Alert,
    cfg: &NotifyConfig,
    templates: &Templates,
    store: &dyn Store,
    now: i64,
    batch: &mut Batch,
) -> Result<Vec<Notification>, NotifyError> {
    let targets: Vec<Target> = cfg
        .escalate_to
        .iter()
        .map(|r| Target {
            receiver: r.clone(),
            route: "escalation".into(),
            group: format!("escalation:{}", alert.fingerprint),
            wait: 0,
            interval: 0,
        })
        .collect();
    build(
        alert,
        Status::Firing,
        true,
        &targets,
        templates,
        store,
        now,
        batch,
    )
}

/// Where one notification goes: its receiver, route, group and the group's timing.
struct Target {
    receiver: String,
    route: String,
    group: String,
    wait: i64,
    interval: u64,
}

#[allow(clippy::too_many_arguments)]
fn build(
    alert: &Alert,
    status: Status,
    escalation: bool,
    targets: &[Target],
    templates: &Templates,
    store: &dyn Store,
    now: i64,
    batch: &mut Batch,
) -> Result<Vec<Notification>, NotifyError> {
    // Rendered once per alert: receivers without templates of their own share the texts.
    let ctx = templates.context(alert, status, escalation);
    let (default_subject, default_body) = templates
        .render_context(&ctx, None)
        .map_err(|e| NotifyError::Template(e.to_string()))?;
    let mut key = format!(
        "{}.{}.{}",
        alert.fingerprint,
        alert.fired_at.unwrap_or(alert.active_since),
        if escalation {
            "escalated"
        } else {
            status.name()
        }
    );
    // A reminder is a new message: receivers must not drop it as a duplicate.
    if alert.repeats > 0 && status == Status::Firing && !escalation {
        key.push_str(&format!(".repeat{}", alert.repeats));
    }
    let mut out = Vec::new();
    for t in targets {
        let (receiver, route) = (t.receiver.clone(), t.route.clone());
        let (subject, body) = if templates.has_own(&receiver) {
            templates
                .render_context(&ctx, Some(&receiver))
                .unwrap_or_else(|_| (default_subject.clone(), default_body.clone()))
        } else {
            (default_subject.clone(), default_body.clone())
        };
        let n = Notification {
            id: store.next_id()?,
            receiver: receiver.clone(),
            fingerprint: alert.fingerprint.clone(),
            status,
            rule: alert.rule.clone(),
            county: alert.county,
            key: key.clone(),
            subject: subject.clone(),
            body: body.clone(),
            labels: alert.labels.clone(),
            summary: alert.summary.clone(),
            description: alert.description.clone(),
            starts_at: alert.fired_at.unwrap_or(alert.active_since),
            ends_at: alert.resolved_at,
            route,
            group: t.group.clone(),
            group_interval: t.interval,
            grouped: Vec::new(),
            escalation,
            created_at: now,
            attempts: 0,
            // A new group waits for the others of its group: at least `wait` seconds (times
            // are whole seconds, so one more when there is a wait at all).
            next_attempt: now + t.wait + i64::from(t.wait > 0),
            last_error: None,
        };
        put(batch, &n);
        out.push(n);
    }
    Ok(out)
}

/// A delivered notification, kept in the notification log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    pub id: u64,
    pub key: String,
    pub receiver: String,
    pub fingerprint: String,
    pub rule: String,
    pub county: Option<CountyCode>,
    pub status: Status,
    pub escalation: bool,
    pub attempts: u32,
    pub delivered_at: i64,
}

const DELIVERED_VERSION: u8 = 1;

/// The notification log, newest first, at most `limit` entries.
pub fn delivered(store: &dyn Store, limit: usize) -> Result<Vec<Delivered>, StoreError> {
    let mut v: Vec<Delivered> = store
        .scan(Space::NotifyLog)?
        .into_iter()
        .map(|(k, v)| codec::decode(DELIVERED_VERSION, Space::NotifyLog, &k, &v))
        .collect::<Result<_, _>>()?;
    v.reverse();
    v.truncate(limit);
    Ok(v)
}

#[cfg(test)]
pub mod tests_support {
    pub fn sample() -> super::Alert {
        super::sample_alert()
    }
}

/// An alert with every field set, to test-render templates at load.
fn sample_alert() -> Alert {
    let labels: BTreeMap<String, String> = [
        ("household", "632522100201001"),
        ("village", "632522100201"),
        ("county", "632522"),
        ("rule", "medical_burden"),
        ("severity", "critical"),
        ("risk_category", "因病"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Alert {
        fingerprint: "0123456789abcdef".into(),
        rule: "medical_burden".into(),
        entity: "household/632522100201001".into(),
        county: "632522".parse().ok(),
        severity: "critical".into(),
        risk_category: "因病".into(),
        status: Status::Firing,
        active_since: 1_790_000_000,
        fired_at: Some(1_790_000_000),
        resolved_at: None,
        summary: "示例摘要".into(),
        description: "示例说明".into(),
        evidence: r#"{"village_name":"示例村","sources":"医保（medical）记录 1a2b3c4d，共 1 条"}"#
            .into(),
        labels,
        history: vec![],
        ack: None,
        escalated_at: None,
        notified_at: None,
        repeats: 0,
        reminded: BTreeMap::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("rendering a notification: {0}")]
    Template(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use crate::retry::backoff;

/// Delivers due notifications until `shutdown` fires. Notifications of one receiver and
/// group go out together; a receiver that fails keeps its later notifications waiting.
pub async fn run_outbox(
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<tokio::sync::Notify>,
    receivers: BTreeMap<String, Receiver>,
    store: Arc<dyn Store>,
    cfg: NotifyConfig,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_sent = std::collections::HashMap::new();
    let stop = shutdown.clone();
    let stopping = move || *stop.borrow();
    loop {
        let next_due = deliver_due(
            &outbox,
            &receivers,
            store.as_ref(),
            &cfg,
            &metrics,
            &mut last_sent,
            &stopping,
        )
        .await;
        let sleep = next_due
            .map(|t| {
                Duration::from_secs(t.saturating_sub(crate::model::now().timestamp()).max(0) as u64)
            })
            .unwrap_or(Duration::from_secs(3600))
            .clamp(Duration::from_millis(200), Duration::from_secs(60));
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The deliveries a pass over the outbox logs one by one at INFO; those past them go to
/// DEBUG, and one INFO line counts them. After a province's first evaluation the outbox
/// holds a notification per alert fired and receiver (409,410 alerts fired at 10,000,000
/// households), and a pass delivers every group that is due, which journald's rate limit
/// would cut together with every other line of the daemon.
pub const DELIVERIES_LOGGED_PER_PASS: u64 = 1_000;

/// A pass's deliveries, counted; dropped when the pass ends, however it ends (a stop, a
/// store that refuses the commit, the task cut at the stop), it logs one line counting
/// those past [`DELIVERIES_LOGGED_PER_PASS`].
#[derive(Default)]
struct DeliveriesLogged {
    delivered: u64,
}

impl DeliveriesLogged {
    /// Counts the next delivery; whether it is among the first, logged at INFO.
    fn next_at_info(&mut self) -> bool {
        self.delivered += 1;
        self.delivered <= DELIVERIES_LOGGED_PER_PASS
    }
}

impl Drop for DeliveriesLogged {
    fn drop(&mut self) {
        if self.delivered > DELIVERIES_LOGGED_PER_PASS {
            info!(
                delivered = self.delivered,
                logged = DELIVERIES_LOGGED_PER_PASS,
                "notifications delivered past the first of this pass logged at debug level only (GUARDLINE_LOG=guardline=debug); guardline_notifications_total counts every delivery, and the notification log keeps them (the newest 10,000 in /api/v1/notifications)"
            );
        }
    }
}

/// When each (receiver, group) last went out, for `group_interval`.
pub type LastSent = std::collections::HashMap<(String, String), i64>;

/// One pass over the outbox; returns when the next waiting notification is due. Before each
/// group it asks `stopping`: once that says yes, the pass ends after the group in flight, so a
/// stop waits for one delivery, not for an outbox of thousands of groups.
pub async fn deliver_due(
    outbox: &Mutex<Outbox>,
    receivers: &BTreeMap<String, Receiver>,
    store: &dyn Store,
    cfg: &NotifyConfig,
    metrics: &Metrics,
    last_sent: &mut LastSent,
    stopping: &(dyn Fn() -> bool + Send + Sync),
) -> Option<i64> {
    let now = crate::model::now().timestamp();
    if store.writable().is_err() {
        // A delivery the store cannot record would be sent again at every pass.
        return Some(now + 5);
    }
    let groups: Vec<Pending> = match outbox.lock() {
        Ok(o) => pending_groups(&o, now),
        Err(_) => return None,
    };
    let mut blocked: std::collections::BTreeSet<String> = Default::default();
    let mut next_due: Option<i64> = None;
    let mut logged = DeliveriesLogged::default();
    let due_at =
        |t: i64, next_due: &mut Option<i64>| *next_due = Some(next_due.map_or(t, |d| d.min(t)));
    for pending in groups {
        if stopping() {
            break;
        }
        if blocked.contains(&pending.receiver) {
            continue;
        }
        let key = (pending.receiver.clone(), pending.group.clone());
        let interval_at = last_sent
            .get(&key)
            .map_or(now, |t| t + pending.interval as i64);
        let when = pending.ready_at.max(interval_at);
        if when > now {
            due_at(when, &mut next_due);
            // A waiting group keeps later groups of the same receiver in order behind it
            // only when it failed before.
            if pending.failed_before {
                blocked.insert(pending.receiver.clone());
            }
            continue;
        }
        // Only a group that goes out is read, texts and all, from the store.
        let mut group: Vec<Notification> = Vec::with_capacity(pending.ids.len());
        for &id in &pending.ids {
            match read_queued(store, id) {
                Ok(Some(n)) => group.push(n),
                Ok(None) => {
                    // Invariant: the outbox holds what the store holds; a notification the
                    // store lost cannot be sent.
                    warn!(receiver = %pending.receiver, id, "notification missing from the store's outbox; dropped");
                    if let Ok(mut o) = outbox.lock() {
                        o.items.remove(&id);
                    }
                }
                Err(e @ StoreError::Decode { .. }) => {
                    // A damaged record would hold back every later group at every pass.
                    error!(receiver = %pending.receiver, id, error = %e,
                           "a waiting notification cannot be decoded; dropped from the outbox (the store keeps it, and the next start reports its key as damaged)");
                    if let Ok(mut o) = outbox.lock() {
                        o.items.remove(&id);
                    }
                }
                Err(e) => {
                    warn!(receiver = %pending.receiver, error = %e,
                          "cannot read a waiting notification from the store; it will be retried");
                    return Some(now + 5);
                }
            }
        }
        if group.is_empty() {
            continue;
        }
        let mut batch = Batch::default();
        let (expired, live): (Vec<Notification>, Vec<Notification>) = group
            .into_iter()
            .partition(|m| now - m.created_at > cfg.expire_after.as_secs() as i64);
        for m in &expired {
            warn!(receiver = %m.receiver, fingerprint = %m.fingerprint, attempts = m.attempts,
                  last_error = m.last_error.as_deref().unwrap_or(""), "notification expired undelivered");
            metrics
                .notifications
                .with_label_values(&[m.receiver.as_str(), "expired"])
                .inc();
            batch.delete(Space::Outbox, m.id.to_be_bytes().to_vec());
        }
        let mut keep: Vec<Notification> = Vec::new();
        let mut gone: Vec<u64> = expired.iter().map(|m| m.id).collect();
        if !live.is_empty() {
            let Some(receiver) = receivers.get(&pending.receiver) else {
                warn!(receiver = %pending.receiver, "notification for a receiver that is no longer configured; dropped");
                for m in &live {
                    batch.delete(Space::Outbox, m.id.to_be_bytes().to_vec());
                    gone.push(m.id);
                }
                commit_outcome(store, outbox, batch, &gone, &keep);
                continue;
            };
            let outcome = match receiver.send_group(&live).await {
                Ok(()) => {
                    for m in &live {
                        if logged.next_at_info() {
                            info!(receiver = %m.receiver, fingerprint = %m.fingerprint, rule = %m.rule,
                                  county = %m.county.map(|c| c.to_string()).unwrap_or_default(), status = m.status.name(),
                                  attempts = m.attempts + 1, group_size = live.len(), "notification delivered");
                        } else {
                            debug!(receiver = %m.receiver, fingerprint = %m.fingerprint, rule = %m.rule,
                                   county = %m.county.map(|c| c.to_string()).unwrap_or_default(), status = m.status.name(),
                                   attempts = m.attempts + 1, group_size = live.len(), "notification delivered");
                        }
                        batch.delete(Space::Outbox, m.id.to_be_bytes().to_vec());
                        let entry = Delivered {
                            id: m.id,
                            key: m.key.clone(),
                            receiver: m.receiver.clone(),
                            fingerprint: m.fingerprint.clone(),
                            rule: m.rule.clone(),
                            county: m.county,
                            status: m.status,
                            escalation: m.escalation,
                            attempts: m.attempts + 1,
                            delivered_at: now,
                        };
                        let mut k = now.to_be_bytes().to_vec();
                        k.extend_from_slice(&m.id.to_be_bytes());
                        batch.put(
                            Space::NotifyLog,
                            k,
                            codec::encode(DELIVERED_VERSION, &entry),
                        );
                        gone.push(m.id);
                    }
                    last_sent.insert(key, now);
                    "sent"
                }
                Err(SendError::Permanent(e)) => {
                    error!(receiver = %pending.receiver, group = %pending.group, error = %e,
                           "notification refused by the receiver; not retried (check the receiver's configuration)");
                    for m in &live {
                        batch.delete(Space::Outbox, m.id.to_be_bytes().to_vec());
                        gone.push(m.id);
                    }
                    "rejected"
                }
                Err(e) => {
                    let attempts = live.iter().map(|m| m.attempts).max().unwrap_or(0) + 1;
                    let wait = if let SendError::RetryAfter(d, _) = &e {
                        *d
                    } else {
                        backoff(attempts, cfg.retry_initial, cfg.retry_max)
                    };
                    warn!(receiver = %pending.receiver, group = %pending.group, attempts, retry_in_seconds = wait.as_secs(),
                          error = %e, "notification failed; will retry");
                    for m in &live {
                        let mut m = m.clone();
                        m.attempts = attempts;
                        m.next_attempt = now + wait.as_secs().max(1) as i64;
                        m.last_error = Some(e.to_string());
                        put(&mut batch, &m);
                        keep.push(m);
                    }
                    blocked.insert(pending.receiver.clone());
                    due_at(now + wait.as_secs().max(1) as i64, &mut next_due);
                    "failed"
                }
            };
            metrics
                .notifications
                .with_label_values(&[pending.receiver.as_str(), outcome])
                .inc_by(live.len() as u64);
        }
        if !commit_outcome(store, outbox, batch, &gone, &keep) {
            return Some(now + 5);
        }
    }
    if let Ok(o) = outbox.lock() {
        metrics.set_outbox(o.len(), o.oldest_created());
    }
    next_due
}

/// A group of the outbox as a delivery pass finds it: what decides when it is due, and its
/// members' ids. A pass used to copy every notification, with its texts, out of the outbox
/// first: an outbox of 125,000 notifications (after a province's first evaluation) was
/// copied at every pass, for the few groups due.
struct Pending {
    receiver: String,
    group: String,
    /// The group's `group_interval`, seconds.
    interval: u64,
    /// The earliest next attempt of its members.
    ready_at: i64,
    /// Whether a member failed before.
    failed_before: bool,
    ids: Vec<u64>,
}

/// The outbox's groups (see [`groups_of`] for their order).
fn pending_groups(outbox: &Outbox, now: i64) -> Vec<Pending> {
    let all: Vec<(u64, &Queued)> = outbox.items.iter().map(|(id, q)| (*id, q)).collect();
    groups_of(
        all.iter()
            .map(|(_, q)| (q.receiver.as_str(), q.group.as_str())),
    )
    .into_iter()
    .map(|members| {
        let (_, first) = all[members[0]];
        Pending {
            receiver: first.receiver.clone(),
            group: first.group.clone(),
            interval: first.group_interval,
            ready_at: members
                .iter()
                .map(|&i| all[i].1.next_attempt)
                .min()
                .unwrap_or(now),
            failed_before: members.iter().any(|&i| all[i].1.attempts > 0),
            ids: members.iter().map(|&i| all[i].0).collect(),
        }
    })
    .collect()
}

/// The notifications of each receiver and group, as indices into `pending`: groups in the
/// order of their first notification, and each group's in `pending`'s order (the outbox's:
/// oldest first). One pass; finding each group's members by a walk over all of them made
/// a pass over an outbox of 125,000 notifications in many groups take seconds of CPU.
fn groups_of<'a>(pending: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Vec<usize>> {
    let mut at: HashMap<(&str, &str), usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, receiver_and_group) in pending.into_iter().enumerate() {
        let g = *at.entry(receiver_and_group).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// Records a delivery outcome in the store, then in memory; false if the store refused.
fn commit_outcome(
    store: &dyn Store,
    outbox: &Mutex<Outbox>,
    batch: Batch,
    gone: &[u64],
    keep: &[Notification],
) -> bool {
    if let Err(e) = store.commit(batch) {
        warn!(error = %e, "cannot record a delivery in the store; it will be retried");
        return false;
    }
    if let Ok(mut o) = outbox.lock() {
        for id in gone {
            o.items.remove(id);
        }
        for m in keep {
            o.insert(m);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        let mut labels = BTreeMap::new();
        labels.insert("household".to_string(), "632522100201001".to_string());
        labels.insert("village".to_string(), "632522100201".to_string());
        Alert {
            fingerprint: "00ff".into(),
            rule: "medical_burden".into(),
            entity: "household/632522100201001".into(),
            county: Some("632522".parse().unwrap()),
            severity: "critical".into(),
            risk_category: "因病".into(),
            status: Status::Firing,
            active_since: 1_790_000_000,
            fired_at: Some(1_790_000_000),
            resolved_at: None,
            summary: "同德县甲村 户632522100201001（户主张*）医疗自付费用负担过重".into(),
            description: "说明".into(),
            evidence: r#"{"village_name":"甲村"}"#.into(),
            labels,
            history: vec![],
            ack: None,
            escalated_at: None,
            notified_at: None,
            repeats: 0,
            reminded: BTreeMap::new(),
        }
    }

    fn test_config(route: crate::dispatch::Route) -> NotifyConfig {
        NotifyConfig {
            route,
            receivers: vec![],
            send_resolved: true,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(2),
            expire_after: Duration::from_secs(3600),
            escalate_after: Duration::from_secs(3600),
            escalate_to: vec![],
            inhibit: vec![],
            repeat_interval: Duration::ZERO,
            templates: BTreeMap::new(),
        }
    }

    fn note(id: u64, group: &str, created: i64) -> Notification {
        Notification {
            id,
            receiver: "file".into(),
            fingerprint: format!("{id:016x}"),
            status: Status::Firing,
            rule: "r".into(),
            county: None,
            key: format!("k{id}"),
            subject: format!("s{id}"),
            body: "b".into(),
            labels: BTreeMap::new(),
            summary: String::new(),
            description: String::new(),
            starts_at: created,
            ends_at: None,
            route: "root".into(),
            escalation: false,
            group: group.into(),
            group_interval: 60,
            grouped: Vec::new(),
            created_at: created,
            attempts: 0,
            next_attempt: created,
            last_error: None,
        }
    }

    #[test]
    fn groups_come_in_the_order_of_their_first_notification_with_their_members_in_order() {
        let mut other_receiver = note(4, "g", 0);
        other_receiver.receiver = "hook".into();
        let pending = [
            note(1, "b", 0),
            note(2, "a", 0),
            note(3, "b", 0),
            other_receiver,
            note(5, "a", 0),
            note(6, "c", 0),
            note(7, "b", 0),
        ];
        let ids = |g: &Vec<usize>| g.iter().map(|&i| pending[i].id).collect::<Vec<_>>();
        let keys = pending
            .iter()
            .map(|m| (m.receiver.as_str(), m.group.as_str()));
        let groups: Vec<Vec<u64>> = groups_of(keys).iter().map(ids).collect();
        assert_eq!(groups, [vec![1, 3, 7], vec![2, 5], vec![4], vec![6]]);
        assert!(groups_of([]).is_empty());
    }

    /// A store, a file receiver `file` writing to `out.log`, an outbox and a root route.
    struct FileDelivery {
        _dir: tempfile::TempDir,
        store: crate::store::SledStore,
        path: std::path::PathBuf,
        receivers: BTreeMap<String, Receiver>,
        outbox: Mutex<Outbox>,
        cfg: NotifyConfig,
        metrics: Metrics,
    }

    impl FileDelivery {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            let path = dir.path().join("out.log");
            let receivers = [(
                "file".to_string(),
                Receiver::File {
                    path: path.clone(),
                    stdout: false,
                },
            )]
            .into();
            let cfg = test_config(crate::dispatch::Route {
                path: "root".into(),
                matchers: vec![],
                receivers: vec![],
                cont: false,
                routes: vec![],
                grouping: Default::default(),
            });
            Self {
                _dir: dir,
                store,
                path,
                receivers,
                outbox: Mutex::new(Outbox::default()),
                cfg,
                metrics: Metrics::new(),
            }
        }
        /// Commits `n` to the store's outbox (when `stored`), then queues it.
        fn queue(&self, n: &Notification, stored: bool) {
            if stored {
                let mut b = Batch::default();
                put(&mut b, n);
                self.store.commit(b).unwrap();
            }
            self.outbox.lock().unwrap().insert(n);
        }
        async fn pass(&self, last: &mut LastSent) -> Option<i64> {
            self.pass_until(last, &|| false).await
        }
        async fn pass_until(
            &self,
            last: &mut LastSent,
            stopping: &(dyn Fn() -> bool + Send + Sync),
        ) -> Option<i64> {
            let (o, r, st) = (&self.outbox, &self.receivers, &self.store);
            deliver_due(o, r, st, &self.cfg, &self.metrics, last, stopping).await
        }
        fn sent(&self) -> String {
            std::fs::read_to_string(&self.path).unwrap()
        }
    }

    #[tokio::test]
    async fn a_group_waits_for_its_interval_then_goes_out_together() {
        let d = FileDelivery::new();
        let now = crate::model::now().timestamp();
        for n in [note(1, "g", now), note(2, "g", now), note(3, "other", now)] {
            d.queue(&n, true);
        }
        // Group "g" went out 10 s ago: it waits until 60 s have passed; "other" goes now.
        let mut last: LastSent = [(("file".to_string(), "g".to_string()), now - 10)].into();
        let next = d.pass(&mut last).await;
        assert_eq!(d.sent().matches("=== ").count(), 1);
        assert!(next.is_some_and(|t| t >= now + 49), "{next:?}");
        assert_eq!(d.outbox.lock().unwrap().len(), 2);
        // Once the interval has passed, both of "g" go out in one pass.
        last.insert(("file".to_string(), "g".to_string()), now - 61);
        d.pass(&mut last).await;
        assert_eq!(d.sent().matches("=== ").count(), 3);
        assert!(d.outbox.lock().unwrap().is_empty());
        assert_eq!(delivered(&d.store, 10).unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_pass_asked_to_stop_ends_after_the_group_in_flight_and_keeps_the_rest() {
        let d = FileDelivery::new();
        let now = crate::model::now().timestamp();
        for (id, g) in [(1, "a"), (2, "b"), (3, "c")] {
            d.queue(&note(id, g, now), true);
        }
        // Asked before the first group: nothing goes out.
        let mut last = LastSent::new();
        d.pass_until(&mut last, &|| true).await;
        assert!(!std::path::Path::new(&d.path).exists() || d.sent().is_empty());
        assert_eq!(d.outbox.lock().unwrap().len(), 3);
        // The stop comes while the first group is in flight: that group is delivered and
        // recorded, the other two stay waiting, in memory and in the store.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let stopping = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1;
        d.pass_until(&mut last, &stopping).await;
        assert_eq!(d.sent().matches("=== ").count(), 1);
        assert_eq!(d.outbox.lock().unwrap().len(), 2);
        assert_eq!(delivered(&d.store, 10).unwrap().len(), 1);
        let stored = d.store.scan(Space::Outbox).unwrap().len();
        assert_eq!(stored, 2);
        // The next start's pass delivers the rest, each once.
        d.pass(&mut last).await;
        assert_eq!(d.sent().matches("=== ").count(), 3);
        assert_eq!(delivered(&d.store, 10).unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_pass_sends_the_texts_the_store_holds_and_drops_what_it_lost_or_cannot_read() {
        let d = FileDelivery::new();
        let now = crate::model::now().timestamp();
        let mut kept = note(1, "g", now);
        kept.subject = "户6302231092900002 工资性收入骤降".into();
        kept.body = "近月工资：2026-11 2,930 元".into();
        d.queue(&kept, true);
        // Its texts changed in the store after it was queued (a retry records its attempts
        // there): the pass sends what the store holds, not a copy made at queueing.
        kept.body = "近月工资：2026-12 200 元".into();
        let mut b = Batch::default();
        put(&mut b, &kept);
        d.store.commit(b).unwrap();
        // Queued, but never committed: nothing to send.
        d.queue(&note(2, "g", now), false);
        // Damaged in the store: dropped, and the group's others still go out.
        let mut b = Batch::default();
        b.put(Space::Outbox, 3u64.to_be_bytes().to_vec(), vec![0xff, 1, 2]);
        d.store.commit(b).unwrap();
        d.queue(&note(3, "g", now), false);
        d.queue(&note(4, "g", now), true);
        d.pass(&mut LastSent::new()).await;
        let sent = d.sent();
        assert_eq!(
            sent.matches("=== ").count(),
            2,
            "the two it could read: {sent}"
        );
        assert!(sent.contains("户6302231092900002 工资性收入骤降"), "{sent}");
        assert!(sent.contains("2026-12 200 元"), "{sent}");
        assert!(!sent.contains("2026-11"), "{sent}");
        assert!(sent.contains("s4"), "{sent}");
        assert!(d.outbox.lock().unwrap().is_empty());
        let left: Vec<Vec<u8>> = d
            .store
            .scan(Space::Outbox)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, [3u64.to_be_bytes().to_vec()], "the damaged one stays");
        assert_eq!(delivered(&d.store, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_receiver_with_its_own_templates_gets_them_and_the_others_share_the_built_in_texts() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let cfg = test_config(crate::dispatch::Route {
            path: "root".into(),
            matchers: vec![],
            receivers: vec!["mail".into(), "hook".into(), "own".into()],
            cont: true,
            routes: vec![],
            grouping: crate::dispatch::Grouping::default(),
        });
        let own: BTreeMap<String, (String, String)> = [(
            "own".to_string(),
            (
                "[{{ county_name }}] {{ status }}".to_string(),
                "{{ fingerprint }}".to_string(),
            ),
        )]
        .into();
        let t = Templates::with_receivers(Language::Zh, &own).unwrap();
        let mut b = Batch::default();
        let n =
            notifications_for(&Transition::Fired(alert()), &cfg, &t, &store, 1, &mut b).unwrap();
        let by: BTreeMap<&str, (&str, &str)> = n
            .iter()
            .map(|n| (n.receiver.as_str(), (n.subject.as_str(), n.body.as_str())))
            .collect();
        assert_eq!(by["own"], ("[同德县] firing", "00ff"));
        let built_in = t.render(&alert(), Status::Firing).unwrap();
        assert!(built_in.0.starts_with("【返贫风险预警"), "{}", built_in.0);
        for r in ["mail", "hook"] {
            assert_eq!(by[r], (built_in.0.as_str(), built_in.1.as_str()), "{r}");
        }
    }

    #[test]
    fn a_route_can_keep_resolved_notices_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let route = |path: &str, receivers: &[&str], send_resolved: Option<bool>, routes| {
            crate::dispatch::Route {
                path: path.into(),
                matchers: vec![],
                receivers: receivers.iter().map(|r| r.to_string()).collect(),
                cont: true,
                routes,
                grouping: crate::dispatch::Grouping {
                    send_resolved,
                    ..Default::default()
                },
            }
        };
        let cfg = test_config(route(
            "root",
            &[],
            None,
            vec![
                route("root/0", &["mail"], Some(false), vec![]),
                route("root/1", &["hook"], None, vec![]),
            ],
        ));
        let t = Templates::new(Language::Zh);
        let mut b = Batch::default();
        let fired =
            notifications_for(&Transition::Fired(alert()), &cfg, &t, &store, 1, &mut b).unwrap();
        assert_eq!(
            fired
                .iter()
                .map(|n| n.receiver.as_str())
                .collect::<Vec<_>>(),
            vec!["mail", "hook"]
        );
        let mut resolved_alert = alert();
        resolved_alert.status = Status::Resolved;
        resolved_alert.resolved_at = Some(2);
        let resolved = notifications_for(
            &Transition::Resolved(resolved_alert),
            &cfg,
            &t,
            &store,
            2,
            &mut b,
        )
        .unwrap();
        assert_eq!(
            resolved
                .iter()
                .map(|n| n.receiver.as_str())
                .collect::<Vec<_>>(),
            vec!["hook"]
        );
    }

    #[test]
    fn chinese_and_english_templates_render() {
        let (subject, body) = Templates::new(Language::Zh)
            .render(&alert(), Status::Firing)
            .unwrap();
        assert!(
            subject.starts_with("【返贫风险预警·严重】同德县甲村"),
            "{subject}"
        );
        assert!(body.contains("所属村：甲村（632522100201）"), "{body}");
        assert!(body.contains("预警编号：00ff"), "{body}");
        let (subject, body) = Templates::new(Language::En)
            .render(&alert(), Status::Resolved)
            .unwrap();
        assert!(subject.starts_with("[resolved]"), "{subject}");
        assert!(body.contains("Household: 632522100201001"), "{body}");
    }
}
