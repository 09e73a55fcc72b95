//! A program run as a child process by a test: its output captured line by line for the test to
//! search, SIGTERM on demand, and SIGKILL when the handle is dropped, so a failing test leaves
//! nothing running.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Everything a child printed so far, and a signal that fires on each new line.
#[derive(Debug, Clone)]
struct Output {
    lines: Arc<Mutex<Vec<(Stream, String)>>>,
    added: watch::Sender<usize>,
}

impl Output {
    fn push(&self, stream: Stream, line: String) {
        let count = {
            let mut lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            lines.push((stream, line));
            lines.len()
        };
        self.added.send_replace(count);
    }

    fn snapshot(&self) -> Vec<(Stream, String)> {
        self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// A running child process. Dropping it kills the process.
#[derive(Debug)]
pub struct ServiceProcess {
    pub name: String,
    child: Child,
    output: Output,
    /// The tasks copying stdout and stderr; they end when the process closes its end.
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Starts `program` with exactly `env` as its environment (plus `RUST_BACKTRACE` if the test has
    /// it), so nothing from the developer's shell changes what the program does.
    pub fn spawn<'a>(
        name: &str,
        program: &Path,
        args: &[&str],
        env: impl IntoIterator<Item = (&'a str, String)>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(backtrace) = std::env::var_os("RUST_BACKTRACE") {
            command.env("RUST_BACKTRACE", backtrace);
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", program.display()))?;
        let output = Output { lines: Arc::default(), added: watch::Sender::new(0) };
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let readers = vec![
            tokio::spawn(capture(stdout, Stream::Stdout, output.clone())),
            tokio::spawn(capture(stderr, Stream::Stderr, output.clone())),
        ];
        Ok(Self { name: name.to_owned(), child, output, readers, exit: None })
    }

    /// Sends SIGTERM, as an orchestrator does to stop a container.
    ///
    /// Through the shell's `kill` builtin: a signal crate (nix, rustix) would add libc/rustix
    /// features to the test build only, so the service binaries built for tests would no longer be
    /// the ones `cargo build` makes, and `binaries` would rebuild nearly everything once more.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.child.id().with_context(|| format!("{} has already exited", self.name))?;
        let status = std::process::Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid.to_string()])
            .status()
            .context("running sh to send SIGTERM")?;
        anyhow::ensure!(status.success(), "sending SIGTERM to {} (pid {pid}) failed: {status}", self.name);
        Ok(())
    }

    /// Waits for the process to exit and for the last of its output; fails if it is still running
    /// after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let status = match self.exit {
            Some(status) => status,
            None => tokio::time::timeout(within, self.child.wait()).await.map_err(|_| {
                anyhow::anyhow!("{} still running {within:?} after being asked to stop", self.name)
            })??,
        };
        self.exit = Some(status);
        for reader in self.readers.drain(..) {
            // A grandchild could keep a pipe open; the exit is what the caller asked about.
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        Ok(status)
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Every line printed on `stream` so far.
    pub fn lines(&self, stream: Stream) -> Vec<String> {
        self.output.snapshot().into_iter().filter(|(s, _)| *s == stream).map(|(_, line)| line).collect()
    }

    /// The stdout lines that are JSON objects: the structured log with `LOG_FORMAT=json`.
    pub fn json_logs(&self) -> Vec<Value> {
        self.lines(Stream::Stdout)
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Waits until a line on either stream satisfies `wanted`, and returns it.
    pub async fn wait_for_line(
        &mut self,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        self.wait_for(within, |(_, line)| wanted(line).then(|| line.clone())).await
    }

    /// Waits until a structured log line satisfies `wanted`, and returns it.
    pub async fn wait_for_log(
        &mut self,
        within: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.wait_for(within, |(stream, line)| {
            if *stream != Stream::Stdout {
                return None;
            }
            serde_json::from_str::<Value>(line).ok().filter(|log| log.is_object() && wanted(log))
        })
        .await
    }

    async fn wait_for<T>(
        &mut self,
        within: Duration,
        find: impl Fn(&(Stream, String)) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + within;
        let mut added = self.output.added.subscribe();
        let mut searched = 0;
        loop {
            added.mark_unchanged();
            let lines = self.output.snapshot();
            if let Some(found) = lines[searched..].iter().find_map(&find) {
                return Ok(found);
            }
            searched = lines.len();
            if let Some(status) = self.try_exit() {
                anyhow::bail!("{} exited ({status}) without printing it:\n{}", self.name, self.tail(40));
            }
            // Woken by new output; the timeout also re-checks whether the process died quietly.
            let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(500));
            if wait.is_zero() {
                anyhow::bail!("{} did not print it within {within:?}:\n{}", self.name, self.tail(40));
            }
            let _ = tokio::time::timeout(wait, added.changed()).await;
        }
    }

    /// Polls `url` until it answers 200, failing early if the process exits.
    pub async fn wait_until_ok(&mut self, url: &str, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let deadline = Instant::now() + within;
        loop {
            let answer = client.get(url).send().await;
            match &answer {
                Ok(response) if response.status().is_success() => return Ok(()),
                _ => {}
            }
            if let Some(status) = self.try_exit() {
                anyhow::bail!("{} exited ({status}) during start-up:\n{}", self.name, self.tail(40));
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{url} did not answer 200 within {within:?} (last: {answer:?}); {} printed:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `n` lines of output, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.output.snapshot();
        let skip = lines.len().saturating_sub(n);
        lines
            .iter()
            .skip(skip)
            .map(|(stream, line)| match stream {
                Stream::Stdout => format!("  {line}"),
                Stream::Stderr => format!("! {line}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn capture(stream: impl AsyncRead + Unpin, which: Stream, output: Output) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
                output.push(which, text);
            }
        }
    }
}

/// `n` distinct loopback addresses with free ports, for processes that must be told their port
/// (they cannot report the one they bound to port 0). The ports are released on return, so a
/// process started right after can take them; another program taking one first is possible but
/// rare, and shows as a failed start. Within this test process a port is never handed out twice,
/// so stacks started side by side by parallel tests cannot be given the same one.
pub fn free_local_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Held until all are chosen, so the kernel cannot give one port twice in this call.
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    while addrs.len() < n {
        anyhow::ensure!(listeners.len() < n + 1000, "no free loopback ports");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        if handed_out.insert(addr.port()) {
            addrs.push(addr);
        }
        listeners.push(listener);
    }
    Ok(addrs)
}
