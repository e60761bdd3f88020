//! The HTTP server: `/metrics`, `/healthz`, `/readyz` (no token; nothing in them
//! identifies a household or a person), `/-/reload`, and the token-protected `/api/v1`.

pub mod auth;
mod v1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    /// Set once the store is open, the configuration loaded and the first evaluation done.
    pub ready: Arc<AtomicBool>,
    /// The feeds' last poll outcomes: when every feed fails, the daemon is not ready.
    pub feeds: Arc<crate::feeds::FeedHealth>,
    /// The store: while it refuses writes, the daemon is not ready and API writes wait.
    pub store: Option<Arc<dyn crate::store::Store>>,
    /// Where `POST /-/reload` asks the daemon to reload.
    pub reload: Option<tokio::sync::mpsc::Sender<crate::daemon::ReloadRequest>>,
    /// The engine the API reads and acknowledges through; `None` in tests of the bare server.
    pub engine: Option<v1::Engine>,
    /// API tokens; `None`: the API is off.
    pub tokens: Option<Arc<auth::Tokens>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/reload", axum::routing::post(reload))
        .route("/api/v1/alerts", get(v1::list_alerts))
        .route("/api/v1/alerts/{fingerprint}", get(v1::get_alert))
        .route(
            "/api/v1/alerts/{fingerprint}/ack",
            axum::routing::post(v1::ack_alert),
        )
        .route(
            "/api/v1/silences",
            get(v1::list_silences).post(v1::create_silence),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(v1::expire_silence),
        )
        .route("/api/v1/notifications", get(v1::notifications))
        .route("/api/v1/audit", get(v1::audit))
        .with_state(state)
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(readiness(&s).is_ok()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Reloads the configuration and rules; 200 with what changed, or 400 with the problems
/// (the running set stays). Listen on loopback, or put the endpoint behind a proxy.
async fn reload(State(s): State<ApiState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    // With API tokens configured, a reload needs an admin token; without, the listener's
    // address (loopback by default) is the protection.
    if let Some(tokens) = &s.tokens {
        let secret = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match secret.and_then(|t| tokens.find(t.trim())) {
            Some(t) if t.role == auth::Role::Admin => {
                if let Some(engine) = &s.engine {
                    let entry = crate::engine::AuditEntry::by(t, "reload", "configuration", "");
                    if let Err(e) = engine.lock().await.audit(&entry) {
                        return (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("audit log: {e}\n"),
                        );
                    }
                }
            }
            Some(_) => {
                return (
                    StatusCode::FORBIDDEN,
                    "reloading needs an admin token\n".to_string(),
                );
            }
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    "reloading needs an admin token\n".to_string(),
                );
            }
        }
    }
    let Some(tx) = s.reload else {
        return (
            StatusCode::NOT_FOUND,
            "reload is not available\n".to_string(),
        );
    };
    let (answer, result) = tokio::sync::oneshot::channel();
    if tx.send(answer).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        );
    }
    match result.await {
        Ok(Ok(msg)) => (StatusCode::OK, format!("{msg}\n")),
        Ok(Err(problems)) => (
            StatusCode::BAD_REQUEST,
            format!("reload refused; the running configuration stays:\n{problems}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        ),
    }
}

/// Ready: the store is open and accepts writes, the configuration loaded and evaluated, and
/// not every feed failed its last poll. The error says why not (feed names only).
fn readiness(s: &ApiState) -> Result<(), String> {
    if !s.ready.load(Ordering::SeqCst) {
        return Err("starting or stopping".into());
    }
    if let Some(failure) = s.store.as_ref().and_then(|st| st.write_failure()) {
        return Err(format!(
            "the store refuses writes ({failure}); ingest paused until it is writable again"
        ));
    }
    if s.feeds.all_failing() {
        return Err(format!(
            "the last poll of every feed failed: {}",
            s.feeds.failing().join(", ")
        ));
    }
    Ok(())
}

async fn readyz(State(s): State<ApiState>) -> impl IntoResponse {
    match readiness(&s) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds and serves until `shutdown` resolves; returns the bound address.
pub async fn serve(
    state: ApiState,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    serve_router(router(state), addr, shutdown).await
}

/// Binds `addr`, serves `app` until `shutdown` resolves, and returns the bound address
/// (useful with port 0) and the server task.
pub async fn serve_router(
    app: Router,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((local, handle))
}
