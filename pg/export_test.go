package pg_test

import "github.com/jackc/pgx/v5/pgconn"

// pgError55P03 is the error value PostgreSQL sends on lock_timeout, for the
// pure-logic retry tests (the lock test above produces the real one).
var pgError55P03 = pgconn.PgError{Code: "55P03", Message: "canceling statement due to lock timeout"}
