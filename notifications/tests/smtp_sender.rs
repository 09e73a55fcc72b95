//! Mail goes out through SMTP when `SMTP_URL` is set. The mail relay is the one thing faked here:
//! a minimal SMTP server on a local port that records what it receives.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{World, order_event};
use notifications::config::SmtpConfig;
use notifications::notification::render;
use notifications::{App, Config, SendError, Sender, SmtpSender};
use platform::config::Env;
use platform::events::OrderEventType;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A relay that accepts mail (or refuses every recipient) and keeps each message's DATA.
struct FakeRelay {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl FakeRelay {
    async fn start(refuse_recipients: bool) -> FakeRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 fake.relay ESMTP\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250 fake.relay\r\n",
                            "RCPT" if refuse_recipients => b"550 5.1.1 no such user\r\n",
                            "DATA" => {
                                write.write_all(b"354 go ahead\r\n").await.unwrap();
                                let mut data = String::new();
                                while let Ok(Some(line)) = lines.next_line().await {
                                    if line == "." {
                                        break;
                                    }
                                    data.push_str(&line);
                                    data.push('\n');
                                }
                                store.lock().unwrap().push(data);
                                b"250 2.0.0 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        write.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        FakeRelay { addr, received }
    }

    fn config(&self) -> SmtpConfig {
        SmtpConfig {
            url: format!("smtp://{}", self.addr),
            from: "TicketFlow <tickets@example.com>".parse().unwrap(),
        }
    }

    fn messages(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_notification_is_mailed_to_the_buyer_with_the_event_id_as_message_id() {
    let relay = FakeRelay::start(false).await;
    let sender = SmtpSender::new(&relay.config()).unwrap();
    let event = order_event(OrderEventType::Confirmed);
    let notification = render(&event).unwrap();

    sender.send(&notification).await.unwrap();

    let messages = relay.messages();
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert!(mail.contains("To: buyer@example.com"), "{mail}");
    assert!(mail.contains("From: TicketFlow <tickets@example.com>"), "{mail}");
    assert!(mail.contains("Subject: Your tickets are confirmed"), "{mail}");
    assert!(mail.contains(&format!("Message-ID: <{}@notifications.ticketflow>", event.event_id)), "{mail}");
    assert!(mail.contains("are confirmed"), "{mail}");
}

#[tokio::test]
async fn a_refused_recipient_is_a_permanent_failure() {
    let relay = FakeRelay::start(true).await;
    let sender = SmtpSender::new(&relay.config()).unwrap();
    let notification = render(&order_event(OrderEventType::Confirmed)).unwrap();
    let error = sender.send(&notification).await.unwrap_err();
    assert!(matches!(error, SendError::Permanent(_)), "{error}");
}

#[tokio::test]
async fn an_unreachable_relay_is_a_transient_failure() {
    // A cut proxy hangs up on every connection: unlike a port that was free a moment ago, no
    // parallel test can start listening there.
    let down = integration::TcpProxy::start("127.0.0.1:9".parse().unwrap()).await.unwrap();
    down.cut();
    let config = SmtpConfig { url: format!("smtp://{}", down.addr), from: "t@example.com".parse().unwrap() };
    let sender = SmtpSender::new(&config).unwrap();
    let notification = render(&order_event(OrderEventType::Confirmed)).unwrap();
    let error = sender.send(&notification).await.unwrap_err();
    assert!(matches!(error, SendError::Transient(_)), "{error}");
}

#[tokio::test]
async fn with_smtp_configured_the_worker_mails_each_event() {
    let relay = FakeRelay::start(false).await;
    let mut world = World::new().await;
    let mut vars: HashMap<&'static str, String> = HashMap::from([
        ("SMTP_URL", format!("smtp://{}", relay.addr)),
        ("SMTP_FROM", "TicketFlow <tickets@example.com>".to_owned()),
    ]);
    let base = world.config();
    vars.insert("DATABASE_URL", base.database.url.clone());
    vars.insert("EVENTS_EXCHANGE", base.exchange.clone());
    vars.insert("NOTIFICATIONS_QUEUE", base.queue.clone());
    vars.insert("RETRY_DELAYS", "0.2,0.4".to_owned());
    vars.insert("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned());
    vars.insert("DATABASE_MAX_CONNECTIONS", "4".to_owned());
    vars.insert("AMQP_URL", integration::amqp_url());
    let config = Config::from_env(&Env::new(&vars)).unwrap();
    let worker = common::spawn(App::build(config).await.unwrap());
    worker.wait_healthy(Duration::from_secs(20)).await.unwrap();

    let event = order_event(OrderEventType::Cancelled);
    world.publish(&event).await;
    world.wait_for_rows(1, Duration::from_secs(20)).await;
    worker.stop().await.unwrap();

    let messages = relay.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("Subject: Your order was cancelled"), "{}", messages[0]);
    assert_eq!(world.rows_for(event.event_id).await, 1);
}
