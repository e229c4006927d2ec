//! `parley-persistence-worker`: see the library for what it does.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    parley_service::init_tracing();
    let config = match parley_persistence_worker::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("parley-persistence-worker: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = parley_service::shutdown_on_signals();
    match parley_persistence_worker::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "persistence worker stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
