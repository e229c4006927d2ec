//! `parley-gateway`: see the library for what it does.

use std::process::ExitCode;

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
