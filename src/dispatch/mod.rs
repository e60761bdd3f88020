//! Dispatch: which receivers an alert goes to, by a routing tree of label matchers.
//!
//! Like Alertmanager's: an alert enters at the root route; the children of a route are tried
//! in order and the first that matches takes the alert (and routes it further down), unless
//! it sets `continue`, in which case the next siblings are tried too; a route none of whose
//! children match keeps the alert itself. The receivers of every route that keeps the alert
//! get it.
//!
//! Invariant: dispatch reads alert labels only; it never reads rules or state.

mod matcher;

use std::collections::BTreeMap;

pub use matcher::{Matcher, MatcherError};

/// A route of the tree, validated.
#[derive(Debug, Clone)]
pub struct Route {
    /// A readable path such as `root/2/0`, used in group keys and `routes test`.
    pub path: String,
    pub matchers: Vec<Matcher>,
    pub receivers: Vec<String>,
    pub cont: bool,
    pub routes: Vec<Route>,
    pub grouping: Grouping,
}

/// How a route batches notifications (inherited by child routes that do not set it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grouping {
    /// Labels whose values make a group; `None`: every alert is its own group.
    pub by: Option<Vec<String>>,
    /// How long a new group's first notification waits for others of the group.
    pub wait: std::time::Duration,
    /// The least time between two notifications of a group.
    pub interval: std::time::Duration,
    /// Reminders of firing warnings without a disposition; `None`: `[notify] repeat_interval`.
    pub repeat_interval: Option<std::time::Duration>,
    /// Whether resolved notices go out; `None`: `[notify] send_resolved`.
    pub send_resolved: Option<bool>,
}

impl Route {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The routes that keep an alert with these labels (the root route matches everything).
    pub fn resolve<'a>(&'a self, labels: &BTreeMap<String, String>) -> Vec<&'a Route> {
        let mut out = Vec::new();
        self.walk(labels, &mut out);
        out
    }

    fn walk<'a>(&'a self, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) {
        let mut matched = false;
        for child in &self.routes {
            if child.matches(labels) {
                matched = true;
                child.walk(labels, out);
                if !child.cont {
                    break;
                }
            }
        }
        if !matched {
            out.push(self);
        }
    }

    /// The group an alert falls in at this route: the route and the values of its
    /// `group_by` labels, or the alert alone.
    pub fn group_key(&self, labels: &BTreeMap<String, String>, fingerprint: &str) -> String {
        match &self.grouping.by {
            None => format!("{}:{fingerprint}", self.path),
            Some(by) => {
                let parts: Vec<String> = by
                    .iter()
                    .map(|l| format!("{l}={}", labels.get(l).map(String::as_str).unwrap_or("")))
                    .collect();
                format!("{}:{{{}}}", self.path, parts.join(","))
            }
        }
    }

    /// The receivers an alert goes to, each once, in route order.
    pub fn receivers_for(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.resolve(labels) {
            for name in &r.receivers {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn route(
        path: &str,
        matchers: &[&str],
        receivers: &[&str],
        cont: bool,
        routes: Vec<Route>,
    ) -> Route {
        Route {
            path: path.into(),
            matchers: matchers.iter().map(|m| m.parse().unwrap()).collect(),
            receivers: receivers.iter().map(|r| r.to_string()).collect(),
            cont,
            routes,
            grouping: Grouping::default(),
        }
    }

    #[test]
    fn first_match_wins_unless_continue() {
        let tree = route(
            "root",
            &[],
            &["archive"],
            false,
            vec![
                route(
                    "root/0",
                    &["county=~\"6325.*\""],
                    &["hainan"],
                    true,
                    vec![route(
                        "root/0/0",
                        &["severity=critical"],
                        &["hainan-duty"],
                        false,
                        vec![],
                    )],
                ),
                route(
                    "root/1",
                    &["risk_category=因安全饮水"],
                    &["water"],
                    false,
                    vec![],
                ),
                route("root/2", &["severity!=info"], &["province"], false, vec![]),
            ],
        );
        let r = |l: &[(&str, &str)]| tree.receivers_for(&labels(l));
        assert_eq!(
            r(&[("county", "632522"), ("severity", "critical")]),
            vec!["hainan-duty", "province"]
        );
        assert_eq!(
            r(&[
                ("county", "632522"),
                ("severity", "warning"),
                ("risk_category", "因安全饮水")
            ]),
            vec!["hainan", "water"]
        );
        assert_eq!(
            r(&[("county", "630102"), ("severity", "info")]),
            vec!["archive"]
        );
        assert_eq!(
            r(&[("county", "630102"), ("severity", "warning")]),
            vec!["province"]
        );
    }
}
