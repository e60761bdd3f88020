//! Fetching one page of a feed over HTTP: auth, TLS, timeouts, size limits, conditional
//! requests and retries with backoff.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tracing::warn;

use crate::config::{FeedAuth, FeedConfig};
use crate::metrics::Metrics;
use crate::retry::{backoff, parse_retry_after};

/// Why a poll failed. `reason` is a short stable slug for metrics.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("no complete answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered HTTP {status}")]
    Status {
        url: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("the body from {url} is larger than max_body_bytes = {limit}")]
    BodyTooLarge { url: String, limit: u64 },
    #[error("the body from {url} is not valid JSON: {detail}")]
    InvalidJson { url: String, detail: String },
    #[error("{origin} is not valid CSV: {detail}")]
    InvalidCsv { origin: String, detail: String },
    #[error("{origin} cannot be decoded: {detail}")]
    Encoding { origin: String, detail: String },
    #[error("the document from {url} has no list of records at `{path}` (check records_path)")]
    NoRecords { url: String, path: String },
    #[error("the feed repeated a page (cursor {cursor:?}): it did not advance")]
    CursorStuck { cursor: String },
    #[error(
        "a page of {records} records would exceed max_records_per_poll = {limit}; nothing of it was applied"
    )]
    TooManyRecords { records: u64, limit: u64 },
    #[error("the answer from {url} broke off: {detail}")]
    Body { url: String, detail: String },
    #[error("reading {path}: {detail}")]
    File { path: String, detail: String },
    #[error("storing the poll's result: {0}")]
    Store(String),
    /// The store refuses writes: the poll applies nothing (the store logs why, once).
    #[error("not polled: {0}")]
    StorePaused(String),
}

impl PollError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { .. } => "http_status",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidCsv { .. } => "invalid_csv",
            Self::Encoding { .. } => "invalid_encoding",
            Self::NoRecords { .. } => "no_records",
            Self::CursorStuck { .. } => "cursor_stuck",
            Self::TooManyRecords { .. } => "too_many_records",
            Self::Body { .. } => "body",
            Self::File { .. } => "file",
            Self::Store(_) | Self::StorePaused(_) => "store",
        }
    }

    /// Transient failures worth retrying within the poll: timeouts, connection problems,
    /// 5xx and 429. Other 4xx and bad content are not retried.
    fn retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Body { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("feed {feed}: {detail}")]
pub struct ClientError {
    pub feed: String,
    pub detail: String,
}

/// The answer to a request: a body with its headers, or "not modified".
pub enum Fetched {
    NotModified,
    Body { body: Vec<u8>, headers: HeaderMap },
}

/// HTTP validators from the last poll, for conditional requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn of(headers: &HeaderMap) -> Self {
        let get = |h: HeaderName| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            etag: get(header::ETAG),
            last_modified: get(header::LAST_MODIFIED),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// One feed's HTTP client: its timeouts, CA certificate and credentials.
#[derive(Clone)]
pub struct FeedClient {
    http: reqwest::Client,
    auth: Option<(HeaderName, HeaderValue)>,
    metrics: Arc<Metrics>,
}

impl FeedClient {
    /// Builds the client; secrets and the CA file are read here, so a missing one fails at start.
    pub fn build(feed: &FeedConfig, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let err = |detail: String| ClientError {
            feed: feed.name.clone(),
            detail,
        };
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("guardline/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(feed.connect_timeout)
            .read_timeout(feed.read_timeout)
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(ca) = &feed.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| err(format!("ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                err(format!(
                    "ca_file {}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| err(format!("HTTP client: {e}")))?;
        let auth = match &feed.auth {
            None => None,
            Some(a) => {
                let secret = a.secret().read().map_err(|e| err(format!("auth: {e}")))?;
                let (name, value) = match a {
                    FeedAuth::Bearer(_) => (header::AUTHORIZATION, format!("Bearer {secret}")),
                    FeedAuth::Basic { username, .. } => {
                        use base64::Engine;
                        let pair = format!("{username}:{secret}");
                        (
                            header::AUTHORIZATION,
                            format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD.encode(pair)
                            ),
                        )
                    }
                    FeedAuth::Header { name, .. } => (
                        HeaderName::from_bytes(name.as_bytes())
                            .map_err(|e| err(format!("auth header name: {e}")))?,
                        secret,
                    ),
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    err("auth: the secret contains characters not allowed in a header".into())
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(Self {
            http,
            auth,
            metrics,
        })
    }

    /// Fetches `url`, retrying transient failures with backoff (honouring `Retry-After`).
    pub async fn get(
        &self,
        feed: &FeedConfig,
        url: &reqwest::Url,
        validators: Option<&Validators>,
    ) -> Result<Fetched, PollError> {
        let mut attempt = 0;
        loop {
            match self.get_once(feed, url, validators).await {
                Ok(f) => return Ok(f),
                Err(e) if e.retryable() && attempt < feed.retries => {
                    attempt += 1;
                    let wait = match &e {
                        PollError::Status {
                            retry_after: Some(d),
                            ..
                        } => *d,
                        _ => backoff(attempt, feed.retry_initial, feed.retry_max),
                    };
                    if wait > feed.retry_max.max(Duration::from_secs(1)) * 10 {
                        // The server asks for a long pause: leave it to the next scheduled poll.
                        return Err(e);
                    }
                    self.metrics
                        .feed_retries
                        .with_label_values(&[feed.name.as_str(), e.reason()])
                        .inc();
                    warn!(feed = %feed.name, attempt, reason = e.reason(), retry_in_ms = wait.as_millis() as u64,
                          error = %e, "request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_once(
        &self,
        feed: &FeedConfig,
        url: &reqwest::Url,
        validators: Option<&Validators>,
    ) -> Result<Fetched, PollError> {
        // Report the URL without its query (it may carry tokens).
        let shown = {
            let mut u = url.clone();
            u.set_query(None);
            u.to_string()
        };
        let mut req = self.http.get(url.clone());
        if let Some((name, value)) = &self.auth {
            req = req.header(name, value);
        }
        if let Some(v) = validators {
            if let Some(e) = &v.etag {
                req = req.header(header::IF_NONE_MATCH, e);
            }
            if let Some(m) = &v.last_modified {
                req = req.header(header::IF_MODIFIED_SINCE, m);
            }
        }
        let work = async {
            let mut resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    PollError::Timeout {
                        url: shown.clone(),
                        timeout: feed.timeout,
                    }
                } else if e.is_connect() {
                    PollError::Connect {
                        url: shown.clone(),
                        detail: root_cause(&e),
                    }
                } else {
                    // Connected, but the answer broke off (truncated, reset, malformed).
                    PollError::Body {
                        url: shown.clone(),
                        detail: root_cause(&e),
                    }
                }
            })?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if !status.is_success() {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
                return Err(PollError::Status {
                    url: shown.clone(),
                    status: status.as_u16(),
                    retry_after,
                });
            }
            if resp
                .content_length()
                .is_some_and(|n| n > feed.max_body_bytes)
            {
                return Err(PollError::BodyTooLarge {
                    url: shown.clone(),
                    limit: feed.max_body_bytes,
                });
            }
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    PollError::Timeout {
                        url: shown.clone(),
                        timeout: feed.read_timeout,
                    }
                } else {
                    PollError::Body {
                        url: shown.clone(),
                        detail: root_cause(&e),
                    }
                }
            })? {
                if body.len() as u64 + chunk.len() as u64 > feed.max_body_bytes {
                    return Err(PollError::BodyTooLarge {
                        url: shown.clone(),
                        limit: feed.max_body_bytes,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Fetched::Body { body, headers })
        };
        tokio::time::timeout(feed.timeout, work)
            .await
            .map_err(|_| PollError::Timeout {
                url: shown.clone(),
                timeout: feed.timeout,
            })?
    }
}

/// The `rel="next"` target of a `Link` header, resolved against `base`.
pub fn link_next(headers: &HeaderMap, base: &reqwest::Url) -> Option<reqwest::Url> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(',').find_map(|part| {
                let (target, params) = part.trim().split_once(';')?;
                let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
                let is_next = params.split(';').any(|p| {
                    p.trim()
                        .replace(' ', "")
                        .eq_ignore_ascii_case("rel=\"next\"")
                        || p.trim().eq_ignore_ascii_case("rel=next")
                });
                if is_next {
                    base.join(target).ok()
                } else {
                    None
                }
            })
        })
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "</feeds/x?page=1>; rel=\"prev\", </feeds/x?page=3&size=10>; rel=\"next\"",
            ),
        );
        let base = reqwest::Url::parse("http://127.0.0.1:9/feeds/x?page=2").unwrap();
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "http://127.0.0.1:9/feeds/x?page=3&size=10"
        );
        assert!(link_next(&HeaderMap::new(), &base).is_none());
    }
}
