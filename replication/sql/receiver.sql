SELECT
(SELECT status FROM pg_catalog.pg_stat_wal_receiver),
(SELECT sender_host FROM pg_catalog.pg_stat_wal_receiver),
(SELECT slot_name FROM pg_catalog.pg_stat_wal_receiver),
(SELECT last_msg_receipt_time FROM pg_catalog.pg_stat_wal_receiver),
coalesce(pg_catalog.pg_last_wal_receive_lsn()::text, ''),
coalesce(pg_catalog.pg_last_wal_replay_lsn()::text, ''),
coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn()), 0)::bigint,
CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
     ELSE coalesce(extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()), 0) END::float8,
pg_catalog.pg_is_wal_replay_paused(),
(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())
