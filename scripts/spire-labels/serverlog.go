package main

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

// A server log line with the harness's log_line_prefix '%m [%p] %q%a '.
var (
	logLine   = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[(\d+)\] .*?(LOG|DETAIL|ERROR|STATEMENT|HINT|WARNING|FATAL|CONTEXT):  (.*)$`)
	execute   = regexp.MustCompile(`^(?:execute [^:]*|statement): (.*)$`)
	paramItem = regexp.MustCompile(`\$(\d+) = (NULL|'(?:[^']|'')*')`)
)

// logEntry is one message, continuation lines joined.
type logEntry struct {
	pid, kind, text string
}

func readLog(path string) ([]logEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := logLine.FindStringSubmatch(line); m != nil {
			out = append(out, logEntry{pid: m[1], kind: m[2], text: m[3]})
			continue
		}
		if len(out) > 0 {
			out[len(out)-1].text += "\n" + line
		}
	}
	return out, sc.Err()
}

// examplesFromLog reads the statements spire-server executed, as
// log_statement = 'all' logged them (SQL with literal constants, then a
// DETAIL with the bound parameters), and keeps the last execution of each
// fingerprint: the first can be a start-up probe (the reload statement runs
// once with LIMIT 1), the last is the steady state.
func examplesFromLog(path string) (map[string]*spire.Example, error) {
	entries, err := readLog(path)
	if err != nil {
		return nil, err
	}
	out := map[string]*spire.Example{}
	for i, e := range entries {
		if e.kind != "LOG" {
			continue
		}
		first, rest, _ := strings.Cut(e.text, "\n")
		m := execute.FindStringSubmatch(first)
		if m == nil {
			continue
		}
		sql := m[1]
		if rest != "" {
			sql += "\n" + rest
		}
		sql = strings.TrimSpace(sql)
		if strings.Contains(sql, pg.Marker) {
			continue
		}
		fp, err := spire.Fingerprint(sql)
		if err != nil {
			continue
		}
		ex := &spire.Example{SQL: sql, Params: []*string{}}
		// the parameters are the next DETAIL of the same backend
		for _, d := range entries[i+1:] {
			if d.pid != e.pid {
				continue
			}
			if d.kind == "DETAIL" && strings.HasPrefix(d.text, "parameters: ") {
				for _, pm := range paramItem.FindAllStringSubmatch(d.text, -1) {
					n, _ := strconv.Atoi(pm[1])
					for len(ex.Params) < n {
						ex.Params = append(ex.Params, nil)
					}
					if pm[2] != "NULL" {
						v := strings.ReplaceAll(pm[2][1:len(pm[2])-1], "''", "'")
						ex.Params[n-1] = &v
					}
				}
			}
			break
		}
		out[fp] = ex
	}
	return out, nil
}
