//! GraphQL over WebSocket (`graphql-transport-ws`), held to the same budgets as HTTP.
//!
//! The protocol is driven here rather than by async-graphql's handler, which closes with generic
//! codes (1002, 1011), silently replaces an operation whose id is reused and knows nothing of our
//! budgets. Here:
//! - every `subscribe` (and `ping`) spends the client address's request budget, like an HTTP
//!   request; an operation over budget gets an `error` message with `RATE_LIMITED`;
//! - a client address and an account may each hold a bounded number of sockets ([`SocketRegistry`]);
//! - a socket that never sends `connection_init` is closed with 4408, and one with no live
//!   operation and no message for the idle timeout with 1000;
//! - protocol violations close with the codes of the protocol: 4400 (bad message), 4401 (subscribe
//!   before `connection_init`), 4403 (credentials refused), 4409 (operation id in use), 4429 (a
//!   second `connection_init`, or too many sockets for the account), 4500 (a dependency needed to
//!   accept the socket is down).
//!
//! The legacy `graphql-ws` (subscriptions-transport-ws) subprotocol is not offered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::futures_util::stream::BoxStream;
use async_graphql::{Data, Request as GraphqlRequest, Response as GraphqlResponse};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{self, SplitSink};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};
use tokio_stream::StreamMap;
use uuid::Uuid;

use crate::auth::{ClientIp, Credentials};
use crate::error::GatewayError;
use crate::http::HttpState;

/// The subprotocol spoken here.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// Sockets open per client address and per account, shared by all connections of the gateway.
#[derive(Debug, Clone, Default)]
pub struct SocketRegistry {
    open: Arc<Mutex<HashMap<Owner, usize>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Address(IpAddr),
    Account(Uuid),
}

/// One socket's place in its owner's allowance, given back when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    registry: SocketRegistry,
    owner: Owner,
}

impl SocketRegistry {
    /// A place for one more socket from `client`, unless it already holds `max`.
    pub fn admit_address(&self, client: IpAddr, max: usize) -> Option<SocketSlot> {
        self.admit(Owner::Address(client), max)
    }

    /// A place for one more socket signed in as `account`, unless it already holds `max`.
    pub fn admit_account(&self, account: Uuid, max: usize) -> Option<SocketSlot> {
        self.admit(Owner::Account(account), max)
    }

    fn admit(&self, owner: Owner, max: usize) -> Option<SocketSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(owner).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SocketSlot { registry: self.clone(), owner })
    }

    /// Sockets open for the address `client` now.
    pub fn open_from(&self, client: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&Owner::Address(client)).copied().unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.owner) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

/// A message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: Box<GraphqlRequest>,
    },
    Complete {
        id: String,
    },
    Ping {
        #[serde(default)]
        #[allow(dead_code)] // Part of the protocol; the pong carries none.
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<Value>,
    },
}

/// Why the gateway closes a socket; each maps to the protocol's close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    InvalidMessage(String),
    Unauthorized,
    Forbidden(String),
    InitTimeout,
    DuplicateOperation(String),
    TooManyInitRequests,
    TooManySockets,
    Unavailable(String),
    Idle,
    ShuttingDown,
}

impl Close {
    pub fn code(&self) -> u16 {
        match self {
            Self::InvalidMessage(_) => 4400,
            Self::Unauthorized => 4401,
            Self::Forbidden(_) => 4403,
            Self::InitTimeout => 4408,
            Self::DuplicateOperation(_) => 4409,
            Self::TooManyInitRequests | Self::TooManySockets => 4429,
            Self::Unavailable(_) => 4500,
            Self::Idle => 1000,
            Self::ShuttingDown => 1001,
        }
    }

    /// The close reason; the protocol's wording where it has one. A close frame's reason is at
    /// most 123 bytes.
    pub fn reason(&self) -> String {
        let reason = match self {
            Self::InvalidMessage(detail) => format!("Invalid message received: {detail}"),
            Self::Unauthorized => "Unauthorized".to_owned(),
            Self::Forbidden(detail) => format!("Forbidden: {detail}"),
            Self::InitTimeout => "Connection initialisation timeout".to_owned(),
            Self::DuplicateOperation(id) => format!("Subscriber for {id} already exists"),
            Self::TooManyInitRequests => "Too many initialisation requests".to_owned(),
            Self::TooManySockets => "Too many connections for this account".to_owned(),
            Self::Unavailable(detail) => format!("Internal error: {detail}"),
            Self::Idle => "Closed after inactivity".to_owned(),
            Self::ShuttingDown => "Server shutting down".to_owned(),
        };
        truncate(reason, 123)
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Where a connection is in the protocol.
enum Phase {
    /// Waiting for `connection_init` until the deadline.
    Opened { deadline: Instant },
    /// Acknowledged: operations run with this data.
    Ready {
        data: Arc<Data>,
        /// The account's socket allowance, held while the socket is open.
        _account_slot: Option<SocketSlot>,
    },
}

type Operations = StreamMap<String, BoxStream<'static, Option<GraphqlResponse>>>;
type Sink = SplitSink<WebSocket, Message>;

/// Runs one accepted socket until the client leaves, a limit closes it or the gateway stops.
/// `_address_slot` is this socket's place in its client address's allowance.
pub async fn serve(socket: WebSocket, state: Arc<HttpState>, client: ClientIp, _address_slot: SocketSlot) {
    let limits = state.socket_limits;
    let (mut sink, mut incoming) = socket.split();
    let mut phase = Phase::Opened { deadline: Instant::now() + limits.init_timeout };
    let mut operations: Operations = StreamMap::new();
    let mut last_message = Instant::now();
    metrics::gauge!("gateway_websockets_open").increment(1.0);

    let close = loop {
        let init_deadline = match phase {
            Phase::Opened { deadline } => Some(deadline),
            Phase::Ready { .. } => None,
        };
        let idle = matches!(phase, Phase::Ready { .. }) && operations.is_empty();
        tokio::select! {
            () = state.shutdown.cancelled() => break Some(Close::ShuttingDown),
            () = sleep_until(init_deadline.unwrap_or(last_message)), if init_deadline.is_some() => {
                break Some(Close::InitTimeout);
            }
            () = sleep_until(last_message + limits.idle_timeout), if idle => break Some(Close::Idle),
            Some((id, response)) = operations.next(), if !operations.is_empty() => {
                let message = match response {
                    Some(response) => json!({ "type": "next", "id": id, "payload": response }),
                    // The operation's stream ended (see `start`): it is complete.
                    None => json!({ "type": "complete", "id": id }),
                };
                if send(&mut sink, &message).await.is_err() {
                    break None;
                }
            }
            message = incoming.next() => {
                let bytes = match message {
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                };
                last_message = Instant::now();
                let message = match serde_json::from_slice::<ClientMessage>(&bytes) {
                    Ok(message) => message,
                    Err(error) => break Some(Close::InvalidMessage(error.to_string())),
                };
                match handle(message, &state, client, &mut phase, &mut operations, &mut sink).await {
                    Ok(()) => {}
                    Err(Outcome::Close(close)) => break Some(close),
                    Err(Outcome::Gone) => break None,
                }
            }
        }
    };
    if let Some(close) = close {
        metrics::counter!("gateway_websocket_closed_total", "code" => close.code().to_string()).increment(1);
        tracing::debug!(code = close.code(), reason = %close.reason(), "closing WebSocket");
        let frame = CloseFrame { code: close.code(), reason: close.reason().into() };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    metrics::gauge!("gateway_websockets_open").decrement(1.0);
}

/// Why handling a message ended the connection.
enum Outcome {
    Close(Close),
    /// The client went away while we answered.
    Gone,
}

async fn handle(
    message: ClientMessage,
    state: &Arc<HttpState>,
    client: ClientIp,
    phase: &mut Phase,
    operations: &mut Operations,
    sink: &mut Sink,
) -> Result<(), Outcome> {
    match message {
        ClientMessage::ConnectionInit { payload } => {
            let Phase::Opened { deadline } = *phase else {
                return Err(Outcome::Close(Close::TooManyInitRequests));
            };
            let accept = accept(state, payload.unwrap_or_default(), client);
            let ready = match tokio::time::timeout_at(deadline, accept).await {
                Ok(result) => result.map_err(Outcome::Close)?,
                Err(_) => return Err(Outcome::Close(Close::InitTimeout)),
            };
            *phase = ready;
            send(sink, &json!({ "type": "connection_ack" })).await.map_err(|()| Outcome::Gone)
        }
        ClientMessage::Subscribe { id, payload } => {
            let Phase::Ready { data, .. } = phase else { return Err(Outcome::Close(Close::Unauthorized)) };
            if operations.contains_key(&id) {
                return Err(Outcome::Close(Close::DuplicateOperation(id)));
            }
            if let Err(error) = state.services.limiter.check_request(client.0) {
                let (message, extensions) = error.describe();
                let payload = json!([{ "message": message, "extensions": extensions }]);
                return send(sink, &json!({ "type": "error", "id": id, "payload": payload }))
                    .await
                    .map_err(|()| Outcome::Gone);
            }
            let mut payload = *payload;
            // Persisted and trusted documents hold over WebSocket as over HTTP.
            if let Err(error) = state.documents.resolve(&mut payload) {
                let (message, extensions) = error.describe();
                let payload = json!([{ "message": message, "extensions": extensions }]);
                return send(sink, &json!({ "type": "error", "id": id, "payload": payload }))
                    .await
                    .map_err(|()| Outcome::Gone);
            }
            let stream = state.schemas.main.execute_stream_with_session_data(payload, data.clone());
            operations.insert(id, stream.map(Some).chain(stream::once(async { None })).boxed());
            Ok(())
        }
        ClientMessage::Complete { id } => {
            operations.remove(&id);
            Ok(())
        }
        ClientMessage::Ping { .. } => {
            // Pings spend the budget too, so a socket cannot be used to flood the gateway.
            if state.services.limiter.check_request(client.0).is_err() {
                return Ok(());
            }
            send(sink, &json!({ "type": "pong" })).await.map_err(|()| Outcome::Gone)
        }
        ClientMessage::Pong { .. } => Ok(()),
    }
}

/// Accepts `connection_init`: verifies the token in its payload and takes the account's socket
/// allowance. A token that does not verify is refused (4403), so the client knows to sign in
/// again; no token at all allows public operations only.
async fn accept(state: &Arc<HttpState>, payload: Value, client: ClientIp) -> Result<Phase, Close> {
    let credentials = Credentials::from_init_payload(&state.verifier, &payload).await;
    let account_slot = match &credentials {
        Credentials::Rejected(platform::auth::AuthError::KeysUnavailable(_)) => {
            return Err(Close::Unavailable(
                GatewayError::Unavailable(crate::error::Service::Identity).to_string(),
            ));
        }
        Credentials::Rejected(error) => return Err(Close::Forbidden(error.to_string())),
        Credentials::Anonymous => None,
        Credentials::User(viewer) => Some(
            state
                .sockets
                .admit_account(viewer.id, state.socket_limits.max_per_user)
                .ok_or(Close::TooManySockets)?,
        ),
    };
    Ok(Phase::Ready {
        data: Arc::new(state.connection_data(credentials, client)),
        _account_slot: account_slot,
    })
}

async fn send(sink: &mut Sink, message: &Value) -> Result<(), ()> {
    sink.send(Message::Text(message.to_string().into())).await.map_err(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn each_address_and_account_holds_at_most_its_allowance() {
        let registry = SocketRegistry::default();
        let (a, b) = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        let first = registry.admit_address(a, 2).unwrap();
        let _second = registry.admit_address(a, 2).unwrap();
        assert!(registry.admit_address(a, 2).is_none());
        assert!(registry.admit_address(b, 2).is_some(), "another address has its own allowance");
        drop(first);
        assert_eq!(registry.open_from(a), 1);
        assert!(registry.admit_address(a, 2).is_some(), "a closed socket gives its place back");
        let account = Uuid::new_v4();
        let _one = registry.admit_account(account, 1).unwrap();
        assert!(registry.admit_account(account, 1).is_none());
    }

    #[test]
    fn the_registry_forgets_owners_with_no_sockets() {
        let registry = SocketRegistry::default();
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        drop(registry.admit_address(a, 1));
        assert!(registry.open.lock().unwrap().is_empty());
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = Close::Forbidden("x".repeat(500));
        assert_eq!(long.code(), 4403);
        assert!(long.reason().len() <= 123);
        assert_eq!(Close::DuplicateOperation("7".into()).reason(), "Subscriber for 7 already exists");
    }

    #[test]
    fn client_messages_follow_the_protocol() {
        let subscribe: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","id":"1","payload":{"query":"{ __typename }"}}"#)
                .unwrap();
        assert!(matches!(subscribe, ClientMessage::Subscribe { id, .. } if id == "1"));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"start","id":"1"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe","id":"1"}"#).is_err());
    }
}
