// Package schedule runs spiredb commands on cron specs in one long-running
// process (`spiredb schedule`), never two runs of a job at once, with
// Prometheus metrics for each job and a graceful stop.
package schedule

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	yaml "github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/parser"
	"github.com/robfig/cron/v3"

	"github.com/spiredb/spiredb/internal/dsn"
)

// Config is the schedule file.
type Config struct {
	// DSN is the database; omitted, SPIREDB_DSN or the PG* variables.
	// Passwords never come from the file.
	DSN string `yaml:"dsn"`
	// Store is the default --store of backup jobs.
	Store string `yaml:"store"`
	// Listen is the metrics address (default 127.0.0.1:9187).
	Listen string `yaml:"listen"`
	// Grace is how long a running job may finish after SIGTERM (default 5m).
	Grace string `yaml:"grace"`
	// Collect is how often the datastore's state (backups, replication,
	// indexes, views, statements) is read into gauges (default 1m; 0 off).
	Collect string `yaml:"collect"`
	Jobs    []Job  `yaml:"jobs"`

	grace   time.Duration
	collect time.Duration
}

// Job is one scheduled command.
type Job struct {
	Name string `yaml:"name"`
	// Command is a spiredb command: "backup run", "views refresh", ...
	Command string `yaml:"command"`
	// Schedule is a cron spec (5 fields) or @every DURATION, @hourly, ...
	Schedule string   `yaml:"schedule"`
	Args     []string `yaml:"args"`
	// Jitter delays each run by a random duration up to it.
	Jitter string `yaml:"jitter"`
	// Timeout bounds one run (default: none).
	Timeout string `yaml:"timeout"`

	schedule cron.Schedule
	jitter   time.Duration
	timeout  time.Duration
}

// Commands are the spiredb commands a job may run.
var Commands = []string{
	"backup run", "backup verify", "backup prune", "views refresh", "stats snapshot",
	"indexes check", "replica status", "doctor", "tune check",
}

// storeCommands take the config's default store.
var storeCommands = []string{"backup run", "backup verify", "backup prune"}

var (
	yamlPos = regexp.MustCompile(`^\[(\d+):(\d+)\] (.*)$`)
	jobName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
)

// carriesSecret reports whether s holds a password in any form: a
// connection string whose parse has one, or text whose redaction changes
// it (an unencoded URL password, password=..., a secret key).
func carriesSecret(s string) bool {
	if s == "" {
		return false
	}
	if p, err := dsn.Parse(s); err == nil && len(p.Secrets()) > 0 {
		return true
	}
	return dsn.RedactText(s) != s
}

// parseSchedule parses a cron spec, turning the parser's panics on some
// malformed specs ("TZ=UTC" with no fields) into errors.
func parseSchedule(spec string) (s cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("not a cron spec: %v", r)
		}
	}()
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		if !strings.Contains(strings.TrimSpace(spec), " ") {
			return nil, errors.New("a time zone needs a spec after it (CRON_TZ=UTC 0 * * * *)")
		}
	}
	return cron.ParseStandard(spec)
}

// GraceDuration returns the stop grace period.
func (c *Config) GraceDuration() time.Duration { return c.grace }

// ParseConfig reads and validates a schedule file; every error names
// file:line.
func ParseConfig(name string, data []byte) (_ *Config, err error) {
	// the YAML library panics on some malformed input (a tag on a
	// sequence): that is an invalid file, not a crash
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: not a valid schedule file (%v)", name, r)
		}
	}()
	var c Config
	if err := yaml.UnmarshalWithOptions(data, &c, yaml.Strict()); err != nil {
		msg := oneLine(err.Error())
		if m := yamlPos.FindStringSubmatch(msg); m != nil {
			return nil, fmt.Errorf("%s:%s: %s", name, m[1], m[3])
		}
		return nil, fmt.Errorf("%s: %s", name, msg)
	}
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	at := func(path string) string {
		p, err := yaml.PathString(path)
		if err != nil {
			return name
		}
		n, err := p.FilterFile(file)
		if err != nil || n == nil || n.GetToken() == nil {
			return name
		}
		return fmt.Sprintf("%s:%d", name, n.GetToken().Position.Line)
	}
	var errs []error
	fail := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", at(path), fmt.Sprintf(format, args...)))
	}
	if carriesSecret(c.DSN) {
		fail("$.dsn", "the dsn carries a password: secrets come from the environment (PGPASSWORD, or SPIREDB_DSN), never from this file")
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:9187"
	}
	c.grace = 5 * time.Minute
	if c.Grace != "" {
		if c.grace, err = time.ParseDuration(c.Grace); err != nil || c.grace < 0 {
			fail("$.grace", "grace: %q is not a duration (e.g. 5m)", c.Grace)
		}
	}
	c.collect = time.Minute
	if c.Collect != "" {
		if c.collect, err = time.ParseDuration(c.Collect); err != nil || c.collect < 0 {
			fail("$.collect", "collect: %q is not a duration (e.g. 1m; 0 turns it off)", c.Collect)
		}
	}
	if len(c.Jobs) == 0 {
		fail("$", "no jobs")
	}
	seen := map[string]bool{}
	for i := range c.Jobs {
		j := &c.Jobs[i]
		p := fmt.Sprintf("$.jobs[%d]", i)
		switch {
		case !jobName.MatchString(j.Name):
			fail(p+".name", "job name %q: lower-case letters, digits, - and _", j.Name)
		case seen[j.Name]:
			fail(p+".name", "job name %q is used twice", j.Name)
		}
		seen[j.Name] = true
		if !slices.Contains(Commands, j.Command) {
			fail(p+".command", "command %q: one of %s", j.Command, strings.Join(Commands, ", "))
		}
		if j.schedule, err = parseSchedule(j.Schedule); err != nil {
			fail(p+".schedule", "schedule %q: %v", j.Schedule, err)
		}
		if j.Jitter != "" {
			if j.jitter, err = time.ParseDuration(j.Jitter); err != nil || j.jitter < 0 {
				fail(p+".jitter", "jitter %q is not a duration", j.Jitter)
			}
		}
		if j.Timeout != "" {
			if j.timeout, err = time.ParseDuration(j.Timeout); err != nil || j.timeout <= 0 {
				fail(p+".timeout", "timeout %q is not a positive duration", j.Timeout)
			}
		}
		if slices.Contains(confirmCommands, j.Command) && c.Store == "" && !slices.ContainsFunc(j.Args, func(a string) bool {
			return a == "--store" || strings.HasPrefix(a, "--store=")
		}) {
			fail(p+".command", "%s deletes: name its store in the file (store: at the top, or --store in args), not in the environment", j.Command)
		}
		for k, a := range j.Args {
			if a == "--dsn" || strings.HasPrefix(a, "--dsn=") || carriesSecret(a) {
				fail(fmt.Sprintf("%s.args[%d]", p, k), "args must not carry the dsn or a password: set dsn at the top, secrets in the environment")
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// LoadConfig reads a schedule file from disk.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, b)
}

func oneLine(s string) string {
	// goccy adds a source excerpt after the first line
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// argv is a job's arguments after its command: the file's defaults, then
// the job's own.
func (c *Config) argv(j Job) []string {
	var args []string
	if c.DSN != "" {
		args = append(args, "--dsn", c.DSN)
	}
	if c.Store != "" && slices.Contains(storeCommands, j.Command) && !slices.ContainsFunc(j.Args, func(a string) bool {
		return a == "--store" || strings.HasPrefix(a, "--store=")
	}) {
		args = append(args, "--store", c.Store)
	}
	args = append(args, j.Args...)
	// the schedule file is the operator's confirmation of a job that
	// deletes; its target is the explicit --store above
	if slices.Contains(confirmCommands, j.Command) && !slices.Contains(args, "--yes") {
		args = append(args, "--yes")
	}
	return args
}

// confirmCommands need --yes when not on a terminal.
var confirmCommands = []string{"backup prune"}
