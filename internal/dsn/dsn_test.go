package dsn_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/dsn"
)

func TestRedact(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"postgres://spire:s3cret@db:5432/spire?sslmode=require", "postgres://spire:xxxxx@db:5432/spire?sslmode=require"},
		{"postgresql://spire:p%40ss@db/spire", "postgresql://spire:xxxxx@db/spire"},
		{"postgres://db/spire?user=a&password=s3cret", "postgres://db/spire?password=xxxxx&user=a"},
		{"postgres://spire@db/spire", "postgres://spire@db/spire"},
		{"host=db user=spire password=s3cret dbname=spire", "host=db user=spire password=xxxxx dbname=spire"},
		{"host=db password='s3 cr\\'et' dbname=spire", "host=db password=xxxxx dbname=spire"},
		{"host=db password = s3cret", "host=db password = xxxxx"},
		{"host=db dbname=spire", "host=db dbname=spire"},
		{"", ""},
	}
	for _, c := range cases {
		require.Equal(t, c.want, dsn.Redact(c.in), "in: %s", c.in)
	}
}

func TestRedactTextInErrorsAndLogs(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, secret string }{
		{`failed to connect to "postgres://u:hunter22@h/db": refused`, "hunter22"},
		{`pg_dump: connection to "host=h password=hunter22 dbname=x" failed`, "hunter22"},
		{`aws_secret_access_key=AbCdEf123 region=x`, "AbCdEf123"},
		{`X-Amz-Signature=0123abcdef&X-Amz-Date=1`, "0123abcdef"},
		{`s3://AKIA:wJalrXUtnF@bucket/prefix`, "wJalrXUtnF"},
		// an age identity (client-side encryption) pasted where a recipient goes
		{`invalid recipient AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSWJGX9M`, "1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSWJGX9M"},
		{`key age-secret-key-1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqswjgx9m.`, "qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqswjgx9m"},
		// SQL in a program's error (pg_restore: "Command was: ..."): a user
		// mapping's or server's OPTIONS, a role's PASSWORD
		{`pg_restore: Command was: CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'hunter22');`, "hunter22"},
		{`Command was: ALTER ROLE bob WITH LOGIN PASSWORD 'hun''ter22';`, "ter22"},
		{`Command was: CREATE ROLE bob PASSWORD E'hunter22'`, "hunter22"},
	}
	for _, c := range cases {
		got := dsn.RedactText(c.in)
		require.NotContains(t, got, c.secret, "in: %s", c.in)
		require.Contains(t, got, dsn.Mask)
	}
}

// FuzzRedact: whatever the password, neither URL nor key=value form leaks it.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{"s3cret", "p@ss:word/?#", "with space", `back\slash'quote`, "päss", "%41%42"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, password string) {
		if len(password) < 6 || strings.ContainsAny(password, "\x00") {
			t.Skip()
		}
		forms := []string{
			(&url.URL{Scheme: "postgres", User: url.UserPassword("spire", password), Host: "db:5432", Path: "/spire"}).String(),
			"postgres://db/spire?password=" + url.QueryEscape(password),
			"host=db user=spire password='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password) + "' dbname=spire",
		}
		for _, form := range forms {
			cfg, err := pgconn.ParseConfig(form)
			if err != nil || cfg.Password != password {
				continue // not a DSN that carries this password
			}
			red := dsn.Redact(form)
			for _, leak := range []string{password, url.QueryEscape(password), url.PathEscape(password), url.UserPassword("", password).String()[1:]} {
				if len(leak) >= 6 && !strings.Contains(strings.ReplaceAll(form, leak, ""), dsn.Mask) && strings.Contains(red, leak) {
					t.Fatalf("password leaked: form %q redacted %q", form, red)
				}
			}
		}
	})
}
