package doctor

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/pg"
)

var privilegesSQL = query("privileges")

// Privileges is what the connecting role may do, per spiredb module.
type Privileges struct {
	Role      string   `json:"role"`
	Superuser bool     `json:"superuser"`
	Modules   []Module `json:"modules"`
}

// Module is one module's needs and what of them the role lacks.
type Module struct {
	Name    string   `json:"module"`
	Needs   string   `json:"needs"`
	Missing []string `json:"missing,omitempty"`
	Fix     string   `json:"fix,omitempty"`
}

// roleFacts are the catalog facts the modules' needs are read from.
type roleFacts struct {
	role, database                                  string
	super, createDB, replication                    bool
	monitor, readAllStats, signalBackend            bool
	createInDB, dbOwner, promote, selectAll, ownAll bool
	alterSystem                                     bool
}

// checkPrivileges reads the role's privileges and lists, for each module,
// what it needs and what is missing, with the GRANT that fixes it. These
// are facts for the operator, not findings: a role is often meant not to
// promote or fence.
func checkPrivileges(ctx context.Context, conn *pgx.Conn, spireSchema string, versionNum int) (*Privileges, error) {
	var f roleFacts
	err := conn.QueryRow(ctx, pg.Marker+privilegesSQL, spireSchema).Scan(&f.role, &f.database, &f.super, &f.createDB, &f.replication,
		&f.monitor, &f.readAllStats, &f.signalBackend, &f.createInDB, &f.dbOwner, &f.promote, &f.selectAll, &f.ownAll)
	if err != nil {
		return nil, fmt.Errorf("reading the role's privileges: %w", err)
	}
	f.alterSystem = f.super
	if versionNum >= 150000 && !f.super {
		// PostgreSQL 15 can GRANT ALTER SYSTEM on one parameter
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.has_parameter_privilege('default_transaction_read_only', 'ALTER SYSTEM')").
			Scan(&f.alterSystem); err != nil {
			return nil, fmt.Errorf("reading the role's ALTER SYSTEM privilege: %w", err)
		}
	}
	return f.modules(spireSchema), nil
}

func (f roleFacts) modules(schema string) *Privileges {
	role := pgx.Identifier{f.role}.Sanitize()
	db := pgx.Identifier{f.database}.Sanitize()
	p := &Privileges{Role: f.role, Superuser: f.super}
	add := func(name, needs string, checks ...struct {
		ok        bool
		what, fix string
	}) {
		m := Module{Name: name, Needs: needs}
		var fixes []string
		for _, c := range checks {
			if !c.ok && !f.super {
				m.Missing = append(m.Missing, c.what)
				fixes = append(fixes, c.fix)
			}
		}
		m.Fix = strings.Join(fixes, " ")
		p.Modules = append(p.Modules, m)
	}
	type c = struct {
		ok        bool
		what, fix string
	}
	sel := c{f.selectAll, "SELECT on every table and sequence of schema " + schema,
		fmt.Sprintf("GRANT SELECT ON ALL TABLES IN SCHEMA %s TO %s; GRANT SELECT ON ALL SEQUENCES IN SCHEMA %s TO %s;", schema, role, schema, role)}
	monitor := c{f.monitor, "pg_monitor", fmt.Sprintf("GRANT pg_monitor TO %s;", role)}
	add("doctor, stats, tune check, indexes check", "pg_monitor (settings, other roles' statements and activity)", monitor)
	add("backup run", "SELECT on SPIRE's tables (pg_dump)", sel)
	add("backup verify --level restore, backup diff, restore --plan, spire upgrade-check --spire-server", "CREATEDB (a scratch database)", c{f.createDB, "CREATEDB", fmt.Sprintf("ALTER ROLE %s CREATEDB;", role)})
	add("backup restore", "to own the target database (or CREATE on it); over a SPIRE datastore, also CREATEDB for the comparison's scratch database (or --scratch-dsn)", c{f.dbOwner || f.createInDB, "ownership of or CREATE on the database",
		fmt.Sprintf("ALTER DATABASE %s OWNER TO %s;", db, role)})
	add("migrate up, views create", "CREATE on the database (spiredb's schema)", c{f.createInDB || f.dbOwner, "CREATE on the database",
		fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s;", db, role)})
	add("indexes apply, migrate backfill", "to own SPIRE's tables (CREATE INDEX, UPDATE)", c{f.ownAll, "ownership of SPIRE's tables",
		"connect as the role SPIRE's tables belong to (SPIRE's own role), or GRANT it to " + role + ";"})
	add("replica bootstrap, rejoin", "REPLICATION", c{f.replication, "REPLICATION", fmt.Sprintf("ALTER ROLE %s REPLICATION;", role)})
	add("replica promote, switchover", "EXECUTE on pg_promote (on the standby)", c{f.promote, "EXECUTE on pg_promote",
		fmt.Sprintf("GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO %s;", role)})
	add("replica fence", "to own the database, pg_signal_backend, ALTER SYSTEM (second layer, optional)",
		c{f.dbOwner, "ownership of the database", fmt.Sprintf("ALTER DATABASE %s OWNER TO %s;", db, role)},
		c{f.signalBackend, "pg_signal_backend", fmt.Sprintf("GRANT pg_signal_backend TO %s;", role)},
		c{f.alterSystem, "ALTER SYSTEM on default_transaction_read_only (optional)",
			fmt.Sprintf("GRANT ALTER SYSTEM ON PARAMETER default_transaction_read_only TO %s; (PostgreSQL 15+)", role)})
	return p
}
