//! A visitor browses the catalogue: pages, filters, single and batch reads, and bad requests.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::collections::HashSet;

use chrono::{Duration, Utc};
use prost_types::Timestamp;
use proto::catalog::v1 as pb;
use support::{row, spawn};
use tonic::Code;
use uuid::Uuid;

fn ts(at: chrono::DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp { seconds: at.timestamp(), nanos: 0 })
}

#[tokio::test]
async fn paging_walks_every_concert_exactly_once_in_start_time_order() {
    let catalog = spawn().await;
    let shared_start = Utc::now() + Duration::days(40);
    let mut inserted = HashSet::new();
    for i in 0..45 {
        // Every third concert starts at the same moment: only the id orders those.
        let mut r = row(i + 1);
        if i % 3 == 0 {
            r.starts_at = shared_start;
        }
        r.title = format!("Show {i}");
        inserted.insert(catalog.insert(r).await.to_string());
    }

    let mut client = catalog.client.clone();
    let (mut seen, mut order, mut token, mut pages) = (HashSet::new(), Vec::new(), String::new(), 0);
    loop {
        let page = client
            .list_concerts(pb::ListConcertsRequest {
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list a page")
            .into_inner();
        pages += 1;
        assert!(page.concerts.len() <= 10);
        for concert in page.concerts {
            assert!(seen.insert(concert.id.clone()), "{} listed twice", concert.id);
            let at = concert.starts_at.expect("starts_at");
            order.push(((at.seconds, at.nanos), concert.id));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, inserted);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "ordered by start time, then id");
}

#[tokio::test]
async fn the_default_page_holds_twenty_concerts() {
    let catalog = spawn().await;
    for i in 0..25 {
        catalog.insert(row(i + 1)).await;
    }
    let page =
        catalog.client.clone().list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(page.concerts.len(), 20);
    assert!(!page.next_page_token.is_empty());
}

#[tokio::test]
async fn filters_narrow_the_listing_by_city_artist_text_and_dates() {
    let catalog = spawn().await;
    let mut berlin = row(5);
    berlin.city = "Berlin".into();
    berlin.artist = "Nordlys".into();
    let berlin = catalog.insert(berlin).await.to_string();
    let mut london = row(20);
    london.city = "London".into();
    london.venue = "The 100% Club".into();
    london.title = "Jazz_Night".into();
    let london = catalog.insert(london).await.to_string();
    let mut late = row(60);
    late.artist = "nordlys".into();
    late.title = "100 Percent Live".into();
    let late = catalog.insert(late).await.to_string();

    let list = |request: pb::ListConcertsRequest| {
        let mut client = catalog.client.clone();
        async move {
            let page = client.list_concerts(request).await.expect("list").into_inner();
            page.concerts.into_iter().map(|c| c.id).collect::<Vec<_>>()
        }
    };

    assert_eq!(
        list(pb::ListConcertsRequest { city: "berlin".into(), ..Default::default() }).await,
        std::slice::from_ref(&berlin)
    );
    assert_eq!(
        list(pb::ListConcertsRequest { artist: "NORDLYS".into(), ..Default::default() }).await,
        [berlin.clone(), late.clone()]
    );
    // `%` and `_` are text to find, not wildcards.
    assert_eq!(
        list(pb::ListConcertsRequest { query: "100%".into(), ..Default::default() }).await,
        std::slice::from_ref(&london)
    );
    assert_eq!(
        list(pb::ListConcertsRequest { query: "a_z".into(), ..Default::default() }).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list(pb::ListConcertsRequest { query: "jazz_".into(), ..Default::default() }).await,
        std::slice::from_ref(&london)
    );
    let now = Utc::now();
    assert_eq!(
        list(pb::ListConcertsRequest {
            starts_after: ts(now + Duration::days(10)),
            starts_before: ts(now + Duration::days(30)),
            ..Default::default()
        })
        .await,
        [london]
    );
    assert_eq!(
        list(pb::ListConcertsRequest {
            artist: "nordlys".into(),
            starts_after: ts(now + Duration::days(30)),
            ..Default::default()
        })
        .await,
        [late]
    );
}

#[tokio::test]
async fn a_concert_is_read_by_id_and_an_unknown_id_is_not_found() {
    let catalog = spawn().await;
    let mut r = row(3);
    r.title = "Golden Hour".into();
    r.capacity = 120;
    let id = catalog.insert(r).await;

    let concert = catalog.get(id).await.expect("get the concert");
    assert_eq!(concert.title, "Golden Hour");
    assert_eq!((concert.capacity, concert.available), (120, 120));
    assert_eq!((concert.price_cents, concert.currency.as_str()), (4_500, "EUR"));

    assert_eq!(catalog.get(Uuid::new_v4()).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_batch_read_keeps_the_request_order_and_leaves_out_unknown_ids() {
    let catalog = spawn().await;
    let a = catalog.insert(row(1)).await.to_string();
    let b = catalog.insert(row(2)).await.to_string();
    let c = catalog.insert(row(3)).await.to_string();
    let ids = vec![c.clone(), Uuid::new_v4().to_string(), a.clone(), b.clone()];

    let mut client = catalog.client.clone();
    for _ in 0..2 {
        // The second round is served from the cache and must look the same.
        let found = client
            .batch_get_concerts(pb::BatchGetConcertsRequest { ids: ids.clone() })
            .await
            .expect("batch get")
            .into_inner()
            .concerts;
        assert_eq!(found.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), [c.clone(), a.clone(), b.clone()]);
    }
}

#[tokio::test]
async fn malformed_reads_are_invalid_arguments_naming_the_field() {
    let catalog = spawn().await;
    let mut client = catalog.client.clone();

    let status = client.get_concert(pb::GetConcertRequest { id: "42".into() }).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "id: must be a UUID"));

    let status = client
        .list_concerts(pb::ListConcertsRequest { page_size: 101, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "page_size: must be at most 100"));

    let status = client
        .list_concerts(pb::ListConcertsRequest { page_token: "made-up".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_token: "), "{}", status.message());

    let ids = vec![Uuid::new_v4().to_string(), "nope".into()];
    let status = client.batch_get_concerts(pb::BatchGetConcertsRequest { ids }).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "ids[1]: must be a UUID"));

    let ids = (0..101).map(|_| Uuid::new_v4().to_string()).collect();
    let status = client.batch_get_concerts(pb::BatchGetConcertsRequest { ids }).await.unwrap_err();
    assert!(status.message().starts_with("ids: "), "{}", status.message());
}

/// A page token in catalog's format around any text, as an attacker can forge one.
fn forged_token(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn control_characters_in_any_filter_are_invalid_arguments_not_internal_errors() {
    let catalog = spawn().await;
    catalog.insert(row(3)).await;
    let mut client = catalog.client.clone();
    let cases = [
        ("city", pb::ListConcertsRequest { city: "Ams\0terdam".into(), ..Default::default() }),
        ("artist", pb::ListConcertsRequest { artist: "\0".into(), ..Default::default() }),
        ("query", pb::ListConcertsRequest { query: "tour\0".into(), ..Default::default() }),
        ("query", pb::ListConcertsRequest { query: "\u{7}\u{1b}[2J".into(), ..Default::default() }),
    ];
    for (field, request) in cases {
        let status = client.list_concerts(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(status.message(), format!("{field}: must not contain control characters"));
    }
    // Catalog still answers honest browsing.
    let page = client.list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(page.concerts.len(), 1);
}

#[tokio::test]
async fn forged_page_tokens_and_out_of_range_dates_are_invalid_arguments() {
    let catalog = spawn().await;
    let mut client = catalog.client.clone();
    let id = Uuid::new_v4().simple();
    let tokens = [
        // Years chrono holds but Postgres does not (before 4713 BC), and beyond 9999.
        forged_token(&format!("-8000000000000000000:{id}")),
        forged_token(&format!("8000000000000000000:{id}")),
        forged_token(&format!("{}:{id}", i64::MAX)),
        forged_token("garbage"),
        forged_token(&format!("12:{id}:extra")),
        "not base64 at all!".into(),
        "A".repeat(5_000),
    ];
    for token in tokens {
        let request = pb::ListConcertsRequest { page_token: token.clone(), ..Default::default() };
        let status = client.list_concerts(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{token}: {status:?}");
        assert!(status.message().starts_with("page_token: "), "{}", status.message());
    }

    let far = Some(Timestamp { seconds: -200_000_000_000, nanos: 0 });
    for (field, request) in [
        ("starts_after", pb::ListConcertsRequest { starts_after: far, ..Default::default() }),
        ("starts_before", pb::ListConcertsRequest { starts_before: far, ..Default::default() }),
    ] {
        let status = client.list_concerts(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(&format!("{field}: ")), "{}", status.message());
    }
}
