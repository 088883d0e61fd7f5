SELECT r.pid, coalesce(r.application_name, ''), coalesce(host(r.client_addr), ''),
coalesce(r.state, ''), coalesce(r.sync_state, ''),
coalesce(r.sent_lsn::text, ''), coalesce(r.write_lsn::text, ''), coalesce(r.flush_lsn::text, ''), coalesce(r.replay_lsn::text, ''),
coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.replay_lsn), 0)::bigint,
coalesce(extract(epoch FROM r.replay_lag), 0)::float8,
coalesce(s.slot_name::text, '')
FROM pg_catalog.pg_stat_replication r
LEFT JOIN pg_catalog.pg_replication_slots s ON s.active_pid = r.pid
ORDER BY r.application_name, r.pid
