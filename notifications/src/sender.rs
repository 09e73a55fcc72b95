//! Delivering a notification to the buyer: the [`Sender`] interface, the default [`LogSender`] and
//! the [`SmtpSender`] used when `SMTP_URL` is set.

use std::time::Duration;

use futures::future::BoxFuture;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::SmtpConfig;
use crate::notification::Notification;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a notification was not delivered; decides between retrying and dead-lettering.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth another try later (server unreachable, 4xx reply, timeout).
    #[error("sending failed, may succeed later: {0}")]
    Transient(#[source] BoxError),
    /// Will never succeed as it is (the mail server refused the recipient, 5xx reply).
    #[error("sending refused: {0}")]
    Permanent(#[source] BoxError),
}

/// Something that delivers notifications. Implementations must be safe to call concurrently.
///
/// A send may be repeated for the same event after a crash (see `processing`), so implementations
/// should carry the event id along (the SMTP sender makes it the `Message-ID`) for the far end to
/// recognise repeats.
pub trait Sender: Send + Sync + 'static {
    fn send<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), SendError>>;
}

/// Writes one structured log line per notification: what operators read to see what was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSender;

impl Sender for LogSender {
    fn send<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), SendError>> {
        tracing::info!(
            notification.recipient = %notification.recipient.masked(),
            notification.type = %notification.kind,
            notification.subject = %notification.subject,
            order.id = %notification.order_id,
            event.id = %notification.event_id,
            "notification sent"
        );
        Box::pin(async { Ok(()) })
    }
}

/// Sends notifications as plain-text mail through an SMTP relay.
#[derive(Debug, Clone)]
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// Bounds each SMTP exchange: the delivery's transaction stays open while the mail goes out.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

impl SmtpSender {
    /// Builds the (pooled, lazily connecting) transport; no connection is made here.
    pub fn new(config: &SmtpConfig) -> Result<Self, lettre::transport::smtp::Error> {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url)?.timeout(Some(SMTP_TIMEOUT)).build();
        Ok(Self { transport, from: config.from.clone() })
    }

    fn message(&self, notification: &Notification) -> Result<Message, SendError> {
        let to: Mailbox = notification
            .recipient
            .address()
            .parse()
            .map_err(|error: lettre::address::AddressError| SendError::Permanent(error.into()))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(notification.subject.clone())
            // The event id as Message-ID: a repeat after a crash is recognisably the same mail.
            .message_id(Some(format!("<{}@notifications.ticketflow>", notification.event_id)))
            .date_now()
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(|error| SendError::Permanent(error.into()))
    }
}

impl Sender for SmtpSender {
    fn send<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let message = self.message(notification)?;
            match self.transport.send(message).await {
                Ok(_) => {
                    tracing::info!(
                        notification.recipient = %notification.recipient.masked(),
                        notification.type = %notification.kind,
                        notification.subject = %notification.subject,
                        order.id = %notification.order_id,
                        event.id = %notification.event_id,
                        "notification mailed"
                    );
                    Ok(())
                }
                Err(error) if error.is_permanent() => Err(SendError::Permanent(error.into())),
                Err(error) => Err(SendError::Transient(error.into())),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::notification::{NotificationKind, Recipient};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_log_sender_writes_one_line_without_the_full_address() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::fmt().json().flatten_event(true).with_writer(move || writer.clone()).finish();
        let notification = Notification {
            event_id: Uuid::from_u128(1),
            order_id: Uuid::from_u128(2),
            kind: NotificationKind::TicketsConfirmed,
            recipient: Recipient::parse("jane.doe@example.com").unwrap(),
            subject: "Your tickets are confirmed".to_owned(),
            body: "...".to_owned(),
            occurred_at: Utc::now(),
        };
        let sent = {
            let _guard = tracing::subscriber::set_default(subscriber);
            LogSender.send(&notification).await
        };
        assert!(sent.is_ok());

        let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 1, "{output}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["notification.recipient"], "j***@example.com");
        assert_eq!(line["notification.type"], "tickets_confirmed");
        assert_eq!(line["notification.subject"], "Your tickets are confirmed");
        assert_eq!(line["order.id"], Uuid::from_u128(2).to_string());
        assert!(!output.contains("jane.doe"), "{output}");
    }
}
