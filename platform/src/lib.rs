//! What every TicketFlow service stands on.
//!
//! A service's `main.rs` reads its configuration through [`config`], starts [`telemetry`], builds its
//! app and runs it until [`shutdown`] fires. Its HTTP surfaces share [`http`] (layers, serving,
//! problem+json errors via [`problem`]) and expose [`health`] (`/alive`, `/health`, `/metrics`).
//! [`db`] prepares Postgres; [`auth`] verifies the access tokens identity issues.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod db;
pub mod events;
pub mod health;
pub mod http;
pub mod problem;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

/// Installs the process-wide rustls crypto provider (ring).
///
/// reqwest is built without a provider of its own, so this must run before the first TLS client is
/// built; calling it more than once is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
