package schedule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"

	"github.com/spiredb/spiredb/pg"
)

// A Task is the library call behind a job's command ("backup run",
// "views refresh", …). It returns nil on success; an error that has an
// ExitCode method reports that code (4: warnings only, which counts as
// success), any other error counts as exit code 1.
type Task func(ctx context.Context, run Run) error

// Run is what a task is given for one run of a job.
type Run struct {
	// Job is the job as the file gives it.
	Job Job
	// Args are the job's arguments with the file's defaults applied:
	// --dsn, --store for backup commands, --yes for prune (the schedule
	// file is the operator's confirmation).
	Args []string
	// Conn is the database of the schedule (the file's dsn, else the
	// scheduler's Options.Conn).
	Conn pg.Options
	// Store is the file's default store ("" when none).
	Store string
	// Stdout and Stderr collect the run's output; the last line of Stderr
	// is logged when the run fails.
	Stdout, Stderr io.Writer
	// Logger is the scheduler's logger, with the job's name.
	Logger *slog.Logger
}

// Registry maps job commands to the tasks that run them. The CLI registers
// a task for each of Commands; a program using spiredb as a library can
// register its own (a backup.Run with its own pool, say).
type Registry map[string]Task

// ExitError is a task's failure with an exit code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit code %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode is the code the run ended with.
func (e *ExitError) ExitCode() int { return e.Code }

// exitCode turns a task's result into the exit code the metrics report.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

// check reports the jobs whose command has no task.
func (r Registry) check(jobs []Job) error {
	var missing []string
	for _, j := range jobs {
		if r[j.Command] == nil && !slices.Contains(missing, j.Command) {
			missing = append(missing, j.Command)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var have []string
	for c := range r {
		have = append(have, c)
	}
	sort.Strings(have)
	return fmt.Errorf("no task runs %s (registered: %s)", strings.Join(missing, ", "), strings.Join(have, ", "))
}
