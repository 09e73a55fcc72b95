//! Taking payment for an order: the provider interface, and the built-in test provider.
//!
//! A real provider (a card processor) is a third party, so this trait is the outside edge of the
//! service. Every confirm attempt makes its own charge and refunds it if the order does not end up
//! confirmed by that attempt, so two racing confirms never leave the buyer charged twice.
//! A crash between charging and committing the confirmation leaves a charge to reconcile by hand;
//! a card processor's authorise/capture split would close that gap.

use futures::future::BoxFuture;
use uuid::Uuid;

/// What to charge.
#[derive(Debug, Clone)]
pub struct Charge {
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    /// The buyer's tokenised payment method.
    pub token: String,
}

/// The provider's reference of a successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentId(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("the payment was declined")]
    Declined,
    #[error("the payment token is not valid")]
    InvalidToken,
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
}

/// A payment processor.
pub trait PaymentProvider: Send + Sync + 'static {
    fn charge(&self, charge: Charge) -> BoxFuture<'_, Result<PaymentId, PaymentError>>;
    fn refund<'a>(&'a self, payment: &'a PaymentId) -> BoxFuture<'a, Result<(), PaymentError>>;
}

/// Accepts `tok_visa`, declines `tok_declined`, and rejects every other token as invalid.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestPaymentProvider;

impl PaymentProvider for TestPaymentProvider {
    fn charge(&self, charge: Charge) -> BoxFuture<'_, Result<PaymentId, PaymentError>> {
        Box::pin(async move {
            match charge.token.as_str() {
                "tok_visa" => Ok(PaymentId(format!("pay_test_{}", Uuid::now_v7().simple()))),
                "tok_declined" => Err(PaymentError::Declined),
                _ => Err(PaymentError::InvalidToken),
            }
        })
    }

    fn refund<'a>(&'a self, payment: &'a PaymentId) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            tracing::info!(payment.id = %payment.0, "test payment refunded");
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn charge(token: &str) -> Charge {
        Charge { order_id: Uuid::now_v7(), amount_cents: 9000, currency: "EUR".into(), token: token.into() }
    }

    #[tokio::test]
    async fn the_test_provider_accepts_visa_and_declines_the_declined_card() {
        let provider = TestPaymentProvider;
        let payment = provider.charge(charge("tok_visa")).await.unwrap();
        assert!(payment.0.starts_with("pay_test_"));
        assert_eq!(provider.charge(charge("tok_declined")).await, Err(PaymentError::Declined));
        assert_eq!(provider.charge(charge("4242424242424242")).await, Err(PaymentError::InvalidToken));
        assert_eq!(provider.refund(&payment).await, Ok(()));
    }

    #[tokio::test]
    async fn each_charge_is_its_own_payment() {
        let provider = TestPaymentProvider;
        let first = provider.charge(charge("tok_visa")).await.unwrap();
        let second = provider.charge(charge("tok_visa")).await.unwrap();
        assert_ne!(first, second);
    }
}
