//! The results table: capacity per round against its baseline, the median ratio and its spread, and
//! latency at about half of capacity.

use std::time::Duration;

use crate::load::Measurement;
use crate::workloads::median;

pub struct Row {
    pub name: &'static str,
    pub baseline: &'static str,
    /// Per round: the workload's rate and the baseline's, both per second.
    pub rounds: Vec<(f64, f64)>,
    pub at_half: Measurement,
}

impl Row {
    fn ratios(&self) -> Vec<f64> {
        self.rounds.iter().map(|(rate, base)| rate / base).filter(|r| r.is_finite()).collect()
    }

    pub fn summary(&self) -> String {
        let ratios = self.ratios();
        format!(
            "{:.0}/s, ratio {:.3}; at {:.0}/s p50 {} p95 {} p99 {}",
            median(self.rounds.iter().map(|r| r.0).collect()),
            median(ratios),
            self.at_half.rate,
            ms(self.at_half.p50),
            ms(self.at_half.p95),
            ms(self.at_half.p99)
        )
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    rounds: usize,
    seconds: u64,
    connections: u32,
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

impl Report {
    pub fn new(rounds: usize, seconds: u64, connections: u32) -> Self {
        Self { rows: Vec::new(), rounds, seconds, connections }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} interleaved rounds of {} s, {} connections (login: 8); latency at about half of capacity over 16 paced connections.\n\n",
            self.rounds, self.seconds, self.connections
        );
        out.push_str("| workload | capacity (median) | baseline | baseline (median) | ratio (median, min–max) | at ~50 %: rate | p50 | p95 | p99 |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let ratios = self.ratios_text(row);
            out.push_str(&format!(
                "| {} | {:.0}/s | {} | {:.0}/s | {} | {:.0}/s | {} | {} | {} |\n",
                row.name,
                median(row.rounds.iter().map(|r| r.0).collect()),
                row.baseline,
                median(row.rounds.iter().map(|r| r.1).collect()),
                ratios,
                row.at_half.rate,
                ms(row.at_half.p50),
                ms(row.at_half.p95),
                ms(row.at_half.p99),
            ));
        }
        out
    }

    fn ratios_text(&self, row: &Row) -> String {
        let ratios = row.ratios();
        if ratios.is_empty() {
            return "–".to_owned();
        }
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.3} ({:.3}–{:.3})", median(ratios), min, max)
    }
}
