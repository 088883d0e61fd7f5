SELECT slot_name::text, slot_type, active, active_pid, coalesce(wal_status, ''),
coalesce(restart_lsn::text, ''),
coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::bigint,
safe_wal_size
FROM pg_catalog.pg_replication_slots ORDER BY slot_name
