//! Mapping a decoded record (its [`Json`], borrowed from the record's text) to an
//! observation, as the feed's `map` says.
//!
//! Invariant: ID numbers are pseudonymised here and names masked here; neither the raw
//! values nor any other field value appears in a [`MapError`], so errors can be logged.

use std::borrow::Cow;

use chrono::format::{Parsed, StrftimeItems};
use chrono::{DateTime, FixedOffset, TimeZone};

use super::json::Json;
use crate::config::{AmountUnit, EventSource, Mapping, MappingTarget, SubjectField, TimeField};
use crate::model::{
    Fen, HouseholdCategory, Month, Observation, Record, RosterEntry, Subject, china_offset,
    mask_name,
};
use crate::pseudonym::Pseudonymizer;

/// Why a record could not be mapped. `reason` is a short stable slug for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {detail}")]
pub struct MapError {
    pub reason: &'static str,
    pub field: String,
    pub detail: String,
    /// The record's id, when it could be read.
    pub record: Option<String>,
}

fn err(reason: &'static str, field: &str, detail: impl Into<String>) -> MapError {
    MapError {
        reason,
        field: field.to_string(),
        detail: detail.into(),
        record: None,
    }
}

fn present<'a, 'b>(rec: &'a Json<'b>, field: &str) -> Result<&'a Json<'b>, MapError> {
    match rec.lookup(field) {
        None | Some(Json::Null) => Err(err("missing_field", field, "is missing")),
        Some(v) => Ok(v),
    }
}

/// A field as text: strings trimmed and borrowed from the record, numbers printed.
fn text<'a>(rec: &'a Json<'_>, field: &str) -> Result<Cow<'a, str>, MapError> {
    match present(rec, field)? {
        Json::String(s) if !s.trim().is_empty() => Ok(Cow::Borrowed(s.trim())),
        Json::String(_) => Err(err("missing_field", field, "is empty")),
        Json::Number(n) => Ok(Cow::Owned(n.to_string())),
        other => Err(err(
            "wrong_type",
            field,
            format!("is a {} instead of text", other.type_name()),
        )),
    }
}

/// An amount in yuan or fen, as a number or a numeric string; never negative.
pub fn amount(rec: &Json<'_>, field: &str, unit: AmountUnit) -> Result<Fen, MapError> {
    let v = present(rec, field)?;
    let x = match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().replace(',', "").parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
    .ok_or_else(|| {
        err(
            "not_a_number",
            field,
            format!("is a {} that is not a number", v.type_name()),
        )
    })?;
    if x < 0.0 {
        return Err(err("negative_amount", field, "is negative"));
    }
    let fen = match unit {
        AmountUnit::Yuan => (x * 100.0).round(),
        AmountUnit::Fen => x.round(),
    };
    if fen > 1e13 {
        return Err(err("out_of_range", field, "is implausibly large"));
    }
    Ok(fen as Fen)
}

/// Parses a time with a chrono format, `rfc3339` or `epoch`; local times are China Standard Time.
pub fn time(rec: &Json<'_>, field: &str, format: &str) -> Result<DateTime<FixedOffset>, MapError> {
    let bad = || {
        err(
            "bad_time",
            field,
            format!("does not match the format {format:?}"),
        )
    };
    let tz = china_offset();
    if format == "epoch" {
        let secs = match present(rec, field)? {
            Json::Number(n) => n.as_i64(),
            Json::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        }
        .ok_or_else(bad)?;
        return tz.timestamp_opt(secs, 0).single().ok_or_else(bad);
    }
    let s = text(rec, field)?;
    if format == "rfc3339" {
        return DateTime::parse_from_rfc3339(&s)
            .map(|d| d.with_timezone(&tz))
            .map_err(|_| bad());
    }
    // One parse, then the most the fields give: a date and time, a date (midnight), or a
    // month (its first day, for formats such as `%Y-%m`).
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, &s, StrftimeItems::new(format)).map_err(|_| bad())?;
    let dt = match parsed.to_naive_datetime_with_offset(0) {
        Ok(dt) => dt,
        Err(_) => {
            let date = parsed.to_naive_date().or_else(|_| {
                parsed.set_day(1)?;
                parsed.to_naive_date()
            });
            date.ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .ok_or_else(bad)?
        }
    };
    tz.from_local_datetime(&dt).single().ok_or_else(bad)
}

fn month(rec: &Json<'_>, tf: &TimeField) -> Result<Month, MapError> {
    // Most monthly feeds write `2026-03`: read it without chrono's format machinery, which
    // took a few percent of mapping a wage record. Anything else takes the general path.
    if tf.format == "%Y-%m"
        && let Some(Json::String(s)) = rec.lookup(&tf.field)
        && let Some(m) = plain_year_month(s.trim())
    {
        return Ok(m);
    }
    Ok(Month::of(time(rec, &tf.field, &tf.format)?))
}

/// The month of `YYYY-MM` exactly (a year [`Month::new`] accepts, a month 01 to 12).
fn plain_year_month(s: &str) -> Option<Month> {
    let b = s.as_bytes();
    if b.len() != 7 || b[4] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(digits(0..4)?).ok()?;
    Month::new(year, digits(5..7)?)
}

fn subject_of(
    s: &SubjectField,
    rec: &Json<'_>,
    pseudo: &Pseudonymizer,
) -> Result<Subject, MapError> {
    Ok(match s {
        SubjectField::Person(f) => Subject::Person(pseudo.person_key(&text(rec, f)?)),
        SubjectField::Household(f) => Subject::Household(
            text(rec, f)?
                .parse()
                .map_err(|e: crate::model::IdError| err("invalid_id", f, e.to_string()))?,
        ),
        SubjectField::Village(f) => Subject::Village(
            text(rec, f)?
                .parse()
                .map_err(|_| err("invalid_code", f, "is not a 12-digit village code"))?,
        ),
    })
}

/// Maps one record. `rec` is one element of the feed's record list.
pub fn map_record(m: &Mapping, rec: &Json<'_>, pseudo: &Pseudonymizer) -> Result<Record, MapError> {
    if !matches!(rec, Json::Object(_)) {
        return Err(err(
            "wrong_type",
            "",
            format!("record is a {} instead of an object", rec.type_name()),
        ));
    }
    let id = text(rec, &m.record_id)?.into_owned();
    match map_observation(m, rec, pseudo) {
        Ok(observation) => Ok(Record { id, observation }),
        Err(e) => Err(MapError {
            record: Some(id),
            ..e
        }),
    }
}

fn map_observation(
    m: &Mapping,
    rec: &Json<'_>,
    pseudo: &Pseudonymizer,
) -> Result<Observation, MapError> {
    let observation = match &m.target {
        MappingTarget::Roster {
            household,
            village,
            village_name,
            category,
            head_name,
            members,
            member_id,
            income_per_capita,
            income_unit,
        } => {
            let hh = text(rec, household)?
                .parse()
                .map_err(|e: crate::model::IdError| err("invalid_id", household, e.to_string()))?;
            let village_code = text(rec, village)?
                .parse()
                .map_err(|_| err("invalid_code", village, "is not a 12-digit village code"))?;
            let category = text(rec, category)?
                .parse::<HouseholdCategory>()
                .map_err(|e| err("invalid_category", category, e))?;
            let list = match present(rec, members)? {
                Json::Array(a) => a,
                other => {
                    return Err(err(
                        "wrong_type",
                        members,
                        format!("is a {} instead of a list", other.type_name()),
                    ));
                }
            };
            let mut keys = Vec::with_capacity(list.len());
            for member in list {
                let raw = match member {
                    Json::Object(_) => text(member, member_id).map_err(|e| {
                        err(e.reason, &format!("{members}[].{member_id}"), e.detail)
                    })?,
                    Json::String(s) => Cow::Borrowed(s.as_ref()),
                    other => {
                        return Err(err(
                            "wrong_type",
                            members,
                            format!("has a {} member", other.type_name()),
                        ));
                    }
                };
                keys.push(pseudo.person_key(&raw));
            }
            if keys.is_empty() {
                return Err(err("missing_field", members, "has no members"));
            }
            Observation::Roster(RosterEntry {
                household: hh,
                village: village_code,
                village_name: village_name
                    .as_deref()
                    .and_then(|f| text(rec, f).ok())
                    .map(Cow::into_owned)
                    .unwrap_or_default(),
                category,
                head_masked: mask_name(&text(rec, head_name)?),
                members: keys,
                income_per_capita: amount(rec, income_per_capita, *income_unit)?,
            })
        }
        MappingTarget::Samples {
            subject,
            time: tf,
            values,
        } => {
            let subject = subject_of(subject, rec, pseudo)?;
            let month = month(rec, tf)?;
            let values = values
                .iter()
                .map(|v| amount(rec, &v.field, v.unit).map(|a| (v.indicator, a)))
                .collect::<Result<Vec<_>, _>>()?;
            Observation::Sample {
                subject,
                month,
                values,
            }
        }
        MappingTarget::Events {
            subject,
            time: tf,
            event,
            amount: amount_field,
        } => {
            let subject = subject_of(subject, rec, pseudo)?;
            let kind = match event {
                EventSource::Fixed(k) => *k,
                EventSource::Field { field, values } => {
                    let v = text(rec, field)?;
                    *values.get(v.as_ref()).ok_or_else(|| {
                        err(
                            "unknown_event_value",
                            field,
                            "has a value missing from map.event_values",
                        )
                    })?
                }
            };
            let amount = match amount_field {
                Some((f, unit)) => Some(amount(rec, f, *unit)?),
                None => None,
            };
            Observation::Event {
                subject,
                kind,
                time: time(rec, &tf.field, &tf.format)?,
                amount,
            }
        }
        MappingTarget::Intervals {
            kind,
            village,
            interval_id,
            start,
            end,
            time_format,
        } => {
            let village_code = text(rec, village)?
                .parse()
                .map_err(|_| err("invalid_code", village, "is not a 12-digit village code"))?;
            let end = match rec.lookup(end) {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) if s.trim().is_empty() => None,
                Some(_) => Some(time(rec, end, time_format)?),
            };
            Observation::Interval {
                village: village_code,
                id: text(rec, interval_id)?.into_owned(),
                kind: *kind,
                start: time(rec, start, time_format)?,
                end,
            }
        }
    };
    Ok(observation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValueField;
    use crate::model::Indicator;
    use serde_json::json;

    fn wages() -> Mapping {
        Mapping {
            record_id: "record_id".into(),
            target: MappingTarget::Samples {
                subject: SubjectField::Person("id_number".into()),
                time: TimeField {
                    field: "month".into(),
                    format: "%Y-%m".into(),
                },
                values: vec![ValueField {
                    indicator: Indicator::WageIncome,
                    field: "amount".into(),
                    unit: AmountUnit::Yuan,
                }],
            },
        }
    }

    fn p() -> Pseudonymizer {
        Pseudonymizer::from_key(b"test key of sixteen+ bytes")
    }

    /// Maps a record written as a `serde_json::Value`, through its text as decoding keeps it.
    fn map(m: &Mapping, rec: &serde_json::Value) -> Result<Record, MapError> {
        let text = rec.to_string();
        map_record(m, &Json::parse(&text).unwrap(), &p())
    }

    #[test]
    fn maps_a_wage_record() {
        let rec = json!({"record_id": "RS-1", "id_number": "632522199001011234", "month": "2026-09", "amount": "3,010.50"});
        let r = map(&wages(), &rec).unwrap();
        assert_eq!(r.id, "RS-1");
        match r.observation {
            Observation::Sample {
                subject,
                month,
                values,
            } => {
                assert_eq!(
                    subject,
                    Subject::Person(p().person_key("632522199001011234"))
                );
                assert_eq!(month.to_string(), "2026-09");
                assert_eq!(values, vec![(Indicator::WageIncome, 301_050)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_fields_are_rejected_without_their_values() {
        let m = wages();
        let cases = [
            (
                json!({"record_id": "1", "id_number": "632522199001011234", "month": "2026-09"}),
                "missing_field",
            ),
            (
                json!({"record_id": "1", "id_number": "632522199001011234", "month": "2026-09", "amount": "abc"}),
                "not_a_number",
            ),
            (
                json!({"record_id": "1", "id_number": "632522199001011234", "month": "2026-09", "amount": -5}),
                "negative_amount",
            ),
            (
                json!({"record_id": "1", "id_number": "632522199001011234", "month": "Sept", "amount": 5}),
                "bad_time",
            ),
            (json!([1, 2]), "wrong_type"),
        ];
        for (rec, reason) in cases {
            let e = map(&m, &rec).unwrap_err();
            assert_eq!(e.reason, reason, "{rec}");
            assert!(!e.to_string().contains("632522199001011234"));
        }
    }

    #[test]
    fn time_formats() {
        let r =
            json!({"a": "20260305", "b": "2026-03-05T23:30:00Z", "c": 1772726400, "d": "202603"})
                .to_string();
        let r = Json::parse(&r).unwrap();
        assert_eq!(
            time(&r, "a", "%Y%m%d").unwrap().to_rfc3339(),
            "2026-03-05T00:00:00+08:00"
        );
        assert_eq!(
            time(&r, "b", "rfc3339").unwrap().to_rfc3339(),
            "2026-03-06T07:30:00+08:00"
        );
        assert_eq!(
            time(&r, "c", "epoch").unwrap().to_rfc3339(),
            "2026-03-06T00:00:00+08:00"
        );
        assert_eq!(
            Month::of(time(&r, "d", "%Y%m").unwrap()).to_string(),
            "2026-03"
        );
        let t = |value: &str, format: &str| {
            let text = json!({ "t": value }).to_string();
            time(&Json::parse(&text).unwrap(), "t", format).map(|d| d.to_rfc3339())
        };
        assert_eq!(
            t("2026-03-05 23:30:15", "%Y-%m-%d %H:%M:%S").unwrap(),
            "2026-03-05T23:30:15+08:00"
        );
        assert_eq!(t("2026-03", "%Y-%m").unwrap(), "2026-03-01T00:00:00+08:00");
        assert_eq!(
            t("2026-03-01", "%Y-%m-%d").unwrap(),
            "2026-03-01T00:00:00+08:00"
        );
        // Not a time: each is refused, none panics.
        for (value, format) in [
            ("2026-13", "%Y-%m"),
            ("2026-02-30", "%Y-%m-%d"),
            ("2026-03", "%Y-%m-%d"),
            ("2026-03-05", "%Y-%m"),
            ("20260305x", "%Y%m%d"),
            ("23:30", "%H:%M"),
        ] {
            let e = t(value, format).unwrap_err();
            assert_eq!(e.reason, "bad_time", "{value:?} as {format:?}");
        }
    }

    proptest::proptest! {
        /// `YYYY-MM` read directly gives the month chrono's parse of `%Y-%m` gives, and
        /// nothing where that parse fails or clamps the year.
        #[test]
        fn a_plain_year_month_is_read_as_chrono_reads_it(
            s in "[0-9]{4}-[0-9]{2}|[0-9 -]{0,8}|1[89][0-9]{2}-1[0-3]"
        ) {
            let rec = Json::Object(vec![(Cow::Borrowed("m"), Json::String(Cow::Borrowed(&s)))]);
            let general = time(&rec, "m", "%Y-%m").ok().map(Month::of);
            let strict = s.len() == 7
                && s.bytes().enumerate().all(|(i, c)| if i == 4 { c == b'-' } else { c.is_ascii_digit() });
            let in_range = strict
                && (1900..=9999).contains(&s[..4].parse::<i32>().unwrap())
                && (1..=12).contains(&s[5..].parse::<u32>().unwrap());
            match plain_year_month(&s) {
                Some(m) => proptest::prop_assert_eq!(Some(m), general),
                None => proptest::prop_assert!(!in_range, "{:?} left to chrono", s),
            }
            proptest::prop_assert_eq!(plain_year_month(&s).is_some(), in_range);
        }
    }
}
