//! The fuzzing harness of guardline: one function per cargo-fuzz target.
//!
//! Each function takes the fuzzer's bytes and runs them through the same code path the
//! daemon uses. A target asserts only "no panic, no hang, no unbounded memory": errors
//! returned as `Err` are expected and ignored.
//!
//! This file is shared: the fuzz targets in `fuzz/fuzz_targets/` call it through the
//! `guardline_fuzz` crate, and guardline's `tests/fuzz_regressions.rs` includes it as a
//! module (`#[path]`) to replay the seed corpus and the kept crashing inputs under
//! `cargo test`. It may therefore only use `guardline` and the standard library.

use std::path::Path;
use std::sync::OnceLock;

use guardline::config::source::Source;
use guardline::config::{Config, FeedConfig, Lines};
use guardline::feeds::decode::{decode, decode_json_in_shares, decode_json_whole, to_text};
use guardline::feeds::{Mapped, map_page, until_next};
use guardline::pseudonym::Pseudonymizer;
use guardline::rules::RuleSet;

/// The names of the targets, as in `fuzz/Cargo.toml` and the folders of `fuzz/corpus/` and
/// `fuzz/regressions/`.
pub const TARGETS: [&str; 5] = [
    "decode_json",
    "decode_ndjson",
    "decode_csv",
    "config",
    "rules",
];

/// Runs `data` through the target named `target`; `false` for an unknown name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "decode_json" => decode_json(data),
        "decode_ndjson" => decode_ndjson(data),
        "decode_csv" => decode_csv(data),
        "config" => config(data),
        "rules" => rules(data),
        _ => return false,
    }
    true
}

/// A page of a JSON feed (records at `records_path`, next cursor at `next_cursor_path`),
/// decoded and mapped. The first byte chooses the options, see [`split_options`].
pub fn decode_json(data: &[u8]) {
    let _ = decode_and_map(Format::Json, data, |_| ());
}

/// An NDJSON page (one record per line), decoded and mapped.
pub fn decode_ndjson(data: &[u8]) {
    let _ = decode_and_map(Format::Ndjson, data, |_| ());
}

/// A CSV export with a header row, decoded and mapped.
pub fn decode_csv(data: &[u8]) {
    let _ = decode_and_map(Format::Csv, data, |_| ());
}

/// `guardline.toml` text through the parser and the validator. The folder the file is taken
/// to be in does not exist, so relative paths in the text read nothing.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent-guardline-fuzz/guardline.toml");
    if let Ok(config) = Config::from_text(path, text.to_string()) {
        // What the daemon does with a validated feed right away: its inputs and its next slot.
        let now = fixed_now();
        for feed in &config.feeds {
            let _ = feed.inputs();
            let _ = until_next(feed, now);
        }
    }
}

/// A rule file (`alerts/*.toml`) through the parser, the validator and the template check.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = Source::from_text(Path::new("fuzz.toml"), text.to_string());
    if let Ok(set) = RuleSet::from_sources(&[src]) {
        let _ = set.check_lines(&Lines::new(Vec::new()));
        for rule in &set.rules {
            let _ = rule.kind.inputs();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }
}

/// The options a decoder input's first byte chooses, and the body after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Bit 0: GBK/GB18030 instead of UTF-8.
    pub gbk: bool,
    /// Bit 1: a UTF-8 byte-order mark before the body.
    pub bom: bool,
    /// Bit 5: JSON records and cursor at nested paths (`data.items`, `data.next`) instead of
    /// the defaults (`records`, `next`); bit 6: the document itself is the record list.
    pub paths: usize,
    /// Bits 2-4 (and 7): which mapping of [`MAPPINGS`].
    pub mapping: usize,
}

/// Splits a decoder input into its options byte and the body.
pub fn split_options(data: &[u8]) -> Option<(Options, &[u8])> {
    let (&b, body) = data.split_first()?;
    let paths = match (b >> 5) & 0b11 {
        0 => 0,
        1 => 1,
        _ => 2,
    };
    Some((
        Options {
            gbk: b & 1 != 0,
            bom: b & 2 != 0,
            paths,
            mapping: usize::from(((b >> 2) & 0b111) | ((b >> 4) & 0b1000)) % MAPPINGS.len(),
        },
        body,
    ))
}

/// The byte that selects `o` (the inverse of [`split_options`]), for writing seeds.
pub fn options_byte(o: Options) -> u8 {
    let m = o.mapping as u8;
    u8::from(o.gbk)
        | (u8::from(o.bom) << 1)
        | ((m & 0b111) << 2)
        | ((o.paths as u8 & 0b11) << 5)
        | ((m & 0b1000) << 4)
}

/// `(records_path, next_cursor_path)` of the JSON path variants.
const PATHS: [(&str, &str); 3] = [("records", "next"), ("data.items", "data.next"), ("", "")];

/// Feed kinds with their `[feeds.map]` tables: every mapping target, subject, time format
/// and amount unit, and dotted paths into nested values.
pub const MAPPINGS: [(&str, &str); 10] = [
    (
        "roster",
        r#"record_id = "record_id"
household = "hh_id"
village = "village_code"
village_name = "village_name"
category = "category"
head_name = "head_name"
members = "members"
member_id = "id_number"
income_per_capita = "income_per_capita"
income_unit = "yuan""#,
    ),
    (
        "samples",
        r#"record_id = "record_id"
person = "id_number"
time = "month"
time_format = "%Y-%m"
values = [{ indicator = "wage_income", field = "amount", unit = "yuan" }]"#,
    ),
    (
        "samples",
        r#"record_id = "claim_id"
household = "hh_id"
time = "settle_date"
time_format = "epoch"
values = [
  { indicator = "medical_oop", field = "out_of_pocket", unit = "fen" },
  { indicator = "medical_total", field = "total_cost", unit = "yuan" },
]"#,
    ),
    (
        "samples",
        r#"record_id = "meta.id"
person = "people.0.id_number"
time = "period.month"
time_format = "%Y%m"
values = [{ indicator = "wage_income", field = "pay.1", unit = "fen" }]"#,
    ),
    (
        "events",
        r#"record_id = "record_id"
village = "village_code"
time = "sample_date"
time_format = "%Y%m%d"
event = "water_quality_exceedance""#,
    ),
    (
        "events",
        r#"record_id = "记录编号"
household = "户编号"
time = "日期"
time_format = "rfc3339"
event_field = "鉴定等级"
event_values = { A = "house_safe", B = "house_safe", C = "house_unsafe", "低保" = "subsistence_granted" }
amount = "金额"
amount_unit = "fen""#,
    ),
    (
        "events",
        r#"record_id = "record_id"
person = "student_id_number"
time = "date"
time_format = "%Y-%m-%d %H:%M:%S"
event = "suspected_dropout"
amount = "amount""#,
    ),
    (
        "intervals",
        r#"record_id = "event_id"
interval_kind = "water_outage"
village = "village_code"
interval_id = "event_id"
start = "start_time"
end = "end_time"
time_format = "rfc3339""#,
    ),
    (
        "intervals",
        r#"record_id = "event_id"
village = "village_code"
interval_id = "event_id"
start = "start_time"
end = "end_time"
time_format = "%Y-%m-%d %H:%M""#,
    ),
    (
        "roster",
        r#"record_id = "hh.id"
household = "hh.id"
village = "hh.village"
category = "hh.category"
head_name = "hh.head"
members = "hh.members"
member_id = "id"
income_per_capita = "hh.income"
income_unit = "fen""#,
    ),
];

/// The configuration text of every feed of one format: each encoding × path variant ×
/// mapping, named `f_<encoding>_<paths>_<mapping>`.
fn feeds_text(format: Format) -> String {
    let mut out = String::new();
    for (e, encoding) in ["utf-8", "gbk"].into_iter().enumerate() {
        for (p, (records, next)) in PATHS.iter().enumerate() {
            for (m, (kind, map)) in MAPPINGS.iter().enumerate() {
                out.push_str(&format!(
                    "[[feeds]]\nname = \"f_{e}_{p}_{m}\"\nkind = \"{kind}\"\n\
                     url = \"http://127.0.0.1:1/\"\nschedule = \"0 * * * * *\"\n\
                     format = \"{}\"\nencoding = \"{encoding}\"\npaging = \"none\"\n\
                     records_path = \"{records}\"\nnext_cursor_path = \"{next}\"\n\
                     [feeds.map]\n{map}\n\n",
                    format.name()
                ));
            }
        }
    }
    out
}

fn feeds(format: Format) -> &'static [FeedConfig] {
    static JSON: OnceLock<Vec<FeedConfig>> = OnceLock::new();
    static NDJSON: OnceLock<Vec<FeedConfig>> = OnceLock::new();
    static CSV: OnceLock<Vec<FeedConfig>> = OnceLock::new();
    let cell = match format {
        Format::Json => &JSON,
        Format::Ndjson => &NDJSON,
        Format::Csv => &CSV,
    };
    cell.get_or_init(|| {
        let text = feeds_text(format);
        match Config::from_text(Path::new("fuzz.toml"), text) {
            Ok(c) => c.feeds,
            // The harness's own configuration: a mistake here is a bug of the harness.
            Err(e) => panic!("the fuzzing feed configuration does not validate:\n{e}"),
        }
    })
}

fn feed(format: Format, o: Options) -> &'static FeedConfig {
    // Only JSON has paths; the other formats use the first variant.
    let paths = if format == Format::Json { o.paths } else { 0 };
    let index = (usize::from(o.gbk) * PATHS.len() + paths) * MAPPINGS.len() + o.mapping;
    &feeds(format)[index]
}

fn pseudonymizer() -> &'static Pseudonymizer {
    static P: OnceLock<Pseudonymizer> = OnceLock::new();
    P.get_or_init(|| Pseudonymizer::from_key(b"fuzzing key, not a secret"))
}

fn fixed_now() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::from_timestamp(1_780_000_000, 0)
        .unwrap_or_default()
        .with_timezone(&guardline::model::china_offset())
}

/// Decodes and maps an input as the daemon does a page, and gives its records to `then`.
fn decode_and_map<T>(format: Format, data: &[u8], then: impl FnOnce(&[Mapped]) -> T) -> Option<T> {
    let (o, body) = split_options(data)?;
    let feed = feed(format, o);
    let mut bytes = Vec::with_capacity(body.len() + 3);
    if o.bom {
        bytes.extend_from_slice(b"\xEF\xBB\xBF");
    }
    bytes.extend_from_slice(body);
    let text = to_text(bytes, feed.encoding, "fuzz").ok()?;
    if format == Format::Json {
        same_in_shares(&text, feed);
    }
    let decoded = decode(&text, feed, "fuzz").ok()?;
    let mapped = map_page(feed, decoded.records, pseudonymizer());
    for m in &mapped {
        if let Err(e) = &m.result {
            // Errors are logged by the daemon: formatting one must not fail either.
            let _ = e.to_string();
        }
    }
    Some(then(&mapped))
}

/// A large JSON page's records are parsed in shares: wherever that path answers (here at
/// any size, one record a share), it must answer what parsing the whole document does.
fn same_in_shares(text: &str, feed: &FeedConfig) {
    let Some(shares) = decode_json_in_shares(text, feed, 1) else {
        return;
    };
    let whole = decode_json_whole(text, feed, "fuzz")
        .unwrap_or_else(|e| panic!("decoded in shares, but the whole document fails: {e}"));
    let records = |d: &guardline::feeds::decode::Decoded| -> Vec<Option<String>> {
        d.records
            .iter()
            .map(|r| r.as_ref().ok().map(|j| format!("{j:?}")))
            .collect()
    };
    assert_eq!(
        records(&shares),
        records(&whole),
        "records decoded in shares"
    );
    assert_eq!(shares.next, whole.next, "next cursor decoded in shares");
}

/// Whether the first record of a decoder input maps without error (`None`: the input does
/// not decode or has no record). For checking that seeds reach deep into the mapper.
pub fn first_record_maps(target: &str, data: &[u8]) -> Option<bool> {
    let format = match target {
        "decode_json" => Format::Json,
        "decode_ndjson" => Format::Ndjson,
        "decode_csv" => Format::Csv,
        _ => return None,
    };
    decode_and_map(format, data, |mapped| Some(mapped.first()?.result.is_ok()))?
}
