-- A migration as guides for SPIRE on PostgreSQL write it, and what the linter says.
CREATE INDEX idx_re_selectors ON registered_entries USING gin (selectors);
CREATE INDEX idx_re_spiffe ON registered_entries (spiffe_id);
CREATE INDEX idx_re_live ON registered_entries (expiry) WHERE expiry > NOW();
ALTER TABLE selectors ADD COLUMN checked_at timestamptz NOT NULL;
DO $$
DECLARE n int := 0;
BEGIN
  LOOP
    UPDATE registered_entries SET hint = 'x'
    WHERE id IN (SELECT id FROM registered_entries ORDER BY id OFFSET n LIMIT 1000);
    EXIT WHEN NOT FOUND;
    n := n + 1000;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
SELECT query, total_time, mean_time FROM pg_stat_statements ORDER BY total_time DESC LIMIT 10;
-- spiredb:ignore truncate the table is ours and empty
TRUNCATE spiredb_scratch;
