//! Configuration: the schema of `guardline.toml`, loading and validation.
//!
//! Invariant: a [`Config`] only exists after validation succeeded. It is plain data (paths
//! resolved against the config file's folder, durations and schedules parsed) and is passed
//! explicitly; nothing reads configuration from anywhere else. Every problem names the file,
//! the line and the field.

mod raw;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{AmountUnit, RawLine as RawLineEntry, SmtpTls};
use source::{FieldPath, Problem, Problems, Source};

use crate::model::{EventKind, Indicator, IntervalKind};

/// The validated configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub daemon: DaemonConfig,
    pub feeds: Vec<FeedConfig>,
    pub receivers: Vec<ReceiverConfig>,
    pub notify: NotifyConfig,
    pub simulator: Option<SimulatorConfig>,
    pub lines: Lines,
}

/// Policy lines per year and region (monitoring income lines, reference incomes), in fen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lines {
    entries: Vec<LineEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineEntry {
    pub name: String,
    pub year: i32,
    /// Region code prefix: 2, 4 or 6 digits.
    pub region: String,
    pub value: crate::model::Fen,
}

impl Lines {
    pub fn new(entries: Vec<LineEntry>) -> Self {
        Self { entries }
    }

    /// These lines with `overrides` on top: an entry of `overrides` replaces one with the same
    /// name, year and region.
    pub fn merged(&self, overrides: &Lines) -> Lines {
        let mut entries: Vec<LineEntry> = self
            .entries
            .iter()
            .filter(|e| {
                !overrides
                    .entries
                    .iter()
                    .any(|o| o.name == e.name && o.year == e.year && o.region == e.region)
            })
            .cloned()
            .collect();
        entries.extend(overrides.entries.iter().cloned());
        Lines { entries }
    }

    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The line for a county in a year: the most specific region that covers the county,
    /// from the latest year not after `year`.
    pub fn lookup(
        &self,
        name: &str,
        year: i32,
        county: crate::model::CountyCode,
    ) -> Option<&LineEntry> {
        let code = county.to_string();
        self.entries
            .iter()
            .filter(|e| e.name == name && e.year <= year && code.starts_with(&e.region))
            .max_by_key(|e| (e.year, e.region.len()))
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub rules_dir: PathBuf,
    pub evaluation_interval: Duration,
    /// `None`: use `$CREDENTIALS_DIRECTORY/pseudonym-key` (systemd `LoadCredential=`).
    pub pseudonym_key_file: Option<PathBuf>,
    pub create_pseudonym_key: bool,
    pub retention_months: u32,
    /// Entries of the notification log and the audit log older than this are deleted.
    pub log_retention: Duration,
    /// How often the running daemon writes the state snapshot while the state changes.
    pub snapshot_interval: Duration,
    /// A base of the households' months is written once the runs since the last one hold
    /// more than this many bytes and a quarter of the base.
    pub base_rewrite_bytes: u64,
    pub language: Language,
    pub tokens_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Zh,
    En,
}

#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub name: String,
    pub department: String,
    pub source: FeedSource,
    pub schedule: cron::Schedule,
    pub schedule_text: String,
    /// Total time for one request, from connect to the last byte of the body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest silence while reading the body.
    pub read_timeout: Duration,
    pub format: Format,
    pub encoding: TextEncoding,
    pub paging: Paging,
    pub page_param: String,
    pub offset_param: String,
    /// Take the next cursor from this field of a page's last record (newest time or id).
    pub cursor_field: Option<String>,
    /// Send If-None-Match / If-Modified-Since with the validators of the last poll.
    pub conditional: bool,
    pub auth: Option<FeedAuth>,
    pub ca_file: Option<PathBuf>,
    pub retries: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_records_per_poll: u64,
    pub page_size: u32,
    pub max_body_bytes: u64,
    pub max_pages_per_poll: u32,
    pub records_path: String,
    pub next_cursor_path: String,
    pub cursor_param: String,
    pub limit_param: String,
    pub mapping: Mapping,
}

/// Where a feed's data comes from.
#[derive(Debug, Clone)]
pub enum FeedSource {
    Http(reqwest::Url),
    /// A folder where a department drops export files: each file is ingested once, then moved
    /// to `done/` (or `rejected/` with a reason file).
    Dir(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON document with the records at `records_path`.
    Json,
    /// One JSON record per line.
    Ndjson,
    /// CSV with a header row; columns are addressed by their header (Chinese headers work).
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// UTF-8, with or without a byte-order mark.
    Utf8,
    /// GBK / GB18030 (GB18030 is a superset of GBK and decodes both).
    Gb18030,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// `cursor_param` = saved cursor; the next cursor from `next_cursor_path` or `cursor_field`.
    Cursor,
    /// `page_param` = 1, 2, …, with `limit_param` = page_size, until a short page.
    Page,
    /// `offset_param` = records read so far (saved between polls), `limit_param` = page_size.
    Offset,
    /// Follow the `Link: <…>; rel="next"` response header.
    Link,
    /// One request per poll.
    None,
}

#[derive(Debug, Clone)]
pub enum FeedAuth {
    Bearer(SecretSource),
    Basic {
        username: String,
        password: SecretSource,
    },
    Header {
        name: String,
        value: SecretSource,
    },
}

impl FeedAuth {
    pub fn secret(&self) -> &SecretSource {
        match self {
            Self::Bearer(s) | Self::Basic { password: s, .. } | Self::Header { value: s, .. } => s,
        }
    }
}

impl FeedConfig {
    /// The kinds of data this feed delivers.
    pub fn inputs(&self) -> Vec<crate::rules::Input> {
        use crate::rules::Input;
        match &self.mapping.target {
            MappingTarget::Roster { .. } => vec![Input::Roster],
            MappingTarget::Samples { values, .. } => values
                .iter()
                .map(|v| Input::Indicator(v.indicator))
                .collect(),
            MappingTarget::Intervals { kind, .. } => vec![Input::Intervals(*kind)],
            MappingTarget::Events { event, .. } => match event {
                EventSource::Fixed(k) => vec![Input::Event(*k)],
                EventSource::Field { values, .. } => {
                    let mut v: Vec<Input> = values.values().map(|k| Input::Event(*k)).collect();
                    v.sort();
                    v.dedup();
                    v
                }
            },
        }
    }
}

/// How a feed's records become observations. Field names are dotted paths into a record.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub record_id: String,
    pub target: MappingTarget,
}

#[derive(Debug, Clone)]
pub enum MappingTarget {
    Roster {
        household: String,
        village: String,
        village_name: Option<String>,
        category: String,
        head_name: String,
        members: String,
        member_id: String,
        income_per_capita: String,
        income_unit: AmountUnit,
    },
    Samples {
        subject: SubjectField,
        time: TimeField,
        values: Vec<ValueField>,
    },
    Events {
        subject: SubjectField,
        time: TimeField,
        event: EventSource,
        amount: Option<(String, AmountUnit)>,
    },
    Intervals {
        kind: IntervalKind,
        village: String,
        interval_id: String,
        start: String,
        end: String,
        time_format: String,
    },
}

#[derive(Debug, Clone)]
pub enum SubjectField {
    Person(String),
    Household(String),
    Village(String),
}

/// The kind of an event: the same for every record, or read from a field through a table
/// (e.g. house grades C and D become `house_unsafe`).
#[derive(Debug, Clone)]
pub enum EventSource {
    Fixed(EventKind),
    Field {
        field: String,
        values: std::collections::BTreeMap<String, EventKind>,
    },
}

#[derive(Debug, Clone)]
pub struct TimeField {
    pub field: String,
    /// A chrono format (`%Y-%m`, `%Y%m%d`, …) or `rfc3339`.
    pub format: String,
}

#[derive(Debug, Clone)]
pub struct ValueField {
    pub indicator: Indicator,
    pub field: String,
    pub unit: AmountUnit,
}

#[derive(Debug, Clone)]
pub enum ReceiverConfig {
    File {
        name: String,
        path: PathBuf,
        stdout: bool,
    },
    Smtp(SmtpConfig),
    Http(HttpReceiverConfig),
    Alertmanager(AlertmanagerConfig),
}

/// Alertmanager instances to push alerts to.
#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    pub name: String,
    pub urls: Vec<reqwest::Url>,
    pub resend_interval: Duration,
    pub timeout: Duration,
}

/// A receiver that POSTs to a URL: an Alertmanager-style webhook or a chat robot.
#[derive(Debug, Clone)]
pub struct HttpReceiverConfig {
    pub name: String,
    pub kind: HttpReceiverKind,
    pub url: reqwest::Url,
    /// Bearer token (webhook), robot key (WeCom) or access token (DingTalk).
    pub secret: Option<SecretSource>,
    /// DingTalk's signing secret.
    pub signing: Option<SecretSource>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpReceiverKind {
    Webhook,
    Wecom,
    Dingtalk,
}

impl ReceiverConfig {
    pub fn name(&self) -> &str {
        match self {
            Self::File { name, .. } => name,
            Self::Smtp(s) => &s.name,
            Self::Http(h) => &h.name,
            Self::Alertmanager(a) => &a.name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    pub ca_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
    pub timeout: Duration,
}

/// Where a secret is read from: never the config file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The routing tree; without `[route]`, a root route to `receivers`.
    pub route: crate::dispatch::Route,
    pub receivers: Vec<String>,
    pub send_resolved: bool,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub expire_after: Duration,
    /// The identification time limit (15 days by default): a firing warning with no
    /// disposition by then goes to `escalate_to`.
    pub escalate_after: Duration,
    pub escalate_to: Vec<String>,
    pub inhibit: Vec<crate::silence::Inhibit>,
    /// Reminders of firing warnings without a disposition; zero: none.
    pub repeat_interval: Duration,
    /// Per receiver: its own subject and body templates (sources).
    pub templates: BTreeMap<String, (String, String)>,
}

/// Used by `guardline demo` only: where and how to run the built-in simulator.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub listen: SocketAddr,
    pub seed: u64,
    pub households: u32,
}

impl Config {
    /// Reads and validates `path`; on failure every problem found is returned.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        Self::from_source(&Source::read(path)?)
    }

    /// Validates configuration `text` as if it had been read from `path`: problems name
    /// `path`, and relative paths resolve against its folder.
    pub fn from_text(path: &Path, text: String) -> Result<Config, Problems> {
        Self::from_source(&Source::from_text(path, text))
    }

    fn from_source(src: &Source) -> Result<Config, Problems> {
        let raw: raw::RawConfig = src.parse()?;
        let base = src
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        validate(src, &base, raw)
    }

    pub fn receiver(&self, name: &str) -> Option<&ReceiverConfig> {
        self.receivers.iter().find(|r| r.name() == name)
    }
}

/// The shortest `daemon.log_retention`: network logs are kept at least six months.
const MIN_LOG_RETENTION: Duration = Duration::from_secs(180 * 86_400);

/// The shortest `daemon.snapshot_interval`.
const MIN_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);

/// The least `daemon.base_rewrite_bytes`: below it a small store would write a base after
/// nearly every commit.
const MIN_BASE_REWRITE_BYTES: u64 = 64 << 10;

/// A century: the longest duration a configuration or rule may give.
const MAX_DURATION_SECS: u64 = 36_500 * 86_400;

/// Parses durations such as `90s`, `15m`, `2h`, `30d` (an integer and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} has no unit (use s, m, h or d, e.g. \"30s\")"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a whole number"))?;
    let secs = match unit {
        "ms" if n / 1000 <= MAX_DURATION_SECS => return Ok(Duration::from_millis(n)),
        "ms" => None,
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    // `n * 86_400` used to overflow: a panic with overflow checks, a silently wrapped, much
    // shorter duration without them (fuzz/regressions/config/duration-overflow.toml). Longer
    // than a century, durations meet Unix times and overflow them.
    secs.filter(|&n| n <= MAX_DURATION_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too long (at most 36500d)"))
}

/// Parses a cron schedule for the `cron` crate (seconds first) and refuses numeric
/// days of the week: the crate counts Sunday = 1 … Saturday = 7, unlike Unix cron (Sunday = 0,
/// Monday = 1), so `1-5` would silently mean Sunday to Thursday. Names (`MON-FRI`) are clear.
pub fn parse_schedule(s: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = s.split_whitespace().collect();
    if !(6..=7).contains(&fields.len()) {
        return Err(format!(
            "cron schedule {s:?} has {} fields; guardline expects 6 or 7: \
             second minute hour day-of-month month day-of-week [year], e.g. \"0 */10 * * * *\"",
            fields.len()
        ));
    }
    let dow = fields[5];
    if dow.chars().any(|c| c.is_ascii_digit()) && !dow.starts_with("*/") {
        return Err(format!(
            "day-of-week {dow:?} uses numbers; write names instead (SUN, MON-FRI, SAT,SUN): \
             the cron crate counts Sunday=1..Saturday=7, unlike Unix cron where 1 is Monday"
        ));
    }
    s.parse::<cron::Schedule>()
        .map_err(|e| format!("invalid cron schedule {s:?}: {e}"))
}

fn validate(src: &Source, base: &Path, raw: raw::RawConfig) -> Result<Config, Problems> {
    let mut problems: Vec<Problem> = Vec::new();
    let root = FieldPath::root();
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };

    // [daemon]
    let d = &raw.daemon;
    let dp = root.key("daemon");
    let listen = d.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        problems.push(src.problem(
            &dp.key("listen"),
            format!("not a socket address ({e}), e.g. \"127.0.0.1:9187\""),
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let evaluation_interval = duration_field(
        src,
        &dp.key("evaluation_interval"),
        &d.evaluation_interval,
        &mut problems,
    );
    if d.retention_months < 24 {
        problems.push(src.problem(
            &dp.key("retention_months"),
            format!(
                "{} is too short: rules look back up to 24 months, keep at least 24",
                d.retention_months
            ),
        ));
    }
    let log_retention = duration_at_least(
        src,
        &dp.key("log_retention"),
        &d.log_retention,
        MIN_LOG_RETENTION,
        "keep the notification and audit logs at least 180 days (180d)",
        &mut problems,
    );
    let snapshot_interval = duration_at_least(
        src,
        &dp.key("snapshot_interval"),
        &d.snapshot_interval,
        MIN_SNAPSHOT_INTERVAL,
        "writing the snapshot holds the engine about 3 s per million households; give at least 1m",
        &mut problems,
    );
    if d.base_rewrite_bytes < MIN_BASE_REWRITE_BYTES {
        problems.push(src.problem(
            &dp.key("base_rewrite_bytes"),
            format!(
                "{} is too small: a base of the months would be written after nearly every \
                 commit; give at least {MIN_BASE_REWRITE_BYTES} (the default, 64 MiB, suits a \
                 province)",
                d.base_rewrite_bytes
            ),
        ));
    }
    let language = match d.language.as_str() {
        "zh" => Language::Zh,
        "en" => Language::En,
        other => {
            problems.push(src.problem(
                &dp.key("language"),
                format!("unknown language {other:?} (zh or en)"),
            ));
            Language::Zh
        }
    };
    let daemon = DaemonConfig {
        data_dir: resolve(&d.data_dir),
        listen,
        rules_dir: resolve(&d.rules_dir),
        evaluation_interval,
        pseudonym_key_file: d.pseudonym_key_file.as_deref().map(resolve),
        create_pseudonym_key: d.create_pseudonym_key,
        retention_months: d.retention_months,
        log_retention,
        snapshot_interval,
        base_rewrite_bytes: d.base_rewrite_bytes,
        language,
        tokens_file: d.tokens_file.as_deref().map(resolve),
    };

    // [[feeds]]
    let mut feeds = Vec::new();
    let mut names = BTreeSet::new();
    for (i, f) in raw.feeds.iter().enumerate() {
        let fp = root.key("feeds").index(i);
        if !valid_name(&f.name) {
            problems.push(src.problem(
                &fp.key("name"),
                format!(
                    "feed name {:?} must be 1-64 characters of a-z, 0-9, _ or -",
                    f.name
                ),
            ));
        }
        if !names.insert(f.name.clone()) {
            problems.push(src.problem(
                &fp.key("name"),
                format!("feed name {:?} is used twice", f.name),
            ));
        }
        let source = match (&f.url, &f.dir) {
            (Some(u), None) => match reqwest::Url::parse(u) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(FeedSource::Http(u)),
                Ok(u) => {
                    problems.push(src.problem(
                        &fp.key("url"),
                        format!(
                            "scheme {:?} is not http or https (use `dir` for a folder)",
                            u.scheme()
                        ),
                    ));
                    None
                }
                Err(e) => {
                    problems.push(src.problem(&fp.key("url"), format!("not a URL: {e}")));
                    None
                }
            },
            (None, Some(d)) => Some(FeedSource::Dir(resolve(d))),
            _ => {
                problems.push(src.problem(
                    &fp.key("url"),
                    "give exactly one of `url` (HTTP) or `dir` (a drop folder)",
                ));
                None
            }
        };
        let format = match f.format.as_str() {
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "csv" => Format::Csv,
            other => {
                problems.push(src.problem(
                    &fp.key("format"),
                    format!("unknown format {other:?} (json, ndjson or csv)"),
                ));
                Format::Json
            }
        };
        let encoding = match f.encoding.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => TextEncoding::Utf8,
            "gbk" | "gb18030" | "gb2312" => TextEncoding::Gb18030,
            other => {
                problems.push(src.problem(
                    &fp.key("encoding"),
                    format!("unknown encoding {other:?} (utf-8, gbk or gb18030)"),
                ));
                TextEncoding::Utf8
            }
        };
        let paging = match f.paging.as_str() {
            "cursor" => Paging::Cursor,
            "page" => Paging::Page,
            "offset" => Paging::Offset,
            "link" => Paging::Link,
            "none" => Paging::None,
            other => {
                problems.push(src.problem(
                    &fp.key("paging"),
                    format!("unknown paging {other:?} (cursor, page, offset, link or none)"),
                ));
                Paging::None
            }
        };
        if paging == Paging::Cursor
            && format != Format::Json
            && f.cursor_field.is_none()
            && matches!(source, Some(FeedSource::Http(_)))
        {
            problems.push(src.problem(&fp.key("paging"), "cursor paging of an ndjson or csv feed needs `cursor_field` (the body has no place for a next cursor)"));
        }
        let secret = |env: &Option<String>,
                      file: &Option<String>,
                      what: &str,
                      problems: &mut Vec<Problem>|
         -> Option<SecretSource> {
            match (env, file) {
                (Some(e), None) => Some(SecretSource::Env(e.clone())),
                (None, Some(p)) => Some(SecretSource::File(resolve(p))),
                _ => {
                    problems.push(src.problem(
                        &fp.key("auth"),
                        format!("give exactly one of {what}_env or {what}_file"),
                    ));
                    None
                }
            }
        };
        let auth = match &f.auth {
            None => None,
            Some(raw::RawAuth::Bearer {
                token_env,
                token_file,
            }) => secret(token_env, token_file, "token", &mut problems).map(FeedAuth::Bearer),
            Some(raw::RawAuth::Basic {
                username,
                password_env,
                password_file,
            }) => secret(password_env, password_file, "password", &mut problems).map(|password| {
                FeedAuth::Basic {
                    username: username.clone(),
                    password,
                }
            }),
            Some(raw::RawAuth::Header {
                name,
                value_env,
                value_file,
            }) => {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push(src.problem(
                        &fp.key("auth").key("name"),
                        format!("{name:?} is not a valid HTTP header name"),
                    ));
                }
                secret(value_env, value_file, "value", &mut problems).map(|value| {
                    FeedAuth::Header {
                        name: name.clone(),
                        value,
                    }
                })
            }
        };
        let schedule = match parse_schedule(&f.schedule) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(src.problem(&fp.key("schedule"), e));
                None
            }
        };
        let timeout = duration_field(src, &fp.key("timeout"), &f.timeout, &mut problems);
        let connect_timeout = duration_field(
            src,
            &fp.key("connect_timeout"),
            &f.connect_timeout,
            &mut problems,
        );
        let read_timeout =
            duration_field(src, &fp.key("read_timeout"), &f.read_timeout, &mut problems);
        let retry_initial = duration_field(
            src,
            &fp.key("retry_initial"),
            &f.retry_initial,
            &mut problems,
        );
        let retry_max = duration_field(src, &fp.key("retry_max"), &f.retry_max, &mut problems);
        if f.page_size == 0 || f.page_size > 100_000 {
            problems.push(src.problem(&fp.key("page_size"), "must be between 1 and 100000"));
        }
        let mapping = validate_mapping(src, &fp.key("map"), &f.kind, &f.map, &mut problems, &fp);
        if let (Some(source), Some(schedule), Some(mapping)) = (source, schedule, mapping) {
            feeds.push(FeedConfig {
                name: f.name.clone(),
                department: f.department.clone(),
                source,
                schedule,
                schedule_text: f.schedule.clone(),
                timeout,
                connect_timeout,
                read_timeout,
                format,
                encoding,
                paging,
                page_param: f.page_param.clone(),
                offset_param: f.offset_param.clone(),
                cursor_field: f.cursor_field.clone(),
                conditional: f.conditional,
                auth,
                ca_file: f.ca_file.as_deref().map(resolve),
                retries: f.retries,
                retry_initial,
                retry_max,
                max_records_per_poll: f.max_records_per_poll,
                page_size: f.page_size,
                max_body_bytes: f.max_body_bytes,
                max_pages_per_poll: f.max_pages_per_poll,
                records_path: f.records_path.clone(),
                next_cursor_path: f.next_cursor_path.clone(),
                cursor_param: f.cursor_param.clone(),
                limit_param: f.limit_param.clone(),
                mapping,
            });
        }
    }

    // [[receivers]]
    let mut receivers = Vec::new();
    let mut rnames = BTreeSet::new();
    for (i, r) in raw.receivers.iter().enumerate() {
        let rp = root.key("receivers").index(i);
        let name = r.name();
        if !valid_name(name) {
            problems.push(src.problem(
                &rp.key("name"),
                format!("receiver name {name:?} must be 1-64 characters of a-z, 0-9, _ or -"),
            ));
        }
        if !rnames.insert(name.to_string()) {
            problems.push(src.problem(
                &rp.key("name"),
                format!("receiver name {name:?} is used twice"),
            ));
        }
        match r {
            raw::RawReceiver::File { name, path, stdout } => receivers.push(ReceiverConfig::File {
                name: name.clone(),
                path: if Path::new(path).is_absolute() {
                    PathBuf::from(path)
                } else {
                    daemon.data_dir.join(path)
                },
                stdout: *stdout,
            }),
            raw::RawReceiver::Webhook {
                name,
                url,
                bearer_env,
                bearer_file,
                timeout,
            }
            | raw::RawReceiver::Wecom {
                name,
                url,
                key_env: bearer_env,
                key_file: bearer_file,
                timeout,
            }
            | raw::RawReceiver::Dingtalk {
                name,
                url,
                token_env: bearer_env,
                token_file: bearer_file,
                timeout,
                ..
            } => {
                let kind = match r {
                    raw::RawReceiver::Wecom { .. } => HttpReceiverKind::Wecom,
                    raw::RawReceiver::Dingtalk { .. } => HttpReceiverKind::Dingtalk,
                    _ => HttpReceiverKind::Webhook,
                };
                let secret_of = |env: &Option<String>, file: &Option<String>| match (env, file) {
                    (Some(e), _) => Some(SecretSource::Env(e.clone())),
                    (None, Some(f)) => Some(SecretSource::File(resolve(f))),
                    (None, None) => None,
                };
                let secret = secret_of(bearer_env, bearer_file);
                if kind != HttpReceiverKind::Webhook && secret.is_none() {
                    problems.push(src.problem(&rp.key("name"), "a chat robot needs its key or token from an environment variable or a file (key_env / key_file, token_env / token_file)"));
                }
                let signing = match r {
                    raw::RawReceiver::Dingtalk {
                        secret_env,
                        secret_file,
                        ..
                    } => secret_of(secret_env, secret_file),
                    _ => None,
                };
                let timeout = duration_field(src, &rp.key("timeout"), timeout, &mut problems);
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {
                        receivers.push(ReceiverConfig::Http(HttpReceiverConfig {
                            name: name.clone(),
                            kind,
                            url: u,
                            secret,
                            signing,
                            timeout,
                        }))
                    }
                    _ => problems.push(
                        src.problem(&rp.key("url"), format!("{url:?} is not an http(s) URL")),
                    ),
                }
            }
            raw::RawReceiver::Alertmanager {
                name,
                urls,
                resend_interval,
                timeout,
            } => {
                let mut parsed = Vec::new();
                for (j, u) in urls.iter().enumerate() {
                    match reqwest::Url::parse(u) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") => parsed.push(u),
                        _ => problems.push(src.problem(
                            &rp.key("urls").index(j),
                            format!("{u:?} is not an http(s) URL"),
                        )),
                    }
                }
                if urls.is_empty() {
                    problems
                        .push(src.problem(&rp.key("urls"), "give at least one Alertmanager URL"));
                }
                receivers.push(ReceiverConfig::Alertmanager(AlertmanagerConfig {
                    name: name.clone(),
                    urls: parsed,
                    resend_interval: duration_field(
                        src,
                        &rp.key("resend_interval"),
                        resend_interval,
                        &mut problems,
                    ),
                    timeout: duration_field(src, &rp.key("timeout"), timeout, &mut problems),
                }));
            }
            raw::RawReceiver::Smtp(s) => {
                if s.to.is_empty() {
                    problems.push(src.problem(
                        &rp.key("to"),
                        "an e-mail receiver needs at least one address in `to`",
                    ));
                }
                for (j, addr) in s.to.iter().chain(std::iter::once(&s.from)).enumerate() {
                    if addr.parse::<lettre::message::Mailbox>().is_err() {
                        let field = if j < s.to.len() {
                            rp.key("to").index(j)
                        } else {
                            rp.key("from")
                        };
                        problems.push(
                            src.problem(&field, format!("{addr:?} is not an e-mail address")),
                        );
                    }
                }
                let password = match (&s.password_env, &s.password_file) {
                    (Some(_), Some(_)) => {
                        problems.push(src.problem(
                            &rp.key("password_file"),
                            "give either password_env or password_file, not both",
                        ));
                        None
                    }
                    (Some(v), None) => Some(SecretSource::Env(v.clone())),
                    (None, Some(f)) => Some(SecretSource::File(resolve(f))),
                    (None, None) => None,
                };
                if password.is_some() && s.username.is_none() {
                    problems.push(
                        src.problem(&rp.key("username"), "a password is set but no username"),
                    );
                }
                let timeout = duration_field(src, &rp.key("timeout"), &s.timeout, &mut problems);
                receivers.push(ReceiverConfig::Smtp(SmtpConfig {
                    name: s.name.clone(),
                    host: s.host.clone(),
                    port: s.port,
                    tls: s.tls,
                    username: s.username.clone(),
                    password,
                    ca_file: s.ca_file.as_deref().map(resolve),
                    from: s.from.clone(),
                    to: s.to.clone(),
                    timeout,
                }));
            }
        }
    }

    // [notify]
    let np = root.key("notify");
    for (i, name) in raw.notify.escalate_to.iter().enumerate() {
        if !rnames.contains(name) {
            problems.push(src.problem(
                &np.key("escalate_to").index(i),
                format!("no receiver named {name:?} is defined in [[receivers]]"),
            ));
        }
    }
    for (i, name) in raw.notify.receivers.iter().enumerate() {
        if !rnames.contains(name) {
            problems.push(src.problem(
                &np.key("receivers").index(i),
                format!("no receiver named {name:?} is defined in [[receivers]]"),
            ));
        }
    }
    let route = match &raw.route {
        Some(r) => validate_route(
            src,
            &root.key("route"),
            "root",
            r,
            &rnames,
            &crate::dispatch::Grouping::default(),
            &mut problems,
        ),
        None => crate::dispatch::Route {
            path: "root".into(),
            matchers: Vec::new(),
            receivers: raw.notify.receivers.clone(),
            cont: false,
            routes: Vec::new(),
            grouping: crate::dispatch::Grouping::default(),
        },
    };
    if raw.route.is_some() && !raw.notify.receivers.is_empty() {
        problems.push(src.problem(
            &np.key("receivers"),
            "give receivers either in [notify] or in [route], not both",
        ));
    }
    let notify = NotifyConfig {
        route,
        receivers: raw.notify.receivers.clone(),
        send_resolved: raw.notify.send_resolved,
        retry_initial: duration_field(
            src,
            &np.key("retry_initial"),
            &raw.notify.retry_initial,
            &mut problems,
        ),
        retry_max: duration_field(
            src,
            &np.key("retry_max"),
            &raw.notify.retry_max,
            &mut problems,
        ),
        expire_after: duration_field(
            src,
            &np.key("expire_after"),
            &raw.notify.expire_after,
            &mut problems,
        ),
        escalate_after: duration_field(
            src,
            &np.key("escalate_after"),
            &raw.notify.escalate_after,
            &mut problems,
        ),
        escalate_to: raw.notify.escalate_to.clone(),
        repeat_interval: duration_field(
            src,
            &np.key("repeat_interval"),
            &raw.notify.repeat_interval,
            &mut problems,
        ),
        templates: {
            let mut t = BTreeMap::new();
            for (name, files) in &raw.notify.templates {
                let tp = np.key("templates").key(name);
                if !rnames.contains(name) {
                    problems.push(src.problem(
                        &tp,
                        format!("no receiver named {name:?} is defined in [[receivers]]"),
                    ));
                    continue;
                }
                let mut read = |field: &str, file: &str| {
                    std::fs::read_to_string(resolve(file))
                        .map_err(|e| {
                            problems.push(
                                src.problem(&tp.key(field), format!("cannot read {file}: {e}")),
                            )
                        })
                        .ok()
                };
                let (subject, body) = (read("subject", &files.subject), read("body", &files.body));
                if let (Some(subject), Some(body)) = (subject, body) {
                    if let Err(e) = crate::notify::Templates::check(&subject, &body) {
                        problems.push(src.problem(&tp, format!("template does not render: {e}")));
                    }
                    t.insert(name.clone(), (subject, body));
                }
            }
            t
        },
        inhibit: raw
            .inhibit
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let ip = root.key("inhibit").index(i);
                let mut parse = |field: &str, list: &[String]| -> Vec<crate::dispatch::Matcher> {
                    list.iter()
                        .enumerate()
                        .filter_map(|(j, m)| {
                            m.parse()
                                .map_err(|e: crate::dispatch::MatcherError| {
                                    problems
                                        .push(src.problem(&ip.key(field).index(j), e.to_string()))
                                })
                                .ok()
                        })
                        .collect()
                };
                let source = parse("source_matchers", &r.source_matchers);
                let target = parse("target_matchers", &r.target_matchers);
                crate::silence::Inhibit {
                    source,
                    target,
                    equal: r.equal.clone(),
                }
            })
            .collect(),
    };

    let simulator = raw.simulator.as_ref().map(|s| SimulatorConfig {
        listen: s.listen.parse().unwrap_or_else(|e| {
            problems.push(src.problem(
                &root.key("simulator").key("listen"),
                format!("not a socket address ({e})"),
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
        seed: s.seed,
        households: s.households,
    });

    let lines = validate_lines(src, &raw.lines, &mut problems);

    if problems.is_empty() {
        Ok(Config {
            file: src.path.clone(),
            daemon,
            feeds,
            receivers,
            notify,
            simulator,
            lines: Lines::new(lines),
        })
    } else {
        Err(Problems(problems))
    }
}

fn validate_route(
    src: &Source,
    at: &FieldPath,
    path: &str,
    r: &raw::RawRoute,
    receivers: &BTreeSet<String>,
    parent: &crate::dispatch::Grouping,
    problems: &mut Vec<Problem>,
) -> crate::dispatch::Route {
    let mut grouping = parent.clone();
    if let Some(by) = &r.group_by {
        grouping.by = Some(by.clone());
    }
    if let Some(w) = &r.group_wait {
        grouping.wait = duration_field(src, &at.key("group_wait"), w, problems);
    }
    if let Some(i) = &r.group_interval {
        grouping.interval = duration_field(src, &at.key("group_interval"), i, problems);
    }
    if let Some(i) = &r.repeat_interval {
        grouping.repeat_interval =
            Some(duration_field(src, &at.key("repeat_interval"), i, problems));
    }
    if let Some(b) = r.send_resolved {
        grouping.send_resolved = Some(b);
    }
    let mut matchers = Vec::new();
    for (i, m) in r.matchers.iter().enumerate() {
        match m.parse::<crate::dispatch::Matcher>() {
            Ok(m) => matchers.push(m),
            Err(e) => problems.push(src.problem(&at.key("matchers").index(i), e.to_string())),
        }
    }
    for (i, name) in r.receivers.iter().enumerate() {
        if !receivers.contains(name) {
            problems.push(src.problem(
                &at.key("receivers").index(i),
                format!("no receiver named {name:?} is defined in [[receivers]]"),
            ));
        }
    }
    let routes = r
        .routes
        .iter()
        .enumerate()
        .map(|(i, child)| {
            validate_route(
                src,
                &at.key("routes").index(i),
                &format!("{path}/{i}"),
                child,
                receivers,
                &grouping,
                problems,
            )
        })
        .collect();
    crate::dispatch::Route {
        path: path.to_string(),
        matchers,
        receivers: r.receivers.clone(),
        cont: r.cont,
        routes,
        grouping,
    }
}

/// Validates `[[lines]]` entries (of guardline.toml or of a rule file).
pub fn validate_lines(
    src: &Source,
    raw: &[raw::RawLine],
    problems: &mut Vec<Problem>,
) -> Vec<LineEntry> {
    let mut lines = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let lp = FieldPath::root().key("lines").index(i);
        if !valid_name(&l.name) {
            problems.push(src.problem(
                &lp.key("name"),
                format!("line name {:?} must be a-z, 0-9, _ or -", l.name),
            ));
        }
        if !matches!(l.region.len(), 2 | 4 | 6) || !l.region.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(src.problem(
                &lp.key("region"),
                format!(
                    "region {:?} must be a province (2 digits), prefecture (4) or county (6) code",
                    l.region
                ),
            ));
        }
        if !(l.value.is_finite() && l.value >= 0.0) {
            problems.push(src.problem(&lp.key("value"), "must be an amount in yuan"));
        }
        lines.push(LineEntry {
            name: l.name.clone(),
            year: l.year,
            region: l.region.clone(),
            value: (l.value * 100.0).round() as crate::model::Fen,
        });
    }
    lines
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn duration_field(
    src: &Source,
    path: &FieldPath,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Duration {
    parse_duration(text).unwrap_or_else(|e| {
        problems.push(src.problem(path, e));
        Duration::from_secs(1)
    })
}

/// A duration of at least `min`; `why` says why a shorter one is refused.
fn duration_at_least(
    src: &Source,
    path: &FieldPath,
    text: &str,
    min: Duration,
    why: &str,
    problems: &mut Vec<Problem>,
) -> Duration {
    let d = parse_duration(text).unwrap_or_else(|e| {
        problems.push(src.problem(path, e));
        min
    });
    if d < min {
        problems.push(src.problem(path, format!("{text:?} is too short: {why}")));
    }
    d
}

fn validate_mapping(
    src: &Source,
    mp: &FieldPath,
    kind: &str,
    m: &raw::RawMap,
    problems: &mut Vec<Problem>,
    feed_path: &FieldPath,
) -> Option<Mapping> {
    let before = problems.len();
    macro_rules! need {
        ($field:literal, $v:expr) => {
            match &$v {
                Some(s) if !s.trim().is_empty() => s.clone(),
                _ => {
                    problems.push(src.problem(
                        &mp.key($field),
                        format!("a feed of kind {kind:?} needs map.{}", $field),
                    ));
                    String::new()
                }
            }
        };
    }
    let target = match kind {
        "roster" => MappingTarget::Roster {
            household: need!("household", m.household),
            village: need!("village", m.village),
            village_name: m.village_name.clone(),
            category: need!("category", m.category),
            head_name: need!("head_name", m.head_name),
            members: need!("members", m.members),
            member_id: need!("member_id", m.member_id),
            income_per_capita: need!("income_per_capita", m.income_per_capita),
            income_unit: m.income_unit,
        },
        "samples" => {
            let subject = match (&m.person, &m.household) {
                (Some(p), None) => SubjectField::Person(p.clone()),
                (None, Some(h)) => SubjectField::Household(h.clone()),
                _ => {
                    problems.push(src.problem(
                        &mp.key("person"),
                        "a samples feed needs exactly one of map.person or map.household",
                    ));
                    SubjectField::Household(String::new())
                }
            };
            let time = TimeField {
                field: need!("time", m.time),
                format: m.time_format.clone().unwrap_or_else(|| "%Y-%m".to_string()),
            };
            if m.values.is_empty() {
                problems.push(src.problem(
                    &mp.key("values"),
                    "a samples feed needs at least one entry in map.values",
                ));
            }
            let mut values = Vec::new();
            for (i, v) in m.values.iter().enumerate() {
                match v.indicator.parse::<Indicator>() {
                    Ok(indicator) => values.push(ValueField {
                        indicator,
                        field: v.field.clone(),
                        unit: v.unit,
                    }),
                    Err(e) => problems.push(src.problem(&mp.key("values").index(i), e)),
                }
            }
            MappingTarget::Samples {
                subject,
                time,
                values,
            }
        }
        "events" => {
            let subject = match (&m.person, &m.household, &m.village) {
                (Some(p), None, None) => SubjectField::Person(p.clone()),
                (None, Some(h), None) => SubjectField::Household(h.clone()),
                (None, None, Some(v)) => SubjectField::Village(v.clone()),
                _ => {
                    problems.push(src.problem(
                        &mp.key("person"),
                        "an events feed needs exactly one of map.person, map.household or map.village",
                    ));
                    SubjectField::Household(String::new())
                }
            };
            let time = TimeField {
                field: need!("time", m.time),
                format: m
                    .time_format
                    .clone()
                    .unwrap_or_else(|| "%Y-%m-%d".to_string()),
            };
            let event = match (&m.event, &m.event_field, &m.event_values) {
                (Some(k), None, None) => match k.parse::<EventKind>() {
                    Ok(k) => EventSource::Fixed(k),
                    Err(e) => {
                        problems.push(src.problem(&mp.key("event"), e));
                        EventSource::Fixed(EventKind::DisasterLoss)
                    }
                },
                (None, Some(f), Some(table)) if !table.is_empty() => {
                    let mut values = std::collections::BTreeMap::new();
                    for (raw, kind) in table {
                        match kind.parse::<EventKind>() {
                            Ok(k) => {
                                values.insert(raw.clone(), k);
                            }
                            Err(e) => {
                                problems.push(src.problem(&mp.key("event_values").key(raw), e))
                            }
                        }
                    }
                    EventSource::Field {
                        field: f.clone(),
                        values,
                    }
                }
                _ => {
                    problems.push(src.problem(
                        &mp.key("event"),
                        "an events feed needs map.event (one kind for every record) or map.event_field with map.event_values (a table from field values to kinds)",
                    ));
                    EventSource::Fixed(EventKind::DisasterLoss)
                }
            };
            MappingTarget::Events {
                subject,
                time,
                event,
                amount: m.amount.clone().map(|a| (a, m.amount_unit)),
            }
        }
        "intervals" => {
            let kind = m
                .interval_kind
                .as_deref()
                .unwrap_or("water_outage")
                .parse::<IntervalKind>()
                .unwrap_or_else(|e| {
                    problems.push(src.problem(&mp.key("interval_kind"), e));
                    IntervalKind::WaterOutage
                });
            MappingTarget::Intervals {
                kind,
                village: need!("village", m.village),
                interval_id: need!("interval_id", m.interval_id),
                start: need!("start", m.start),
                end: need!("end", m.end),
                time_format: m
                    .time_format
                    .clone()
                    .unwrap_or_else(|| "rfc3339".to_string()),
            }
        }
        other => {
            problems.push(src.problem(
                &feed_path.key("kind"),
                format!("unknown feed kind {other:?} (roster, samples, events or intervals)"),
            ));
            return None;
        }
    };
    (problems.len() == before).then(|| Mapping {
        record_id: m.record_id.clone(),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a configuration file of this text (relative paths resolve in a scratch folder).
    fn load(body: &str) -> Result<Config, Problems> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.toml");
        std::fs::write(&p, body).unwrap();
        Config::load(&p)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("15d").unwrap(),
            Duration::from_secs(15 * 86400)
        );
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("999999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        assert_eq!(
            parse_duration("36500d").unwrap(),
            Duration::from_secs(36_500 * 86_400)
        );
        for s in ["36501d", "876001h", "3153600001s", "3153600001000ms"] {
            assert!(parse_duration(s).unwrap_err().contains("too long"), "{s}");
        }
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn snapshot_interval_defaults_to_an_hour_and_refuses_less_than_a_minute() {
        let c = load("[daemon]\n").unwrap();
        assert_eq!(c.daemon.snapshot_interval, Duration::from_secs(3600));
        let c = load("[daemon]\nsnapshot_interval = \"10m\"\n").unwrap();
        assert_eq!(c.daemon.snapshot_interval, Duration::from_secs(600));
        let err = load("[daemon]\n\nsnapshot_interval = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.snapshot_interval"), "{err}");
        assert!(err.contains(":3:"), "the line: {err}");
        assert!(err.contains("at least 1m"), "{err}");
        let err = load("[daemon]\nsnapshot_interval = \"hourly\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.snapshot_interval"), "{err}");
        assert!(!err.contains("too short"), "one problem, not two: {err}");
    }

    #[test]
    fn base_rewrite_bytes_defaults_to_64_mib_and_refuses_less_than_64_kib() {
        let c = load("[daemon]\n").unwrap();
        assert_eq!(c.daemon.base_rewrite_bytes, 64 << 20);
        let c = load("[daemon]\nbase_rewrite_bytes = 1048576\n").unwrap();
        assert_eq!(c.daemon.base_rewrite_bytes, 1 << 20);
        let err = load("[daemon]\n\nbase_rewrite_bytes = 4096\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.base_rewrite_bytes"), "{err}");
        assert!(err.contains(":3:"), "the line: {err}");
        assert!(err.contains("at least 65536"), "{err}");
        let err = load("[daemon]\nbase_rewrite_bytes = \"64MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_rewrite_bytes"), "{err}");
    }

    #[test]
    fn log_retention_defaults_to_two_years_and_refuses_less_than_six_months() {
        let c = load("[daemon]\n").unwrap();
        assert_eq!(c.daemon.log_retention, Duration::from_secs(730 * 86_400));
        let c = load("[daemon]\nlog_retention = \"180d\"\n").unwrap();
        assert_eq!(c.daemon.log_retention, Duration::from_secs(180 * 86_400));
        let err = load("[daemon]\nlog_retention = \"30d\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.log_retention"), "{err}");
        assert!(err.contains("at least 180 days"), "{err}");
        let err = load("[daemon]\nlog_retention = \"two years\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole number"), "{err}");
        assert!(!err.contains("too short"), "one problem, not two: {err}");
    }

    #[test]
    fn schedules_refuse_numeric_weekdays() {
        assert!(parse_schedule("0 */5 * * * *").is_ok());
        assert!(parse_schedule("0 0 8 * * MON-FRI").is_ok());
        let e = parse_schedule("0 0 8 * * 1-5").unwrap_err();
        assert!(e.contains("Sunday=1"), "{e}");
        assert!(
            parse_schedule("*/5 * * * *")
                .unwrap_err()
                .contains("5 fields")
        );
    }

    #[test]
    fn a_receiver_can_have_its_own_templates_and_a_broken_one_is_located() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.j2"), "[{{ county_name }}] {{ summary }}").unwrap();
        std::fs::write(
            dir.path().join("b.j2"),
            "{{ description }}\n{{ fingerprint }}",
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.j2"), "{{ nosuch }}").unwrap();
        let cfg = |body: &str| {
            let p = dir.path().join("g.toml");
            std::fs::write(
                &p,
                format!("[[receivers]]\nname = \"log\"\ntype = \"file\"\npath = \"n.log\"\n\n[notify]\nreceivers = [\"log\"]\n[notify.templates.log]\nsubject = \"s.j2\"\nbody = \"{body}\"\n"),
            )
            .unwrap();
            Config::load(&p)
        };
        let c = cfg("b.j2").unwrap();
        let t =
            crate::notify::Templates::with_receivers(Language::Zh, &c.notify.templates).unwrap();
        let a = crate::notify::tests_support::sample();
        let (subject, body) = t
            .render_for(&a, crate::alerts::Status::Firing, false, Some("log"))
            .unwrap();
        assert_eq!(subject, "[同德县] 示例摘要");
        assert!(body.ends_with("0123456789abcdef"));
        let (subject, _) = t
            .render_for(&a, crate::alerts::Status::Firing, false, Some("other"))
            .unwrap();
        assert!(
            subject.starts_with("【返贫风险预警"),
            "others keep the built-in templates"
        );
        let err = cfg("bad.j2").unwrap_err().to_string();
        assert!(
            err.contains("notify.templates.log: template does not render"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_configs_validate() {
        for file in ["config/guardline.toml", "config/demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            if let Err(e) = Config::load(&path) {
                panic!("{file}: {e}");
            }
        }
    }
}
