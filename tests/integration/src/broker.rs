//! Removes a test's RabbitMQ exchange and durable queues when the test ends (pass or fail), so the
//! shared broker does not fill with leftovers of processes the test ran.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

/// The exchange and durable queues a test's services declared; deleted on drop.
#[derive(Debug, Default)]
pub struct BrokerLeftovers {
    pub exchange: String,
    pub queues: Vec<String>,
}

impl BrokerLeftovers {
    /// What the notification worker declares for `queue` with its default retry delays:
    /// the queue, `<queue>.dlq` and `<queue>.retry.1..=3`.
    pub fn notification_worker(exchange: String, queue: &str) -> Self {
        let mut queues = vec![queue.to_owned(), format!("{queue}.dlq")];
        queues.extend((1..=3).map(|n| format!("{queue}.retry.{n}")));
        Self { exchange, queues }
    }
}

impl Drop for BrokerLeftovers {
    fn drop(&mut self) {
        let (exchange, queues) = (std::mem::take(&mut self.exchange), std::mem::take(&mut self.queues));
        // Drop cannot await and the test's runtime cannot be blocked on: a short-lived runtime on
        // its own thread does the work.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let connection =
                    Connection::connect(&crate::amqp_url(), ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                for queue in queues {
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
                }
                if !exchange.is_empty() {
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await?;
                }
                connection.close(200, "test done".into()).await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: could not delete the test's queues: {error:#}"),
            Err(_) => eprintln!("warning: deleting the test's queues panicked"),
        }
    }
}
