//! Recording and sending one notification: at most one committed record per event id, and a send
//! for every record.

use std::time::Duration;

use sqlx::PgPool;

use crate::notification::Notification;
use crate::sender::{SendError, Sender};

/// What happened to a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and sent now.
    Sent,
    /// Its event was recorded before: nothing was sent again.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Send(#[from] SendError),
}

impl ProcessError {
    /// Whether a later attempt may succeed (database or mail server down) or never will.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Send(SendError::Permanent(_)))
    }
}

/// Records the notification under its event id and sends it, in one transaction.
///
/// The order is: insert (`ON CONFLICT DO NOTHING`) → send → stamp `sent_at` → commit, and the caller
/// acks only after the commit. Why this order:
/// - A crash or failure before the commit rolls the row back, so the redelivered event is sent
///   then: a notification is never lost (send-after-commit would lose it on a crash in between).
/// - Once committed, every redelivery finds the row and sends nothing (counted as a duplicate).
/// - The insert takes the unique-key lock first, so a concurrent copy of the same event waits for
///   this transaction and then sees the row: concurrent duplicates never both send.
/// - The one remaining window is a crash (or lost commit) after the send and before the commit:
///   the event is then sent again on redelivery (at least once). The SMTP sender uses the event id
///   as `Message-ID`, so that repeat is the same mail to the far end.
///
/// The cost is a connection and transaction held open for the length of the send. `send_timeout`
/// bounds that time (a send that overruns it is a transient failure and rolls back), and the worker
/// runs at most one delivery per pooled connection it can spare, so a slow mail server slows
/// deliveries down instead of starving them of connections. Sending outside the transaction (claim
/// a row, commit, send, stamp) would free the connection, but a claim needs a lease to survive a
/// crash, and a lease that runs out during a slow send lets a concurrent copy send too.
pub async fn record_and_send(
    pool: &PgPool,
    sender: &dyn Sender,
    notification: &Notification,
    send_timeout: Duration,
) -> Result<Outcome, ProcessError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO notifications \
             (event_id, order_id, notification_type, recipient, subject, body, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(notification.event_id)
    .bind(notification.order_id)
    .bind(notification.kind.as_str())
    .bind(notification.recipient.address())
    .bind(&notification.subject)
    .bind(&notification.body)
    .bind(notification.occurred_at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.rollback().await?;
        return Ok(Outcome::Duplicate);
    }

    // On a send error or timeout `tx` is dropped here, which rolls the row back: the retry starts
    // afresh. A mail that went out just before the timeout is sent again then (at least once).
    match tokio::time::timeout(send_timeout, sender.send(notification)).await {
        Ok(sent) => sent?,
        Err(_) => {
            let error = format!("no answer from the sender within {send_timeout:?}");
            return Err(SendError::Transient(error.into()).into());
        }
    }

    sqlx::query("UPDATE notifications SET sent_at = clock_timestamp() WHERE event_id = $1")
        .bind(notification.event_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Outcome::Sent)
}
