-- spiredb.entry_selectors: one row per SPIRE registration entry with its
-- selectors as 'type:value' strings, for audits and dashboards. A
-- materialized view: readers never touch SPIRE's hot tables, and it is as
-- fresh as its last `spiredb views refresh`. {{schema}} is SPIRE's schema.
SELECT e.id,
       e.entry_id,
       e.spiffe_id,
       e.parent_id,
       coalesce(array_agg(s.type || ':' || s.value ORDER BY s.type, s.value) FILTER (WHERE s.id IS NOT NULL),
                '{}')::text[] AS selectors,
       e.expiry,
       e.admin,
       e.downstream,
       e.updated_at
FROM {{schema}}.registered_entries e
LEFT JOIN {{schema}}.selectors s ON s.registered_entry_id = e.id
GROUP BY e.id
