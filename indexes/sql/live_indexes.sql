SELECT n.nspname, t.relname, i.relname, am.amname,
	ARRAY(SELECT pg_catalog.pg_get_indexdef(x.indexrelid, k, true) FROM pg_catalog.generate_series(1, x.indnkeyatts) k ORDER BY k),
	ARRAY(SELECT pg_catalog.pg_get_indexdef(x.indexrelid, k, true) FROM pg_catalog.generate_series(x.indnkeyatts + 1, x.indnatts) k ORDER BY k),
	coalesce(pg_catalog.pg_get_expr(x.indpred, x.indrelid, true), ''),
	pg_catalog.pg_get_indexdef(x.indexrelid),
	x.indisunique, x.indisprimary,
	EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u', 'x')),
	x.indisvalid,
	EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_create_index p WHERE p.index_relid = x.indexrelid),
	coalesce(s.idx_scan, 0),
	pg_catalog.pg_relation_size(x.indexrelid),
	CASE WHEN am.amname = 'btree' AND x.indpred IS NULL AND t.reltuples > 0 THEN
		(SELECT (ceil(t.reltuples * (sum(st.avg_width) + 12) / (8192 * 0.9 - 24)) + 1)::int8 * 8192
		 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_stats st
		   ON st.schemaname = n.nspname AND st.tablename = t.relname AND st.attname = a.attname
		 WHERE a.attrelid = t.oid AND a.attnum = ANY (x.indkey::int2[])
		 HAVING count(*) = x.indnatts)
	END
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
JOIN pg_catalog.pg_am am ON am.oid = i.relam
LEFT JOIN pg_catalog.pg_stat_user_indexes s ON s.indexrelid = x.indexrelid
WHERE n.nspname = $1
ORDER BY t.relname, i.relname
