//! `identity`: serves the identity API, or runs an operator command against its database.

use std::time::Duration;

use clap::{Parser, Subcommand};
use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

/// TicketFlow identity service. Configuration comes from the environment (DATABASE_URL, LISTEN_ADDR, ...).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Give a registered account a role, e.g. `identity grant-role alice@example.com admin`.
    GrantRole { email: String, role: String },
    /// Create a new token-signing key; the current one keeps verifying until its tokens expire.
    RotateSigningKey {
        /// Seconds before the new key starts signing (ignored for the very first key, which signs at
        /// once). Replicas publish it at their next key reload, so verifiers learn it before its first
        /// token as long as this is above SIGNING_KEYS_RELOAD_SECS.
        #[arg(long, default_value_t = 120)]
        activate_after_secs: u64,
    },
    /// Seal every signing key under the current key-encryption key (the first of KEY_ENCRYPTION_KEYS),
    /// as start-up does; afterwards the older key-encryption keys can be removed from the list.
    RewrapKeys,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let cli = Cli::parse();
    let env = Env::new(&ProcessEnv);
    let config = or_exit(identity::Config::from_env(&env));
    let _telemetry = telemetry::init(&or_exit(TelemetryConfig::from_env(&env, "identity")))?;

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = identity::App::build(config).await?;
            app.run(platform::shutdown::cancel_on_signal()).await
        }
        Command::GrantRole { email, role } => {
            operator_command(identity::admin::grant_role(&config.database.url, &email, &role)).await;
            println!("{email} now has the role {role}; it takes effect at their next login or token refresh");
            Ok(())
        }
        Command::RotateSigningKey { activate_after_secs } => {
            let activate_after = Duration::from_secs(activate_after_secs);
            let kid = operator_command(identity::admin::rotate_signing_key(
                &config.database.url,
                &config.key_encryption,
                activate_after,
            ))
            .await;
            println!(
                "new signing key {kid} starts signing in {activate_after_secs} s (at once if it is the first \
                 key); running replicas publish it at their next key reload (SIGNING_KEYS_RELOAD_SECS)"
            );
            Ok(())
        }
        Command::RewrapKeys => {
            let resealed =
                operator_command(identity::admin::rewrap_keys(&config.database.url, &config.key_encryption))
                    .await;
            println!(
                "every signing key is sealed under key-encryption key {:?} ({} were in plain text, {} under \
                 older keys); the older keys can now be removed from KEY_ENCRYPTION_KEYS",
                config.key_encryption.current_id(),
                resealed.from_plain_text,
                resealed.from_older_keks
            );
            Ok(())
        }
    }
}

/// An operator's mistake (unknown email, database unreachable) is one line on stderr, not a backtrace.
async fn operator_command<T>(command: impl Future<Output = anyhow::Result<T>>) -> T {
    match command.await {
        Ok(value) => value,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}
