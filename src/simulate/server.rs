//! Serving the simulated feeds over HTTP.
//!
//! `GET /feeds/{name}?since=SEQ&limit=N` returns `{"records": [...], "next": "SEQ"}`: the
//! records with a sequence number above `since`, at most `limit` of them, and the sequence
//! number of the last one as the cursor for the next page (`next` is null on an empty page).
//! `GET /planted` lists the planted cases and decoys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::SimWorld;

pub fn router(world: Arc<SimWorld>) -> Router {
    Router::new()
        .route("/feeds/{name}", get(feed))
        .route("/planted", get(planted))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(world)
}

async fn feed(
    State(w): State<Arc<SimWorld>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(records) = w.feed(&name) else {
        return (StatusCode::NOT_FOUND, format!("no feed {name:?}\n")).into_response();
    };
    let since: usize = match q.get("since").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return (StatusCode::BAD_REQUEST, "since must be a number\n").into_response();
        }
    };
    let limit: usize = q
        .get("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 100_000);
    // Records are numbered 1..=n in order, so `since` is an index.
    let page = &records[since.min(records.len())..(since + limit).min(records.len())];
    let next = page
        .last()
        .and_then(|r| r.get("seq"))
        .map(|s| s.to_string());
    Json(json!({ "records": page, "next": next })).into_response()
}

async fn planted(State(w): State<Arc<SimWorld>>) -> Json<serde_json::Value> {
    Json(json!({ "cases": w.cases, "decoys": w.decoys }))
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address first via `bound`.
pub async fn serve(
    world: Arc<SimWorld>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        axum::serve(listener, router(world))
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((local, handle))
}
