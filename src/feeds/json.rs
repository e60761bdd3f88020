//! A page's JSON, parsed with its strings borrowed from the page's text.
//!
//! Mapping reads a handful of fields of each record and drops the rest. A
//! `serde_json::Value` would allocate every key and every string of the record, and a map
//! node for each object, only to free them all after mapping. [`Json`] borrows each string
//! that has no escapes from the text, and keeps an object's members in one vector: a wage
//! record costs one allocation instead of about twenty. The quarantine, which keeps the
//! few records that are rejected or wait, turns them into `serde_json::Value`s
//! ([`Serialize`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

/// A JSON value whose strings borrow from the text it was parsed from where they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// The members in the text's order. A key given twice counts by its last value, as
    /// `serde_json::Value` does.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one JSON value; numbers are read as `serde_json` reads them.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The member `key` of an object: its last value if the text repeats it.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Looks up a dotted path (`a.b.c`; a list's elements by number); an empty path is the
    /// value itself.
    pub fn lookup(&self, path: &str) -> Option<&Json<'a>> {
        if path.is_empty() {
            return Some(self);
        }
        path.split('.').try_fold(self, |cur, seg| match cur {
            Json::Object(_) => cur.get(seg),
            Json::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Takes the list at a dotted path out of the value, leaving null in its place: a page's
    /// records out of its document. `None` if the path holds no list.
    pub fn take_list(&mut self, path: &str) -> Option<Vec<Json<'a>>> {
        let mut cur = self;
        if !path.is_empty() {
            for seg in path.split('.') {
                cur = match cur {
                    Json::Object(members) => members
                        .iter_mut()
                        .rev()
                        .find(|(k, _)| k == seg)
                        .map(|(_, v)| v)?,
                    Json::Array(items) => items.get_mut(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
        }
        match std::mem::replace(cur, Json::Null) {
            Json::Array(items) => Some(items),
            other => {
                *cur = other;
                None
            }
        }
    }

    /// What kind of value this is, in the words of the mapping's error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "list",
            Json::Object(_) => "object",
        }
    }
}

/// As JSON; an object's members in their order, a repeated key repeated (a
/// `serde_json::Value` made from it keeps the last, as when parsing the text).
impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(text) => s.serialize_str(text),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // As `serde_json::Value`: a number that is not finite is null.
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A wage record has six members; eight avoids growing for most records.
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(k)) = map.next_key()? {
            members.push((k, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// An object's key, borrowed from the text unless it has escapes (`Cow`'s own
/// `Deserialize` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(JsonVisitor)? {
            Json::String(k) => Ok(Key(k)),
            other => Err(serde::de::Error::custom(format!(
                "an object's key is a {} instead of text",
                other.type_name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The same value as `serde_json::Value`, member for member.
    fn same(j: &Json, v: &Value) -> bool {
        match (j, v) {
            (Json::Null, Value::Null) => true,
            (Json::Bool(a), Value::Bool(b)) => a == b,
            (Json::Number(a), Value::Number(b)) => a == b,
            (Json::String(a), Value::String(b)) => a == b,
            (Json::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
            }
            (Json::Object(_), Value::Object(b)) => {
                // Every key of the map, with the value a lookup finds (the last one given).
                let keys: std::collections::BTreeSet<&str> = match j {
                    Json::Object(m) => m.iter().map(|(k, _)| k.as_ref()).collect(),
                    _ => unreachable!(),
                };
                keys.len() == b.len()
                    && b.iter()
                        .all(|(k, bv)| j.get(k).is_some_and(|jv| same(jv, bv)))
            }
            _ => false,
        }
    }

    #[test]
    fn parses_as_serde_json_does() {
        let texts = [
            r#"{"record_id": "RS-1", "id_number": "632522199001011234", "month": "2026-09", "amount": "3,010.50"}"#,
            r#"{"a": 1, "b": -2, "c": 3.5, "d": 1e300, "e": 18446744073709551616, "f": null, "g": true}"#,
            r#"{"k": "first", "k": "last", "nested": {"list": [1, {"x": "y"}, []]}}"#,
            r#"{"esc\"aped": "line\nbreak \u00e9 \ud83d\ude00", "户编号": "632522100201001"}"#,
            r#"[1, "two", [3], {"four": 4}]"#,
            r#""just a string""#,
            "12345678901234567890",
        ];
        for text in texts {
            let v: Value = serde_json::from_str(text).unwrap();
            let j = Json::parse(text).unwrap();
            assert!(same(&j, &v), "{text}: {j:?} against {v}");
            assert_eq!(serde_json::to_value(&j).unwrap(), v, "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_borrow_the_text() {
        let text = r#"{"plain": "abc", "esc\u0061ped": "a\"b"}"#;
        let j = Json::parse(text).unwrap();
        let Json::Object(members) = &j else {
            panic!("{j:?}")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("plain")));
        assert!(matches!(members[0].1, Json::String(Cow::Borrowed("abc"))));
        assert!(matches!(&members[1].0, Cow::Owned(k) if k == "escaped"));
        assert!(matches!(&members[1].1, Json::String(Cow::Owned(s)) if s == "a\"b"));
    }

    #[test]
    fn lookup_follows_objects_and_list_indexes() {
        let j = Json::parse(r#"{"a": {"b": [{"c": 1}, {"c": 2}]}, "a.b": "dotted"}"#).unwrap();
        let n = |n: u64| Json::Number(n.into());
        assert_eq!(j.lookup("a.b.1.c"), Some(&n(2)));
        assert_eq!(j.lookup("a.b.0.c"), Some(&n(1)));
        assert_eq!(j.lookup(""), Some(&j));
        for missing in ["a.b.2.c", "a.b.x", "a.c", "a.b.0.c.d", "x"] {
            assert_eq!(j.lookup(missing), None, "{missing}");
        }
    }

    #[test]
    fn take_list_takes_only_a_list() {
        let text = r#"{"data": {"items": [1, 2], "n": 3}, "pages": [[4], 5]}"#;
        let mut j = Json::parse(text).unwrap();
        let n = |n: u64| Json::Number(n.into());
        assert_eq!(j.take_list("data.n"), None);
        assert_eq!(j.take_list("data.missing"), None);
        assert_eq!(j.take_list("data.items.0"), None);
        assert_eq!(j.take_list("pages.0"), Some(vec![n(4)]));
        assert_eq!(j.take_list("data.items"), Some(vec![n(1), n(2)]));
        // What was taken is null; the rest is untouched.
        assert_eq!(j.lookup("data.items"), Some(&Json::Null));
        assert_eq!(j.lookup("data.n"), Some(&n(3)));
        assert_eq!(j.lookup("pages.1"), Some(&n(5)));
        let mut list = Json::parse("[1]").unwrap();
        assert_eq!(list.take_list(""), Some(vec![n(1)]));
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in [
            "",
            "{",
            r#"{"a": 1,}"#,
            "[1 2]",
            r#"{"a": "\x"}"#,
            "1e400",
            "nul",
            "{} {}",
            r#""\ud800""#,
        ] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            assert!(Json::parse(text).is_err(), "{text}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            Json::parse(&deep).is_err(),
            "nesting is limited as in serde_json"
        );
    }
}
