-- Orders, the transactional outbox of their events, and idempotency records for POST /orders.

CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    buyer_id         uuid NOT NULL,
    -- From the buyer's access token when the order was placed; events carry it to notifications.
    buyer_email      text NOT NULL,
    concert_id       uuid NOT NULL,
    quantity         integer NOT NULL CHECK (quantity BETWEEN 1 AND 10),
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    total_cents      bigint NOT NULL CHECK (total_cents = unit_price_cents * quantity),
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL CHECK (status IN ('Pending', 'Confirmed', 'Cancelled')),
    cancel_reason    text,
    -- The payment provider's reference, set when the order is confirmed.
    payment_id       text,
    -- When catalog lets the seat hold lapse unless the order is confirmed.
    hold_expires_at  timestamptz NOT NULL,
    -- Optimistic concurrency: every state change is `UPDATE ... WHERE id = $1 AND version = $2`.
    version          integer NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'Cancelled') = (cancel_reason IS NOT NULL)),
    CHECK (status <> 'Confirmed' OR payment_id IS NOT NULL)
);

-- A buyer's orders, newest first (keyset pagination on (created_at, id)).
CREATE INDEX orders_buyer_newest ON orders (buyer_id, created_at DESC, id DESC);
-- The sweeper's scan for lapsed holds.
CREATE INDEX orders_pending_hold_expiry ON orders (hold_expires_at) WHERE status = 'Pending';

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    routing_key  text NOT NULL,
    payload      jsonb NOT NULL,
    -- W3C trace context (traceparent, tracestate) of the request that wrote the event.
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wakes the relay when events are committed (NOTIFY is delivered at commit, once per transaction).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ordering_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE idempotency_keys (
    buyer_id        uuid NOT NULL,
    key             text NOT NULL,
    -- SHA-256 of the canonical request body: the same key with another body is refused.
    request_hash    bytea NOT NULL,
    -- Chosen before catalog is called, so a retry after a crash reserves under the same order id.
    order_id        uuid NOT NULL,
    state           text NOT NULL CHECK (state IN ('in_progress', 'completed')),
    response_status smallint,
    response_body   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Refreshed by the request working on the key; a stale in-progress key can be taken over.
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (buyer_id, key),
    CHECK ((state = 'completed') = (response_status IS NOT NULL AND response_body IS NOT NULL))
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
