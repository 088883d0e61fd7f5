package doctor_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/doctor"
)

func conf(pluginData string) []byte {
	return []byte(`server { trust_domain = "example.org" }
plugins {
  KeyManager "memory" { plugin_data {} }
  DataStore "sql" {
    plugin_data {
` + pluginData + `
    }
  }
}`)
}

func errorChecks(r *doctor.SPIREConfigReport) []string {
	var out []string
	for _, f := range r.Findings {
		if f.Severity == doctor.Error {
			out = append(out, f.Check)
		}
	}
	return out
}

// What check-config decides from the file alone (the --connect half is in
// integration/spireconf_e2e_test.go, against spire-server and PostgreSQL).
func TestCheckSPIREConfigStatic(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, data string
		errors     []string
		dbType     string
	}{
		{"aws_postgres block", `database_type "aws_postgres" { region = "us-east-1" }
      connection_string = "host=db.example.com dbname=spire user=spire sslmode=verify-full sslrootcert=/ca.pem"`, nil, "aws_postgres"},
		{"mysql is not checked", `database_type = "mysql"
      connection_string = "spire:pw@tcp(db:3306)/spire"
      pool = 3`, []string{"sql.unknown_key"}, "mysql"},
		{"bad lifetime and no connection string", `database_type = "postgres"
      conn_max_lifetime = "an hour"`, []string{"sql.conn_max_lifetime", "sql.connection_string"}, "postgres"},
		{"URL with libpq-only parameter", `database_type = "postgres"
      connection_string = "postgresql://spire@db/spire?sslmode=verify-full&target_session_attrs=read-write"`,
			[]string{"sql.connection_string.parameter"}, "postgres"},
		{"missing database_type", `connection_string = "host=/run/postgresql dbname=spire"`, []string{"sql.database_type"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := doctor.CheckSPIREConfig(ctx, conf(tc.data), doctor.SPIREConfigOptions{})
			require.NoError(t, err)
			require.Equal(t, tc.dbType, r.DatabaseType)
			require.ElementsMatch(t, tc.errors, errorChecks(r), "%+v", r.Findings)
		})
	}
	_, err := doctor.CheckSPIREConfig(ctx, []byte(`plugins { DataStore "sqlite" { plugin_data {} } }`), doctor.SPIREConfigOptions{})
	var se *doctor.ConfigSyntaxError
	require.True(t, errors.As(err, &se), "%v", err)
}
