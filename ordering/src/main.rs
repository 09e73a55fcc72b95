//! Runs the ordering service; everything but the wiring lives in the library.

use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let env = Env::new(&ProcessEnv);
    let config = or_exit(ordering::Config::from_env(&env));
    let telemetry_config = or_exit(TelemetryConfig::from_env(&env, "ordering"));
    let _guard = telemetry::init(&telemetry_config)?;
    let app = ordering::App::build(config).await?;
    app.run(platform::shutdown::cancel_on_signal()).await
}
