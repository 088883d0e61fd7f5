-- What spiredb views refresh records (views create makes it too, for
-- databases that never ran spiredb migrate up).
CREATE TABLE IF NOT EXISTS spiredb.view_refreshes (
    view_name    text PRIMARY KEY,
    refreshed_at timestamptz NOT NULL,
    duration_ms  double precision NOT NULL,
    row_count    bigint NOT NULL,
    concurrent   boolean NOT NULL
);
