package dsn_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/dsn"
)

func TestParseBothForms(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]dsn.Params{
		"postgres://spire:p%40ss%2F@db:5433/spire?sslmode=require&dbname=other": {"user": "spire", "password": "p@ss/", "host": "db", "port": "5433", "dbname": "other", "sslmode": "require"},
		"postgresql://h1:1,h2:2/db":                {"host": "h1,h2", "port": "1,2", "dbname": "db"},
		`host=db password='a b\'c' dbname = spire`: {"host": "db", "password": `a b'c`, "dbname": "spire"},
		`host=db password=a\ b sslpassword=x`:      {"host": "db", "password": "a b", "sslpassword": "x"},
		"":                                         {},
		"postgres://[::1]:5432/db?application_name=a": {"host": "::1", "port": "5432", "dbname": "db", "application_name": "a"},
	} {
		got, err := dsn.Parse(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		// rendering and parsing again gives the same params
		again, err := dsn.Parse(got.String())
		require.NoError(t, err)
		require.Equal(t, got, again, got.String())
	}
	for _, bad := range []string{"host=db password", "host='db", "postgres://u:p/w@h:x/db"} {
		_, err := dsn.Parse(bad)
		require.Error(t, err, bad)
		require.NotContains(t, err.Error(), "p/w")
	}
}

// FuzzParseAgreesWithPgx: for any password, in either form, Params finds
// what pgx finds; WithoutSecrets renders a string that carries none.
func FuzzParseAgreesWithPgx(f *testing.F) {
	for _, s := range []string{"s3cret", "p@ss:word/?#", "with space", `back\slash'quote`, "päss"} {
		f.Add(s, "spire db")
	}
	f.Fuzz(func(t *testing.T, password, database string) {
		if strings.ContainsAny(password+database, "\x00") || password == "" {
			t.Skip()
		}
		forms := []string{
			(&url.URL{Scheme: "postgres", User: url.UserPassword("spire", password), Host: "db:5432", Path: "/" + database}).String(),
			"host=db port=5432 user=spire password=" + dsn.QuoteValue(password) + " dbname=" + dsn.QuoteValue(database),
		}
		for _, form := range forms {
			cfg, err := pgconn.ParseConfig(form)
			if err != nil {
				continue
			}
			p, err := dsn.Parse(form)
			require.NoError(t, err, form)
			require.Equal(t, cfg.Password, p["password"], form)
			if cfg.Database != "" {
				require.Equal(t, cfg.Database, p["dbname"], form)
			}
			clean := p.WithoutSecrets().String()
			back, err := dsn.Parse(clean)
			require.NoError(t, err)
			require.NotContains(t, back, "password")
			require.Equal(t, p["dbname"], back["dbname"])
		}
	})
}
