//! Runs the catalog service until SIGTERM or Ctrl-C.

use catalog::{App, Config};
use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let env = Env::new(&ProcessEnv);
    let config = or_exit(Config::from_env(&env));
    let _telemetry = telemetry::init(&or_exit(TelemetryConfig::from_env(&env, "catalog")))?;
    let app = App::build(config).await?;
    app.run(platform::shutdown::cancel_on_signal()).await
}
