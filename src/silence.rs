//! Silences and inhibition: notifications that are not sent although their alert fires.
//!
//! A silence mutes alerts whose labels match all its matchers between its start and end;
//! an inhibition rule mutes a target alert while a firing source alert shares the `equal`
//! labels with it (a township-wide outage mutes the per-village ones). Alerts still fire and
//! stay visible; only their notifications are withheld. Silences are persisted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dispatch::Matcher;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    pub fn active(&self, now: i64) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn parsed(&self) -> Result<Vec<Matcher>, crate::dispatch::MatcherError> {
        self.matchers.iter().map(|m| m.parse()).collect()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.parsed()
            .is_ok_and(|ms| !ms.is_empty() && ms.iter().all(|m| m.matches(labels)))
    }

    /// The county codes (or prefixes) the silence is limited to, from `county=` or
    /// `county=~"6325.*"` matchers; `None` when it is not limited to a county.
    pub fn county_scope(&self) -> Option<String> {
        self.parsed().ok()?.iter().find_map(|m| match m {
            Matcher::Eq(k, v) if k == "county" => Some(v.clone()),
            Matcher::Re(k, _, s) if k == "county" => {
                let prefix = s.strip_suffix(".*")?;
                prefix
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| prefix.to_string())
            }
            _ => None,
        })
    }
}

/// An inhibition rule of the configuration.
#[derive(Debug, Clone)]
pub struct Inhibit {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

impl Inhibit {
    /// Whether `target` is muted by one of the `firing` alerts' labels.
    pub fn mutes<'a>(
        &self,
        target: &BTreeMap<String, String>,
        firing: impl Iterator<Item = &'a BTreeMap<String, String>>,
    ) -> bool {
        if !self.target.iter().all(|m| m.matches(target)) {
            return false;
        }
        firing.into_iter().any(|src| {
            src != target
                && self.source.iter().all(|m| m.matches(src))
                && self.equal.iter().all(|l| src.get(l) == target.get(l))
        })
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

    #[test]
    fn silences_match_in_their_time_and_know_their_county() {
        let s = Silence {
            id: "s1".into(),
            matchers: vec!["county=632522".into(), "rule=~\"water.*\"".into()],
            starts_at: 100,
            ends_at: 200,
            created_by: "t".into(),
            comment: "repairs under way".into(),
        };
        assert!(s.active(150) && !s.active(200));
        assert!(s.matches(&labels(&[
            ("county", "632522"),
            ("rule", "water_outage_long")
        ])));
        assert!(!s.matches(&labels(&[
            ("county", "632521"),
            ("rule", "water_outage_long")
        ])));
        assert_eq!(s.county_scope().as_deref(), Some("632522"));
    }

    #[test]
    fn a_township_outage_inhibits_the_village_ones() {
        let i = Inhibit {
            source: vec!["rule=water_outage_spread".parse().unwrap()],
            target: vec!["rule=water_outage_long".parse().unwrap()],
            equal: vec!["county".into()],
        };
        let src = labels(&[("rule", "water_outage_spread"), ("county", "632522")]);
        let other = labels(&[("rule", "water_outage_spread"), ("county", "632521")]);
        let target = labels(&[("rule", "water_outage_long"), ("county", "632522")]);
        assert!(i.mutes(&target, [&src].into_iter()));
        assert!(!i.mutes(&target, [&other].into_iter()));
    }
}
