//! An HTTP/1.1 request whose body is sent in two halves, so a test holds it in flight at the server
//! for as long as it likes (e.g. across a SIGTERM) and then lets it finish.
//!
//! Timing a "slow" request against a signal is a race on a busy machine; a request whose body has
//! not fully arrived is in flight for certain once the server has started handling it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request whose head and first half of the body are on the wire.
#[derive(Debug)]
pub struct HalfSentRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

/// What the server answered.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl HalfSentRequest {
    /// Sends `POST path` with a JSON `body` and `headers`, holding back the second half of the body.
    pub async fn post_json(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> anyhow::Result<Self> {
        let body = serde_json::to_vec(body)?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let (first, rest) = body.split_at(body.len() / 2);
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(first).await?;
        stream.flush().await?;
        Ok(Self { stream, rest: rest.to_vec() })
    }

    /// Sends the rest of the body and reads the whole response.
    pub async fn finish(mut self, within: Duration) -> anyhow::Result<RawResponse> {
        self.stream.write_all(&self.rest).await.context("sending the rest of the body")?;
        let mut raw = Vec::new();
        tokio::time::timeout(within, self.stream.read_to_end(&mut raw))
            .await
            .context("no complete response in time")?
            .context("reading the response")?;
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<RawResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no HTTP response: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line: {head:?}"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok(RawResponse { status, head: head.to_owned(), body })
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunked body")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("truncated chunk")?);
        body = rest.get(size + 2..).context("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies_are_read() -> anyhow::Result<()> {
        let plain = parse(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}")?;
        assert_eq!((plain.status, plain.body.as_str()), (201, "{}"));
        let chunked = parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )?;
        assert_eq!(chunked.json()?, serde_json::json!({ "a": 1 }));
        Ok(())
    }
}
