package integration_test

import (
	"context"
	"encoding/json"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/indexes"
	"github.com/spiredb/spiredb/internal/pgtest"
)

// TestNoCommandRunsAnotherRolesShadowingCode: a role allowed to create in
// public (every role, on PostgreSQL 13 and 14) defines functions and
// operators over character varying, the type of SPIRE's text columns,
// with the names of pg_catalog's (CVE-2018-1058's pattern). An exact
// type match beats pg_catalog's text versions, so an unqualified call or
// operator in spiredb's SQL would run that role's code with spiredb's
// privileges: here, ending a superuser's session. No spiredb command may.
func TestNoCommandRunsAnotherRolesShadowingCode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 2000)
	role, mallory := hostileRole(t, db, "shadow")
	_, err := mallory.Exec(ctx, strings.ReplaceAll(`
CREATE FUNCTION public.hit() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
EXCEPTION WHEN others THEN NULL;
END $$;
CREATE FUNCTION public.cat(a varchar, b varchar) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.textcat(a, b); END $$;
CREATE OPERATOR public.|| (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.cat);
CREATE FUNCTION public.eq(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.texteq(a, b); END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.eq);
CREATE FUNCTION public.eqt(a varchar, b text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.texteq(a, b); END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = text, FUNCTION = public.eqt);
CREATE FUNCTION public.acc(s text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.array_append(s, v); END $$;
CREATE AGGREGATE public.array_agg(text) (SFUNC = public.acc, STYPE = text[]);
CREATE FUNCTION public.cnt(s int8, v text) RETURNS int8 LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN s + 1; END $$;
CREATE AGGREGATE public.count(text) (SFUNC = public.cnt, STYPE = int8, INITCOND = '0');
CREATE FUNCTION public.cnti(s int8, v int) RETURNS int8 LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN s + 1; END $$;
CREATE AGGREGATE public.count(int) (SFUNC = public.cnti, STYPE = int8, INITCOND = '0');
CREATE FUNCTION public.tj(v text) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.to_jsonb(v); END $$;
CREATE FUNCTION public.to_jsonb(v text) RETURNS jsonb LANGUAGE sql AS $$ SELECT public.tj(v) $$;
CREATE FUNCTION public.catn(a name, b name) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.textcat(a::text, b::text); END $$;
CREATE OPERATOR public.|| (LEFTARG = name, RIGHTARG = name, FUNCTION = public.catn);
CREATE FUNCTION public.lower(a varchar) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.lower(a::text); END $$;
CREATE FUNCTION public.md5(a varchar) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.md5(a::text); END $$;
CREATE FUNCTION public.length(a varchar) RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN pg_catalog.length(a::text); END $$;
`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)

	store := "file://" + filepath.Join(t.TempDir(), "store")
	_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	victim := victims(t, db)
	// the trap works: an unqualified count over a text column runs it
	v := victim()
	var n string
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(type)::text FROM selectors").Scan(&n))
	require.Error(t, v.Ping(ctx), "the trap did not spring")
	for _, args := range [][]string{
		{"doctor"},
		{"indexes", "check"},
		{"indexes", "plan"},
		{"stats", "top"},
		{"views", "create"},
		{"views", "refresh"},
		{"views", "status"},
		{"migrate", "status"},
		{"spire", "upgrade-check", "--to", "1.14.0"},
		{"backup", "diff", "--latest", "--store", store},
		{"backup", "verify", "--latest", "--store", store, "--level", "restore"},
		{"backup", "restore", "--latest", "--store", store, "--plan", "--target-dsn", db.DSN},
		{"migrate", "backfill", "--table", "selectors", "--set", "value = value", "--where", "type = 'k8s'"},
		{"indexes", "apply"},
		{"tune", "check", "--detect"},
		{"replica", "status"},
		{"stats", "snapshot", "--out", filepath.Join(t.TempDir(), "snap.json")},
	} {
		v := victim()
		_, stderr, code := runCLI(t, nil, append(args, "--dsn", db.DSN)...)
		require.NotEqual(t, 0, code, "%v", args)
		if args[0] != "doctor" {
			require.Contains(t, stderr, "refusing to work as", "%v", args)
		}
		require.NoError(t, v.Ping(ctx), "spiredb %s ran %s's code with its privileges; stderr: %s", strings.Join(args, " "), role, stderr)
	}

	// doctor names each shadowing object and its owner
	findings := func() map[string]string {
		out, stderr, code := runCLI(t, nil, "doctor", "--dsn", db.DSN, "-o", "json")
		require.Equal(t, 1, code, "security.shadowing is an error finding: %s", stderr)
		var rep doctor.Report
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		got := map[string]string{}
		for _, f := range rep.Findings {
			got[f.Check] += f.Message + " | " + f.Fix + "\n"
		}
		return got
	}
	got := findings()
	for _, obj := range []string{"public.array_agg(text)", "public.count(text)", "public.count(integer)", "public.to_jsonb(text)",
		"public.||(character varying, character varying)", "public.=(character varying, text)", "public.lower(character varying)"} {
		require.Contains(t, got["security.shadowing"], obj+" (owner "+role+")")
	}
	require.NotContains(t, got["security.shadowing"], "pg_stat_statements", "an extension's functions are the extension's")
	require.NotContains(t, got["security.shadowing"], "public.hit()", "a name pg_catalog does not have shadows nothing")
	require.Empty(t, got["security.public_create"], "only %s may create in public", role)
	_, err = conn.Exec(ctx, "GRANT CREATE ON SCHEMA public TO PUBLIC")
	require.NoError(t, err)
	got = findings()
	require.Contains(t, got["security.public_create"], `REVOKE CREATE ON SCHEMA "public" FROM PUBLIC`)
	require.Contains(t, got["security.public_create"], `GRANT CREATE ON SCHEMA "public" TO "postgres"`, "SPIRE's role keeps what its migrations need")
}

// TestScratchRestoreRunsNoBackupCodeAsSuperuser: a role that may create in
// SPIRE's database leaves a function behind an expression index on its own
// table. Restoring the backup builds the index, which calls the function
// as the restoring role: verify, diff and restore --plan restore as their
// scratch role, so a superuser there would run that role's code with a
// superuser's privileges. spiredb refuses that, before the restore, naming
// the backup's functions and the fix.
func TestScratchRestoreRunsNoBackupCodeAsSuperuser(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 500)
	_, mallory := hostileRole(t, db, "restorer")
	_, err := mallory.Exec(ctx, strings.ReplaceAll(`
CREATE FUNCTION public.f(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
	RETURN x;
EXCEPTION WHEN others THEN RETURN x;
END $$;
CREATE TABLE public.notes (x int);
INSERT INTO public.notes VALUES (1);
CREATE INDEX ON public.notes (public.f(x));`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)

	store := "file://" + filepath.Join(t.TempDir(), "store")
	_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	for _, args := range [][]string{
		{"backup", "verify", "--latest", "--level", "restore"},
		{"backup", "diff", "--latest"},
	} {
		victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim_"+db.Name)
		require.NoError(t, err)
		_, stderr, code := runCLI(t, nil, append(args, "--store", store, "--dsn", db.DSN)...)
		require.NoError(t, victim.Ping(ctx), "spiredb %s ran the backup's code as a superuser", strings.Join(args, " "))
		victim.Close(ctx)
		require.NotEqual(t, 0, code, "spiredb %s: %s", strings.Join(args, " "), stderr)
		require.Contains(t, stderr, "public.f(integer)")
		require.Contains(t, stderr, "--scratch-dsn")
	}

	// the fix the message gives: a scratch role with CREATEDB alone
	scratchRole := "scratch_" + strings.TrimPrefix(db.Name, "t_")[:8]
	_, err = conn.Exec(ctx, "CREATE ROLE "+scratchRole+" LOGIN CREATEDB PASSWORD 'Scratch-pw-1'")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = db.Pool.Exec(context.Background(), "DROP ROLE "+scratchRole) })
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.UserPassword(scratchRole, "Scratch-pw-1")
	victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim_"+db.Name)
	require.NoError(t, err)
	defer victim.Close(ctx)
	_, stderr, code = runCLI(t, nil, "backup", "verify", "--latest", "--level", "restore", "--store", store, "--scratch-dsn", u.String())
	require.Equal(t, 0, code, stderr)
	require.NoError(t, victim.Ping(ctx), "the backup's code ran with the scratch role's privileges only")
}

// TestAdviseCallsHypopgInItsOwnSchema: hypopg created in a schema of its
// own, after public on the search_path; a role that may create in public
// defines hypopg_create_index(text) there, which the search_path would
// find first. indexes advise calls hypopg's by its schema: the role's
// function never runs with spiredb's privileges, and the advice is hypopg's.
func TestAdviseCallsHypopgInItsOwnSchema(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 15000)
	role, mallory := hostileRole(t, db, "hypo")
	for _, q := range []string{
		"CREATE SCHEMA hypo",
		"CREATE EXTENSION hypopg SCHEMA hypo",
		`ALTER DATABASE ` + db.Name + ` SET search_path = "$user", public, hypo`,
		"GRANT USAGE ON SCHEMA hypo TO " + role,
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err)
	}
	_, err := mallory.Exec(ctx, strings.ReplaceAll(`
CREATE FUNCTION public.hypopg_create_index(sql text, OUT indexrelid oid, OUT indexname text) RETURNS SETOF record LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
	RETURN QUERY SELECT * FROM hypo.hypopg_create_index(sql);
END $$`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)

	prune := catalogExample(t, "events prune", `"registered_entries_events"`)
	old := time.Now().Add(-12 * time.Hour).UTC().Format("2006-01-02 15:04:05.999999-07")
	for range 3 {
		_, err := conn.Exec(ctx, prune.SQL, pgx.QueryExecModeSimpleProtocol, old)
		require.NoError(t, err)
	}
	_, err = conn.Exec(ctx, "ANALYZE")
	require.NoError(t, err)
	victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim_"+db.Name)
	require.NoError(t, err)
	defer victim.Close(ctx)
	out, stderr, code := runCLI(t, nil, "indexes", "advise", "--dsn", db.DSN, "-o", "json")
	require.NoError(t, victim.Ping(ctx), "indexes advise ran %s's hypopg_create_index with its privileges", role)
	require.Equal(t, 0, code, stderr)
	var adv indexes.AdviseReport
	require.NoError(t, json.Unmarshal([]byte(out), &adv), out)
	require.NotEmpty(t, adv.Advice, "hypopg's hypothetical indexes were planned: %s", out)
}

// TestViewsRefreshRefusesAViewBoundElsewhere: a view of spiredb's bound
// to a function outside pg_catalog (created by an older spiredb through a
// search_path that held another role's aggregate, since moved off it) is
// never refreshed: the refresh would run that role's code as the view's
// owner. The refusal names the function and its owner.
func TestViewsRefreshRefusesAViewBoundElsewhere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, conn := statsDB(t, 200)
	_, stderr, code := runCLI(t, nil, "views", "create", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	role := "bound_" + strings.TrimPrefix(db.Name, "t_")[:8]
	var def string
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_get_viewdef('spiredb.entry_selectors'::regclass)").Scan(&def))
	require.Contains(t, def, "array_agg")
	def = strings.ReplaceAll(strings.ReplaceAll(def, "pg_catalog.array_agg", "array_agg"), "array_agg(", "hidden.array_agg(")
	for _, q := range []string{
		"CREATE ROLE " + role,
		"CREATE SCHEMA hidden",
		strings.ReplaceAll(`CREATE FUNCTION hidden.acc(s text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
	RETURN pg_catalog.array_append(s, v);
END $$`, "VICTIM", "victim_"+db.Name),
		"CREATE AGGREGATE hidden.array_agg(text) (SFUNC = hidden.acc, STYPE = text[])",
		"ALTER FUNCTION hidden.acc(text[], text) OWNER TO " + role,
		"ALTER AGGREGATE hidden.array_agg(text) OWNER TO " + role,
		"DROP MATERIALIZED VIEW spiredb.entry_selectors",
		"CREATE MATERIALIZED VIEW spiredb.entry_selectors AS " + strings.TrimSuffix(strings.TrimSpace(def), ";") + " WITH NO DATA",
		"CREATE UNIQUE INDEX ON spiredb.entry_selectors (id)",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP SCHEMA hidden CASCADE", "DROP ROLE " + role} {
			_, _ = db.Pool.Exec(context.Background(), q)
		}
	})
	victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim_"+db.Name)
	require.NoError(t, err)
	defer victim.Close(ctx)
	_, stderr, code = runCLI(t, nil, "views", "refresh", "--dsn", db.DSN)
	require.NoError(t, victim.Ping(ctx), "views refresh ran a view bound to %s's aggregate", role)
	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "hidden.array_agg(text) (owner "+role+")")
	require.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, stderr)
}

// TestBackfillRunsNoOtherRolesTriggerCode: a table whose owner, a role
// with fewer privileges than spiredb's, put a trigger on it. A backfill's
// UPDATEs would fire it with spiredb's privileges; the backfill is refused
// before any batch, naming the function and its owner, and nothing changes.
func TestBackfillRunsNoOtherRolesTriggerCode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, conn := statsDB(t, 100)
	role, mallory := hostileRole(t, db, "trig")
	_, err := mallory.Exec(ctx, strings.ReplaceAll(`
CREATE TABLE public.notes (id int PRIMARY KEY, v int);
INSERT INTO public.notes SELECT g, 0 FROM generate_series(1, 10) g;
CREATE FUNCTION public.on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
	RETURN NEW;
END $$;
CREATE TRIGGER notes_update BEFORE UPDATE ON public.notes FOR EACH ROW EXECUTE FUNCTION public.on_update();`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)

	victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim_"+db.Name)
	require.NoError(t, err)
	defer victim.Close(ctx)
	_, stderr, code = runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--table", "public.notes", "--set", "v = 1", "--name", "n1")
	require.NoError(t, victim.Ping(ctx), "the backfill fired %s's trigger with spiredb's privileges", role)
	require.NotEqual(t, 0, code, stderr)
	require.Contains(t, stderr, "public.on_update() (owner "+role+")")
	var changed int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM public.notes WHERE v <> 0").Scan(&changed))
	require.Zero(t, changed)

	// as the table's owner, the trigger is its own code, with the owner's
	// privileges (it could not end a superuser's session): the backfill runs
	victim.Close(ctx)
	u := strings.Replace(db.DSN, "postgres:"+db.Cluster.Password+"@", role+":"+hostilePassword+"@", 1)
	_, err = conn.Exec(ctx, "GRANT CREATE ON DATABASE "+db.Name+" TO "+role+"; GRANT USAGE, CREATE ON SCHEMA spiredb TO "+role+"; GRANT ALL ON ALL TABLES IN SCHEMA spiredb TO "+role+"; GRANT ALL ON ALL SEQUENCES IN SCHEMA spiredb TO "+role)
	require.NoError(t, err)
	_, stderr, code = runCLI(t, nil, "migrate", "backfill", "--dsn", u, "--table", "public.notes", "--set", "v = 1", "--name", "n2")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM public.notes WHERE v <> 0").Scan(&changed))
	require.Equal(t, 10, changed)
}

// TestBackfillRunsNoOtherRolesCodeOfAnyKind: an UPDATE runs more of a
// table owner's code than its triggers: a stored generated column's
// expression, the checks of a column's domain, the function behind an
// operator in a check constraint, the code of a table an ON UPDATE CASCADE
// reaches, a partition's trigger. Each would run with spiredb's
// privileges; each backfill is refused before any batch, naming the
// function, and no row changes.
func TestBackfillRunsNoOtherRolesCodeOfAnyKind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, conn := statsDB(t, 100)
	role, mallory := hostileRole(t, db, "code")
	_, err := mallory.Exec(ctx, strings.ReplaceAll(`
CREATE FUNCTION public.hit() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
EXCEPTION WHEN others THEN NULL;
END $$;
CREATE FUNCTION public.gen(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN x; END $$;
CREATE FUNCTION public.chk(x int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN true; END $$;
CREATE FUNCTION public.same(a int, b int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN a = b; END $$;
CREATE FUNCTION public.trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM public.hit(); RETURN NEW; END $$;
CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.same);
CREATE DOMAIN public.checked AS int CHECK (public.chk(VALUE));

CREATE TABLE public.generated (id int PRIMARY KEY, v int, g int GENERATED ALWAYS AS (public.gen(v)) STORED);
CREATE TABLE public.domained (id int PRIMARY KEY, v public.checked);
CREATE TABLE public.operated (id int PRIMARY KEY, v int CHECK (v === v));
CREATE TABLE public.parent (id int PRIMARY KEY, k int UNIQUE, v int);
CREATE TABLE public.child (id int PRIMARY KEY, k int REFERENCES public.parent (k) ON UPDATE CASCADE, g int GENERATED ALWAYS AS (public.gen(k)) STORED);
CREATE TABLE public.parted (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (1000);
CREATE TRIGGER parted_1_update BEFORE UPDATE ON public.parted_1 FOR EACH ROW EXECUTE FUNCTION public.trg();
INSERT INTO public.generated (id, v) SELECT g, 0 FROM generate_series(1, 10) g;
INSERT INTO public.domained SELECT g, 0 FROM generate_series(1, 10) g;
INSERT INTO public.operated SELECT g, 0 FROM generate_series(1, 10) g;
INSERT INTO public.parent SELECT g, g, 0 FROM generate_series(1, 10) g;
INSERT INTO public.child (id, k) SELECT g, g FROM generate_series(1, 10) g;
INSERT INTO public.parted SELECT g, 0 FROM generate_series(1, 10) g;`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)
	_, stderr, code := runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)

	for _, c := range []struct{ table, set, runs, changed string }{
		{"public.generated", "v = 1", "public.gen(integer)", "v <> 0"},
		{"public.domained", "v = 1", "public.chk(integer)", "v <> 0"},
		{"public.operated", "v = 1", "public.same(integer, integer)", "v <> 0"},
		{"public.parent", "k = k + 100", "public.gen(integer)", "k > 100"},
		{"public.parted", "v = 1", "public.trg()", "v <> 0"},
	} {
		victim, err := pgx.Connect(ctx, db.DSN+"&application_name=victim_"+db.Name)
		require.NoError(t, err)
		_, stderr, code := runCLI(t, nil, "migrate", "backfill", "--dsn", db.DSN, "--table", c.table, "--set", c.set, "--name", "j_"+strings.TrimPrefix(c.table, "public."))
		require.NoError(t, victim.Ping(ctx), "the backfill of %s ran %s's code with spiredb's privileges: %s", c.table, role, stderr)
		victim.Close(ctx)
		require.NotEqual(t, 0, code, "%s: %s", c.table, stderr)
		require.Contains(t, stderr, c.runs+" (owner "+role+")", c.table)
		var changed int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM "+c.table+" WHERE "+c.changed).Scan(&changed))
		require.Zero(t, changed, "%s changed", c.table)
	}
}

// victims returns a function that opens a superuser session named for
// the traps of hostileRole's functions (application_name victim_DB):
// Ping fails once a trap ran with a superuser's privileges and ended it.
func victims(t *testing.T, db *pgtest.DB) func() *pgx.Conn {
	return func() *pgx.Conn {
		t.Helper()
		v, err := pgx.Connect(context.Background(), db.DSN+"&application_name=victim_"+db.Name)
		require.NoError(t, err)
		t.Cleanup(func() { v.Close(context.Background()) })
		return v
	}
}

// hostilePassword is hostileRole's password.
const hostilePassword = "Hostile-pw-1"

// hostileRole creates a login role that may create in public, as every
// role may on PostgreSQL 13 and 14, dropped with what it owns when the
// test ends, and returns it with a session of its own.
func hostileRole(t *testing.T, db *pgtest.DB, prefix string) (string, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	role := prefix + "_" + strings.TrimPrefix(db.Name, "t_")[:8]
	for _, q := range []string{"CREATE ROLE " + role + " LOGIN PASSWORD '" + hostilePassword + "'", "GRANT CREATE ON SCHEMA public TO " + role} {
		_, err := db.Pool.Exec(ctx, q)
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			_, _ = db.Pool.Exec(context.Background(), q)
		}
	})
	cfg, err := pgx.ParseConfig(db.DSN)
	require.NoError(t, err)
	cfg.User, cfg.Password = role, hostilePassword
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return role, conn
}

// TestNoCommandWorksInASchemaAnotherRoleOwns: a role with CREATE on SPIRE's
// database (SPIRE's own role usually owns it) creates the spiredb schema
// before spiredb does, with spiredb's tables in it: a version table and a
// jobs table with triggers, and a view in place of view_refreshes. spiredb
// writes and reads those as its own role, so the triggers and the view's
// function would run that role's code with spiredb's privileges (here,
// ending a superuser's session). Every command that touches the schema
// refuses, naming its owner; doctor reports it; the owner itself may.
func TestNoCommandWorksInASchemaAnotherRoleOwns(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 500)
	role, mallory := hostileRole(t, db, "owner")
	_, err := conn.Exec(ctx, "GRANT CREATE ON DATABASE "+db.Name+" TO "+role)
	require.NoError(t, err)
	_, err = mallory.Exec(ctx, strings.ReplaceAll(`
CREATE SCHEMA spiredb;
CREATE FUNCTION spiredb.hit() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
	RETURN pg_catalog.now();
EXCEPTION WHEN others THEN RETURN pg_catalog.now();
END $$;
CREATE FUNCTION spiredb.trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM spiredb.hit(); RETURN NULL; END $$;
CREATE TABLE spiredb.schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
CREATE TRIGGER trap AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON spiredb.schema_migrations FOR EACH STATEMENT EXECUTE FUNCTION spiredb.trap();
CREATE TABLE spiredb.backfill_jobs (
    name text PRIMARY KEY, table_name text NOT NULL, set_clause text NOT NULL, where_clause text NOT NULL DEFAULT '',
    key_columns text[] NOT NULL, max_key text[] NOT NULL, last_key text[], rows_done bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0, batch_size int NOT NULL, state text NOT NULL, error text,
    started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE TRIGGER trap AFTER INSERT OR UPDATE OR DELETE ON spiredb.backfill_jobs FOR EACH STATEMENT EXECUTE FUNCTION spiredb.trap();
CREATE VIEW spiredb.view_refreshes AS SELECT 'entry_selectors'::text AS view_name, spiredb.hit() AS refreshed_at,
    1::double precision AS duration_ms, 0::bigint AS row_count, true AS concurrent;
`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)
	victim := victims(t, db)
	// the trap works: reading the view as a superuser runs the function
	v := victim()
	_, err = conn.Exec(ctx, "SELECT * FROM spiredb.view_refreshes")
	require.NoError(t, err)
	require.Error(t, v.Ping(ctx), "the trap did not spring")

	commands := [][]string{
		{"migrate", "up"},
		{"migrate", "status"},
		{"migrate", "force", "1", "--yes"},
		{"migrate", "backfill", "--table", "selectors", "--set", "value = value", "--name", "trap"},
		{"migrate", "backfill", "--status"},
		{"migrate", "backfill", "--cancel", "trap"},
		{"views", "create"},
		{"views", "refresh"},
		{"views", "status"},
	}
	refused := func(owners ...string) {
		t.Helper()
		for _, args := range commands {
			v := victim()
			_, stderr, code := runCLI(t, nil, append(args, "--dsn", db.DSN)...)
			require.NoError(t, v.Ping(ctx), "spiredb %s ran %s's code with its privileges; stderr: %s", strings.Join(args, " "), role, stderr)
			require.Equal(t, 1, code, "spiredb %s: %s", strings.Join(args, " "), stderr)
			require.Contains(t, stderr, "refusing to work as postgres in schema spiredb", "%v", args)
			for _, o := range owners {
				require.Contains(t, stderr, o, "%v", args)
			}
		}
	}
	refused("schema spiredb (owner "+role+")", "table spiredb.backfill_jobs (owner "+role+")", "view spiredb.view_refreshes (owner "+role+")")

	// doctor says so, as an error, with the fix
	out, stderr, code := runCLI(t, nil, "doctor", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 1, code, stderr)
	var rep doctor.Report
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	var found string
	for _, f := range rep.Findings {
		if f.Check == "security.spiredb_schema" {
			found = f.Message + " | " + f.Fix
		}
	}
	require.Contains(t, found, "table spiredb.schema_migrations (owner "+role+")")
	require.Contains(t, found, `ALTER SCHEMA spiredb OWNER TO "postgres"`)

	// the schema handed over, its tables not: still refused
	_, err = conn.Exec(ctx, "ALTER SCHEMA spiredb OWNER TO postgres")
	require.NoError(t, err)
	refused("table spiredb.schema_migrations (owner " + role + ")")

	// the owner may work in its own schema: its code runs as itself
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.UserPassword(role, hostilePassword)
	_, err = conn.Exec(ctx, "ALTER SCHEMA spiredb OWNER TO "+role)
	require.NoError(t, err)
	_, stderr, code = runCLI(t, nil, "migrate", "status", "--dsn", u.String())
	require.Equal(t, 0, code, stderr)

	// gone, spiredb makes its own
	_, err = conn.Exec(ctx, "DROP SCHEMA spiredb CASCADE")
	require.NoError(t, err)
	_, stderr, code = runCLI(t, nil, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
	_, stderr, code = runCLI(t, nil, "views", "status", "--dsn", db.DSN)
	require.Equal(t, 0, code, stderr)
}

// TestNoCommandReadsAViewInPlaceOfSpiresTable: SPIRE creates plain tables,
// and reading a plain table runs nobody's code. A role with CREATE on the
// database creates a schema named after spiredb's role, which the default
// search_path ("$user", public) puts before public, with a view named
// migrations in it (SPIRE's role, which owns SPIRE's tables, can do the
// same in place of one of them): spiredb finds SPIRE's schema through its
// migrations table and reads it as its own role, so the view's function
// would run with spiredb's privileges. No command may; those that need
// SPIRE's schema refuse, naming the view; doctor reports it; backup run
// still backs up.
func TestNoCommandReadsAViewInPlaceOfSpiresTable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, conn := statsDB(t, 500)
	store := "file://" + filepath.Join(t.TempDir(), "store")
	_, stderr, code := runCLI(t, nil, "backup", "run", "--dsn", db.DSN, "--store", store)
	require.Equal(t, 0, code, stderr)
	role, mallory := hostileRole(t, db, "viewer")
	_, err := conn.Exec(ctx, "GRANT CREATE ON DATABASE "+db.Name+" TO "+role)
	require.NoError(t, err)
	_, err = mallory.Exec(ctx, strings.ReplaceAll(`
CREATE SCHEMA postgres;
CREATE FUNCTION postgres.hit() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = 'VICTIM';
	RETURN 1;
EXCEPTION WHEN others THEN RETURN 1;
END $$;
CREATE VIEW postgres.migrations AS SELECT 1::bigint AS id, pg_catalog.now() AS created_at, pg_catalog.now() AS updated_at,
	23 AS version, '1.13.3'::text AS code_version, postgres.hit() AS x;
`, "VICTIM", "victim_"+db.Name))
	require.NoError(t, err)
	victim := victims(t, db)
	// the trap works: the search_path finds the view first
	v := victim()
	_, err = conn.Exec(ctx, "SELECT version FROM migrations")
	require.NoError(t, err)
	require.Error(t, v.Ping(ctx), "the trap did not spring")

	for _, args := range [][]string{
		{"doctor"},
		{"indexes", "check"},
		{"indexes", "plan"},
		{"indexes", "apply"},
		{"stats", "top"},
		{"views", "create"},
		{"views", "refresh"},
		{"views", "status"},
		{"spire", "upgrade-check", "--to", "1.14.0"},
		{"backup", "diff", "--latest", "--store", store},
		{"backup", "restore", "--latest", "--store", store, "--plan", "--target-dsn", db.DSN},
		{"backup", "verify", "--latest", "--store", store, "--level", "restore"},
		{"backup", "run", "--store", store},
		{"tune", "check", "--detect"},
		{"migrate", "up"},
	} {
		v := victim()
		_, stderr, code := runCLI(t, nil, append(args, "--dsn", db.DSN)...)
		require.NoError(t, v.Ping(ctx), "spiredb %s ran %s's view with its privileges; stderr: %s", strings.Join(args, " "), role, stderr)
		switch strings.Join(args[:min(2, len(args))], " ") {
		case "indexes check", "indexes plan", "indexes apply", "views create", "views status", "spire upgrade-check", "backup diff", "backup restore":
			require.Equal(t, 1, code, "spiredb %s: %s", strings.Join(args, " "), stderr)
			require.Contains(t, stderr, "refusing to read", "%v", args)
			require.Contains(t, stderr, "postgres.migrations (a view, owner "+role+")", "%v", args)
		case "backup run", "migrate up", "backup verify":
			require.Equal(t, 0, code, "spiredb %s: %s", strings.Join(args, " "), stderr)
		}
	}

	out, stderr, code := runCLI(t, nil, "doctor", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 1, code, stderr)
	var rep doctor.Report
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	var found string
	for _, f := range rep.Findings {
		if f.Check == "security.spire_tables" {
			found = f.Message + " | " + f.Fix
		}
	}
	require.Contains(t, found, "postgres.migrations (a view, owner "+role+")")

	// row-level security: a role that owns one of SPIRE's tables gives it
	// a policy, whose expression runs as each reader it applies to (a
	// monitoring role, here); superusers and the owner bypass it
	_, err = conn.Exec(ctx, "DROP SCHEMA postgres, spiredb CASCADE")
	require.NoError(t, err)
	reader := "reader_" + strings.TrimPrefix(db.Name, "t_")[:8]
	for _, q := range []string{
		"ALTER TABLE public.registered_entries OWNER TO " + role,
		"CREATE ROLE " + reader + " LOGIN PASSWORD 'Reader-pw-1' IN ROLE pg_monitor",
		"GRANT SELECT ON ALL TABLES IN SCHEMA public TO " + reader,
		"GRANT CREATE ON DATABASE " + db.Name + " TO " + reader,
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP OWNED BY " + reader, "DROP ROLE " + reader} {
			_, _ = db.Pool.Exec(context.Background(), q)
		}
	})
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.UserPassword(reader, "Reader-pw-1")
	// the reader's own views, before the policy
	_, stderr, code = runCLI(t, nil, "views", "create", "--dsn", u.String())
	require.Equal(t, 0, code, stderr)
	_, err = mallory.Exec(ctx, `CREATE FUNCTION public.seen() RETURNS boolean LANGUAGE sql AS 'SELECT true';
ALTER TABLE public.registered_entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON public.registered_entries USING (public.seen())`)
	require.NoError(t, err)
	for _, args := range [][]string{{"views", "status"}, {"views", "refresh"}} {
		_, stderr, code = runCLI(t, nil, append(args, "--dsn", u.String())...)
		require.Equal(t, 1, code, "spiredb %s: %s", strings.Join(args, " "), stderr)
		require.Contains(t, stderr, "public.registered_entries (row-level security policies, owner "+role+")")
	}
	_, stderr, code = runCLI(t, nil, "indexes", "check", "--dsn", db.DSN)
	require.Equal(t, 0, code, "a superuser bypasses row-level security: %s", stderr)

	// a plain copy of SPIRE's migrations table where "$user" looks first:
	// two candidates, and spiredb does not guess
	_, err = conn.Exec(ctx, "CREATE SCHEMA postgres; CREATE TABLE postgres.migrations (LIKE public.migrations); INSERT INTO postgres.migrations SELECT * FROM public.migrations")
	require.NoError(t, err)
	_, stderr, code = runCLI(t, nil, "indexes", "check", "--dsn", db.DSN)
	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "more than one schema on the search_path (postgres, public)")
	out, stderr, code = runCLI(t, nil, "doctor", "--dsn", db.DSN, "-o", "json")
	require.Equal(t, 1, code, stderr)
	rep = doctor.Report{}
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	found = ""
	for _, f := range rep.Findings {
		if f.Check == "spire.schema" {
			found = f.Message + " | " + f.Fix
		}
	}
	require.Contains(t, found, "(postgres, public)")
}
