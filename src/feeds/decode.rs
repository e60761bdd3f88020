//! Decoding a page or an export file: text encoding, then JSON, NDJSON or CSV into records.
//!
//! A document that cannot be read at all (wrong encoding, invalid JSON document) is a poll
//! error; a single bad line of NDJSON or CSV is a rejected record, and the rest is kept.
//!
//! Records are [`Json`] values that borrow their strings from the page's text, so the text
//! ([`to_text`]) outlives them: decoding allocates one vector per object, not every key and
//! string. A CSV row becomes an object of its header's names and its cells (empty cells
//! null).

use std::borrow::Cow;

use super::fetch::PollError;
use super::json::Json;
use super::map::MapError;
use crate::config::{FeedConfig, Format, TextEncoding};

/// The records of a page (a bad line is an `Err`) and the next cursor found in the body.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub records: Vec<Result<Json<'a>, MapError>>,
    pub next: Option<String>,
}

/// Turns bytes into text in the feed's encoding; a UTF-8 byte-order mark is dropped. UTF-8
/// keeps the bytes' buffer.
pub fn to_text(
    mut body: Vec<u8>,
    encoding: TextEncoding,
    origin: &str,
) -> Result<String, PollError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    match encoding {
        TextEncoding::Utf8 => {
            if body.starts_with(BOM) {
                body.drain(..BOM.len());
            }
            String::from_utf8(body).map_err(|e| PollError::Encoding {
                origin: origin.to_string(),
                detail: format!(
                    "invalid UTF-8 at byte {} (is the feed GBK? set encoding = \"gbk\")",
                    e.utf8_error().valid_up_to()
                ),
            })
        }
        TextEncoding::Gb18030 => {
            let body = body.strip_prefix(BOM).unwrap_or(&body);
            encoding_rs::GB18030
                .decode_without_bom_handling_and_without_replacement(body)
                .map(|c| c.into_owned())
                .ok_or_else(|| PollError::Encoding {
                    origin: origin.to_string(),
                    detail: "bytes that are not GBK/GB18030".into(),
                })
        }
    }
}

fn line_error(reason: &'static str, line: usize, detail: String) -> MapError {
    MapError {
        reason,
        field: format!("line {line}"),
        detail,
        record: None,
    }
}

/// A JSON page at least this long is parsed in shares (see [`decode_json_in_shares`]).
const IN_SHARES_MIN_BYTES: usize = 64 << 10;
/// ... and in one share below this many records, as mapping is.
const IN_SHARES_MIN_RECORDS: usize = 2048;

/// The next cursor a JSON page names at the feed's `next_cursor_path`.
fn next_cursor(doc: &Json, feed: &FeedConfig) -> Option<String> {
    match doc.lookup(&feed.next_cursor_path) {
        Some(Json::String(s)) if !s.is_empty() => Some(s.to_string()),
        Some(Json::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A JSON page decoded as [`decode`] does, with its records parsed in shares on every core
/// ([`crate::parallel::in_shares`]; one share below `min_records`). A scan of the text finds
/// the list at `records_path` and each record in it (the `scan` module); the document is then
/// parsed with that list left empty, for the next cursor and to check that the list found is
/// the one at the path. `None` wherever this path cannot decode the page as the parse of the
/// whole document would, the text not valid JSON among them: parse the whole document then,
/// for its records or its error.
pub fn decode_json_in_shares<'a>(
    text: &'a str,
    feed: &FeedConfig,
    min_records: usize,
) -> Option<Decoded<'a>> {
    let records_path = feed.records_path.as_str();
    // A cursor inside the records' list is not in the document without it.
    let cursor_in_list = if records_path.is_empty() {
        !feed.next_cursor_path.is_empty()
    } else {
        feed.next_cursor_path
            .strip_prefix(records_path)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    if cursor_in_list {
        return None;
    }
    let spans = super::scan::find_list(text, records_path)?;
    let rest = format!("{}[]{}", &text[..spans.list.start], &text[spans.list.end..]);
    let doc = Json::parse(&rest).ok()?;
    match doc.lookup(records_path) {
        Some(Json::Array(items)) if items.is_empty() => {}
        _ => return None,
    }
    let next = next_cursor(&doc, feed);
    let shares = crate::parallel::in_shares(&spans.items, min_records, |_, share| {
        share
            .iter()
            .map(|r| Json::parse(&text[r.clone()]).ok())
            .collect::<Option<Vec<_>>>()
    });
    let mut records = Vec::with_capacity(spans.items.len());
    for share in shares {
        records.extend(share?.into_iter().map(Ok));
    }
    Some(Decoded { records, next })
}

/// A JSON page decoded in one parse of the whole document.
pub fn decode_json_whole<'a>(
    text: &'a str,
    feed: &FeedConfig,
    origin: &str,
) -> Result<Decoded<'a>, PollError> {
    let mut doc = Json::parse(text).map_err(|e| PollError::InvalidJson {
        url: origin.to_string(),
        detail: e.to_string(),
    })?;
    let next = next_cursor(&doc, feed);
    let records = doc
        .take_list(&feed.records_path)
        .ok_or_else(|| PollError::NoRecords {
            url: origin.to_string(),
            path: feed.records_path.clone(),
        })?;
    Ok(Decoded {
        records: records.into_iter().map(Ok).collect(),
        next,
    })
}

/// Decodes a page's text (see [`to_text`]) in the feed's format.
pub fn decode<'a>(
    text: &'a str,
    feed: &FeedConfig,
    origin: &str,
) -> Result<Decoded<'a>, PollError> {
    match feed.format {
        Format::Json => {
            if text.len() >= IN_SHARES_MIN_BYTES
                && let Some(decoded) = decode_json_in_shares(text, feed, IN_SHARES_MIN_RECORDS)
            {
                return Ok(decoded);
            }
            decode_json_whole(text, feed, origin)
        }
        Format::Ndjson => Ok(Decoded {
            records: text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    Json::parse(l).map_err(|e| {
                        line_error("invalid_json", i + 1, format!("not a JSON record: {e}"))
                    })
                })
                .collect(),
            next: None,
        }),
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .flexible(false)
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            let headers: Vec<String> = rdr
                .headers()
                .map_err(|e| PollError::InvalidCsv {
                    origin: origin.to_string(),
                    detail: format!("header row: {e}"),
                })?
                .iter()
                .map(str::to_string)
                .collect();
            let records = rdr
                .records()
                .enumerate()
                .map(|(i, row)| {
                    let row =
                        row.map_err(|e| line_error("invalid_csv", i + 2, format!("row: {e}")))?;
                    let members = headers
                        .iter()
                        .zip(row.iter())
                        .map(|(h, v)| {
                            let v = if v.is_empty() {
                                Json::Null
                            } else {
                                Json::String(Cow::Owned(v.to_string()))
                            };
                            (Cow::Owned(h.clone()), v)
                        })
                        .collect();
                    Ok(Json::Object(members))
                })
                .collect();
            Ok(Decoded {
                records,
                next: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::Value;

    /// A decoded record as a `serde_json::Value`.
    fn value(r: &Result<Json, MapError>) -> Value {
        serde_json::to_value(r.as_ref().unwrap()).unwrap()
    }

    /// The text of a page of `feed`.
    fn page_text(bytes: &[u8], feed: &FeedConfig) -> String {
        to_text(bytes.to_vec(), feed.encoding, "t").unwrap()
    }

    fn feed(format: &str, encoding: &str) -> FeedConfig {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.toml");
        std::fs::write(
            &p,
            format!(
                "[[feeds]]\nname = \"f\"\nkind = \"events\"\nurl = \"http://127.0.0.1:1/\"\nschedule = \"0 * * * * *\"\nformat = \"{format}\"\nencoding = \"{encoding}\"\npaging = \"none\"\n[feeds.map]\nrecord_id = \"记录编号\"\nhousehold = \"户编号\"\ntime = \"日期\"\nevent = \"house_unsafe\"\n"
            ),
        )
        .unwrap();
        Config::load(&p).unwrap().feeds.remove(0)
    }

    #[test]
    fn gbk_csv_with_chinese_headers() {
        let text = "记录编号,户编号,鉴定等级,日期\r\nZJ1,632522100201001,C,2026-03-05\r\nZJ2,632522100201002,\"A\",2026-03-06\r\n";
        let bytes = encoding_rs::GBK.encode(text).0;
        let gbk = feed("csv", "gbk");
        let t = page_text(&bytes, &gbk);
        let d = decode(&t, &gbk, "t").unwrap();
        assert_eq!(d.records.len(), 2);
        let r = value(&d.records[0]);
        assert_eq!(r["户编号"], "632522100201001");
        assert_eq!(r["鉴定等级"], "C");
        // The same bytes as UTF-8 are refused with a hint.
        let e = to_text(bytes.to_vec(), TextEncoding::Utf8, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoding = \"gbk\""), "{e}");
    }

    #[test]
    fn utf8_csv_with_bom_and_a_bad_row() {
        let text = "\u{feff}记录编号,户编号,日期\nA,1,2026-01-01\nB,2\nC,3,2026-01-03\n";
        let csv = feed("csv", "utf-8");
        let t = page_text(text.as_bytes(), &csv);
        let d = decode(&t, &csv, "t").unwrap();
        assert_eq!(d.records.len(), 3);
        assert_eq!(
            value(&d.records[0])["记录编号"],
            "A",
            "the BOM is not part of the header"
        );
        assert_eq!(d.records[1].as_ref().unwrap_err().reason, "invalid_csv");
        assert!(d.records[2].is_ok());
    }

    #[test]
    fn ndjson_keeps_good_lines() {
        let text = "{\"a\":1}\n\n{broken\n{\"a\":3}\n";
        let d = decode(text, &feed("ndjson", "utf-8"), "t").unwrap();
        assert_eq!(d.records.len(), 3);
        assert_eq!(d.records[1].as_ref().unwrap_err().field, "line 3");
    }

    #[test]
    fn json_records_and_cursor_at_dotted_paths() {
        let mut f = feed("json", "utf-8");
        f.records_path = "data.items".into();
        f.next_cursor_path = "data.next".into();
        // A key given twice counts by its last value: here not a list, so no records.
        let text = r#"{"data": {"items": [{"a": 1}], "next": 42, "items": "later"}}"#;
        let e = decode(text, &f, "t").unwrap_err();
        assert!(matches!(e, PollError::NoRecords { .. }), "{e}");

        let text =
            r#" {"data": {"next": 42, "items": [{"a": 1}, {"a": "二", "b": [1, {"c": null}]}]}} "#;
        let d = decode(text, &f, "t").unwrap();
        assert_eq!(d.next.as_deref(), Some("42"));
        assert_eq!(d.records.len(), 2);
        assert_eq!(value(&d.records[0]), serde_json::json!({"a": 1}));
        assert_eq!(
            value(&d.records[1]),
            serde_json::json!({"a": "二", "b": [1, {"c": null}]})
        );

        // A cursor in a list, by its index; an empty or missing cursor is none.
        f.next_cursor_path = "data.cursors.1".into();
        let d = decode(r#"{"data": {"items": [], "cursors": ["a", "b"]}}"#, &f, "t").unwrap();
        assert_eq!((d.records.len(), d.next.as_deref()), (0, Some("b")));
        for body in [
            r#"{"data": {"items": [], "cursors": ["a", ""]}}"#,
            r#"{"data": {"items": [], "cursors": ["a"]}}"#,
            r#"{"data": {"items": []}}"#,
        ] {
            assert_eq!(decode(body, &f, "t").unwrap().next, None, "{body}");
        }

        // The document is read whole: an error after the records fails the page.
        let e = decode(r#"{"data": {"items": [{"a": 1}]}, "x": [1,]}"#, &f, "t").unwrap_err();
        assert!(matches!(e, PollError::InvalidJson { .. }), "{e}");
        // The whole document as the list.
        f.records_path = String::new();
        let d = decode(r#"[{"a": 1}, 2]"#, &f, "t").unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(value(&d.records[1]), serde_json::json!(2));
    }

    /// A JSON page's records (as values) and next cursor.
    type Page = (Vec<Option<Json<'static>>>, Option<String>);

    fn page_of(d: Decoded<'_>) -> Page {
        let records = d
            .records
            .iter()
            .map(|r| r.as_ref().ok().map(|j| owned(j.clone())))
            .collect();
        (records, d.next)
    }

    /// `j` with every string owned.
    fn owned(j: Json<'_>) -> Json<'static> {
        match j {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(n),
            Json::String(s) => Json::String(Cow::Owned(s.into_owned())),
            Json::Array(items) => Json::Array(items.into_iter().map(owned).collect()),
            Json::Object(members) => Json::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), owned(v)))
                    .collect(),
            ),
        }
    }

    /// The page decoded whole (`Err`: the error's kind), and in shares of one record where
    /// that path answers.
    fn both_ways(text: &str, f: &FeedConfig) -> (Result<Page, String>, Option<Page>) {
        let whole = decode_json_whole(text, f, "t")
            .map(page_of)
            .map_err(|e| format!("{e:?}").chars().take(12).collect());
        (whole, decode_json_in_shares(text, f, 1).map(page_of))
    }

    #[test]
    fn a_large_json_page_is_parsed_in_shares_as_the_whole_document_is() {
        let mut f = feed("json", "utf-8");
        f.records_path = "data.items".into();
        f.next_cursor_path = "data.next".into();
        let records: Vec<Value> = (0..5000)
            .map(|i| serde_json::json!({"id": format!("R{i}\"]}}"), "n": i, "x": [i, {"y": "二\\"}], "z": null}))
            .collect();
        let text = serde_json::json!({"total": 5000, "data": {"items": records, "next": "c9"}})
            .to_string();
        assert!(text.len() >= IN_SHARES_MIN_BYTES);
        let (whole, shares) = both_ways(&text, &f);
        let whole = whole.unwrap();
        assert_eq!(whole.0.len(), 5000);
        assert_eq!(whole.1.as_deref(), Some("c9"));
        assert_eq!(shares.as_ref(), Some(&whole));
        assert_eq!(page_of(decode(&text, &f, "t").unwrap()), whole);

        // A cursor inside the list is read from the whole document.
        f.next_cursor_path = "data.items.4999.id".into();
        assert!(decode_json_in_shares(&text, &f, 1).is_none());
        let d = decode(&text, &f, "t").unwrap();
        assert_eq!(d.next.as_deref(), Some("R4999\"]}"));

        // One bad record: the whole document's error, not a page of the others.
        let bad = text.replacen("\"n\":17,", "\"n\":17,,", 1);
        assert_ne!(bad, text);
        assert!(decode_json_in_shares(&bad, &f, 1).is_none());
        let e = decode(&bad, &f, "t").unwrap_err();
        assert!(matches!(e, PollError::InvalidJson { .. }), "{e}");

        // A record nested as deep as serde_json allows alone, too deep in its page.
        f.next_cursor_path = "data.next".into();
        let deep = format!("{}{}", "[".repeat(126), "]".repeat(126));
        let page = format!(r#"{{"data": {{"items": [{deep}]}}}}"#);
        assert!(Json::parse(&deep).is_ok());
        assert!(decode_json_whole(&page, &f, "t").is_err());
        assert!(decode_json_in_shares(&page, &f, 1).is_none());
    }

    proptest::proptest! {
        /// Pages built from records with every character JSON escapes or the scan looks
        /// for, at each kind of path, some with a byte changed: where the shares answer,
        /// they answer what the whole document does, and they answer for every page that
        /// is not changed.
        #[test]
        fn shares_decode_a_page_as_the_whole_document_does(
            records in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::sample::select(vec!["a", "\"", "\\", "]", "}", "[", "{", ",", ":", "二", " ", "\n", "\u{1}"]), 0i64..3),
                    0..6,
                ),
                0..12,
            ),
            paths in 0usize..3,
            repeated in proptest::bool::ANY,
            spaces in proptest::sample::select(vec!["", " ", "\n\t "]),
            change in proptest::option::of((proptest::bool::ANY, 0usize..4096, proptest::sample::select(vec![b'[', b']', b'{', b'}', b'"', b',', b':', b'\\', b'a', b'1', b' ', b'-', b'.']))),
        ) {
            let mut f = feed("json", "utf-8");
            let (records_path, next_path) = [("records", "next"), ("data.items", "data.next"), ("", "")][paths];
            f.records_path = records_path.into();
            f.next_cursor_path = next_path.into();
            let list: Vec<Value> = records
                .iter()
                .map(|parts| {
                    let text: String = parts.iter().map(|(s, _)| *s).collect();
                    match parts.first().map_or(0, |(_, k)| *k) {
                        0 => serde_json::json!({"s": text, "n": parts.len()}),
                        1 => serde_json::json!([text, {"deep": [text]}]),
                        _ => Value::String(text),
                    }
                })
                .collect();
            let list = format!(
                "[{spaces}{}{spaces}]",
                list.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(&format!("{spaces},{spaces}"))
            );
            let (before, after) = match paths {
                0 if repeated => (
                    format!(r#"{{"records":[1],{spaces}"next":"c","records":{spaces}"#),
                    "}".to_string(),
                ),
                0 => (r#"{"next": 7, "records": "#.to_string(), r#", "after": {"x": [1]}}"#.to_string()),
                1 => (
                    r#"{"data": {"items": "#.to_string(),
                    format!(r#",{spaces}"next": "n\"]"}}, "items": [9], "m": -1.5e3}}"#),
                ),
                _ => (spaces.to_string(), spaces.to_string()),
            };
            let mut text = format!("{before}{list}{after}").into_bytes();
            // A byte changed anywhere, or outside the list (where the scan checks least).
            if let Some((outside, at, byte)) = change {
                let at = if outside {
                    let outside = before.len() + after.len();
                    let at = at % outside.max(1);
                    if at < before.len() { at } else { at - before.len() + before.len() + list.len() }
                } else {
                    at % text.len().max(1)
                };
                if let Some(b) = text.get_mut(at) {
                    *b = byte;
                }
            }
            let Ok(text) = String::from_utf8(text) else {
                return Ok(());
            };
            let (whole, shares) = both_ways(&text, &f);
            if let Some(shares) = shares {
                proptest::prop_assert_eq!(Ok(shares), whole);
            } else {
                proptest::prop_assert!(change.is_some(), "an unchanged page is decoded in shares");
            }
        }
    }
}
