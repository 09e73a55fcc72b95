-- The per-buyer cap on unpaid orders counts a buyer's Pending orders on every placement.
CREATE INDEX orders_pending_by_buyer ON orders (buyer_id, concert_id) WHERE status = 'Pending';
