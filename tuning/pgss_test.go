package tuning

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// viewColumns are the pg_stat_statements view's columns per extension
// version, from contrib/pg_stat_statements/pg_stat_statements--*.sql.
var viewColumns = map[string]string{
	"1.7 (PG12)":     "userid dbid queryid query calls total_time min_time max_time mean_time stddev_time rows shared_blks_hit shared_blks_read shared_blks_dirtied shared_blks_written local_blks_hit local_blks_read local_blks_dirtied local_blks_written temp_blks_read temp_blks_written blk_read_time blk_write_time",
	"1.8 (PG13)":     "userid dbid queryid query plans total_plan_time min_plan_time max_plan_time mean_plan_time stddev_plan_time calls total_exec_time min_exec_time max_exec_time mean_exec_time stddev_exec_time rows shared_blks_hit shared_blks_read shared_blks_dirtied shared_blks_written local_blks_hit local_blks_read local_blks_dirtied local_blks_written temp_blks_read temp_blks_written blk_read_time blk_write_time wal_records wal_fpi wal_bytes",
	"1.9 (PG14)":     "userid dbid toplevel queryid query plans total_plan_time min_plan_time max_plan_time mean_plan_time stddev_plan_time calls total_exec_time min_exec_time max_exec_time mean_exec_time stddev_exec_time rows shared_blks_hit shared_blks_read shared_blks_dirtied shared_blks_written local_blks_hit local_blks_read local_blks_dirtied local_blks_written temp_blks_read temp_blks_written blk_read_time blk_write_time wal_records wal_fpi wal_bytes",
	"1.10 (PG15/16)": "userid dbid toplevel queryid query plans total_plan_time min_plan_time max_plan_time mean_plan_time stddev_plan_time calls total_exec_time min_exec_time max_exec_time mean_exec_time stddev_exec_time rows shared_blks_hit shared_blks_read shared_blks_dirtied shared_blks_written local_blks_hit local_blks_read local_blks_dirtied local_blks_written temp_blks_read temp_blks_written blk_read_time blk_write_time temp_blk_read_time temp_blk_write_time wal_records wal_fpi wal_bytes jit_functions jit_generation_time jit_inlining_count jit_inlining_time jit_optimization_count jit_optimization_time jit_emission_count jit_emission_time",
	"1.11 (PG17)":    "userid dbid toplevel queryid query plans total_plan_time min_plan_time max_plan_time mean_plan_time stddev_plan_time calls total_exec_time min_exec_time max_exec_time mean_exec_time stddev_exec_time rows shared_blks_hit shared_blks_read shared_blks_dirtied shared_blks_written local_blks_hit local_blks_read local_blks_dirtied local_blks_written temp_blks_read temp_blks_written shared_blk_read_time shared_blk_write_time local_blk_read_time local_blk_write_time temp_blk_read_time temp_blk_write_time wal_records wal_fpi wal_bytes jit_functions jit_generation_time jit_inlining_count jit_inlining_time jit_optimization_count jit_optimization_time jit_emission_count jit_emission_time jit_deform_count jit_deform_time stats_since minmax_stats_since",
	"1.12 (PG18)":    "userid dbid toplevel queryid query plans total_plan_time min_plan_time max_plan_time mean_plan_time stddev_plan_time calls total_exec_time min_exec_time max_exec_time mean_exec_time stddev_exec_time rows shared_blks_hit shared_blks_read shared_blks_dirtied shared_blks_written local_blks_hit local_blks_read local_blks_dirtied local_blks_written temp_blks_read temp_blks_written shared_blk_read_time shared_blk_write_time local_blk_read_time local_blk_write_time temp_blk_read_time temp_blk_write_time wal_records wal_fpi wal_bytes wal_buffers_full jit_functions jit_generation_time jit_inlining_count jit_inlining_time jit_optimization_count jit_optimization_time jit_emission_count jit_emission_time jit_deform_count jit_deform_time parallel_workers_to_launch parallel_workers_launched stats_since minmax_stats_since",
}

func columnSet(version string) map[string]bool {
	cols := map[string]bool{}
	for _, c := range strings.Fields(viewColumns[version]) {
		cols[c] = true
	}
	return cols
}

func TestSelectListPerVersion(t *testing.T) {
	tests := []struct {
		version    string
		exec, plan string
		io         string
		since      string
		toplevel   bool
	}{
		{"1.7 (PG12)", "total_time", "0::float8", "blk_read_time + blk_write_time", "NULL::timestamptz", false},
		{"1.8 (PG13)", "total_exec_time", "total_plan_time", "blk_read_time + blk_write_time", "NULL::timestamptz", false},
		{"1.9 (PG14)", "total_exec_time", "total_plan_time", "blk_read_time + blk_write_time", "NULL::timestamptz", true},
		{"1.10 (PG15/16)", "total_exec_time", "total_plan_time", "blk_read_time + blk_write_time + temp_blk_read_time + temp_blk_write_time", "NULL::timestamptz", true},
		{"1.11 (PG17)", "total_exec_time", "total_plan_time", "shared_blk_read_time + shared_blk_write_time + local_blk_read_time + local_blk_write_time + temp_blk_read_time + temp_blk_write_time", "stats_since", true},
		{"1.12 (PG18)", "total_exec_time", "total_plan_time", "shared_blk_read_time + shared_blk_write_time + local_blk_read_time + local_blk_write_time + temp_blk_read_time + temp_blk_write_time", "stats_since", true},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			sel, where, err := selectList(columnSet(tt.version))
			require.NoError(t, err)
			want := "userid, COALESCE(queryid, 0), COALESCE(query, ''), calls, " + tt.exec + ", " + tt.plan +
				", rows, shared_blks_hit, shared_blks_read, temp_blks_read, temp_blks_written, " + tt.io + ", " + tt.since
			assert.Equal(t, want, sel)
			assert.Equal(t, tt.toplevel, strings.Contains(where, "toplevel"), where)
			assert.Contains(t, where, "current_database()")
		})
	}
}

func TestSelectListRejectsUnknownView(t *testing.T) {
	cols := columnSet("1.10 (PG15/16)")
	delete(cols, "total_exec_time")
	_, _, err := selectList(cols)
	assert.ErrorContains(t, err, "neither total_exec_time nor total_time")

	cols = columnSet("1.10 (PG15/16)")
	delete(cols, "queryid")
	_, _, err = selectList(cols)
	assert.ErrorContains(t, err, "no column queryid")
}

func TestRedactQuery(t *testing.T) {
	for in, want := range map[string]string{
		"ALTER ROLE spire PASSWORD 's3cr''et'":                                                "ALTER ROLE spire PASSWORD '*****'",
		"create user x with encrypted password 'hunter2'":                                     "create user x with encrypted password '*****'",
		"SELECT * FROM registered_entries WHERE id = $1":                                      "SELECT * FROM registered_entries WHERE id = $1",
		"ALTER ROLE spire PASSWORD $1":                                                        "ALTER ROLE spire PASSWORD $1",
		"SELECT 'password' AS word, $1 FROM t WHERE x = 'a'":                                  "SELECT 'password' AS word, $1 FROM t WHERE x = 'a'",
		"ALTER ROLE spire PASSWORD $$hunter2$$":                                               "ALTER ROLE spire PASSWORD '*****'",
		"ALTER ROLE spire PASSWORD $pw$hun'ter2$pw$ VALID UNTIL 'infinity'":                   "ALTER ROLE spire PASSWORD '*****' VALID UNTIL 'infinity'",
		`ALTER ROLE spire PASSWORD E'hun\'ter2'`:                                              "ALTER ROLE spire PASSWORD '*****'",
		`ALTER ROLE spire PASSWORD U&'hun\0074er2'`:                                           "ALTER ROLE spire PASSWORD '*****'",
		`ALTER ROLE spire PASSWORD U&'hun!0074er2' UESCAPE '!'`:                               "ALTER ROLE spire PASSWORD '*****'",
		"CREATE ROLE a LOGIN PASSWORD 'x1secret' IN ROLE b; ALTER ROLE c PASSWORD 'y2secret'": "CREATE ROLE a LOGIN PASSWORD '*****' IN ROLE b; ALTER ROLE c PASSWORD '*****'",
		"ALTER ROLE spire PASSWORD 'cut short by track_activity":                              "ALTER ROLE spire PASSWORD '*****'",
		"SELECT dblink_connect('host=db password=hunter22')":                                  "SELECT dblink_connect('host=db password=xxxxx')",
		// commands and connection strings of settings, stored verbatim
		"ALTER SYSTEM SET archive_command = 'AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG aws s3 cp %p s3://b/%f'": "ALTER SYSTEM SET archive_command = '*****'",
		"alter system set restore_command to 'rclone copyto remote:wal/%f %p --s3-secret-access-key zz9Secret'":  "alter system set restore_command to '*****'",
		"ALTER SYSTEM SET primary_conninfo = $$host=a user=r password=Pw9$$":                                     "ALTER SYSTEM SET primary_conninfo = '*****'",
		`ALTER DATABASE spire SET "app.api_token" = 'tok123zz'`:                                                  `ALTER DATABASE spire SET "app.api_token" = '*****'`,
		"ALTER SYSTEM SET ssl_passphrase_command = 'echo Pp1secret'":                                             "ALTER SYSTEM SET ssl_passphrase_command = '*****'",
		"COPY t FROM PROGRAM 'aws s3 cp s3://b/k - --secret zz9Secret'":                                          "COPY t FROM PROGRAM '*****'",
		"ALTER SYSTEM SET archive_command = 'AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG aws s3 cp %p s3://b":     "ALTER SYSTEM SET archive_command = '*****'",
		"ALTER SYSTEM SET work_mem = '64MB'":                                                                     "ALTER SYSTEM SET work_mem = '64MB'",
		"SET search_path = public, 'x'":                                                                          "SET search_path = public, 'x'",
	} {
		assert.Equal(t, want, redactQuery(in), in)
	}
}

// FuzzRedactQuery: whatever a password literal's bytes and quoting, it
// never survives redaction.
func FuzzRedactQuery(f *testing.F) {
	for _, s := range []string{"hunter22", "it's", `back\slash`, "$$", "päss"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, pw string, form uint8) {
		if len(pw) < 4 || strings.ContainsAny(pw, "\x00") || !utf8.ValidString(pw) {
			t.Skip()
		}
		var lit string
		switch form % 4 {
		case 0:
			lit = "'" + strings.ReplaceAll(pw, "'", "''") + "'"
		case 1:
			lit = "E'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(pw) + "'"
		case 2:
			if strings.Contains(pw, "$zz$") {
				t.Skip()
			}
			lit = "$zz$" + pw + "$zz$"
		default:
			lit = "U&'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(pw) + "'"
		}
		shape := []string{"ALTER ROLE spire WITH PASSWORD %s VALID UNTIL 'infinity'", "ALTER SYSTEM SET archive_command = %s",
			"ALTER DATABASE spire SET app.api_token TO %s", "COPY t FROM PROGRAM %s"}[form/4%4]
		q := fmt.Sprintf(shape, lit)
		if _, err := pg_query.Parse(q); err != nil {
			t.Skip()
		}
		if out := redactQuery(q); strings.Contains(out, pw) && !strings.Contains(fmt.Sprintf(shape, "'*****'"), pw) {
			t.Fatalf("%q survives in %q", pw, out)
		}
	})
}

func TestNotEnabledErrorSaysHowToFix(t *testing.T) {
	assert.Contains(t, (&NotEnabledError{Database: "spire"}).Error(), "shared_preload_libraries")
	assert.Contains(t, (&NotEnabledError{Database: "spire"}).Error(), "CREATE EXTENSION pg_stat_statements")
	assert.Contains(t, (&NotEnabledError{Database: "spire", Preloaded: true}).Error(), `CREATE EXTENSION pg_stat_statements; in it`)
	assert.NotContains(t, (&NotEnabledError{Database: "spire", Preloaded: true}).Error(), "restart")
	assert.Contains(t, (&NotEnabledError{Database: "spire", Created: true}).Error(), "restart")
}
