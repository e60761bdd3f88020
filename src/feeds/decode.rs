//! Decoding a page or an export file: text encoding, then JSON, NDJSON or CSV into records.
//!
//! A document that cannot be read at all (wrong encoding, invalid JSON document) is a poll
//! error; a single bad line of NDJSON or CSV is a rejected record, and the rest is kept.

use serde_json::{Map, Value};

use super::fetch::PollError;
use super::map::{MapError, lookup};
use crate::config::{FeedConfig, Format, TextEncoding};

/// The records of a page (a bad line is an `Err`) and the next cursor found in the body.
#[derive(Debug)]
pub struct Decoded {
    pub records: Vec<Result<Value, MapError>>,
    pub next: Option<String>,
}

/// Turns bytes into text in the feed's encoding; a UTF-8 byte-order mark is dropped.
pub fn to_text(body: &[u8], encoding: TextEncoding, origin: &str) -> Result<String, PollError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match encoding {
        TextEncoding::Utf8 => String::from_utf8(body.to_vec()).map_err(|e| PollError::Encoding {
            origin: origin.to_string(),
            detail: format!(
                "invalid UTF-8 at byte {} (is the feed GBK? set encoding = \"gbk\")",
                e.utf8_error().valid_up_to()
            ),
        }),
        TextEncoding::Gb18030 => encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(body)
            .map(|c| c.into_owned())
            .ok_or_else(|| PollError::Encoding {
                origin: origin.to_string(),
                detail: "bytes that are not GBK/GB18030".into(),
            }),
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

pub fn decode(body: &[u8], feed: &FeedConfig, origin: &str) -> Result<Decoded, PollError> {
    let text = to_text(body, feed.encoding, origin)?;
    match feed.format {
        Format::Json => {
            let mut doc: Value =
                serde_json::from_str(&text).map_err(|e| PollError::InvalidJson {
                    url: origin.to_string(),
                    detail: e.to_string(),
                })?;
            let next = match lookup(&doc, &feed.next_cursor_path) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let records =
                take_at(&mut doc, &feed.records_path).ok_or_else(|| PollError::NoRecords {
                    url: origin.to_string(),
                    path: feed.records_path.clone(),
                })?;
            Ok(Decoded {
                records: records.into_iter().map(Ok).collect(),
                next,
            })
        }
        Format::Ndjson => Ok(Decoded {
            records: text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str::<Value>(l).map_err(|e| {
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
                    let mut obj = Map::new();
                    for (h, v) in headers.iter().zip(row.iter()) {
                        let v = if v.is_empty() {
                            Value::Null
                        } else {
                            Value::String(v.to_string())
                        };
                        obj.insert(h.clone(), v);
                    }
                    Ok(Value::Object(obj))
                })
                .collect();
            Ok(Decoded {
                records,
                next: None,
            })
        }
    }
}

fn take_at(doc: &mut Value, path: &str) -> Option<Vec<Value>> {
    let mut cur = doc;
    if !path.is_empty() {
        for seg in path.split('.') {
            cur = match cur {
                Value::Object(m) => m.get_mut(seg)?,
                _ => return None,
            };
        }
    }
    match cur.take() {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
        let d = decode(&bytes, &feed("csv", "gbk"), "t").unwrap();
        assert_eq!(d.records.len(), 2);
        let r = d.records[0].as_ref().unwrap();
        assert_eq!(r["户编号"], "632522100201001");
        assert_eq!(r["鉴定等级"], "C");
        // The same bytes as UTF-8 are refused with a hint.
        let e = decode(&bytes, &feed("csv", "utf-8"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoding = \"gbk\""), "{e}");
    }

    #[test]
    fn utf8_csv_with_bom_and_a_bad_row() {
        let text = "\u{feff}记录编号,户编号,日期\nA,1,2026-01-01\nB,2\nC,3,2026-01-03\n";
        let d = decode(text.as_bytes(), &feed("csv", "utf-8"), "t").unwrap();
        assert_eq!(d.records.len(), 3);
        assert_eq!(
            d.records[0].as_ref().unwrap()["记录编号"],
            "A",
            "the BOM is not part of the header"
        );
        assert_eq!(d.records[1].as_ref().unwrap_err().reason, "invalid_csv");
        assert!(d.records[2].is_ok());
    }

    #[test]
    fn ndjson_keeps_good_lines() {
        let text = "{\"a\":1}\n\n{broken\n{\"a\":3}\n";
        let d = decode(text.as_bytes(), &feed("ndjson", "utf-8"), "t").unwrap();
        assert_eq!(d.records.len(), 3);
        assert_eq!(d.records[1].as_ref().unwrap_err().field, "line 3");
    }
}
