-- One row per order event the worker has notified a buyer about. The event id is the key, so a
-- redelivered event finds its row and nothing is sent twice.
CREATE TABLE notifications (
    event_id          uuid PRIMARY KEY,
    order_id          uuid        NOT NULL,
    notification_type text        NOT NULL
        CHECK (notification_type IN ('order_received', 'tickets_confirmed', 'order_cancelled')),
    recipient         text        NOT NULL,
    subject           text        NOT NULL,
    body              text        NOT NULL,
    -- When the event happened at ordering.
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    -- Stamped after the sender succeeded, in the transaction that inserted the row: a committed row
    -- always has it (NULL exists only inside that transaction).
    sent_at           timestamptz
);

-- "What did we tell the buyer about this order?"
CREATE INDEX notifications_order_id_idx ON notifications (order_id, occurred_at);
