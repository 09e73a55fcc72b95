//! Operating catalog: gRPC health and reflection, the admin port, seed data.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use proto::catalog::v1 as pb;
use support::{Settings, spawn, spawn_with};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn grpc_health_reports_the_catalog_serving_and_reflection_lists_it() {
    let catalog = spawn().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", catalog.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ticketflow.catalog.v1.Catalog"] {
        let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let status = health.check(request).await.expect("health check").into_inner().status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"ticketflow.catalog.v1.Catalog".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
}

#[tokio::test]
async fn grpc_health_follows_postgres_so_clients_see_what_the_http_probe_sees() {
    integration::init();
    let postgres = "127.0.0.1:5432".parse().unwrap();
    let proxy = integration::TcpProxy::start(postgres).await.unwrap();
    let catalog = spawn_with(Settings { postgres_via: Some(proxy.addr), ..Settings::default() }).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", catalog.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);

    proxy.cut();
    assert!(
        grpc_status_becomes(&health, ServingStatus::NotServing).await,
        "NOT_SERVING while Postgres is unreachable"
    );
    // /health reuses a report for up to a second.
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || async { catalog.health().await.0 == 503 })
            .await,
        "the HTTP probe says unhealthy too"
    );

    proxy.restore();
    assert!(
        grpc_status_becomes(&health, ServingStatus::Serving).await,
        "SERVING again once Postgres is back"
    );
}

/// Polls the server-wide gRPC health status until it is `wanted` (15 s at most).
async fn grpc_status_becomes(
    health: &HealthClient<tonic::transport::Channel>,
    wanted: ServingStatus,
) -> bool {
    support::eventually(std::time::Duration::from_secs(15), || {
        let mut health = health.clone();
        async move {
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            health.check(request).await.is_ok_and(|r| r.into_inner().status() == wanted)
        }
    })
    .await
}

#[tokio::test]
async fn the_admin_port_serves_health_liveness_and_metrics() {
    let catalog = spawn().await;
    let (status, body) = catalog.health().await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["checks"]["postgres"]["status"], "healthy");

    let base = catalog.service.http_url();
    assert_eq!(reqwest::get(format!("{base}/alive")).await.unwrap().status(), 200);
    catalog.get(catalog.insert(support::row(2)).await).await.unwrap();
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("catalog_cache_misses_total"), "{metrics}");
}

#[tokio::test]
async fn an_empty_catalogue_is_seeded_once_when_asked() {
    let catalog = spawn_with(Settings { seed: true, ..Settings::default() }).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM concerts").fetch_one(&catalog.pool).await.unwrap()
    };
    let seeded = count().await;
    assert!(seeded >= 20, "{seeded} concerts");

    assert_eq!(catalog::seed::seed_if_empty(&catalog.pool).await.unwrap(), 0, "a second run adds nothing");
    assert_eq!(count().await, seeded);

    let page = catalog
        .client
        .clone()
        .list_concerts(pb::ListConcertsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(i64::try_from(page.concerts.len()).unwrap(), seeded);
    let currencies: std::collections::HashSet<_> =
        page.concerts.iter().map(|c| c.currency.as_str()).collect();
    assert!(currencies.contains("EUR") && currencies.contains("GBP") && currencies.contains("USD"));
}

#[tokio::test]
async fn tests_get_no_seed_data_unless_they_ask() {
    let catalog = spawn().await;
    let page =
        catalog.client.clone().list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert!(page.concerts.is_empty());
}

#[tokio::test]
async fn the_service_stops_cleanly_when_told_to() {
    let catalog = spawn().await;
    let support::TestCatalog { service, .. } = catalog;
    service.stop().await.expect("drains and returns Ok");
}
