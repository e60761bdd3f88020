//! Configuration: the schema of `guardline.toml`, loading and validation.
//!
//! Invariant: a [`Config`] only exists after validation succeeded. It is plain data (paths
//! resolved against the config file's folder, durations and schedules parsed) and is passed
//! explicitly; nothing reads configuration from anywhere else. Every problem names the file,
//! the line and the field.

mod raw;
pub mod source;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{AmountUnit, SmtpTls};
use source::{FieldPath, Problem, Problems, Source};

use crate::model::{Indicator, IntervalKind};

/// The validated configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub daemon: DaemonConfig,
    pub feeds: Vec<FeedConfig>,
    pub receivers: Vec<ReceiverConfig>,
    pub notify: NotifyConfig,
    pub simulator: Option<SimulatorConfig>,
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
    pub language: Language,
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
    pub url: reqwest::Url,
    pub schedule: cron::Schedule,
    pub schedule_text: String,
    pub timeout: Duration,
    pub page_size: u32,
    pub max_body_bytes: u64,
    pub max_pages_per_poll: u32,
    pub records_path: String,
    pub next_cursor_path: String,
    pub cursor_param: String,
    pub limit_param: String,
    pub mapping: Mapping,
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
}

impl ReceiverConfig {
    pub fn name(&self) -> &str {
        match self {
            Self::File { name, .. } => name,
            Self::Smtp(s) => &s.name,
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
    pub receivers: Vec<String>,
    pub send_resolved: bool,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub expire_after: Duration,
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
        let src = Source::read(path)?;
        let raw: raw::RawConfig = src.parse()?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        validate(&src, &base, raw)
    }

    pub fn receiver(&self, name: &str) -> Option<&ReceiverConfig> {
        self.receivers.iter().find(|r| r.name() == name)
    }
}

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
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
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
        language,
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
        let url = match reqwest::Url::parse(&f.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(u) => {
                problems.push(src.problem(
                    &fp.key("url"),
                    format!("scheme {:?} is not http or https", u.scheme()),
                ));
                None
            }
            Err(e) => {
                problems.push(src.problem(&fp.key("url"), format!("not a URL: {e}")));
                None
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
        if f.page_size == 0 || f.page_size > 100_000 {
            problems.push(src.problem(&fp.key("page_size"), "must be between 1 and 100000"));
        }
        let mapping = validate_mapping(src, &fp.key("map"), &f.kind, &f.map, &mut problems, &fp);
        if let (Some(url), Some(schedule), Some(mapping)) = (url, schedule, mapping) {
            feeds.push(FeedConfig {
                name: f.name.clone(),
                department: f.department.clone(),
                url,
                schedule,
                schedule_text: f.schedule.clone(),
                timeout,
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
    for (i, name) in raw.notify.receivers.iter().enumerate() {
        if !rnames.contains(name) {
            problems.push(src.problem(
                &np.key("receivers").index(i),
                format!("no receiver named {name:?} is defined in [[receivers]]"),
            ));
        }
    }
    let notify = NotifyConfig {
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

    if problems.is_empty() {
        Ok(Config {
            file: src.path.clone(),
            daemon,
            feeds,
            receivers,
            notify,
            simulator,
        })
    } else {
        Err(Problems(problems))
    }
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
                format!("unknown feed kind {other:?} (roster, samples or intervals)"),
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("15d").unwrap(),
            Duration::from_secs(15 * 86400)
        );
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
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
    fn the_shipped_configs_validate() {
        for file in ["config/guardline.toml", "config/demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            if let Err(e) = Config::load(&path) {
                panic!("{file}: {e}");
            }
        }
    }
}
