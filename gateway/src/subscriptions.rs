//! How many subscriptions one WebSocket connection may hold at once.
//!
//! Each live subscription costs a broadcast receiver that sees every order event (and, for
//! `orderUpdated`, an ordering call to start), so one socket must not open thousands. A connection's
//! [`SubscriptionSlots`] are connection data (set at `connection_init`); a subscription takes a
//! [`SubscriptionSlot`] when it starts and gives it back when its stream ends or the client stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::GatewayError;

/// The subscription budget of one WebSocket connection. Cheap to clone (clones share the budget).
#[derive(Debug, Clone)]
pub struct SubscriptionSlots {
    live: Arc<AtomicUsize>,
    max: usize,
}

impl SubscriptionSlots {
    pub fn new(max: usize) -> Self {
        Self { live: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A slot for one more subscription, held until the slot is dropped; an error once `max` are
    /// live.
    pub fn acquire(&self) -> Result<SubscriptionSlot, GatewayError> {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| (live < self.max).then_some(live + 1))
            .map_err(|_| GatewayError::TooManySubscriptions { max: self.max })?;
        metrics::gauge!("gateway_subscriptions_active").increment(1.0);
        Ok(SubscriptionSlot { live: self.live.clone() })
    }

    /// Subscriptions live on this connection now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// One live subscription's place in its connection's budget.
#[derive(Debug)]
pub struct SubscriptionSlot {
    live: Arc<AtomicUsize>,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("gateway_subscriptions_active").decrement(1.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn a_connection_holds_at_most_its_budget_and_gets_slots_back() {
        let slots = SubscriptionSlots::new(2);
        let first = slots.acquire().unwrap();
        let _second = slots.clone().acquire().unwrap();
        let refused = slots.acquire().unwrap_err();
        assert_eq!(refused.code(), ErrorCode::RateLimited);
        assert_eq!(refused.to_string(), "at most 2 subscriptions may be open on one connection");
        drop(first);
        assert_eq!(slots.live(), 1);
        assert!(slots.acquire().is_ok(), "a stopped subscription frees its slot");
    }
}
