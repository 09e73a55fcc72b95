//! Load from `wrk`, driven by a Lua script written for each run: it builds every request (a fresh
//! idempotency key, a concert and a buyer taken in turn), checks every response, and prints one
//! JSON line of results. `pgbench` and `redis-benchmark` are the database baselines.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::process::Command;

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measurement {
    /// Successful requests per second.
    pub rate: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

/// A request to send over and over.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub method: &'static str,
    /// The body; `{KEY}` becomes a key no other request of the session uses, `{CONCERT}` the next
    /// of `concerts`.
    pub body: Option<String>,
    pub concerts: Vec<String>,
    /// Bearer tokens, one per request in turn; none for anonymous requests.
    pub tokens: Vec<String>,
    pub expect: Expect,
}

/// What a successful answer looks like.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// 2xx; a GraphQL answer also must carry no `errors`.
    Success,
    /// 2xx with this text in the body (e.g. the `SOLD_OUT` code).
    Contains(&'static str),
}

#[derive(Debug, Deserialize)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    bad: u64,
    socket_errors: u64,
    p50: u64,
    p95: u64,
    p99: u64,
}

pub fn check_tools() -> anyhow::Result<()> {
    for tool in ["wrk", "pgbench", "redis-benchmark"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|output| output.status.success());
        if !found {
            bail!("{tool} is needed: apt-get install wrk postgresql-client redis-tools");
        }
    }
    Ok(())
}

/// Runs `load` for `seconds` over `connections`; with `rate`, each connection paces itself so
/// that all of them together send about that many requests per second.
pub async fn run(
    load: &Load,
    connections: u32,
    seconds: u64,
    rate: Option<f64>,
) -> anyhow::Result<Measurement> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let script = std::env::temp_dir().join(format!("ticketflow-bench-{run_id}.lua"));
    let delay_ms = rate.map(|rate| (f64::from(connections) * 1000.0 / rate).max(0.0));
    std::fs::write(&script, lua(load, &run_id, delay_ms))?;
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--timeout", "5s", "-s"])
        .arg(&script)
        .arg(&load.url)
        .output()
        .await
        .context("running wrk")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find_map(|line| line.strip_prefix("RESULT ")).with_context(|| {
        format!("wrk printed no result: {stdout} {}", String::from_utf8_lossy(&output.stderr))
    })?;
    let result: WrkResult = serde_json::from_str(line)?;
    if result.bad > 0 || result.socket_errors > 0 {
        bail!(
            "{} of {} answers to {} were not what a success looks like ({} socket errors); first ones:\n{}",
            result.bad,
            result.requests,
            load.url,
            result.socket_errors,
            String::from_utf8_lossy(&output.stderr).chars().take(2000).collect::<String>()
        );
    }
    Ok(Measurement {
        rate: result.requests as f64 / (result.duration_us as f64 / 1e6),
        p50: Duration::from_micros(result.p50),
        p95: Duration::from_micros(result.p95),
        p99: Duration::from_micros(result.p99),
    })
}

/// Lua's long brackets quote anything that does not contain the closing bracket.
fn quoted(text: &str) -> String {
    format!("[==[{text}]==]")
}

fn lua(load: &Load, run_id: &str, delay_ms: Option<f64>) -> String {
    let mut script = String::new();
    let list = |items: &[String]| items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(",");
    let _ = writeln!(script, "local concerts = {{{}}}", list(&load.concerts));
    let _ = writeln!(script, "local tokens = {{{}}}", list(&load.tokens));
    let _ = writeln!(script, "local template = {}", quoted(load.body.as_deref().unwrap_or("")));
    let _ = writeln!(script, "local method = {}", quoted(load.method));
    let _ = writeln!(script, "local run_id = {}", quoted(run_id));
    let expect = match load.expect {
        Expect::Success => "nil".to_owned(),
        Expect::Contains(text) => quoted(text),
    };
    let _ = writeln!(script, "local expect = {expect}");
    if let Some(delay) = delay_ms {
        let _ = writeln!(script, "function delay() return {delay:.3} end");
    }
    script.push_str(
        r#"
local threads = {}
function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end
function init(args)
  bad = 0
  sent = 0
end
function request()
  sent = sent + 1
  local headers = { ["Content-Type"] = "application/json" }
  if #tokens > 0 then headers["Authorization"] = "Bearer " .. tokens[(sent + thread_id) % #tokens + 1] end
  local body = nil
  if #template > 0 then
    local key = run_id .. "-" .. thread_id .. "-" .. sent
    local concert = ""
    if #concerts > 0 then concert = concerts[(sent * 2 + thread_id) % #concerts + 1] end
    body = (template:gsub("{KEY}", key):gsub("{CONCERT}", concert))
  end
  return wrk.format(method, nil, headers, body)
end
function response(status, headers, body)
  local ok = status >= 200 and status < 300
  if ok and expect == nil and body:find('"errors"', 1, true) then ok = false end
  if ok and expect ~= nil and not body:find(expect, 1, true) then ok = false end
  if not ok then
    bad = bad + 1
    if bad <= 2 then io.stderr:write(status .. " " .. body:sub(1, 400) .. "\n") end
  end
end
function done(summary, latency, requests)
  local total_bad = 0
  for _, thread in ipairs(threads) do total_bad = total_bad + thread:get("bad") end
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"bad":%d,"socket_errors":%d,"p50":%d,"p95":%d,"p99":%d}\n',
    summary.requests, summary.duration, total_bad, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"#,
    );
    script
}

/// pgbench running `sql` (a pgbench script) against `database` for `seconds` over 16 clients;
/// returns transactions per second.
pub async fn pgbench(database: &str, sql: &str, seconds: u64) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("ticketflow-bench-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(&script, sql)?;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-f",
        ])
        .arg(&script)
        .arg(database)
        .output()
        .await
        .context("running pgbench")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps = stdout
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .with_context(|| {
            format!("pgbench printed no tps: {stdout} {}", String::from_utf8_lossy(&output.stderr))
        })?;
    Ok(tps)
}

/// redis-benchmark's GET rate over 32 clients.
pub async fn redis_get(requests: u32) -> anyhow::Result<f64> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-t", "get", "-c", "32", "-q", "-n", &requests.to_string()])
        .output()
        .await
        .context("running redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "GET: 81234.56 requests per second, p50=0.183 msec" (after carriage-return progress lines).
    stdout
        .split(['\r', '\n'])
        .filter_map(|line| line.trim().strip_prefix("GET: "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("redis-benchmark printed no GET rate: {stdout}"))
}
