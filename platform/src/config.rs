//! Typed configuration from environment variables.
//!
//! Every setting has a local-development default and is parsed once at start-up. A malformed value is
//! a [`ConfigError`] naming the variable and what was expected; `main` prints it as one line and exits.
//! Values are read through [`Source`] so tests pass a map instead of mutating the process environment.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Where configuration values come from.
pub trait Source: Send + Sync {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Source for HashMap<&'static str, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Wraps a [`Source`] and remembers every name asked of it.
///
/// Reading a configuration through it tells which variables that configuration reads, so a test can
/// prove that a deployment file sets no variable the service ignores (a typo or a dead setting).
#[derive(Debug, Default)]
pub struct RecordingSource<S> {
    inner: S,
    requested: Mutex<BTreeSet<String>>,
}

impl<S: Source> RecordingSource<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, requested: Mutex::new(BTreeSet::new()) }
    }

    /// Every name requested so far, whether or not the inner source had a value for it.
    pub fn requested(&self) -> BTreeSet<String> {
        self.requested.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Source> Source for RecordingSource<S> {
    fn get(&self, name: &str) -> Option<String> {
        self.requested.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned());
        self.inner.get(name)
    }
}

/// A configuration value that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {name} must be {expected} (got {got:?})")]
pub struct ConfigError {
    pub name: String,
    pub expected: String,
    pub got: String,
}

impl ConfigError {
    pub fn new(name: &str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Self { name: name.to_owned(), expected: expected.into(), got: got.into() }
    }
}

/// Reads typed values from a [`Source`], falling back to defaults when a variable is unset.
///
/// A variable set to the empty string counts as unset, the way shells and compose files leave them.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    source: &'a dyn Source,
}

impl<'a> Env<'a> {
    pub fn new(source: &'a dyn Source) -> Self {
        Self { source }
    }

    /// The raw value, if set and non-empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.source.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// A value parsed with `FromStr`; `expected` says what a valid value looks like.
    pub fn parse<T>(&self, name: &str, default: T, expected: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| ConfigError::new(name, expected, raw)),
        }
    }

    pub fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.string(name, default);
        raw.parse().map_err(|_| ConfigError::new(name, "a socket address such as 0.0.0.0:8080", raw))
    }

    /// A socket address under `name`, or under `old_name`, the name it had before, when only that is
    /// set. The flag says the old name was used, so the service can warn once logging is up.
    pub fn renamed_socket_addr(
        &self,
        name: &str,
        old_name: &str,
        default: &str,
    ) -> Result<(SocketAddr, bool), ConfigError> {
        match (self.optional(name), self.optional(old_name)) {
            (None, Some(_)) => Ok((self.socket_addr(old_name, default)?, true)),
            _ => Ok((self.socket_addr(name, default)?, false)),
        }
    }

    /// A URL with one of the given schemes (`http`, `postgres`, `redis`, `amqp`, ...).
    pub fn url(&self, name: &str, default: &str, schemes: &[&str]) -> Result<String, ConfigError> {
        let raw = self.string(name, default);
        let scheme_ok =
            raw.split_once("://").is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
        if scheme_ok {
            Ok(raw)
        } else {
            Err(ConfigError::new(
                name,
                format!("a URL starting with {}://", schemes.join("://, ")),
                redact_url(&raw),
            ))
        }
    }

    pub fn seconds(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| ConfigError::new(name, "a non-negative number of seconds", raw)),
        }
    }

    /// An integer within `range`.
    pub fn int_in<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let expected = format!("an integer from {} to {}", range.start(), range.end());
        let value = self.parse(name, default, &expected)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::new(name, expected, value.to_string()))
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.optional(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::new(name, "true or false", v)),
        }
    }
}

/// Hides the password in a URL (`amqp://guest:***@host`) before it is printed or logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Unwraps a start-up result or stops the process with one line on stderr.
///
/// For `main` only: configuration errors are the operator's to fix, a backtrace would not help them.
pub fn or_exit<T, E: Display>(result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn unset_and_empty_values_fall_back_to_the_default() {
        let source = env_of(&[("EMPTY", "  ")]);
        let env = Env::new(&source);
        assert_eq!(env.string("MISSING", "dflt"), "dflt");
        assert_eq!(env.string("EMPTY", "dflt"), "dflt");
    }

    #[test]
    fn a_malformed_value_names_the_variable_and_what_was_expected() {
        let source = env_of(&[("LISTEN_ADDR", "localhost"), ("POOL", "ten")]);
        let env = Env::new(&source);
        let err = env.socket_addr("LISTEN_ADDR", "0.0.0.0:1").unwrap_err();
        assert_eq!(err.name, "LISTEN_ADDR");
        assert!(err.to_string().contains("LISTEN_ADDR must be a socket address"), "{err}");
        let err = env.int_in("POOL", 5u32, 1..=100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: POOL must be an integer from 1 to 100 (got \"ten\")"
        );
    }

    #[test]
    fn out_of_range_integers_are_rejected() {
        let source = env_of(&[("POOL", "0")]);
        assert!(Env::new(&source).int_in("POOL", 5u32, 1..=100).is_err());
    }

    #[test]
    fn urls_must_have_an_allowed_scheme() {
        let source = env_of(&[("DATABASE_URL", "mysql://x"), ("REDIS_URL", "redis://127.0.0.1")]);
        let env = Env::new(&source);
        assert!(env.url("DATABASE_URL", "", &["postgres", "postgresql"]).is_err());
        assert_eq!(env.url("REDIS_URL", "", &["redis"]).unwrap(), "redis://127.0.0.1");
    }

    #[test]
    fn a_recording_source_remembers_every_name_asked_set_or_not() {
        let recording = RecordingSource::new(env_of(&[("LISTEN_ADDR", "0.0.0.0:9000"), ("UNREAD", "x")]));
        let env = Env::new(&recording);
        assert_eq!(env.socket_addr("LISTEN_ADDR", "0.0.0.0:1").unwrap().port(), 9000);
        assert_eq!(env.string("MISSING", "dflt"), "dflt");
        assert!(env.bool("FLAG", false).is_ok());
        let requested: Vec<String> = recording.requested().into_iter().collect();
        assert_eq!(requested, ["FLAG", "LISTEN_ADDR", "MISSING"]);
        assert_eq!(recording.into_inner().len(), 2, "the inner source is untouched");
    }

    #[test]
    fn passwords_never_reach_an_error_message() {
        let source = env_of(&[("AMQP_URL", "amqq://user:s3cret@broker:5672/%2f")]);
        let err = Env::new(&source).url("AMQP_URL", "", &["amqp"]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("postgres://postgres@127.0.0.1/x"), "postgres://postgres@127.0.0.1/x");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_renamed_address_still_answers_to_its_old_name_and_the_new_name_wins() {
        let old = env_of(&[("LISTEN_ADDR", "127.0.0.1:1")]);
        assert_eq!(
            Env::new(&old).renamed_socket_addr("ADMIN_LISTEN_ADDR", "LISTEN_ADDR", "0.0.0.0:2").unwrap(),
            ("127.0.0.1:1".parse().unwrap(), true)
        );
        let both = env_of(&[("LISTEN_ADDR", "127.0.0.1:1"), ("ADMIN_LISTEN_ADDR", "127.0.0.1:3")]);
        assert_eq!(
            Env::new(&both).renamed_socket_addr("ADMIN_LISTEN_ADDR", "LISTEN_ADDR", "0.0.0.0:2").unwrap(),
            ("127.0.0.1:3".parse().unwrap(), false)
        );
        let neither = env_of(&[]);
        assert_eq!(
            Env::new(&neither)
                .renamed_socket_addr("ADMIN_LISTEN_ADDR", "LISTEN_ADDR", "0.0.0.0:2")
                .unwrap()
                .0
                .port(),
            2
        );
    }

    #[test]
    fn seconds_and_booleans_parse() {
        let source = env_of(&[("TTL", "1.5"), ("FLAG", "off"), ("BAD", "maybe")]);
        let env = Env::new(&source);
        assert_eq!(env.seconds("TTL", Duration::ZERO).unwrap(), Duration::from_millis(1500));
        assert!(!env.bool("FLAG", true).unwrap());
        assert!(env.bool("BAD", true).is_err());
    }
}
