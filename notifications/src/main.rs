//! `notifications`: runs the worker, or an operator command on its dead-letter queue.

use std::io::{BufRead, Write};

use clap::{Args, Parser, Subcommand};
use notifications::dead_letters::{DeadLetter, DeadLetterQueue, Selection};
use notifications::{App, Config};
use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

/// TicketFlow notifications worker. Configuration comes from the environment (AMQP_URL,
/// NOTIFICATIONS_QUEUE, DATABASE_URL, ...).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume order events and notify buyers (the default).
    Serve,
    /// Inspect, replay or remove messages in the dead-letter queue `<NOTIFICATIONS_QUEUE>.dlq`.
    #[command(subcommand)]
    Dlq(Dlq),
}

#[derive(Subcommand)]
enum Dlq {
    /// Print every dead-lettered message, oldest first; the queue is left as it was.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Print at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Put dead letters back into the worker's queue with their original properties; each leaves
    /// the DLQ only once the broker confirmed its copy. An event already notified is skipped by
    /// the worker, so replaying twice is harmless.
    Replay(Which),
    /// Remove one dead letter for good, after asking for confirmation.
    Purge {
        #[arg(long)]
        event_id: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// Only the message with this event id (its AMQP message_id).
    #[arg(long)]
    event_id: Option<String>,
    /// Every message in the DLQ.
    #[arg(long)]
    all: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let cli = Cli::parse();
    let env = Env::new(&ProcessEnv);
    let config = or_exit(Config::from_env(&env));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let telemetry_config = or_exit(TelemetryConfig::from_env(&env, "notifications"));
            let _telemetry = telemetry::init(&telemetry_config)?;
            let app = App::build(config).await?;
            tracing::info!(admin.addr = %app.http_addr(), "notifications worker starting");
            app.run(platform::shutdown::cancel_on_signal()).await
        }
        // No log subscriber for operator commands: stdout carries only their output (`--json` is
        // read by scripts), errors go to stderr.
        Command::Dlq(command) => {
            operator_command(dlq(&config, command)).await;
            Ok(())
        }
    }
}

async fn dlq(config: &Config, command: Dlq) -> anyhow::Result<()> {
    let topology = notifications::Topology {
        exchange: config.exchange.clone(),
        queue: config.queue.clone(),
        retry_delays: config.retry_delays.clone(),
    };
    let dlq_name = topology.dead_letter_queue();
    let queue = DeadLetterQueue::connect(&config.amqp_url, topology).await?;
    let result = match command {
        Dlq::List { json, limit } => {
            let mut out = std::io::stdout().lock();
            if !json {
                let _ = writeln!(
                    out,
                    "{:<36}  {:<15}  {:<36}  {:<13}  {:<24}  {:>8}  ERROR",
                    "EVENT ID", "TYPE", "ORDER ID", "REASON", "DIED AT", "ATTEMPTS"
                );
            }
            let listed = queue
                .list(limit, |letter| {
                    let line = if json {
                        serde_json::to_string(letter).unwrap_or_default()
                    } else {
                        table_row(letter)
                    };
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                })
                .await;
            listed.map(|count| {
                if !json {
                    eprintln!("{count} message(s) in {dlq_name}");
                }
            })
        }
        Dlq::Replay(which) => {
            let selection = match which.event_id {
                Some(id) => Selection::EventId(id),
                None => Selection::All,
            };
            let replayed = queue
                .replay(&selection, |letter| {
                    println!("replayed {}", letter.event_id.as_deref().unwrap_or("-"))
                })
                .await;
            replayed.and_then(|count| {
                println!("{count} message(s) replayed from {dlq_name}");
                nothing_matched(&selection, count)
            })
        }
        Dlq::Purge { event_id, yes } => {
            if !yes && !confirmed(&format!("Remove event {event_id} from {dlq_name} for good?"))? {
                queue.close().await;
                anyhow::bail!("nothing removed");
            }
            let selection = Selection::EventId(event_id);
            let purged = queue
                .purge(&selection, |letter| println!("removed {}", letter.event_id.as_deref().unwrap_or("-")))
                .await;
            purged.and_then(|count| nothing_matched(&selection, count))
        }
    };
    queue.close().await;
    result
}

fn nothing_matched(selection: &Selection, count: usize) -> anyhow::Result<()> {
    match selection {
        Selection::EventId(id) if count == 0 => anyhow::bail!("no dead letter has event id {id}"),
        _ => Ok(()),
    }
}

fn table_row(letter: &DeadLetter) -> String {
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let died_at = letter
        .died_at
        .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    format!(
        "{:<36}  {:<15}  {:<36}  {:<13}  {:<24}  {:>8}  {}",
        or_dash(&letter.event_id),
        or_dash(&letter.event_type),
        or_dash(&letter.order_id),
        or_dash(&letter.reason),
        died_at,
        letter.attempts,
        or_dash(&letter.error)
    )
}

/// Asks on the terminal; anything but `y`/`yes` (including no terminal at all) is a no.
fn confirmed(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// An operator's mistake (broker unreachable, unknown event id) is one line on stderr, exit 1.
async fn operator_command<T>(command: impl Future<Output = anyhow::Result<T>>) -> T {
    match command.await {
        Ok(value) => value,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}
