//! The serde shape of `guardline.toml`, with defaults. Unknown keys are errors.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub feeds: Vec<RawFeed>,
    #[serde(default)]
    pub receivers: Vec<RawReceiver>,
    #[serde(default)]
    pub notify: RawNotify,
    pub simulator: Option<RawSimulator>,
    #[serde(default)]
    pub lines: Vec<RawLine>,
    pub route: Option<RawRoute>,
    #[serde(default)]
    pub inhibit: Vec<RawInhibit>,
}

/// An inhibition rule: while a firing alert matches `source_matchers`, alerts matching
/// `target_matchers` with the same values of the `equal` labels are not notified.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInhibit {
    pub source_matchers: Vec<String>,
    pub target_matchers: Vec<String>,
    #[serde(default)]
    pub equal: Vec<String>,
}

/// A route of the routing tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub matchers: Vec<String>,
    #[serde(default)]
    pub receivers: Vec<String>,
    #[serde(rename = "continue", default)]
    pub cont: bool,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Labels that make a group (one message for the group's alerts).
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<String>,
    pub group_interval: Option<String>,
    pub repeat_interval: Option<String>,
    pub send_resolved: Option<bool>,
}

/// One value of a policy line (a monitoring income line, a reference income) for a year and
/// a region: a province (2 digits), a prefecture (4) or a county (6).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLine {
    pub name: String,
    pub year: i32,
    pub region: String,
    /// Yuan.
    pub value: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDaemon {
    pub data_dir: String,
    pub listen: String,
    pub rules_dir: String,
    pub evaluation_interval: String,
    pub pseudonym_key_file: Option<String>,
    pub create_pseudonym_key: bool,
    pub retention_months: u32,
    /// How long the notification log and the audit log keep an entry.
    pub log_retention: String,
    /// How often the running daemon writes the state snapshot.
    pub snapshot_interval: String,
    /// The least bytes of months' runs worth a new base of the months.
    pub base_rewrite_bytes: u64,
    pub language: String,
    /// API tokens (hashes only), roles and county scopes; no file, no API.
    pub tokens_file: Option<String>,
}

impl Default for RawDaemon {
    fn default() -> Self {
        Self {
            data_dir: "/var/lib/guardline".into(),
            listen: "127.0.0.1:9187".into(),
            rules_dir: "alerts".into(),
            evaluation_interval: "30s".into(),
            pseudonym_key_file: None,
            create_pseudonym_key: false,
            retention_months: 24,
            log_retention: "730d".into(),
            snapshot_interval: "1h".into(),
            base_rewrite_bytes: crate::state::DEFAULT_BASE_REWRITE_BYTES,
            language: "zh".into(),
            tokens_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub name: String,
    #[serde(default)]
    pub department: String,
    pub kind: String,
    /// An HTTP(S) URL, or leave it out and give `dir` for a drop folder of export files.
    pub url: Option<String>,
    pub dir: Option<String>,
    pub schedule: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default = "default_paging")]
    pub paging: String,
    #[serde(default = "default_page_param")]
    pub page_param: String,
    #[serde(default = "default_offset_param")]
    pub offset_param: String,
    pub cursor_field: Option<String>,
    #[serde(default)]
    pub conditional: bool,
    pub auth: Option<RawAuth>,
    pub ca_file: Option<String>,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_retry_initial")]
    pub retry_initial: String,
    #[serde(default = "default_retry_max")]
    pub retry_max: String,
    #[serde(default = "default_max_records")]
    pub max_records_per_poll: u64,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    #[serde(default = "default_max_pages")]
    pub max_pages_per_poll: u32,
    #[serde(default = "default_records_path")]
    pub records_path: String,
    #[serde(default = "default_next_path")]
    pub next_cursor_path: String,
    #[serde(default = "default_cursor_param")]
    pub cursor_param: String,
    #[serde(default = "default_limit_param")]
    pub limit_param: String,
    pub map: RawMap,
}

fn default_timeout() -> String {
    "30s".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}
fn default_read_timeout() -> String {
    "30s".into()
}
fn default_format() -> String {
    "json".into()
}
fn default_encoding() -> String {
    "utf-8".into()
}
fn default_paging() -> String {
    "cursor".into()
}
fn default_page_param() -> String {
    "page".into()
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_retries() -> u32 {
    3
}
fn default_retry_initial() -> String {
    "1s".into()
}
fn default_retry_max() -> String {
    "30s".into()
}
fn default_max_records() -> u64 {
    1_000_000
}

/// Credentials of a feed; secrets come from an environment variable or a file.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawAuth {
    Bearer {
        token_env: Option<String>,
        token_file: Option<String>,
    },
    Basic {
        username: String,
        password_env: Option<String>,
        password_file: Option<String>,
    },
    Header {
        name: String,
        value_env: Option<String>,
        value_file: Option<String>,
    },
}

fn default_page_size() -> u32 {
    1000
}
fn default_max_body() -> u64 {
    64 * 1024 * 1024
}
fn default_max_pages() -> u32 {
    10_000
}
fn default_records_path() -> String {
    "records".into()
}
fn default_next_path() -> String {
    "next".into()
}
fn default_cursor_param() -> String {
    "since".into()
}
fn default_limit_param() -> String {
    "limit".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AmountUnit {
    #[default]
    Yuan,
    Fen,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    pub record_id: String,
    // roster
    pub household: Option<String>,
    pub village: Option<String>,
    pub village_name: Option<String>,
    pub category: Option<String>,
    pub head_name: Option<String>,
    pub members: Option<String>,
    pub member_id: Option<String>,
    pub income_per_capita: Option<String>,
    #[serde(default)]
    pub income_unit: AmountUnit,
    // samples
    pub person: Option<String>,
    pub time: Option<String>,
    pub time_format: Option<String>,
    #[serde(default)]
    pub values: Vec<RawValue>,
    // events
    pub event: Option<String>,
    pub event_field: Option<String>,
    pub event_values: Option<std::collections::BTreeMap<String, String>>,
    pub amount: Option<String>,
    #[serde(default)]
    pub amount_unit: AmountUnit,
    // intervals
    pub interval_kind: Option<String>,
    pub interval_id: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValue {
    pub indicator: String,
    pub field: String,
    #[serde(default)]
    pub unit: AmountUnit,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawReceiver {
    File {
        name: String,
        path: String,
        #[serde(default)]
        stdout: bool,
    },
    Smtp(RawSmtp),
    /// Alertmanager's webhook JSON (version 4), POSTed to `url`.
    Webhook {
        name: String,
        url: String,
        bearer_env: Option<String>,
        bearer_file: Option<String>,
        #[serde(default = "default_smtp_timeout")]
        timeout: String,
    },
    /// A WeCom (企业微信) group robot; the key comes from the environment or a file.
    Wecom {
        name: String,
        #[serde(default = "default_wecom_url")]
        url: String,
        key_env: Option<String>,
        key_file: Option<String>,
        #[serde(default = "default_smtp_timeout")]
        timeout: String,
    },
    /// One or more Alertmanager instances (a cluster): alerts are pushed to `/api/v2/alerts`
    /// and firing ones re-sent every `resend_interval`, as Alertmanager expects.
    Alertmanager {
        name: String,
        urls: Vec<String>,
        #[serde(default = "default_resend")]
        resend_interval: String,
        #[serde(default = "default_smtp_timeout")]
        timeout: String,
    },
    /// A DingTalk (钉钉) group robot; the access token and the optional signing secret come
    /// from the environment or a file.
    Dingtalk {
        name: String,
        #[serde(default = "default_dingtalk_url")]
        url: String,
        token_env: Option<String>,
        token_file: Option<String>,
        secret_env: Option<String>,
        secret_file: Option<String>,
        #[serde(default = "default_smtp_timeout")]
        timeout: String,
    },
}

fn default_resend() -> String {
    "1m".into()
}
fn default_wecom_url() -> String {
    "https://qyapi.weixin.qq.com/cgi-bin/webhook/send".into()
}
fn default_dingtalk_url() -> String {
    "https://oapi.dingtalk.com/robot/send".into()
}

impl RawReceiver {
    pub fn name(&self) -> &str {
        match self {
            Self::File { name, .. } => name,
            Self::Smtp(s) => &s.name,
            Self::Webhook { name, .. }
            | Self::Wecom { name, .. }
            | Self::Dingtalk { name, .. }
            | Self::Alertmanager { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    Starttls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on loopback.
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub name: String,
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default = "default_tls")]
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    /// Extra CA certificate (PEM) to trust for this server, e.g. a county's private CA.
    pub ca_file: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default = "default_smtp_timeout")]
    pub timeout: String,
}

fn default_smtp_port() -> u16 {
    587
}
fn default_tls() -> SmtpTls {
    SmtpTls::Starttls
}
fn default_smtp_timeout() -> String {
    "20s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNotify {
    pub receivers: Vec<String>,
    pub send_resolved: bool,
    pub retry_initial: String,
    pub retry_max: String,
    pub expire_after: String,
    /// A warning with no disposition this long after firing is escalated.
    pub escalate_after: String,
    /// Receivers of escalations (e.g. the prefecture).
    pub escalate_to: Vec<String>,
    /// A firing warning without a disposition is sent again this often ("0s": never).
    pub repeat_interval: String,
    /// Templates of a receiver's subject and body, instead of the built-in ones.
    pub templates: std::collections::BTreeMap<String, RawTemplates>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    /// minijinja template files, relative to the configuration's folder.
    pub subject: String,
    pub body: String,
}

impl Default for RawNotify {
    fn default() -> Self {
        Self {
            receivers: Vec::new(),
            send_resolved: true,
            retry_initial: "5s".into(),
            retry_max: "10m".into(),
            expire_after: "3d".into(),
            escalate_after: "15d".into(),
            escalate_to: Vec::new(),
            repeat_interval: "3d".into(),
            templates: Default::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulator {
    pub listen: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_households")]
    pub households: u32,
}

fn default_seed() -> u64 {
    1
}
fn default_households() -> u32 {
    5000
}
