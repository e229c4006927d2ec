//! The workers' admin endpoint on `PARLEY_ADMIN_LISTEN`: `/healthz` (the process runs),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text). Workers have no other
//! HTTP surface, so this is what orchestrators probe and Prometheus scrapes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers whether the process's dependencies are reachable.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Binds `listen` now, so a bad address fails at start, and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = crate::telemetry::metrics();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(ready): State<ReadinessCheck>| async move {
                if ready().await {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route("/metrics", get(move || async move { handle.render() }))
        .with_state(ready);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((addr, task))
}
