package schedule

import (
	"strings"
	"testing"
	"time"
)

var timeZero = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// FuzzParseConfig: no schedule file makes the parser (or robfig/cron
// behind it) panic; every rejection names the file; an accepted file has
// a parsed schedule for every job.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"jobs:\n  - name: a\n    command: doctor\n    schedule: '@hourly'\n",
		"jobs:\n  - name: a\n    command: doctor\n    schedule: \"TZ=UTC\"\n",
		"jobs:\n  - name: a\n    command: doctor\n    schedule: \"CRON_TZ=UTC 0 * * * *\"\n",
		"dsn: host=x\njobs:\n  - name: b\n    command: backup prune\n    schedule: '*/5 * * * *'\n    jitter: 1m\n    timeout: 2m\n",
		"jobs: [{name: c, command: doctor, schedule: '@every 1h30m'}]\n",
		"grace: -1s\ncollect: x\njobs: []\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		c, err := ParseConfig("f.yaml", []byte(body))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		for _, j := range c.Jobs {
			if j.schedule == nil {
				t.Fatalf("job %q accepted without a schedule", j.Name)
			}
			_ = j.schedule.Next(j.schedule.Next(timeZero))
		}
	})
}
