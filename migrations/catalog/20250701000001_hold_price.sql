-- The price of one seat when the hold took its seats, read from the concert in that same statement.
-- Ordering prices its order from the hold, so an order's seats and its price cannot come from two
-- different moments (a price change between holding and pricing).

ALTER TABLE holds ADD COLUMN price_cents bigint, ADD COLUMN currency text;

UPDATE holds h SET price_cents = c.price_cents, currency = c.currency FROM concerts c WHERE c.id = h.concert_id;

ALTER TABLE holds
    ALTER COLUMN price_cents SET NOT NULL,
    ALTER COLUMN currency SET NOT NULL,
    ADD CONSTRAINT holds_price_cents_check CHECK (price_cents >= 0),
    ADD CONSTRAINT holds_currency_check CHECK (currency ~ '^[A-Z]{3}$');
