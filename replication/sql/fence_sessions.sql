SELECT pid, coalesce(datname::text, ''), coalesce(usename::text, '')
FROM pg_catalog.pg_stat_activity
WHERE pid <> pg_catalog.pg_backend_pid()
  -- another role's session shows no backend_type unless spiredb's role
  -- has pg_read_all_stats: count it when it has a user. Logical
  -- replication workers write too, and cannot reconnect either.
  AND (backend_type IN ('client backend', 'logical replication worker') OR (backend_type IS NULL AND usesysid IS NOT NULL))
  AND (datname = ANY($1) OR backend_xid IS NOT NULL)
