//! Names a test must not share with any other: database names, Redis key prefix, exchange and queues.

use uuid::Uuid;

/// One test's private names, all derived from one random id.
#[derive(Debug, Clone)]
pub struct TestNames {
    pub id: String,
}

impl Default for TestNames {
    fn default() -> Self {
        Self::new()
    }
}

impl TestNames {
    pub fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self { id: id[..12].to_owned() }
    }

    /// A Postgres database name for `service` (lower case, within the 63-byte limit).
    pub fn database(&self, service: &str) -> String {
        format!("tf_test_{service}_{}", self.id)
    }

    /// The prefix every Redis key of this test starts with.
    pub fn redis_prefix(&self) -> String {
        format!("tftest:{}:", self.id)
    }

    /// The topic exchange events go through.
    pub fn exchange(&self) -> String {
        format!("ticketflow.events.test.{}", self.id)
    }

    /// A queue name owned by this test.
    pub fn queue(&self, name: &str) -> String {
        format!("{name}.test.{}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tests_never_share_names() {
        let (a, b) = (TestNames::new(), TestNames::new());
        assert_ne!(a.database("identity"), b.database("identity"));
        assert_ne!(a.redis_prefix(), b.redis_prefix());
        assert_ne!(a.exchange(), b.exchange());
        assert!(a.database("notifications").len() <= 63);
    }
}
