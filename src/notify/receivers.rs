//! Receivers: where notifications go. Every send runs under a timeout.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::AsyncWriteExt;

use super::Notification;
use crate::alerts::format_time;
use crate::config::{
    AlertmanagerConfig, HttpReceiverConfig, HttpReceiverKind, ReceiverConfig, SmtpConfig, SmtpTls,
};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("writing {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SMTP server {server}: {detail}")]
    Smtp { server: String, detail: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("receiver asked to retry after {0:?}: {1}")]
    RetryAfter(Duration, String),
    #[error("{0}")]
    Retryable(String),
    /// Refused for good (a 4xx other than 429, a robot's configuration error): not retried.
    #[error("refused: {0}")]
    Permanent(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("receiver {receiver}: {detail}")]
    Invalid { receiver: String, detail: String },
}

pub enum Receiver {
    Alertmanager {
        cfg: AlertmanagerConfig,
        client: reqwest::Client,
    },
    Http {
        cfg: HttpReceiverConfig,
        client: reqwest::Client,
        secret: Option<String>,
        signing: Option<String>,
    },
    File {
        path: PathBuf,
        stdout: bool,
    },
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        to: Vec<Mailbox>,
        server: String,
        timeout: Duration,
    },
}

impl Receiver {
    /// Builds a receiver; secrets are read here, so a missing one fails at start.
    pub fn build(cfg: &ReceiverConfig) -> Result<Self, BuildError> {
        match cfg {
            ReceiverConfig::File { path, stdout, .. } => Ok(Self::File {
                path: path.clone(),
                stdout: *stdout,
            }),
            ReceiverConfig::Smtp(s) => build_smtp(s),
            ReceiverConfig::Alertmanager(a) => Ok(Self::Alertmanager {
                client: reqwest::Client::builder()
                    .timeout(a.timeout)
                    .user_agent(concat!("guardline/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| BuildError::Invalid {
                        receiver: a.name.clone(),
                        detail: e.to_string(),
                    })?,
                cfg: a.clone(),
            }),
            ReceiverConfig::Http(h) => {
                let invalid = |detail: String| BuildError::Invalid {
                    receiver: h.name.clone(),
                    detail,
                };
                let read = |s: &Option<crate::config::SecretSource>| {
                    s.as_ref().map(|s| s.read()).transpose().map_err(invalid)
                };
                Ok(Self::Http {
                    client: reqwest::Client::builder()
                        .timeout(h.timeout)
                        .user_agent(concat!("guardline/", env!("CARGO_PKG_VERSION")))
                        .build()
                        .map_err(|e| BuildError::Invalid {
                            receiver: h.name.clone(),
                            detail: e.to_string(),
                        })?,
                    secret: read(&h.secret)?,
                    signing: read(&h.signing)?,
                    cfg: h.clone(),
                })
            }
        }
    }

    /// Sends the notifications of one group as one message (a file gets each).
    pub async fn send_group(&self, ns: &[Notification]) -> Result<(), SendError> {
        match ns {
            [] => Ok(()),
            [n] => self.send(n).await,
            _ => match self {
                Self::File { .. } => {
                    for n in ns {
                        self.send(n).await?;
                    }
                    Ok(())
                }
                Self::Alertmanager { cfg, client } => {
                    let now = crate::model::now().timestamp();
                    let alerts: Vec<serde_json::Value> = ns
                        .iter()
                        .map(|n| {
                            let ends = n
                                .ends_at
                                .unwrap_or(now + 4 * cfg.resend_interval.as_secs() as i64);
                            am_alert(&n.labels, &n.summary, &n.description, n.starts_at, ends)
                        })
                        .collect();
                    push_alertmanager(cfg, client, &alerts).await
                }
                Self::Http { cfg, .. } if cfg.kind == HttpReceiverKind::Webhook => {
                    self.send(&combined(ns)).await
                }
                _ => self.send(&combined(ns)).await,
            },
        }
    }

    pub async fn send(&self, n: &Notification) -> Result<(), SendError> {
        match self {
            Self::Http {
                cfg,
                client,
                secret,
                signing,
            } => send_http(cfg, client, secret.as_deref(), signing.as_deref(), n).await,
            Self::Alertmanager { cfg, client } => {
                let ends = n.ends_at.unwrap_or_else(|| {
                    crate::model::now().timestamp() + 4 * cfg.resend_interval.as_secs() as i64
                });
                let alert = am_alert(&n.labels, &n.summary, &n.description, n.starts_at, ends);
                push_alertmanager(cfg, client, &[alert]).await
            }
            Self::File { path, stdout } => {
                let text = format!(
                    "=== {} [{}] rule={} county={} key={}\n主题: {}\n\n{}\n",
                    format_time(n.created_at),
                    n.status.name(),
                    n.rule,
                    n.county
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.key,
                    n.subject,
                    n.body.trim_end()
                );
                let err = |source| SendError::File {
                    path: path.clone(),
                    source,
                };
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(err)?;
                f.write_all(text.as_bytes()).await.map_err(err)?;
                f.flush().await.map_err(err)?;
                if *stdout {
                    println!("{}", n.subject);
                }
                Ok(())
            }
            Self::Smtp {
                transport,
                from,
                to,
                server,
                timeout,
            } => {
                let mut b = Message::builder()
                    .from(from.clone())
                    .subject(n.subject.clone())
                    .message_id(Some(format!("<{}@guardline>", n.key)))
                    .header(ContentType::TEXT_PLAIN);
                for t in to {
                    b = b.to(t.clone());
                }
                let msg = b.body(n.body.clone()).map_err(|e| SendError::Smtp {
                    server: server.clone(),
                    detail: format!("building the message: {e}"),
                })?;
                match tokio::time::timeout(*timeout, transport.send(msg)).await {
                    Err(_) => Err(SendError::Timeout(*timeout)),
                    Ok(Err(e)) => Err(SendError::Smtp {
                        server: server.clone(),
                        detail: e.to_string(),
                    }),
                    Ok(Ok(_)) => Ok(()),
                }
            }
        }
    }
}

fn build_smtp(s: &SmtpConfig) -> Result<Receiver, BuildError> {
    let invalid = |detail: String| BuildError::Invalid {
        receiver: s.name.clone(),
        detail,
    };
    let tls = match s.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::Starttls | SmtpTls::Tls => {
            let mut params = TlsParameters::builder(s.host.clone());
            if let Some(ca) = &s.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| invalid(format!("ca_file {}: {e}", ca.display())))?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    invalid(format!(
                        "ca_file {}: not a PEM certificate: {e}",
                        ca.display()
                    ))
                })?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| invalid(format!("TLS setup for {}: {e}", s.host)))?;
            if s.tls == SmtpTls::Starttls {
                Tls::Required(params)
            } else {
                Tls::Wrapper(params)
            }
        }
    };
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host).tls(tls);
    let mut builder = builder.port(s.port).timeout(Some(s.timeout));
    if let Some(user) = &s.username {
        let password = match &s.password {
            Some(src) => src.read().map_err(|e| invalid(format!("password: {e}")))?,
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let from = s
        .from
        .parse::<Mailbox>()
        .map_err(|e| invalid(format!("from {:?}: {e}", s.from)))?;
    let to =
        s.to.iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| invalid(format!("to {t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
    Ok(Receiver::Smtp {
        transport: builder.build(),
        from,
        to,
        server: format!("{}:{}", s.host, s.port),
        timeout: s.timeout,
    })
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Alertmanager's webhook payload (version 4) for one notification.
pub fn webhook_payload(receiver: &str, n: &Notification) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), n.summary.clone().into());
    annotations.insert("description".into(), n.description.clone().into());
    let group_labels: serde_json::Map<String, serde_json::Value> = n
        .labels
        .iter()
        .filter(|(k, _)| *k == "rule" || *k == "county")
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let all: Vec<&Notification> = std::iter::once(n)
        .chain(n.grouped.iter().map(|b| b.as_ref()))
        .collect();
    let alerts: Vec<serde_json::Value> = all
        .iter()
        .map(|m| {
            let mut ann = serde_json::Map::new();
            ann.insert("summary".into(), m.summary.clone().into());
            ann.insert("description".into(), m.description.clone().into());
            serde_json::json!({
                "status": m.status.name(),
                "labels": m.labels,
                "annotations": ann,
                "startsAt": rfc3339(m.starts_at),
                "endsAt": m.ends_at.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "generatorURL": "",
                "fingerprint": m.fingerprint,
            })
        })
        .collect();
    let status = if all
        .iter()
        .any(|m| m.status == crate::alerts::Status::Firing)
    {
        "firing"
    } else {
        "resolved"
    };
    let common: std::collections::BTreeMap<&String, &String> = n
        .labels
        .iter()
        .filter(|(k, v)| all.iter().all(|m| m.labels.get(*k) == Some(*v)))
        .collect();
    serde_json::json!({
        "version": "4",
        "groupKey": n.group.clone(),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": if all.len() == 1 { serde_json::Value::Object(annotations) } else { serde_json::json!({}) },
        "externalURL": "",
        "alerts": alerts,
    })
}

/// The notification as robot markdown: the subject as a heading, the body line by line.
fn markdown(n: &Notification) -> String {
    let lines: Vec<&str> = n.body.lines().filter(|l| !l.trim().is_empty()).collect();
    format!("#### {}\n\n{}", n.subject, lines.join("\n\n"))
}

async fn send_http(
    cfg: &HttpReceiverConfig,
    client: &reqwest::Client,
    secret: Option<&str>,
    signing: Option<&str>,
    n: &Notification,
) -> Result<(), SendError> {
    let mut url = cfg.url.clone();
    let mut req_body = match cfg.kind {
        HttpReceiverKind::Webhook => webhook_payload(&cfg.name, n),
        HttpReceiverKind::Wecom => {
            serde_json::json!({"msgtype": "markdown", "markdown": {"content": markdown(n)}})
        }
        HttpReceiverKind::Dingtalk => {
            serde_json::json!({"msgtype": "markdown", "markdown": {"title": n.subject, "text": markdown(n)}})
        }
    };
    match cfg.kind {
        HttpReceiverKind::Wecom => {
            url.query_pairs_mut()
                .append_pair("key", secret.unwrap_or_default());
        }
        HttpReceiverKind::Dingtalk => {
            url.query_pairs_mut()
                .append_pair("access_token", secret.unwrap_or_default());
            if let Some(sig) = signing {
                use base64::Engine;
                use hmac::{Hmac, Mac};
                let ts = chrono::Utc::now().timestamp_millis();
                // Invariant: HMAC accepts keys of any length.
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(sig.as_bytes())
                    .expect("HMAC takes any key length");
                mac.update(format!("{ts}\n{sig}").as_bytes());
                let sign =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                url.query_pairs_mut()
                    .append_pair("timestamp", &ts.to_string())
                    .append_pair("sign", &sign);
            }
        }
        HttpReceiverKind::Webhook => {}
    }
    if cfg.kind == HttpReceiverKind::Webhook {
        // Receivers drop duplicates by this key (the same notification after a crash).
        if let Some(o) = req_body.as_object_mut() {
            o.insert("notificationKey".into(), n.key.clone().into());
        }
    }
    let mut req = client.post(url).json(&req_body);
    if cfg.kind == HttpReceiverKind::Webhook
        && let Some(token) = secret
    {
        req = req.bearer_auth(token);
    }
    // Say where, never the key or token in the query.
    let mut shown = cfg.url.clone();
    shown.set_query(None);
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            SendError::Timeout(cfg.timeout)
        } else {
            SendError::Retryable(format!("{shown}: {}", e.without_url()))
        }
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry::parse_retry_after(v, chrono::Utc::now()));
    let text = resp.text().await.unwrap_or_default();
    let short: String = text.chars().take(200).collect();
    if status.as_u16() == 429 {
        return Err(match retry_after {
            Some(d) => SendError::RetryAfter(d, format!("{shown} answered 429")),
            None => SendError::Retryable(format!("{shown} answered 429")),
        });
    }
    if status.is_server_error() {
        return Err(SendError::Retryable(format!(
            "{shown} answered HTTP {status}: {short}"
        )));
    }
    if !status.is_success() {
        return Err(SendError::Permanent(format!(
            "{shown} answered HTTP {status}: {short}"
        )));
    }
    if cfg.kind != HttpReceiverKind::Webhook {
        // Robots answer 200 with an error code in the body.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let code = v.get("errcode").and_then(|c| c.as_i64()).unwrap_or(-1);
        let msg = v.get("errmsg").and_then(|m| m.as_str()).unwrap_or("");
        match code {
            0 => {}
            // Too many messages: WeCom 45009, DingTalk 130101; -1: busy.
            45009 | 130101 | -1 => {
                return Err(SendError::Retryable(format!(
                    "{shown}: errcode {code} {msg}"
                )));
            }
            _ => {
                return Err(SendError::Permanent(format!(
                    "{shown}: errcode {code} {msg}"
                )));
            }
        }
    }
    Ok(())
}

/// One alert as Alertmanager's `/api/v2/alerts` takes it; `alertname` is the rule.
pub fn am_alert(
    labels: &std::collections::BTreeMap<String, String>,
    summary: &str,
    description: &str,
    starts: i64,
    ends: i64,
) -> serde_json::Value {
    let mut l = labels.clone();
    if let Some(rule) = labels.get("rule") {
        l.insert("alertname".into(), rule.clone());
    }
    serde_json::json!({
        "labels": l,
        "annotations": {"summary": summary, "description": description},
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
        "generatorURL": "",
    })
}

/// Posts alerts to every Alertmanager of the receiver (each deduplicates them).
pub async fn push_alertmanager(
    cfg: &AlertmanagerConfig,
    client: &reqwest::Client,
    alerts: &[serde_json::Value],
) -> Result<(), SendError> {
    let mut failures = Vec::new();
    for base in &cfg.urls {
        let url = match base.join("api/v2/alerts") {
            Ok(u) => u,
            Err(e) => return Err(SendError::Permanent(format!("{base}: {e}"))),
        };
        match client.post(url.clone()).json(alerts).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Err(SendError::Permanent(format!(
                    "{url} answered HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                )));
            }
            Ok(r) => failures.push(format!("{url} answered HTTP {}", r.status())),
            Err(e) => failures.push(format!("{url}: {}", e.without_url())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(SendError::Retryable(failures.join("; ")))
    }
}

/// One message for a group: a subject naming the count, the bodies one after the other.
/// A webhook payload lists every alert of the group.
fn combined(ns: &[Notification]) -> Notification {
    let first = &ns[0];
    let mut n = first.clone();
    n.subject = format!("{}（同组共 {} 条）", first.subject, ns.len());
    n.body = ns
        .iter()
        .map(|m| m.body.trim_end())
        .collect::<Vec<_>>()
        .join("\n\n――――――――――――\n\n");
    n.key = format!("{}+{}", first.key, ns.len());
    n.grouped = ns.iter().skip(1).cloned().map(Box::new).collect();
    n
}
