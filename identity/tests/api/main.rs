//! identity's API tests: the service in-process, a real Postgres database per test.

#![allow(clippy::unwrap_used)]

mod admin;
mod helpers;
mod keys;
mod latency;
mod registration;
mod service_tokens;
mod sessions;
mod throttling;
mod verification;
