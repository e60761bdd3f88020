//! The quarantine: records that could not be applied, with the feed, the reason and the raw
//! record (personal fields pseudonymised), kept until an operator fixes the mapping and
//! replays them. Also the waiting room for records of persons not yet on the roster.
//!
//! Invariant: a raw record is redacted before it is stored: ID numbers become person-key
//! tokens (`pk:…`, which mapping accepts as they are) and names are masked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Mapping, MappingTarget, SubjectField};
use crate::model::{Record, mask_name};
use crate::pseudonym::Pseudonymizer;
use crate::store::{Batch, Space, Store, StoreError, codec};

const ENTRY_VERSION: u8 = 1;
const WAITING_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `<feed>/<16 hex digits>`, stable for a record id.
    pub id: String,
    pub feed: String,
    pub record_id: Option<String>,
    pub reason: String,
    pub detail: String,
    /// The record as JSON, personal fields pseudonymised; `None` if it could not be decoded.
    pub raw: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub id: String,
    pub feed: String,
    pub record: Record,
    pub raw: Option<String>,
    pub since: i64,
}

/// The key of a rejected record: its feed and a hash of its id (or of its content).
pub fn entry_id(feed: &str, record_id: Option<&str>, fallback: &str) -> String {
    let tag = crate::state::record_tag(feed, record_id.unwrap_or(fallback));
    format!("{feed}/{tag:016x}")
}

fn lookup_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(v, |cur, seg| match cur {
        Value::Object(m) => m.get_mut(seg),
        _ => None,
    })
}

/// Replaces the text (or number) at `path` by `f` of it.
fn set_at(v: &mut Value, path: &str, f: &dyn Fn(&str) -> String) {
    if let Some(n) = lookup_mut(v, path) {
        let replaced = match n {
            Value::String(s) => Some(f(s)),
            Value::Number(x) => Some(f(&x.to_string())),
            _ => None,
        };
        if let Some(r) = replaced {
            *n = Value::String(r);
        }
    }
}

/// Replaces ID numbers by person-key tokens and masks names, as the mapping identifies them.
pub fn redact(raw: &Value, mapping: &Mapping, pseudo: &Pseudonymizer) -> Value {
    let mut v = raw.clone();
    let key = |s: &str| pseudo.person_key(s).token();
    let mask = |s: &str| mask_name(s);
    match &mapping.target {
        MappingTarget::Samples {
            subject: SubjectField::Person(f),
            ..
        }
        | MappingTarget::Events {
            subject: SubjectField::Person(f),
            ..
        } => set_at(&mut v, f, &key),
        MappingTarget::Roster {
            members,
            member_id,
            head_name,
            ..
        } => {
            set_at(&mut v, head_name, &mask);
            if let Some(Value::Array(items)) = lookup_mut(&mut v, members) {
                for item in items.iter_mut() {
                    if let Value::String(s) = item {
                        *item = Value::String(key(s));
                        continue;
                    }
                    set_at(item, member_id, &key);
                    // Other personal fields of a member that guardline never needs.
                    for f in ["name", "phone", "mobile", "姓名", "电话"] {
                        set_at(item, f, &mask);
                    }
                }
            }
        }
        _ => {}
    }
    v
}

pub fn put_entry(batch: &mut Batch, e: &Entry) {
    batch.put(
        Space::Quarantine,
        e.id.as_bytes().to_vec(),
        codec::encode(ENTRY_VERSION, e),
    );
}

pub fn put_waiting(batch: &mut Batch, w: &Waiting) {
    batch.put(
        Space::Waiting,
        w.id.as_bytes().to_vec(),
        codec::encode(WAITING_VERSION, w),
    );
}

pub fn entries(store: &dyn Store) -> Result<Vec<Entry>, StoreError> {
    store
        .scan(Space::Quarantine)?
        .into_iter()
        .map(|(k, v)| codec::decode(ENTRY_VERSION, Space::Quarantine, &k, &v))
        .collect()
}

pub fn waiting(store: &dyn Store) -> Result<Vec<Waiting>, StoreError> {
    store
        .scan(Space::Waiting)?
        .into_iter()
        .map(|(k, v)| codec::decode(WAITING_VERSION, Space::Waiting, &k, &v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TimeField, ValueField};
    use serde_json::json;

    #[test]
    fn redaction_hashes_ids_and_masks_names() {
        let p = Pseudonymizer::from_key(b"0123456789abcdef0123");
        let m = Mapping {
            record_id: "id".into(),
            target: MappingTarget::Roster {
                household: "hh".into(),
                village: "v".into(),
                village_name: None,
                category: "c".into(),
                head_name: "head".into(),
                members: "members".into(),
                member_id: "id_number".into(),
                income_per_capita: "inc".into(),
                income_unit: crate::config::AmountUnit::Yuan,
            },
        };
        let raw = json!({"id": "r1", "head": "张三丰", "members": [{"id_number": "632522198001010011", "name": "张三丰", "phone": "13800000000"}]});
        let r = redact(&raw, &m, &p);
        let text = r.to_string();
        assert!(
            !text.contains("632522198001010011")
                && !text.contains("三丰")
                && !text.contains("13800000000"),
            "{text}"
        );
        assert_eq!(
            r["members"][0]["id_number"],
            p.person_key("632522198001010011").token()
        );
        assert_eq!(r["head"], "张**");

        let m = Mapping {
            record_id: "id".into(),
            target: MappingTarget::Samples {
                subject: SubjectField::Person("p.id".into()),
                time: TimeField {
                    field: "m".into(),
                    format: "%Y-%m".into(),
                },
                values: vec![ValueField {
                    indicator: crate::model::Indicator::WageIncome,
                    field: "a".into(),
                    unit: crate::config::AmountUnit::Yuan,
                }],
            },
        };
        let r = redact(
            &json!({"p": {"id": "632522198001010011"}, "a": "x"}),
            &m,
            &p,
        );
        assert!(r["p"]["id"].as_str().unwrap().starts_with("pk:"));
    }
}
