package schedule

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/pg"
)

// The scheduler runs each job through its registered task, with the file's
// defaults applied, and turns the task's result into the job's metrics:
// exit code 4 (warnings) is a success, a panic is a failure.
func TestSchedulerRunsRegisteredTasks(t *testing.T) {
	cfg, err := ParseConfig("spiredb.yaml", []byte(`store: file:///backups
listen: 127.0.0.1:0
collect: "0"
jobs:
  - name: backup
    command: backup run
    schedule: "@every 1s"
    args: ["--label", "nightly"]
  - name: doctor
    command: doctor
    schedule: "@every 1s"
  - name: check
    command: indexes check
    schedule: "@every 1s"
`))
	require.NoError(t, err)
	runs := make(chan Run, 16)
	tasks := Registry{
		"backup run": func(_ context.Context, r Run) error { runs <- r; return nil },
		"doctor":     func(context.Context, Run) error { return &ExitError{Code: 4, Err: errors.New("warnings")} },
		"indexes check": func(context.Context, Run) error {
			panic("boom")
		},
	}
	s, err := New(cfg, Options{Tasks: tasks, Conn: pg.Options{DSN: "host=spire-db dbname=spire"}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, nil) }()
	var r Run
	select {
	case r = <-runs:
	case <-time.After(10 * time.Second):
		t.Fatal("the backup task never ran")
	}
	assert.Equal(t, "backup", r.Job.Name)
	assert.Equal(t, []string{"--store", "file:///backups", "--label", "nightly"}, r.Args)
	assert.Equal(t, "host=spire-db dbname=spire", r.Conn.DSN)
	assert.Equal(t, "file:///backups", r.Store)
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(s.metrics.runs.WithLabelValues("doctor")) >= 1 &&
			testutil.ToFloat64(s.metrics.runs.WithLabelValues("check")) >= 1
	}, 10*time.Second, 50*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.Equal(t, 4.0, testutil.ToFloat64(s.metrics.exitCode.WithLabelValues("doctor")))
	assert.Zero(t, testutil.ToFloat64(s.metrics.failures.WithLabelValues("doctor")), "warnings are a success")
	assert.Equal(t, 1.0, testutil.ToFloat64(s.metrics.exitCode.WithLabelValues("check")))
	assert.GreaterOrEqual(t, testutil.ToFloat64(s.metrics.failures.WithLabelValues("check")), 1.0, "a panic is a failed run")
}

func TestNewRefusesJobsWithoutTask(t *testing.T) {
	cfg, err := ParseConfig("spiredb.yaml", []byte(good))
	require.NoError(t, err)
	_, err = New(cfg, Options{Tasks: Registry{"backup run": func(context.Context, Run) error { return nil }}})
	require.Error(t, err)
	for _, c := range []string{"backup verify", "views refresh"} {
		assert.True(t, strings.Contains(err.Error(), c), fmt.Sprint(err))
	}
	// the file's dsn wins over the caller's connection
	s, err := New(cfg, Options{Tasks: Registry{"backup run": nil, "backup verify": func(context.Context, Run) error { return nil },
		"views refresh": func(context.Context, Run) error { return nil }}, Conn: pg.Options{DSN: "host=elsewhere"}})
	require.Error(t, err, "a nil task is no task")
	assert.Nil(t, s)
}
