//! Prometheus metrics on guardline's own registry.
//!
//! Invariant: no label identifies a household, a person or a village; labels are feeds,
//! counties (45 values in a province), rules, severities, states, receivers and reasons.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

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
    pub notifications_suppressed: IntCounterVec,
    pub escalations: IntCounterVec,
    pub dispositions: IntGaugeVec,
    pub precision: GaugeVec,
    pub reloads: IntCounterVec,
    pub reload_success: IntGauge,
    pub reload_timestamp: Gauge,
    pub build_info: IntGaugeVec,
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
                "Notification deliveries by receiver and outcome (sent, failed, expired).",
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
                "Households on the roster by county and category.",
                &["county", "category"],
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
                    "Bytes the store occupies on disk.",
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
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.reload_success.set(1);
        m.reload_timestamp
            .set(crate::model::now().timestamp() as f64);
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Invariant: the text encoder only fails on writer errors, and a Vec never fails.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec");
        String::from_utf8_lossy(&buf).into_owned()
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
