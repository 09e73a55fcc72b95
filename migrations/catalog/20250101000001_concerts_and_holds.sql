-- Concerts and the seats held for orders.
--
-- `available` is the seats neither sold nor held; sold + held = capacity - available. It only changes
-- through conditional UPDATEs (see catalog/src/reservations.rs), and the CHECKs make an oversell or a
-- negative count impossible even for a buggy statement.

CREATE TABLE concerts (
    id          uuid PRIMARY KEY,
    title       text        NOT NULL,
    artist      text        NOT NULL,
    venue       text        NOT NULL,
    city        text        NOT NULL,
    starts_at   timestamptz NOT NULL,
    price_cents bigint      NOT NULL CHECK (price_cents >= 0),
    currency    text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    capacity    integer     NOT NULL CHECK (capacity BETWEEN 1 AND 100000),
    available   integer     NOT NULL CHECK (available >= 0 AND available <= capacity),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The listing order and its keyset: (starts_at, id).
CREATE INDEX concerts_starts_at_id ON concerts (starts_at, id);
-- City and artist filters compare case-insensitively.
CREATE INDEX concerts_city_starts_at ON concerts (lower(city), starts_at, id);
CREATE INDEX concerts_artist_starts_at ON concerts (lower(artist), starts_at, id);

-- One row per order that ever held seats: the order id is the idempotency key of ReserveSeats.
CREATE TABLE holds (
    order_id    uuid        PRIMARY KEY,
    concert_id  uuid        NOT NULL REFERENCES concerts (id),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    status      text        NOT NULL CHECK (status IN ('held', 'confirmed', 'released', 'expired')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The sweeper's work list: unconfirmed holds by expiry.
CREATE INDEX holds_held_expires_at ON holds (expires_at) WHERE status = 'held';
CREATE INDEX holds_concert_id ON holds (concert_id);
