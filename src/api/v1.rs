//! `/api/v1`: alerts, acknowledgements, silences, the notification log and the audit log.
//! JSON, paginated; every request needs a bearer token; every write is audited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Role, Token};
use crate::alerts::{Ack, Alert, Disposition, format_time};
use crate::engine::AuditEntry;
use crate::model::now;
use crate::silence::Silence;

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// The token of a request, or the response refusing it (handlers return it as is).
#[allow(clippy::result_large_err)]
fn authenticate(s: &ApiState, headers: &HeaderMap, need: Role) -> Result<Token, Response> {
    let Some(tokens) = &s.tokens else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "the API is off: set daemon.tokens_file",
        ));
    };
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "a bearer token is required"))?;
    let t = tokens
        .find(secret.trim())
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unknown token"))?;
    if t.role < need {
        return Err(error(
            StatusCode::FORBIDDEN,
            &format!("the role {} may not do this", t.role.name()),
        ));
    }
    Ok(t.clone())
}

/// The token and the engine of a request, or the response refusing it.
#[allow(clippy::result_large_err)]
fn begin<'a>(
    s: &'a ApiState,
    headers: &HeaderMap,
    need: Role,
) -> Result<(Token, &'a Engine), Response> {
    let t = authenticate(s, headers, need)?;
    let engine = s.engine.as_ref().ok_or_else(not_found)?;
    Ok((t, engine))
}

/// Like [`begin`], for a request that writes: while the store refuses writes, 503 with the
/// reason, so that nothing changes in memory that the store would not keep.
#[allow(clippy::result_large_err)]
fn begin_write<'a>(
    s: &'a ApiState,
    headers: &HeaderMap,
    need: Role,
) -> Result<(Token, &'a Engine), Response> {
    let begun = begin(s, headers, need)?;
    if let Some(Err(e)) = s.store.as_ref().map(|store| store.writable()) {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()));
    }
    Ok(begun)
}

fn alert_json(a: &Alert, full: bool) -> Value {
    let mut v = json!({
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "entity": a.entity,
        "county": a.county.map(|c| c.to_string()),
        "severity": a.severity,
        "risk_category": a.risk_category,
        "status": a.status.name(),
        "active_since": format_time(a.active_since),
        "fired_at": a.fired_at.map(format_time),
        "resolved_at": a.resolved_at.map(format_time),
        "summary": a.summary,
        "labels": a.labels,
        "ack": a.ack.as_ref().map(|k| json!({"by": k.by, "at": format_time(k.at), "disposition": k.disposition.name(), "note": k.note})),
        "escalated_at": a.escalated_at.map(format_time),
    });
    if full && let Some(o) = v.as_object_mut() {
        o.insert("description".into(), a.description.clone().into());
        o.insert(
            "evidence".into(),
            serde_json::from_str(&a.evidence).unwrap_or(Value::Null),
        );
        o.insert(
            "history".into(),
            a.history
                .iter()
                .map(|(t, s)| json!({"at": format_time(*t), "status": s.name()}))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    v
}

fn page(q: &HashMap<String, String>) -> (usize, usize) {
    let p = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let per = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize)
        .clamp(1, 500);
    (p, per)
}

fn paged(items: Vec<Value>, q: &HashMap<String, String>) -> Value {
    let (p, per) = page(q);
    let total = items.len();
    let items: Vec<Value> = items.into_iter().skip((p - 1) * per).take(per).collect();
    json!({ "items": items, "total": total, "page": p, "per_page": per })
}

pub async fn list_alerts(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (t, engine) = match begin(&s, &headers, Role::Viewer) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let e = engine.lock().await;
    let mut alerts: Vec<&Alert> = e
        .alerts()
        .iter()
        .filter(|a| t.covers(a.county))
        .filter(|a| q.get("status").is_none_or(|v| a.status.name() == v))
        .filter(|a| q.get("rule").is_none_or(|v| &a.rule == v))
        .filter(|a| {
            q.get("county").is_none_or(|v| {
                a.county
                    .is_some_and(|c| c.to_string().starts_with(v.as_str()))
            })
        })
        .filter(|a| q.get("severity").is_none_or(|v| &a.severity == v))
        .collect();
    alerts.sort_by(|a, b| {
        (b.fired_at.unwrap_or(b.active_since), &a.fingerprint)
            .cmp(&(a.fired_at.unwrap_or(a.active_since), &b.fingerprint))
    });
    Json(paged(
        alerts.into_iter().map(|a| alert_json(a, false)).collect(),
        &q,
    ))
    .into_response()
}

pub async fn get_alert(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(fp): Path<String>,
) -> Response {
    let (t, engine) = match begin(&s, &headers, Role::Viewer) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let e = engine.lock().await;
    if !e.alerts().get(&fp).is_some_and(|a| t.covers(a.county)) {
        return not_found();
    }
    // The description and evidence are read from the store: while it is closed (a failed
    // write), 503 with the reason.
    match e.alerts().full(&fp) {
        Ok(Some(a)) => Json(alert_json(&a, true)).into_response(),
        Ok(None) => not_found(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    disposition: String,
    #[serde(default)]
    note: String,
}

pub async fn ack_alert(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(fp): Path<String>,
    body: Option<Json<AckBody>>,
) -> Response {
    let (t, engine) = match begin_write(&s, &headers, Role::Operator) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"disposition\": \"enrolled\"|\"dismissed\"|\"eliminated\", \"note\": \"...\"}",
        );
    };
    let disposition = match body.disposition.parse::<Disposition>() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut e = engine.lock().await;
    if !e.alerts().get(&fp).is_some_and(|a| t.covers(a.county)) {
        return not_found();
    }
    let at = now().timestamp();
    let ack = Ack {
        by: t.name.clone(),
        at,
        disposition,
        note: body.note.chars().take(2000).collect(),
    };
    match e.acknowledge(&fp, ack) {
        Ok(Some(a)) => {
            let entry = AuditEntry::by(&t, "ack", &fp, disposition.name());
            if let Err(err) = e.audit(&entry) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string());
            }
            Json(alert_json(&a, true)).into_response()
        }
        Ok(None) => not_found(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

fn silence_json(x: &Silence, at: i64) -> Value {
    json!({
        "id": x.id,
        "matchers": x.matchers,
        "starts_at": format_time(x.starts_at),
        "ends_at": format_time(x.ends_at),
        "created_by": x.created_by,
        "comment": x.comment,
        "active": x.active(at),
    })
}

fn silence_visible(t: &Token, x: &Silence) -> bool {
    match x.county_scope() {
        Some(c) => t.covers_prefix(&c),
        None => t.counties.is_empty(),
    }
}

pub async fn list_silences(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (t, engine) = match begin(&s, &headers, Role::Viewer) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let e = engine.lock().await;
    let at = now().timestamp();
    let items = e
        .silences()
        .iter()
        .filter(|x| silence_visible(&t, x))
        .map(|x| silence_json(x, at))
        .collect();
    Json(paged(items, &q)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    matchers: Vec<String>,
    starts_at: Option<String>,
    /// An RFC 3339 time, or a duration from the start such as "3d".
    ends_at: String,
    comment: String,
}

pub async fn create_silence(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Option<Json<SilenceBody>>,
) -> Response {
    let (t, engine) = match begin_write(&s, &headers, Role::Operator) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"matchers\": [\"county=632522\", ...], \"ends_at\": \"3d\", \"comment\": \"...\"}",
        );
    };
    let at = now().timestamp();
    let parse_time = |v: &str| -> Result<i64, String> {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|d| d.timestamp())
            .map_err(|_| format!("{v:?} is not an RFC 3339 time"))
    };
    let starts_at = match body.starts_at.as_deref().map(parse_time).transpose() {
        Ok(v) => v.unwrap_or(at),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let ends_at = match crate::config::parse_duration(&body.ends_at) {
        Ok(d) => starts_at + d.as_secs() as i64,
        Err(_) => match parse_time(&body.ends_at) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        },
    };
    if ends_at <= starts_at || body.comment.trim().is_empty() || body.matchers.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "a silence needs matchers, a comment, and an end after its start",
        );
    }
    let id = {
        let e = engine.lock().await;
        format!(
            "{:016x}",
            crate::state::record_tag(
                "silence",
                &format!("{at}{}{}", body.comment, e.silences().len())
            )
        )
    };
    let silence = Silence {
        id,
        matchers: body.matchers,
        starts_at,
        ends_at,
        created_by: t.name.clone(),
        comment: body.comment.chars().take(2000).collect(),
    };
    if let Err(e) = silence.parsed() {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    // An operator silences only within its counties: a county matcher is required.
    if !silence_visible(&t, &silence) {
        return error(
            StatusCode::FORBIDDEN,
            "a silence of this token must match county=<one of its counties>",
        );
    }
    let mut e = engine.lock().await;
    let entry = AuditEntry::by(
        &t,
        "silence.create",
        &silence.id,
        &silence.matchers.join(","),
    );
    match e
        .add_silence(silence.clone())
        .and_then(|()| e.audit(&entry))
    {
        Ok(()) => (StatusCode::CREATED, Json(silence_json(&silence, at))).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

pub async fn expire_silence(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (t, engine) = match begin_write(&s, &headers, Role::Operator) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut e = engine.lock().await;
    if !e
        .silences()
        .iter()
        .any(|x| x.id == id && silence_visible(&t, x))
    {
        return not_found();
    }
    let at = now().timestamp();
    let entry = AuditEntry::by(&t, "silence.expire", &id, "");
    match e.expire_silence(&id, at).and_then(|_| e.audit(&entry)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

pub async fn notifications(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (t, engine) = match begin(&s, &headers, Role::Viewer) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let e = engine.lock().await;
    match e.notification_log(10_000) {
        Ok(log) => {
            let items = log
                .into_iter()
                .filter(|d| t.covers(d.county))
                .map(|d| json!({
                    "key": d.key, "receiver": d.receiver, "fingerprint": d.fingerprint, "rule": d.rule,
                    "county": d.county.map(|c| c.to_string()), "status": d.status.name(), "escalation": d.escalation,
                    "attempts": d.attempts, "delivered_at": format_time(d.delivered_at),
                }))
                .collect();
            Json(paged(items, &q)).into_response()
        }
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

pub async fn audit(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (_, engine) = match begin(&s, &headers, Role::Admin) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let e = engine.lock().await;
    match e.audit_log(10_000) {
        Ok(log) => Json(paged(
            log.into_iter()
                .map(|a| json!({"at": format_time(a.at), "token": a.token, "role": a.role, "action": a.action, "target": a.target, "detail": a.detail}))
                .collect(),
            &q,
        ))
        .into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

pub type Engine = Arc<tokio::sync::Mutex<crate::engine::Engine>>;
