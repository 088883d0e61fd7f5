-- Checkpoints of spiredb migrate backfill: one row per job, updated in the
-- same transaction as each batch, so a resumed job never updates a row twice.
CREATE TABLE IF NOT EXISTS spiredb.backfill_jobs (
    name          text PRIMARY KEY,
    table_name    text NOT NULL,
    set_clause    text NOT NULL,
    where_clause  text NOT NULL DEFAULT '',
    key_columns   text[] NOT NULL,
    max_key       text[] NOT NULL,
    last_key      text[],
    rows_done     bigint NOT NULL DEFAULT 0,
    batches       bigint NOT NULL DEFAULT 0,
    batch_size    int NOT NULL,
    state         text NOT NULL CHECK (state IN ('running', 'cancelled', 'failed', 'done')),
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
