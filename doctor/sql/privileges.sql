SELECT current_user::text, pg_catalog.current_database()::text,
       r.rolsuper, r.rolcreatedb, r.rolreplication,
       pg_catalog.pg_has_role(r.oid, 'pg_monitor', 'USAGE'),
       pg_catalog.pg_has_role(r.oid, 'pg_read_all_stats', 'USAGE'),
       pg_catalog.pg_has_role(r.oid, 'pg_signal_backend', 'USAGE'),
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
       (SELECT pg_catalog.pg_has_role(r.oid, d.datdba, 'USAGE') FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()),
       pg_catalog.has_function_privilege('pg_catalog.pg_promote(boolean, integer)', 'EXECUTE'),
       coalesce((SELECT bool_and(pg_catalog.has_table_privilege(c.oid, 'SELECT'))
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'S', 'm')), true),
       coalesce((SELECT bool_and(pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE'))
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind = 'r'), true)
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user
