//! Serving the simulated feeds over HTTP, in the styles departments use.
//!
//! `GET /feeds/{name}` serves a feed as JSON `{"records": [...], "next": "SEQ", "total": N}`;
//! `/feeds/{name}.ndjson` as one JSON record per line; `/feeds/{name}.csv` as CSV with Chinese
//! headers in GBK (`?encoding=utf-8` for UTF-8, `&bom=1` with a byte-order mark). Paging:
//! `?since=SEQ&limit=N` (records after a cursor), `?page=P&size=N` (1-based pages) or
//! `?offset=K&limit=N`; a `Link: <…>; rel="next"` header names the next page. Responses carry
//! an `ETag` and a `Last-Modified`; `If-None-Match` / `If-Modified-Since` answer 304.
//! `GET /planted` lists the planted cases and decoys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::SimWorld;

pub fn router(world: Arc<SimWorld>) -> Router {
    Router::new()
        .route("/feeds/{name}", get(feed))
        .route("/planted", get(planted))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(world)
}

/// Chinese column names of the CSV exports.
fn header_zh(key: &str) -> &str {
    match key {
        "seq" => "序号",
        "record_id" => "记录编号",
        "hh_id" => "户编号",
        "id_number" => "身份证号",
        "student_id_number" => "学生身份证号",
        "village_code" => "行政村代码",
        "grade" => "鉴定等级",
        "assessed_on" => "鉴定日期",
        "issued_on" => "发证日期",
        "date" => "日期",
        "sample_date" => "采样日期",
        "level" => "残疾等级",
        "type" => "残疾类别",
        "event" => "事项",
        "amount" => "金额",
        "month" => "月份",
        "status" => "状态",
        "school" => "学校",
        "disaster" => "灾害类型",
        "loss" => "损失金额",
        "item" => "超标项目",
        "standard" => "标准",
        "claim_id" => "结算编号",
        "settle_date" => "结算日期",
        "total_cost" => "总费用",
        "fund_paid" => "统筹支付",
        "out_of_pocket" => "个人自付",
        other => other,
    }
}

fn csv_cell(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn to_csv(records: &[Value], first: Option<&Value>) -> String {
    let keys: Vec<String> = first
        .and_then(|r| r.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let mut out = keys
        .iter()
        .map(|k| header_zh(k))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    for r in records {
        let row: Vec<String> = keys
            .iter()
            .map(|k| csv_cell(r.get(k).unwrap_or(&Value::Null)))
            .collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A JSON page from the records' lines, copied as they are: `{"records": [...], "next":
/// "SEQ", "total": N}`, where `next` is the last record's `seq` (its position).
fn json_page(lines: &[u8], next: Option<usize>, total: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(lines.len() + 64);
    body.extend_from_slice(b"{\"records\":[");
    let mut first = true;
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(line);
    }
    let next = next.map_or_else(|| "null".to_string(), |n| format!("\"{n}\""));
    body.extend_from_slice(format!("],\"next\":{next},\"total\":{total}}}").as_bytes());
    body
}

async fn feed(
    State(w): State<Arc<SimWorld>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (base, format) = match name.rsplit_once('.') {
        Some((b, "ndjson")) => (b, "ndjson"),
        Some((b, "csv")) => (b, "csv"),
        _ => (name.as_str(), "json"),
    };
    let Some(records) = w.feed(base) else {
        return (StatusCode::NOT_FOUND, format!("no feed {name:?}\n")).into_response();
    };
    let num = |k: &str| q.get(k).map(|s| s.parse::<usize>());
    let bad = |m: &str| (StatusCode::BAD_REQUEST, format!("{m}\n")).into_response();
    let etag = format!("\"{}-{}-{}\"", base, records.len(), w.as_of);
    let last_modified = w.last_modified.clone();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
        || headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == last_modified)
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    // Records are numbered 1..=n in order, so cursors, offsets and pages are all indexes.
    let (start, limit, next_query) = if let Some(p) = num("page") {
        let Ok(p) = p else {
            return bad("page must be a number");
        };
        let size = match num("size") {
            None => 1000,
            Some(Ok(n)) => n.clamp(1, 100_000),
            Some(Err(_)) => return bad("size must be a number"),
        };
        let p = p.max(1);
        ((p - 1) * size, size, format!("page={}&size={size}", p + 1))
    } else {
        let limit = match num("limit") {
            None => 1000,
            Some(Ok(n)) => n.clamp(1, 100_000),
            Some(Err(_)) => return bad("limit must be a number"),
        };
        if let Some(o) = num("offset") {
            let Ok(o) = o else {
                return bad("offset must be a number");
            };
            (o, limit, format!("offset={}&limit={limit}", o + limit))
        } else {
            let since = match num("since") {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return bad("since must be a number"),
            };
            (
                since,
                limit,
                format!("since={}&limit={limit}", since + limit),
            )
        }
    };
    let end = start.saturating_add(limit).min(records.len());
    let range = start.min(end)..end;
    let more = end < records.len();
    let lines = match records.lines(range.clone()) {
        Ok(l) => l,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading feed {base}: {e}\n"),
            )
                .into_response();
        }
    };
    let mut resp = match format {
        "ndjson" => ([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response(),
        "csv" => {
            let page: Vec<Value> = lines
                .split(|b| *b == b'\n')
                .filter_map(|l| serde_json::from_slice(l).ok())
                .collect();
            let text = to_csv(&page, records.get(0).as_ref());
            let utf8 = q
                .get("encoding")
                .is_some_and(|e| e.eq_ignore_ascii_case("utf-8"));
            let (bytes, charset) = if utf8 {
                let mut b = Vec::new();
                if q.get("bom").is_some_and(|v| v == "1") {
                    b.extend_from_slice(b"\xEF\xBB\xBF");
                }
                b.extend_from_slice(text.as_bytes());
                (b, "utf-8")
            } else {
                (encoding_rs::GBK.encode(&text).0.into_owned(), "gbk")
            };
            (
                [(header::CONTENT_TYPE, format!("text/csv; charset={charset}"))],
                bytes,
            )
                .into_response()
        }
        _ => {
            let next = (!range.is_empty()).then_some(range.end);
            (
                [(header::CONTENT_TYPE, "application/json")],
                json_page(&lines, next, records.len()),
            )
                .into_response()
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if more {
        let link = format!("</feeds/{name}?{next_query}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
    }
    resp
}

async fn planted(State(w): State<Arc<SimWorld>>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "cases": w.cases, "decoys": w.decoys }))
}

/// Binds `addr` and serves until `shutdown` resolves; returns the bound address.
pub async fn serve(
    world: Arc<SimWorld>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    crate::api::serve_router(router(world), addr, shutdown).await
}
