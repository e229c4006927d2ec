//! `parley-gateway`: see the library for what it does.

use std::process::ExitCode;

/// jemalloc rather than glibc's allocator, for memory that comes back. The gateway's large
/// short-lived buffers (a history page, a replay, the answers a slow client left unread until
/// it was cut) went to glibc's heap once its adaptive mmap threshold had risen, and stayed
/// there after they were freed: a client cut for unread answers left the gateway 30 MiB larger
/// for good (25 → 55 MiB). jemalloc's background threads return freed pages within seconds
/// (29 → peak 106 → 36 MiB). mimalloc, tried too, kept the memory. See
/// `tests/backpressure.rs` and `docs/benchmarks.md`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    parley_service::init_tracing();
    let config = match parley_gateway::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("parley-gateway: {error}");
            return ExitCode::from(2);
        }
    };
    let shutdown = parley_service::shutdown_on_signals();
    let result = async {
        let app = parley_gateway::Application::build(config).await?;
        app.run_until_stopped(shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parley-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}
