//! The on-sale benchmark suite: `cargo run --release -p bench -- all`.
//!
//! Starts the whole stack (the release launcher, as a child process, on its own databases, ports,
//! Redis prefix and broker names, with rate limits lifted), then measures each workload against a
//! baseline run in the same session, interleaved round by round so that whatever else the machine
//! does weighs on both alike. Load comes from `wrk` (Debian's package) and `pgbench`; every response
//! is checked, and a run with a single unexpected answer fails instead of counting it as throughput.
//! Each workload then runs once more at about half its capacity, for latency. The table printed at
//! the end is what docs/performance.md holds.

mod baselines;
mod load;
mod report;
mod stack;
mod workloads;

use clap::Parser;

use crate::report::Report;
use crate::stack::Stack;
use crate::workloads::Workload;

#[derive(Debug, Parser)]
#[command(about = "Measure TicketFlow's on-sale workloads against same-run baselines")]
struct Cli {
    /// Workloads to run: all, or any of browse, typename, orders-spread, orders-hot, sold-out, login.
    #[arg(default_value = "all")]
    workloads: Vec<String>,
    /// Interleaved rounds of workload and baseline (the ratio reported is their median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per capacity run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections held open by the load generator in capacity runs.
    #[arg(long, default_value_t = 32)]
    connections: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::install_crypto_provider();
    let cli = Cli::parse();
    let selected = Workload::select(&cli.workloads)?;
    load::check_tools()?;

    let stack = Stack::start().await?;
    let outcome = run(&stack, &selected, &cli).await;
    stack.stop().await;
    let report = outcome?;
    println!("\n{}", report.markdown());
    Ok(())
}

async fn run(stack: &Stack, selected: &[Workload], cli: &Cli) -> anyhow::Result<Report> {
    let fixtures = workloads::Fixtures::prepare(stack).await?;
    let baselines = baselines::Baselines::start(&fixtures).await?;
    let mut report = Report::new(cli.rounds, cli.seconds, cli.connections);
    for workload in selected {
        eprintln!("== {}", workload.name());
        let row = workloads::measure(*workload, stack, &fixtures, &baselines, cli).await?;
        eprintln!("   {}", row.summary());
        report.rows.push(row);
        if workload.takes_seats() {
            fixtures.check_seats_add_up(stack).await?;
        }
    }
    Ok(report)
}
