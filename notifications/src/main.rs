//! Runs the notifications worker with configuration from the environment.

use notifications::{App, Config};
use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let env = Env::new(&ProcessEnv);
    let config = or_exit(Config::from_env(&env));
    let telemetry_config = or_exit(TelemetryConfig::from_env(&env, "notifications"));
    let _telemetry = telemetry::init(&telemetry_config)?;
    let app = App::build(config).await?;
    tracing::info!(admin.addr = %app.http_addr(), "notifications worker starting");
    app.run(platform::shutdown::cancel_on_signal()).await
}
