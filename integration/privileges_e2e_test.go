package integration_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
	"github.com/spiredb/spiredb/internal/pgtest"
	"github.com/spiredb/spiredb/internal/spirefixture"
)

// doctor lists, per module, what the connecting role lacks, with the
// GRANT that fixes it: as a managed service's role (no superuser,
// CREATEDB, pg_monitor) and as a superuser.
func TestDoctorListsMissingPrivileges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	loadFixture(t, db, spirefixture.Spec{Entries: 20})
	c := pgtest.ManagedRole(t, db)
	role := c.User

	privileges := func(dsn string) *doctor.Privileges {
		out, stderr, code := runCLI(t, nil, "doctor", "--dsn", dsn, "-o", "json")
		require.Contains(t, []int{0, 1, 4}, code, stderr)
		var r doctor.Report
		require.NoError(t, json.Unmarshal([]byte(out), &r), "stdout %q stderr %q", out, stderr)
		require.NotNil(t, r.Privileges)
		return r.Privileges
	}
	missing := func(p *doctor.Privileges) map[string]string {
		m := map[string]string{}
		for _, mod := range p.Modules {
			if len(mod.Missing) > 0 {
				m[mod.Name] = strings.Join(mod.Missing, ", ") + " | " + mod.Fix
			}
		}
		return m
	}

	p := privileges(c.DSN(db.Name))
	require.False(t, p.Superuser)
	got := missing(p)
	require.NotContains(t, got, "doctor, stats, tune check, indexes check", "pg_monitor is enough for doctor")
	require.NotContains(t, got, "backup verify --level restore, backup diff, restore --plan, spire upgrade-check --spire-server", "CREATEDB is there")
	for _, mod := range p.Modules {
		if strings.HasPrefix(mod.Name, "backup verify --level restore") {
			require.Empty(t, mod.Missing, "CREATEDB is there")
		}
	}
	require.Contains(t, got["backup run"], "GRANT SELECT ON ALL TABLES IN SCHEMA public")
	require.Contains(t, got["replica bootstrap, rejoin"], "REPLICATION")
	require.Contains(t, got["indexes apply, migrate backfill"], "ownership of SPIRE's tables")
	require.Contains(t, got["replica fence"], "pg_signal_backend")

	// SPIRE's tables are there but unreadable: said so, not "no SPIRE schema"
	out, _, _ := runCLI(t, nil, "doctor", "--dsn", c.DSN(db.Name), "-o", "json")
	var rep doctor.Report
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.True(t, rep.SPIRE.Unreadable)
	checks := map[string]bool{}
	for _, f := range rep.Findings {
		checks[f.Check] = true
	}
	require.True(t, checks["spire.read"])
	require.False(t, checks["spire.schema"], "%+v", rep.Findings)

	// the fix it names works
	_, err := db.Pool.Exec(ctx, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+pgx.Identifier{role}.Sanitize()+
		"; GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO "+pgx.Identifier{role}.Sanitize())
	require.NoError(t, err)
	require.NotContains(t, missing(privileges(c.DSN(db.Name))), "backup run")

	// text output names the role and the fixes, never the password
	out, _, _ = runCLI(t, nil, "doctor", "--dsn", c.DSN(db.Name))
	require.Contains(t, out, "privileges")
	require.Contains(t, out, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" REPLICATION;")
	require.Contains(t, out, "ALTER DATABASE "+pgx.Identifier{db.Name}.Sanitize()+" OWNER TO")
	require.NotContains(t, out, c.Password)

	su := privileges(db.DSN)
	require.True(t, su.Superuser)
	require.Empty(t, missing(su))
}
