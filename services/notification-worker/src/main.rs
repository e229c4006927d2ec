//! `parley-notification-worker`: see the library for what it does.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    parley_service::init_tracing();
    let config = match parley_notification_worker::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("parley-notification-worker: {error}");
            return ExitCode::from(2);
        }
    };
    let shutdown = parley_service::shutdown_on_signals();
    let result = async {
        let app = parley_notification_worker::Application::build(config).await?;
        app.run_until_stopped(shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "notification worker stopped");
            ExitCode::FAILURE
        }
    }
}
