//! The gRPC transport: turns requests into domain values, calls the capability, maps the result.
//! Rules live in `domain`, storage in `concerts` and `reservations`, status codes in `error`.

use chrono::{DateTime, Utc};
use platform::auth::{AuthError, AuthUser, JwtVerifier, SCOPE_SEATS_WRITE, ServiceClaims, bearer_token};
use prost_types::Timestamp;
use proto::catalog::v1 as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::concerts::Concerts;
use crate::domain::{
    Concert, ConcertChanges, ConcertDraft, ConcertPatch, FieldError, Hold, HoldStatus, ListQuery,
    ListRequest, NewConcert, SeatRequest, parse_batch_ids, parse_id,
};
use crate::error::CatalogError;
use crate::reservations::Reservations;

/// The `ticketflow.catalog.v1.Catalog` service.
#[derive(Clone)]
pub struct CatalogService {
    pub concerts: Concerts,
    pub reservations: Reservations,
    pub verifier: JwtVerifier,
}

impl CatalogService {
    /// The caller, who must hold the admin role (token in the `authorization` metadata entry).
    async fn require_admin(&self, metadata: &MetadataMap) -> Result<AuthUser, CatalogError> {
        let authorization = match metadata.get("authorization") {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| AuthError::Malformed)?),
        };
        let user = AuthUser::from_authorization(&self.verifier, authorization).await?;
        if user.is_admin() { Ok(user) } else { Err(CatalogError::Forbidden) }
    }

    /// The calling service, whose service token (not a user's access token) must carry `scope`.
    async fn require_service(
        &self,
        metadata: &MetadataMap,
        scope: &'static str,
    ) -> Result<ServiceClaims, CatalogError> {
        let authorization = metadata
            .get("authorization")
            .ok_or(AuthError::MissingToken)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let claims = self.verifier.verify_service(bearer_token(authorization)?).await?;
        if claims.has_scope(scope) { Ok(claims) } else { Err(CatalogError::MissingScope(scope)) }
    }
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn list_concerts(
        &self,
        request: Request<pb::ListConcertsRequest>,
    ) -> Result<Response<pb::ListConcertsResponse>, Status> {
        let r = request.into_inner();
        let query = ListQuery::parse(ListRequest {
            page_size: r.page_size,
            page_token: r.page_token,
            city: r.city,
            artist: r.artist,
            query: r.query,
            starts_after: time("starts_after", r.starts_after).map_err(CatalogError::from)?,
            starts_before: time("starts_before", r.starts_before).map_err(CatalogError::from)?,
        })
        .map_err(CatalogError::from)?;
        let page = self.concerts.list(query).await?;
        Ok(Response::new(pb::ListConcertsResponse {
            concerts: page.concerts.into_iter().map(concert).collect(),
            next_page_token: page.next.map(|k| k.encode()).unwrap_or_default(),
        }))
    }

    async fn get_concert(
        &self,
        request: Request<pb::GetConcertRequest>,
    ) -> Result<Response<pb::Concert>, Status> {
        let id = parse_id("id", &request.into_inner().id).map_err(CatalogError::from)?;
        Ok(Response::new(concert(self.concerts.get(id).await?)))
    }

    async fn batch_get_concerts(
        &self,
        request: Request<pb::BatchGetConcertsRequest>,
    ) -> Result<Response<pb::BatchGetConcertsResponse>, Status> {
        let ids = parse_batch_ids(&request.into_inner().ids).map_err(CatalogError::from)?;
        let found = self.concerts.batch_get(&ids).await?;
        Ok(Response::new(pb::BatchGetConcertsResponse { concerts: found.into_iter().map(concert).collect() }))
    }

    async fn create_concert(
        &self,
        request: Request<pb::CreateConcertRequest>,
    ) -> Result<Response<pb::Concert>, Status> {
        self.require_admin(request.metadata()).await?;
        let r = request.into_inner();
        let draft = ConcertDraft {
            title: r.title,
            artist: r.artist,
            venue: r.venue,
            city: r.city,
            starts_at: time("starts_at", r.starts_at).map_err(CatalogError::from)?,
            price_cents: r.price_cents,
            currency: r.currency,
            capacity: r.capacity,
        };
        let new = NewConcert::parse(draft, Utc::now()).map_err(CatalogError::from)?;
        Ok(Response::new(concert(self.concerts.create(new).await?)))
    }

    async fn update_concert(
        &self,
        request: Request<pb::UpdateConcertRequest>,
    ) -> Result<Response<pb::Concert>, Status> {
        self.require_admin(request.metadata()).await?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id).map_err(CatalogError::from)?;
        let patch = ConcertPatch {
            title: r.title,
            artist: r.artist,
            venue: r.venue,
            city: r.city,
            starts_at: time("starts_at", r.starts_at).map_err(CatalogError::from)?,
            price_cents: r.price_cents,
            currency: r.currency,
            capacity: r.capacity,
        };
        let changes = ConcertChanges::parse(patch, Utc::now()).map_err(CatalogError::from)?;
        Ok(Response::new(concert(self.concerts.update(id, changes).await?)))
    }

    async fn reserve_seats(
        &self,
        request: Request<pb::ReserveSeatsRequest>,
    ) -> Result<Response<pb::SeatHold>, Status> {
        self.require_service(request.metadata(), SCOPE_SEATS_WRITE).await?;
        let r = request.into_inner();
        let seats = SeatRequest::parse(&r.order_id, &r.concert_id, r.quantity, r.hold_seconds)
            .map_err(CatalogError::from)?;
        Ok(Response::new(hold(self.reservations.reserve(seats).await?)))
    }

    async fn confirm_reservation(
        &self,
        request: Request<pb::ConfirmReservationRequest>,
    ) -> Result<Response<pb::SeatHold>, Status> {
        self.require_service(request.metadata(), SCOPE_SEATS_WRITE).await?;
        let order_id = parse_id("order_id", &request.into_inner().order_id).map_err(CatalogError::from)?;
        Ok(Response::new(hold(self.reservations.confirm(order_id).await?)))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::SeatHold>, Status> {
        self.require_service(request.metadata(), SCOPE_SEATS_WRITE).await?;
        let order_id = parse_id("order_id", &request.into_inner().order_id).map_err(CatalogError::from)?;
        Ok(Response::new(hold(self.reservations.release(order_id).await?)))
    }
}

/// An optional timestamp field, truncated to the microseconds Postgres keeps (so a page token made from
/// a stored row compares equal to it).
fn time(field: &str, value: Option<Timestamp>) -> Result<Option<DateTime<Utc>>, FieldError> {
    let Some(ts) = value else { return Ok(None) };
    u32::try_from(ts.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos - nanos % 1_000))
        .map(Some)
        .ok_or_else(|| FieldError::new(field, "is not a valid timestamp"))
}

fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn concert(c: Concert) -> pb::Concert {
    pb::Concert {
        id: c.id.to_string(),
        title: c.title,
        artist: c.artist,
        venue: c.venue,
        city: c.city,
        starts_at: Some(timestamp(c.starts_at)),
        price_cents: c.price_cents,
        currency: c.currency,
        capacity: c.capacity,
        available: c.available,
    }
}

fn hold(h: Hold) -> pb::SeatHold {
    let status = match h.status {
        HoldStatus::Held => pb::HoldStatus::Held,
        HoldStatus::Confirmed => pb::HoldStatus::Confirmed,
        HoldStatus::Released => pb::HoldStatus::Released,
        HoldStatus::Expired => pb::HoldStatus::Expired,
    };
    pb::SeatHold {
        order_id: h.order_id.to_string(),
        concert_id: h.concert_id.to_string(),
        quantity: h.quantity,
        expires_at: Some(timestamp(h.expires_at)),
        status: status.into(),
        price_cents: h.price_cents,
        currency: h.currency,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_checked_and_truncated_to_microseconds() {
        let at = time("starts_at", Some(Timestamp { seconds: 1_800_000_000, nanos: 123_456_789 }))
            .unwrap()
            .unwrap();
        assert_eq!(at.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(time("starts_at", None), Ok(None));
        let bad = time("starts_at", Some(Timestamp { seconds: 0, nanos: -1 })).unwrap_err();
        assert_eq!(bad.to_string(), "starts_at: is not a valid timestamp");
        assert!(time("x", Some(Timestamp { seconds: i64::MAX, nanos: 0 })).is_err());
    }
}
