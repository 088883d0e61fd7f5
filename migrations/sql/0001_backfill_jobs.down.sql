DROP TABLE IF EXISTS spiredb.backfill_jobs;
