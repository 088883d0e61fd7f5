package tuning

import (
	"context"
	"fmt"
	"io/fs"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/pg"
)

// Difference is a live setting that does not match the recommendation.
type Difference struct {
	Name        string `json:"name"`
	Current     string `json:"current"`
	Recommended string `json:"recommended"`
	Reason      string `json:"reason"`
	Restart     bool   `json:"restart"`
}

// CheckSettings compares the live pg_settings with r. Numeric settings
// within 10% of the recommendation pass; shared_preload_libraries passes
// when it includes the recommended libraries.
func CheckSettings(ctx context.Context, conn *pgx.Conn, r *Recommendation) ([]Difference, error) {
	names := make([]string, len(r.Settings))
	for i, s := range r.Settings {
		names[i] = s.Name
	}
	rows, err := conn.Query(ctx, pg.Marker+`SELECT name, setting, coalesce(unit, ''), vartype FROM pg_catalog.pg_settings WHERE name = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("reading pg_settings: %w", err)
	}
	type live struct{ setting, unit, vartype string }
	current := map[string]live{}
	for rows.Next() {
		var name string
		var l live
		if err := rows.Scan(&name, &l.setting, &l.unit, &l.vartype); err != nil {
			rows.Close()
			return nil, err
		}
		current[name] = l
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []Difference
	for _, s := range r.Settings {
		l, ok := current[s.Name]
		if !ok {
			continue // e.g. pg_stat_statements.max when the library is not loaded
		}
		if matches(s, l.setting, l.unit, l.vartype) {
			continue
		}
		out = append(out, Difference{Name: s.Name, Current: shown(s.Name, withUnit(l.setting, l.unit)), Recommended: strings.Trim(s.Value, "'"), Reason: s.Reason, Restart: s.Restart})
	}
	return out, nil
}

// envAssignment is a shell command's leading NAME=value.
var envAssignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// shown is what tune check shows of a live setting's value. Of a command
// (archive_command of another tool often carries its store's credentials
// inline, as environment assignments, flags or a URL's userinfo) or a
// connection string: the program, or that it is set, and no more; of
// anything else, the value with password-looking parts masked.
func shown(name, value string) string {
	if !secretSetting.MatchString(name) || value == "" || value == "(disabled)" {
		return dsn.RedactText(value)
	}
	if strings.HasSuffix(name, "_command") {
		for _, f := range strings.Fields(value) {
			if !envAssignment.MatchString(f) {
				return dsn.RedactText(f) + " … (the rest not shown: a command can carry credentials)"
			}
		}
	}
	return "(set; not shown: it can carry credentials)"
}

func matches(s Setting, setting, unit, vartype string) bool {
	want := strings.Trim(s.Value, "'")
	switch vartype {
	case "integer", "real":
		cur, err := strconv.ParseFloat(setting, 64)
		if err != nil {
			return false
		}
		w, ok := toBase(want, unit)
		if !ok {
			return false
		}
		cur *= unitFactor(unit)
		return w == 0 && cur == 0 || w != 0 && math.Abs(cur-w)/w <= 0.10
	case "enum":
		if s.Name == "archive_mode" {
			return setting == "on" || setting == "always"
		}
	case "string":
		if s.Name == "archive_command" {
			// a wrapper script around spiredb wal push is as good
			return strings.Contains(setting, "wal push") || strings.EqualFold(setting, want)
		}
		if s.Name == "shared_preload_libraries" {
			have := map[string]bool{}
			for _, l := range strings.Split(setting, ",") {
				have[strings.Trim(strings.TrimSpace(l), `"`)] = true
			}
			for _, l := range strings.Split(want, ",") {
				if !have[strings.TrimSpace(l)] {
					return false
				}
			}
			return true
		}
	}
	return strings.EqualFold(setting, want)
}

// unitFactor converts a pg_settings unit to bytes or milliseconds.
func unitFactor(unit string) float64 {
	switch unit {
	case "B":
		return 1
	case "kB":
		return 1 << 10
	case "8kB":
		return 8 << 10
	case "16kB":
		return 16 << 10
	case "32kB":
		return 32 << 10
	case "MB":
		return 1 << 20
	case "16MB":
		return 16 << 20
	case "GB":
		return 1 << 30
	case "ms":
		return 1
	case "s":
		return 1000
	case "min":
		return 60000
	}
	return 1
}

// toBase reads a recommended value in the unit family of unit: bytes for
// memory units, milliseconds for time units, the number otherwise.
func toBase(v, unit string) (float64, bool) {
	switch unit {
	case "B", "kB", "8kB", "16kB", "32kB", "MB", "16MB", "GB":
		n, err := ParseSize(v)
		return float64(n), err == nil
	case "ms", "s", "min":
		for _, u := range []struct {
			suffix string
			ms     float64
		}{{"min", 60000}, {"ms", 1}, {"s", 1000}, {"h", 3600000}} {
			if num, ok := strings.CutSuffix(v, u.suffix); ok {
				f, err := strconv.ParseFloat(num, 64)
				return f * u.ms, err == nil
			}
		}
		f, err := strconv.ParseFloat(v, 64)
		return f * unitFactor(unit), err == nil
	}
	f, err := strconv.ParseFloat(v, 64)
	return f, err == nil
}

// withUnit renders a pg_settings value as postgresql.conf would take it:
// memory as kB/MB/GB, time as ms/s/min.
func withUnit(setting, unit string) string {
	n, err := strconv.ParseFloat(setting, 64)
	if err != nil || unit == "" || n < 0 {
		return setting
	}
	v := n * unitFactor(unit)
	switch unit {
	case "ms", "s", "min":
		switch ms := int64(v); {
		case ms%60000 == 0 && ms > 0:
			return fmt.Sprintf("%dmin", ms/60000)
		case ms%1000 == 0 && ms > 0:
			return fmt.Sprintf("%ds", ms/1000)
		default:
			return fmt.Sprintf("%dms", ms)
		}
	}
	return pgSize(int64(v))
}

// Detect reads the memory and CPU limits of the container this runs in
// (cgroup v2 memory.max and cpu.max), falling back to the machine's
// (/proc/meminfo, cpus). fsys is the root file system (os.DirFS("/")).
func Detect(fsys fs.FS, machineCPUs int) (ram int64, cpus int, source string, err error) {
	source = "host"
	if b, rerr := fs.ReadFile(fsys, "proc/meminfo"); rerr == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(v)
				if len(f) >= 1 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					ram = kb << 10
				}
			}
		}
	}
	cpus = machineCPUs
	if b, rerr := fs.ReadFile(fsys, "sys/fs/cgroup/memory.max"); rerr == nil {
		if v := strings.TrimSpace(string(b)); v != "max" {
			if n, perr := strconv.ParseInt(v, 10, 64); perr == nil && (ram == 0 || n < ram) {
				ram, source = n, "cgroup"
			}
		}
	}
	if b, rerr := fs.ReadFile(fsys, "sys/fs/cgroup/cpu.max"); rerr == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 && f[0] != "max" {
			quota, e1 := strconv.ParseFloat(f[0], 64)
			period, e2 := strconv.ParseFloat(f[1], 64)
			if e1 == nil && e2 == nil && period > 0 {
				if c := int(math.Ceil(quota / period)); c >= 1 && c < cpus {
					cpus, source = c, "cgroup"
				}
			}
		}
	}
	if ram == 0 {
		return 0, 0, "", fmt.Errorf("cannot detect memory: pass --ram")
	}
	return ram, max(cpus, 1), source, nil
}
