SELECT pg_catalog.current_setting('server_version'),
pg_catalog.current_setting('server_version_num')::int,
pg_catalog.pg_is_in_recovery(),
pg_catalog.current_database(),
pg_catalog.pg_database_size(pg_catalog.current_database()),
pg_catalog.current_setting('shared_preload_libraries'),
(SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements')
