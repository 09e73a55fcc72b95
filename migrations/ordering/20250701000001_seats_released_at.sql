-- A cancelled order's seats are released in catalog after the cancellation commits (never before:
-- a release that outlived a failed commit would put a paid order's seats back on sale). This marks
-- when catalog said they were back; the sweeper retries the release for cancelled orders without it.

ALTER TABLE orders ADD COLUMN seats_released_at timestamptz;

-- Orders cancelled before this column existed had their seats released before they were cancelled.
UPDATE orders SET seats_released_at = updated_at WHERE status = 'Cancelled';

-- The sweeper's work list of releases still owed to catalog.
CREATE INDEX orders_seats_to_release ON orders (updated_at)
    WHERE status = 'Cancelled' AND seats_released_at IS NULL;
