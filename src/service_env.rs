//! What one service sees of the environment when the launcher runs it beside the others.
//!
//! All services share one process here, yet each reads plain names like `DATABASE_URL`. A service
//! reads `<SERVICE>_<NAME>` first (e.g. `CATALOG_DATABASE_URL`), then the launcher's defaults for it,
//! then the plain name, except for names that can only be per service (its database, its ports).

use std::collections::HashMap;

use platform::config::Source;

/// Settings that differ per service, so a plain `DATABASE_URL` must not leak into every one.
const PER_SERVICE: [&str; 5] =
    ["DATABASE_URL", "DATABASE_MAX_CONNECTIONS", "LISTEN_ADDR", "ADMIN_LISTEN_ADDR", "GRPC_LISTEN_ADDR"];

pub struct ServiceEnv {
    prefix: &'static str,
    defaults: HashMap<&'static str, String>,
    process: Box<dyn Source>,
}

impl ServiceEnv {
    pub fn new(prefix: &'static str, process: impl Source + 'static) -> Self {
        Self { prefix, defaults: HashMap::new(), process: Box::new(process) }
    }

    /// A value the launcher sets unless the operator overrides it.
    pub fn default(mut self, name: &'static str, value: &str) -> Self {
        self.defaults.insert(name, value.to_owned());
        self
    }
}

impl Source for ServiceEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.process
            .get(&format!("{}_{name}", self.prefix))
            .or_else(|| self.defaults.get(name).cloned())
            .or_else(|| if PER_SERVICE.contains(&name) { None } else { self.process.get(name) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pairs: &[(&'static str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn prefixed_names_win_over_defaults_and_plain_names() {
        let env = ServiceEnv::new(
            "CATALOG",
            process(&[("CATALOG_REDIS_URL", "redis://a"), ("REDIS_URL", "redis://b")]),
        )
        .default("REDIS_URL", "redis://c");
        assert_eq!(env.get("REDIS_URL").as_deref(), Some("redis://a"));
    }

    #[test]
    fn shared_names_fall_through_but_per_service_names_do_not() {
        let env = ServiceEnv::new(
            "IDENTITY",
            process(&[("DATABASE_URL", "postgres://elsewhere/x"), ("JWT_ISSUER", "me")]),
        );
        assert_eq!(env.get("JWT_ISSUER").as_deref(), Some("me"));
        assert_eq!(env.get("DATABASE_URL"), None, "each service keeps its own default database");
    }
}
