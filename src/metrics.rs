//! Prometheus metrics on guardline's own registry.
//!
//! Invariant: no label identifies a household, a person or a village; labels are feeds,
//! counties (45 values in a province), rules, severities, states, receivers and reasons.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The reasons a poll fails (`PollError::reason`), for zero-initialised failure counters.
pub const POLL_FAILURE_REASONS: [&str; 14] = [
    "connect",
    "timeout",
    "rate_limited",
    "http_status",
    "body_too_large",
    "invalid_json",
    "invalid_csv",
    "invalid_encoding",
    "no_records",
    "cursor_stuck",
    "too_many_records",
    "body",
    "file",
    "store",
];

/// Outcomes of a notification delivery.
pub const NOTIFICATION_OUTCOMES: [&str; 4] = ["sent", "failed", "rejected", "expired"];

pub struct Metrics {
    pub registry: Registry,
    pub feed_polls: IntCounterVec,
    pub feed_poll_failures: IntCounterVec,
    pub feed_retries: IntCounterVec,
    pub feed_records: IntCounterVec,
    pub quarantine: IntGaugeVec,
    pub waiting: IntGauge,
    pub feed_records_rejected: IntCounterVec,
    pub feed_last_success: GaugeVec,
    pub feed_poll_duration: HistogramVec,
    pub alerts: IntGaugeVec,
    pub alert_transitions: IntCounterVec,
    pub notifications: IntCounterVec,
    pub outbox_depth: IntGauge,
    pub outbox_oldest_age: Gauge,
    pub households: IntGaugeVec,
    pub evaluation_duration: HistogramVec,
    pub store_size: IntGauge,
    pub store_writable: IntGauge,
    pub store_write_errors: IntCounterVec,
    pub base_writes: IntCounterVec,
    pub base_write_duration: Histogram,
    pub run_bytes: IntGauge,
    pub notifications_suppressed: IntCounterVec,
    pub escalations: IntCounterVec,
    pub dispositions: IntGaugeVec,
    pub precision: GaugeVec,
    pub reloads: IntCounterVec,
    pub reload_success: IntGauge,
    pub reload_timestamp: Gauge,
    pub build_info: IntGaugeVec,
    pub county_info: IntGaugeVec,
    pub households_at_risk: IntGaugeVec,
    pub households_alerted: IntGaugeVec,
    pub rule_dispositions: IntGaugeVec,
    pub feed_newest_record: GaugeVec,
    pub feed_cursor_lag: GaugeVec,
    pub feed_caught_up: IntGaugeVec,
    pub feed_poll_interval: GaugeVec,
    pub feed_consecutive_failures: IntGaugeVec,
    pub rule_checks: IntCounterVec,
    pub ready: IntGauge,
    /// Times that gauges measured from "now" are computed from, at each scrape.
    clock: Mutex<Clock>,
}

#[derive(Default)]
struct Clock {
    /// Unix time of the newest record applied per feed.
    newest_record: BTreeMap<String, i64>,
    /// Unix time the oldest notification in the outbox was created.
    outbox_oldest: Option<i64>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Invariant: every metric is registered once, with a unique name, on a fresh registry.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Invariant: names and labels below are valid Prometheus identifiers.
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    reg(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Self {
            feed_polls: counter(
                &r,
                "guardline_feed_polls_total",
                "Feed polls by outcome (success, failure).",
                &["feed", "outcome"],
            ),
            feed_poll_failures: counter(
                &r,
                "guardline_feed_poll_failures_total",
                "Failed feed polls by reason.",
                &["feed", "reason"],
            ),
            feed_retries: counter(
                &r,
                "guardline_feed_retries_total",
                "Requests retried within a poll, by the reason of the failure.",
                &["feed", "reason"],
            ),
            quarantine: gauge(
                &r,
                "guardline_quarantine_records",
                "Rejected records kept in quarantine, by feed and reason.",
                &["feed", "reason"],
            ),
            waiting: reg(
                &r,
                IntGauge::new(
                    "guardline_waiting_records",
                    "Records of persons not yet on the roster, waiting for the next roster poll.",
                )
                .expect("valid metric"),
            ),
            feed_records: counter(
                &r,
                "guardline_feed_records_total",
                "Feed records by outcome (accepted, duplicate, rejected, waiting).",
                &["feed", "outcome"],
            ),
            feed_records_rejected: counter(
                &r,
                "guardline_feed_records_rejected_total",
                "Rejected feed records by reason.",
                &["feed", "reason"],
            ),
            feed_last_success: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "guardline_feed_last_success_timestamp_seconds",
                        "Unix time of the last successful poll of a feed.",
                    ),
                    &["feed"],
                )
                .expect("valid metric"),
            ),
            feed_poll_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "guardline_feed_poll_duration_seconds",
                        "Duration of feed polls, fetch to commit.",
                    )
                    .buckets(vec![
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ]),
                    &["feed"],
                )
                .expect("valid metric"),
            ),
            alerts: gauge(
                &r,
                "guardline_alerts",
                "Alerts by county, rule, severity and state (pending, firing, resolved).",
                &["county", "rule", "severity", "state"],
            ),
            alert_transitions: counter(
                &r,
                "guardline_alert_transitions_total",
                "Alert transitions by rule and new state.",
                &["rule", "state"],
            ),
            notifications: counter(
                &r,
                "guardline_notifications_total",
                "Notification deliveries by receiver and outcome (sent, failed, rejected, expired).",
                &["receiver", "outcome"],
            ),
            outbox_depth: reg(
                &r,
                IntGauge::new(
                    "guardline_outbox_notifications",
                    "Notifications waiting in the outbox.",
                )
                .expect("valid metric"),
            ),
            outbox_oldest_age: reg(
                &r,
                Gauge::new(
                    "guardline_outbox_oldest_age_seconds",
                    "Age of the oldest notification waiting in the outbox.",
                )
                .expect("valid metric"),
            ),
            households: gauge(
                &r,
                "guardline_households",
                "Households watched (on the roster) by county and category.",
                &["county", "category"],
            ),
            households_at_risk: gauge(
                &r,
                "guardline_households_at_risk",
                "Households with a firing alert, by county and risk category (a household counts once per category).",
                &["county", "risk_category"],
            ),
            households_alerted: gauge(
                &r,
                "guardline_households_alerted",
                "Households with at least one firing alert, by county (each household once).",
                &["county"],
            ),
            county_info: gauge(
                &r,
                "guardline_county_info",
                "Names and prefecture of each county code; the value is always 1 (join on `county`).",
                &["county", "county_name", "prefecture", "prefecture_name"],
            ),
            evaluation_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "guardline_rule_evaluation_duration_seconds",
                        "Duration of a rule evaluation pass (after a poll or on a tick).",
                    )
                    .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                    &["trigger"],
                )
                .expect("valid metric"),
            ),
            store_size: reg(
                &r,
                IntGauge::new(
                    "guardline_store_size_bytes",
                    "Bytes the store occupies on disk, its files (the months' base) included.",
                )
                .expect("valid metric"),
            ),
            store_writable: reg(
                &r,
                IntGauge::new(
                    "guardline_store_writable",
                    "Whether the store accepts writes (1); 0 while it refuses them (disk full, read-only, I/O errors) and ingest is paused.",
                )
                .expect("valid metric"),
            ),
            store_write_errors: counter(
                &r,
                "guardline_store_write_errors_total",
                "Store operations refused, and attempts to reopen the store after one, by reason (no_space, read_only, io).",
                &["reason"],
            ),
            base_writes: counter(
                &r,
                "guardline_months_base_writes_total",
                "Bases of the households' months written to the store, by outcome (written, failed).",
                &["outcome"],
            ),
            base_write_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "guardline_months_base_write_duration_seconds",
                        "Time a base of the households' months took to write, on a thread of its own beside ingest.",
                    )
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
                )
                .expect("valid metric"),
            ),
            run_bytes: reg(
                &r,
                IntGauge::new(
                    "guardline_months_run_bytes",
                    "Bytes of months' runs written since the last base: a start from the store reads them after the base, and a new base is written once they pass daemon.base_rewrite_bytes and a quarter of the base.",
                )
                .expect("valid metric"),
            ),
            notifications_suppressed: counter(
                &r,
                "guardline_notifications_suppressed_total",
                "Notifications withheld, by reason (silenced, inhibited).",
                &["reason"],
            ),
            escalations: counter(
                &r,
                "guardline_escalations_total",
                "Warnings escalated for lack of a disposition within the time limit, by rule.",
                &["rule"],
            ),
            dispositions: gauge(
                &r,
                "guardline_dispositions",
                "Alerts with a recorded disposition, by county and disposition (enrolled, dismissed, eliminated).",
                &["county", "disposition"],
            ),
            rule_dispositions: gauge(
                &r,
                "guardline_rule_dispositions",
                "Alerts with a recorded disposition, by rule and disposition (enrolled, dismissed, eliminated).",
                &["rule", "disposition"],
            ),
            precision: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "guardline_rule_precision_ratio",
                        "Share of a rule's dispositions that enrolled the household (纳入监测).",
                    ),
                    &["rule"],
                )
                .expect("valid metric"),
            ),
            reloads: counter(
                &r,
                "guardline_config_reloads_total",
                "Reloads of the configuration and rules by outcome (success, failure).",
                &["outcome"],
            ),
            reload_success: reg(
                &r,
                IntGauge::new(
                    "guardline_config_last_reload_successful",
                    "Whether the last reload succeeded (1) or was refused (0).",
                )
                .expect("valid metric"),
            ),
            reload_timestamp: reg(
                &r,
                Gauge::new(
                    "guardline_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful reload (or of the start).",
                )
                .expect("valid metric"),
            ),
            build_info: gauge(
                &r,
                "guardline_build_info",
                "Build information; the value is always 1.",
                &["version"],
            ),
            feed_newest_record: float_gauge(
                &r,
                "guardline_feed_newest_record_timestamp_seconds",
                "Unix time of the newest record a feed has applied (its observation time).",
                &["feed"],
            ),
            feed_cursor_lag: float_gauge(
                &r,
                "guardline_feed_cursor_lag_seconds",
                "How far a feed's data lags behind now: seconds since the newest record it applied.",
                &["feed"],
            ),
            feed_poll_interval: float_gauge(
                &r,
                "guardline_feed_poll_interval_seconds",
                "Time between two slots of a feed's schedule (the next two), for staleness alerts.",
                &["feed"],
            ),
            feed_caught_up: gauge(
                &r,
                "guardline_feed_caught_up",
                "Whether the last poll of a feed reached the end of its data (1) or stopped at a page limit or a failure (0).",
                &["feed"],
            ),
            feed_consecutive_failures: gauge(
                &r,
                "guardline_feed_consecutive_failures",
                "Failed polls of a feed since its last successful one.",
                &["feed"],
            ),
            rule_checks: counter(
                &r,
                "guardline_rule_checks_total",
                "Household-rule (entity-rule) checks made by evaluation passes, by trigger (poll, tick).",
                &["trigger"],
            ),
            ready: reg(
                &r,
                IntGauge::new(
                    "guardline_ready",
                    "Whether the daemon is ready (store open, configuration loaded, not all feeds failing).",
                )
                .expect("valid metric"),
            ),
            clock: Mutex::new(Clock::default()),
            registry: r,
        };
        #[cfg(target_os = "linux")]
        {
            // The process collector (memory, CPU, open files, start time) under `process_`.
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Invariant: registered once on a fresh registry, and its names are unique.
            m.registry
                .register(Box::new(pc))
                .expect("process metric names are unique");
        }
        for c in crate::regions::counties() {
            m.county_info
                .with_label_values(&[
                    c.code.to_string().as_str(),
                    c.name,
                    c.prefecture_code.to_string().as_str(),
                    c.prefecture_name,
                ])
                .set(1);
        }
        for reason in ["silenced", "inhibited"] {
            m.notifications_suppressed.with_label_values(&[reason]);
        }
        for outcome in ["success", "failure"] {
            m.reloads.with_label_values(&[outcome]);
        }
        for outcome in ["written", "failed"] {
            m.base_writes.with_label_values(&[outcome]);
        }
        for f in crate::store::WriteFailure::ALL {
            m.store_write_errors.with_label_values(&[f.reason()]);
        }
        m.store_writable.set(1);
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.reload_success.set(1);
        m.reload_timestamp
            .set(crate::model::now().timestamp() as f64);
        m
    }

    /// Creates the series of the configured feeds, receivers and rules at zero, so that a
    /// failure shows as an increase from 0 and dashboards see every feed from the start.
    pub fn declare(&self, feeds: &[&str], receivers: &[&str], rules: &[&str]) {
        for f in feeds {
            for outcome in ["success", "failure"] {
                self.feed_polls.with_label_values(&[f, outcome]);
            }
            for reason in POLL_FAILURE_REASONS {
                self.feed_poll_failures.with_label_values(&[f, reason]);
            }
            for outcome in ["accepted", "duplicate", "rejected", "waiting"] {
                self.feed_records.with_label_values(&[f, outcome]);
            }
            self.feed_caught_up.with_label_values(&[f]);
            self.feed_consecutive_failures.with_label_values(&[f]);
            // Until the first success, the start counts: a feed that never succeeds turns
            // stale like one that stopped succeeding.
            let last = self.feed_last_success.with_label_values(&[f]);
            if last.get() == 0.0 {
                last.set(crate::model::now().timestamp() as f64);
            }
        }
        for r in receivers {
            for outcome in NOTIFICATION_OUTCOMES {
                self.notifications.with_label_values(&[r, outcome]);
            }
        }
        for rule in rules {
            self.escalations.with_label_values(&[rule]);
            for state in ["firing", "resolved"] {
                self.alert_transitions.with_label_values(&[rule, state]);
            }
            for d in crate::alerts::Disposition::ALL {
                self.rule_dispositions.with_label_values(&[rule, d.name()]);
            }
        }
        for trigger in ["poll", "tick"] {
            self.rule_checks.with_label_values(&[trigger]);
        }
    }

    /// Notes the observation time of the newest record a feed applied (kept if older).
    pub fn saw_record(&self, feed: &str, at: i64) {
        if let Ok(mut c) = self.clock.lock() {
            let e = c.newest_record.entry(feed.to_string()).or_insert(at);
            *e = (*e).max(at);
            self.feed_newest_record
                .with_label_values(&[feed])
                .set(*e as f64);
        }
    }

    /// The observation time of the newest record a feed applied, if known.
    pub fn newest_record(&self, feed: &str) -> Option<i64> {
        self.clock
            .lock()
            .ok()
            .and_then(|c| c.newest_record.get(feed).copied())
    }

    /// Notes the outbox's depth and the creation time of its oldest notification.
    pub fn set_outbox(&self, depth: usize, oldest_created: Option<i64>) {
        self.outbox_depth.set(depth as i64);
        if let Ok(mut c) = self.clock.lock() {
            c.outbox_oldest = oldest_created;
        }
    }

    /// The text exposition format; ages are computed from the current time.
    pub fn render(&self) -> String {
        let now = crate::model::now().timestamp();
        if let Ok(c) = self.clock.lock() {
            for (feed, at) in &c.newest_record {
                self.feed_cursor_lag
                    .with_label_values(&[feed])
                    .set((now - at).max(0) as f64);
            }
            self.outbox_oldest_age
                .set(c.outbox_oldest.map_or(0.0, |t| (now - t).max(0) as f64));
        }
        let mut buf = Vec::new();
        // Invariant: the text encoder only fails on writer errors, and a Vec never fails.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec");
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl crate::store::WriteObserver for Metrics {
    fn write_failed(&self, failure: crate::store::WriteFailure) {
        self.store_write_errors
            .with_label_values(&[failure.reason()])
            .inc();
    }

    fn writable_changed(&self, writable: bool) {
        self.store_writable.set(i64::from(writable));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_build_info() {
        let m = Metrics::new();
        m.feed_polls.with_label_values(&["roster", "success"]).inc();
        let text = m.render();
        assert!(text.contains("guardline_build_info{version="), "{text}");
        assert!(text.contains("guardline_feed_polls_total{feed=\"roster\",outcome=\"success\"} 1"));
    }
}
