//! Fetching one page of a feed over HTTP and decoding its JSON document.

use std::time::Duration;

use serde_json::Value;

use super::map::lookup;
use crate::config::FeedConfig;

/// Why a poll failed. `reason` is a short stable slug for metrics.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("no complete answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the body from {url} is larger than max_body_bytes = {limit}")]
    BodyTooLarge { url: String, limit: u64 },
    #[error("the body from {url} is not valid JSON: {detail}")]
    InvalidJson { url: String, detail: String },
    #[error("the document from {url} has no list of records at `{path}` (check records_path)")]
    NoRecords { url: String, path: String },
    #[error("the feed repeated its cursor {cursor:?}: the page did not advance")]
    CursorStuck { cursor: String },
    #[error("reading the body from {url}: {detail}")]
    Body { url: String, detail: String },
    #[error("storing the poll's result: {0}")]
    Store(String),
}

impl PollError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Status { .. } => "http_status",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::InvalidJson { .. } => "invalid_json",
            Self::NoRecords { .. } => "no_records",
            Self::CursorStuck { .. } => "cursor_stuck",
            Self::Body { .. } => "body",
            Self::Store(_) => "store",
        }
    }
}

/// One page of records and the cursor that follows it.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Value>,
    pub next: Option<String>,
}

/// The URL of a page: the feed URL with the cursor and the page size as query parameters.
pub fn page_url(feed: &FeedConfig, cursor: Option<&str>) -> reqwest::Url {
    let mut url = feed.url.clone();
    {
        let mut q = url.query_pairs_mut();
        if let Some(c) = cursor {
            q.append_pair(&feed.cursor_param, c);
        }
        q.append_pair(&feed.limit_param, &feed.page_size.to_string());
    }
    url
}

/// Fetches and decodes one page. The whole exchange runs under the feed's timeout and the
/// body is read in chunks so that a body over `max_body_bytes` is refused without buffering it.
pub async fn fetch_page(
    client: &reqwest::Client,
    feed: &FeedConfig,
    cursor: Option<&str>,
) -> Result<Page, PollError> {
    let url = page_url(feed, cursor);
    // Log and report the feed URL without its query (it may carry tokens in issue-3 feeds).
    let shown = {
        let mut u = url.clone();
        u.set_query(None);
        u.to_string()
    };
    let work = async {
        let mut resp = client.get(url.clone()).send().await.map_err(|e| {
            if e.is_timeout() {
                PollError::Timeout {
                    url: shown.clone(),
                    timeout: feed.timeout,
                }
            } else {
                PollError::Connect {
                    url: shown.clone(),
                    detail: root_cause(&e),
                }
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(PollError::Status {
                url: shown.clone(),
                status: status.as_u16(),
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
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| PollError::Body {
            url: shown.clone(),
            detail: root_cause(&e),
        })? {
            if body.len() as u64 + chunk.len() as u64 > feed.max_body_bytes {
                return Err(PollError::BodyTooLarge {
                    url: shown.clone(),
                    limit: feed.max_body_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(feed.timeout, work)
        .await
        .map_err(|_| PollError::Timeout {
            url: shown.clone(),
            timeout: feed.timeout,
        })??;
    decode_page(&body, feed, &shown)
}

/// Decodes a JSON page: records at `records_path`, next cursor at `next_cursor_path`.
pub fn decode_page(body: &[u8], feed: &FeedConfig, shown: &str) -> Result<Page, PollError> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|e| PollError::InvalidJson {
        url: shown.to_string(),
        detail: e.to_string(),
    })?;
    let next = match lookup(&doc, &feed.next_cursor_path) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let records = take_at(&mut doc, &feed.records_path).ok_or_else(|| PollError::NoRecords {
        url: shown.to_string(),
        path: feed.records_path.clone(),
    })?;
    Ok(Page { records, next })
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

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
