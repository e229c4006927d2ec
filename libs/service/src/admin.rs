//! The workers' admin endpoint on `PARLEY_ADMIN_LISTEN`: `/healthz` (the process runs),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text). Workers have no other
//! HTTP surface, so this is what orchestrators probe and Prometheus scrapes.
//!
//! Binding and serving are two steps, so that a process binds while it is built (a bad address
//! fails at start, and a test that asked for port 0 reads the real address) and serves once it
//! runs, until the shutdown token it runs under fires.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Answers whether the process's dependencies are reachable.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// A [`ReadinessCheck`] from an async closure.
pub fn readiness<F, Fut>(check: F) -> ReadinessCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// Whether a worker has applied its streams and consumers. Connected is not enough for ready:
/// on a cluster that has just formed, applying them can take many seconds, and a worker that
/// says it is ready before its consumers exist lets an orchestrator (or a test) count on work
/// nobody is doing yet.
#[derive(Debug, Clone, Default)]
pub struct SetUp(Arc<std::sync::atomic::AtomicBool>);

impl SetUp {
    /// Marks the setup done, for good.
    pub fn done(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_done(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The admin endpoint's socket, bound but not serving yet.
#[derive(Debug)]
pub struct AdminListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl AdminListener {
    /// Binds `listen` (port 0 picks a free port); the error names `PARLEY_ADMIN_LISTEN`, where
    /// the address came from.
    pub async fn bind(listen: SocketAddr) -> Result<Self, crate::config::ConfigError> {
        let cannot_bind = |error: std::io::Error| crate::config::ConfigError {
            variable: "PARLEY_ADMIN_LISTEN",
            problem: format!("cannot bind {listen}: {error}"),
        };
        let listener = TcpListener::bind(listen).await.map_err(cannot_bind)?;
        let addr = listener.local_addr().map_err(cannot_bind)?;
        Ok(Self { listener, addr })
    }

    /// The bound address: the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
    pub fn serve(self, ready: ReadinessCheck, shutdown: CancellationToken) -> JoinHandle<()> {
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
        let listener = self.listener;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::warn!(%error, "the admin endpoint stopped");
            }
        })
    }
}
