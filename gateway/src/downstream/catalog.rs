//! The catalog's gRPC API over one lazily connected, multiplexed channel.
//!
//! Reads need no credentials; admin writes forward the caller's token in the `authorization`
//! metadata entry, and every call carries the W3C trace context and a `grpc-timeout` deadline.

use proto::catalog::v1 as pb;
use proto::catalog::v1::catalog_client::CatalogClient as GrpcClient;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{CallError, Failure, Policy, Retry};
use crate::config::DownstreamConfig;
use crate::error::{GatewayError, Service};

#[derive(Debug)]
pub struct CatalogClient {
    channel: Channel,
    policy: Policy,
}

impl CatalogClient {
    /// Does not connect: the channel connects on first use and reconnects by itself.
    pub fn new(config: &DownstreamConfig) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(config.catalog_url.clone())?
            .connect_timeout(config.connect_timeout)
            .timeout(config.call_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self { channel, policy: Policy::new(Service::Catalog, config) })
    }

    pub async fn list_concerts(
        &self,
        request: pb::ListConcertsRequest,
    ) -> Result<pb::ListConcertsResponse, GatewayError> {
        self.call("ListConcerts", Retry::Idempotent, None, request, |mut c, r| async move {
            c.list_concerts(r).await
        })
        .await
    }

    pub async fn get_concert(&self, id: String) -> Result<pb::Concert, GatewayError> {
        self.call(
            "GetConcert",
            Retry::Idempotent,
            None,
            pb::GetConcertRequest { id },
            |mut c, r| async move { c.get_concert(r).await },
        )
        .await
    }

    pub async fn batch_get_concerts(&self, ids: Vec<String>) -> Result<Vec<pb::Concert>, GatewayError> {
        let request = pb::BatchGetConcertsRequest { ids };
        let response = self
            .call("BatchGetConcerts", Retry::Idempotent, None, request, |mut c, r| async move {
                c.batch_get_concerts(r).await
            })
            .await?;
        Ok(response.concerts)
    }

    pub async fn create_concert(
        &self,
        token: &str,
        request: pb::CreateConcertRequest,
    ) -> Result<pb::Concert, GatewayError> {
        self.call("CreateConcert", Retry::Never, Some(token), request, |mut c, r| async move {
            c.create_concert(r).await
        })
        .await
    }

    pub async fn update_concert(
        &self,
        token: &str,
        request: pb::UpdateConcertRequest,
    ) -> Result<pb::Concert, GatewayError> {
        self.call("UpdateConcert", Retry::Never, Some(token), request, |mut c, r| async move {
            c.update_concert(r).await
        })
        .await
    }

    /// The standard gRPC health check, for `/health`.
    pub async fn health(&self) -> Result<(), String> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut client = HealthClient::new(self.channel.clone());
        let response = client
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map_err(|status| format!("catalog: {:?} {}", status.code(), status.message()))?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("catalog is {other:?}")),
        }
    }

    async fn call<Req, Res, F, Fut>(
        &self,
        operation: &'static str,
        retry: Retry,
        token: Option<&str>,
        message: Req,
        rpc: F,
    ) -> Result<Res, GatewayError>
    where
        Req: Clone,
        F: Fn(GrpcClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
    {
        let attempt = || {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(self.policy.deadline);
            let metadata = request.metadata_mut();
            if let Some(token) = token
                && let Ok(value) = MetadataValue::try_from(format!("Bearer {token}"))
            {
                metadata.insert("authorization", value);
            }
            for (name, value) in platform::trace_context::current_headers() {
                if let (Ok(key), Ok(value)) =
                    (MetadataKey::from_bytes(name.as_bytes()), MetadataValue::try_from(value))
                {
                    metadata.insert(key, value);
                }
            }
            rpc(GrpcClient::new(self.channel.clone()), request)
        };
        match self.policy.call(operation, retry, attempt, classify).await {
            Ok(response) => Ok(response.into_inner()),
            Err(CallError::Open | CallError::Timeout) => Err(GatewayError::Unavailable(Service::Catalog)),
            Err(CallError::Failed(status)) => {
                tracing::debug!(operation, code = ?status.code(), message = status.message(), "catalog call failed");
                Err(GatewayError::from_status(&status))
            }
        }
    }
}

fn classify(status: &Status) -> Failure {
    match status.code() {
        // tonic reports a connection that could not be made as UNAVAILABLE before sending anything;
        // other UNAVAILABLEs may have been processed, which only reads tolerate anyway.
        Code::Unavailable if is_connect_error(status) => Failure::NotSent,
        // tonic reports a connection that broke under a call as CANCELLED ("operation was canceled").
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::DataLoss => Failure::Unhealthy,
        _ => Failure::Answer,
    }
}

fn is_connect_error(status: &Status) -> bool {
    let message = status.message().to_ascii_lowercase();
    message.contains("connect") || message.contains("connection refused") || message.contains("tcp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_connections_count_against_catalog_and_answers_do_not() {
        assert_eq!(classify(&Status::unavailable("tcp connect error: Connection refused")), Failure::NotSent);
        assert_eq!(classify(&Status::cancelled("operation was canceled")), Failure::Unhealthy);
        assert_eq!(classify(&Status::deadline_exceeded("timeout")), Failure::Unhealthy);
        assert_eq!(classify(&Status::not_found("concert")), Failure::Answer);
        assert_eq!(classify(&Status::resource_exhausted("sold out")), Failure::Answer);
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::OutOfRange,
        ] {
            assert_eq!(classify(&Status::new(code, "about the request")), Failure::Answer, "{code:?}");
        }
    }
}
