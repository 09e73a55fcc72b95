//! Runs the GraphQL gateway until SIGTERM or Ctrl-C.

use gateway::{App, Config};
use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let env = Env::new(&ProcessEnv);
    let config = or_exit(Config::from_env(&env));
    let _telemetry = telemetry::init(&or_exit(TelemetryConfig::from_env(&env, "gateway")))?;
    let app = App::build(config).await?;
    println!("GraphQL playground: {}", app.playground_url());
    app.run(platform::shutdown::cancel_on_signal()).await
}
