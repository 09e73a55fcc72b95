//! The demo catalogue: concerts loaded once into an empty database, for the launcher and demos.
//! Dates are relative to the day of seeding, so the catalogue is always upcoming.

use chrono::{Duration, DurationRound, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// (title, artist, venue, city, days from now, hour UTC, price in cents, currency, capacity)
type Row = (&'static str, &'static str, &'static str, &'static str, i64, u32, i64, &'static str, i32);

const CONCERTS: &[Row] = &[
    ("Northern Lights Tour", "Aurora Vale", "Ziggo Dome", "Amsterdam", 12, 19, 6_950, "EUR", 17_000),
    ("Static Bloom", "The Paper Kites Collective", "Paradiso", "Amsterdam", 19, 20, 3_500, "EUR", 1_500),
    ("Midnight Echoes", "Luna Park Orchestra", "Royal Albert Hall", "London", 9, 19, 8_500, "GBP", 5_272),
    ("Concrete Gardens", "Brixton Hum", "O2 Academy Brixton", "London", 26, 20, 4_250, "GBP", 4_921),
    ("Tidal Arena Tour", "Saltwater Saints", "The O2", "London", 44, 19, 9_900, "GBP", 20_000),
    ("Neon Requiem", "Kraftwerk Kinder", "Tempodrom", "Berlin", 15, 20, 5_900, "EUR", 3_700),
    ("Underground Frequencies", "Tresor Collective", "Columbiahalle", "Berlin", 33, 21, 4_500, "EUR", 3_500),
    ("Golden Hour", "Mariela Cruz", "Palau Sant Jordi", "Barcelona", 21, 21, 7_500, "EUR", 17_960),
    ("Salt & Stone", "Os Marinheiros", "Coliseu dos Recreios", "Lisbon", 38, 21, 3_900, "EUR", 4_000),
    ("Velvet Nights", "Chloé Martin Quartet", "Olympia", "Paris", 11, 20, 6_200, "EUR", 2_000),
    ("Electric Cathedral", "Les Ombres Électriques", "Accor Arena", "Paris", 57, 20, 8_900, "EUR", 20_300),
    ("Alpine Sessions", "Hanna Berg Trio", "Konzerthaus", "Vienna", 29, 19, 5_400, "EUR", 1_800),
    ("Baltic Drift", "Nordlys", "Sentrum Scene", "Oslo", 47, 20, 49_900, "NOK", 1_750),
    ("Copper Skies", "The Juniper Line", "Madison Square Garden", "New York", 17, 23, 12_500, "USD", 19_500),
    ("Brooklyn After Dark", "Static Avenue", "Brooklyn Steel", "New York", 24, 0, 4_800, "USD", 1_800),
    ("Desert Radio", "Coyote Static", "Hollywood Bowl", "Los Angeles", 35, 3, 9_500, "USD", 17_500),
    ("Sunset Strip Revival", "The Velvet Motel", "The Troubadour", "Los Angeles", 41, 4, 3_500, "USD", 500),
    (
        "Windy City Soul",
        "Delia Brooks & The Lakeshore Band",
        "Chicago Theatre",
        "Chicago",
        30,
        1,
        7_900,
        "USD",
        3_600,
    ),
    ("Gulf Coast Blues", "Bayou Lanterns", "Preservation Hall", "New Orleans", 14, 1, 4_000, "USD", 100),
    ("Maple Skyline", "Northbound Parade", "Scotiabank Arena", "Toronto", 52, 0, 10_900, "CAD", 19_800),
    ("Harbour Lights", "Southern Cross Choir", "Sydney Opera House", "Sydney", 63, 9, 14_900, "AUD", 2_679),
    ("Neon Tokyo Nights", "Sakura Circuit", "Nippon Budokan", "Tokyo", 70, 10, 950_000, "JPY", 14_471),
    ("Intimate Acoustic Evening", "Aurora Vale", "Bimhuis", "Amsterdam", 6, 20, 4_500, "EUR", 40),
    ("Festival Warm-Up", "Saltwater Saints", "Manchester Academy", "Manchester", 68, 19, 3_800, "GBP", 2_600),
    ("Symphonic Dreams", "Luna Park Orchestra", "Elbphilharmonie", "Hamburg", 80, 19, 9_800, "EUR", 2_100),
    ("Rooftop Jazz Series", "Chloé Martin Quartet", "Blue Note", "New York", 88, 0, 6_500, "USD", 250),
    ("Last Summer Night", "Mariela Cruz", "WiZink Center", "Madrid", 95, 20, 6_900, "EUR", 15_500),
    ("Winter Solstice", "Nordlys", "Tivoli Konsertsal", "Copenhagen", 120, 19, 52_500, "DKK", 1_660),
];

/// Loads the demo catalogue if the `concerts` table is empty; returns how many concerts it added.
///
/// Two replicas starting together cannot both seed: the check and the inserts run under one
/// transaction-scoped advisory lock.
pub async fn seed_if_empty(pool: &PgPool) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ticketflow.catalog.seed'))")
        .execute(&mut *tx)
        .await?;
    let has_concerts: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM concerts)").fetch_one(&mut *tx).await?;
    if has_concerts {
        return Ok(0);
    }
    let today = Utc::now().duration_trunc(Duration::days(1))?;
    for (title, artist, venue, city, days, hour, price_cents, currency, capacity) in CONCERTS {
        let starts_at = today + Duration::days(*days) + Duration::hours(i64::from(*hour));
        sqlx::query(
            "INSERT INTO concerts (id, title, artist, venue, city, starts_at, price_cents, currency, capacity, available)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(Uuid::now_v7())
        .bind(title)
        .bind(artist)
        .bind(venue)
        .bind(city)
        .bind(starts_at)
        .bind(price_cents)
        .bind(currency)
        .bind(capacity)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(concerts = CONCERTS.len(), "seeded the demo catalogue");
    Ok(CONCERTS.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::{ConcertDraft, NewConcert};

    #[test]
    fn every_seeded_concert_passes_the_rules_admins_are_held_to() {
        assert!(CONCERTS.len() >= 20);
        let now = Utc::now();
        for (title, artist, venue, city, days, _, price_cents, currency, capacity) in CONCERTS {
            let draft = ConcertDraft {
                title: (*title).into(),
                artist: (*artist).into(),
                venue: (*venue).into(),
                city: (*city).into(),
                starts_at: Some(now + Duration::days(*days)),
                price_cents: *price_cents,
                currency: (*currency).into(),
                capacity: *capacity,
            };
            assert!(NewConcert::parse(draft, now).is_ok(), "{title}");
        }
    }
}
