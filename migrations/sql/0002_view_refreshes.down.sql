DROP TABLE IF EXISTS spiredb.view_refreshes;
