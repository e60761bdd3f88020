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
use crate::config::{ReceiverConfig, SmtpConfig, SmtpTls};

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
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("receiver {receiver}: {detail}")]
    Invalid { receiver: String, detail: String },
}

pub enum Receiver {
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
        }
    }

    pub async fn send(&self, n: &Notification) -> Result<(), SendError> {
        match self {
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
