package schedule

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const good = `dsn: host=spire-db port=5432 dbname=spire user=spiredb
store: s3://spire-backups/prod
jobs:
  - name: backup
    command: backup run
    schedule: "0 */6 * * *"
    args: ["--compress", "6"]
  - name: verify
    command: backup verify
    schedule: "30 7 * * *"
    args: ["--latest", "--level", "restore", "--store", "file:///backups"]
  - name: refresh
    command: views refresh
    schedule: "@every 30m"
    jitter: 1m
`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("spiredb.yaml", []byte(good))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9187", c.Listen)
	require.Len(t, c.Jobs, 3)
	assert.Equal(t, []string{"--dsn", "host=spire-db port=5432 dbname=spire user=spiredb", "--store", "s3://spire-backups/prod", "--compress", "6"}, c.argv(c.Jobs[0]))
	assert.NotContains(t, c.argv(c.Jobs[1]), "s3://spire-backups/prod", "the job's own --store wins")
	assert.Equal(t, []string{"--dsn", "host=spire-db port=5432 dbname=spire user=spiredb"}, c.argv(c.Jobs[2]))
}

func TestParseConfigErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "jobs:\n  - name: a\n    command: doctor\n    shedule: '@hourly'\n", "spiredb.yaml:4: unknown field \"shedule\""},
		{"bad cron", "jobs:\n  - name: a\n    command: doctor\n    schedule: '61 * * * *'\n", "spiredb.yaml:4: schedule \"61 * * * *\""},
		{"bad command", "jobs:\n  - name: a\n    command: backup delete\n    schedule: '@hourly'\n", "spiredb.yaml:3: command \"backup delete\""},
		{"duplicate", "jobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n  - name: a\n    command: doctor\n    schedule: '@daily'\n", "spiredb.yaml:5: job name \"a\" is used twice"},
		{"password in dsn", "dsn: host=x password=hunter2\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n", "spiredb.yaml:1: the dsn carries a password"},
		{"password in url", "dsn: postgres://u:hunter2@x/spire\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n", "spiredb.yaml:1: the dsn carries a password"},
		{"dsn in args", "jobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n    args: [--dsn, 'host=x']\n", "args must not carry the dsn"},
		{"bad duration", "grace: soon\njobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n    jitter: 5\n", "spiredb.yaml:1: grace"},
		{"bad jitter", "jobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n    jitter: lots\n", "spiredb.yaml:5: jitter"},
		{"no jobs", "store: file:///x\n", "no jobs"},
		{"wrong type", "jobs: 3\n", "spiredb.yaml:1: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("spiredb.yaml", []byte(tc.yaml))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "hunter2")
			for _, line := range strings.Split(err.Error(), "\n") {
				assert.True(t, strings.HasPrefix(line, "spiredb.yaml"), "every error names the file: %q", line)
			}
		})
	}
}
