// Command spire-labels regenerates spire/statements.json, the catalog
// that lets `spiredb stats top` name the SPIRE operation behind a statement.
//
// It runs the real spire-server (the version the harness builds) against a
// throwaway cluster with pg_stat_statements, drives every datastore path an
// operator's SPIRE exercises — start-up, the cache reload in both cache modes,
// the events poll and prune, the 5-minute expiry prune, and the entry, agent,
// bundle, federation and token APIs through spire-server's own CLI — and
// writes each statement pg_stat_statements recorded with the operation the
// rules below give it. Statements no rule names are printed, so that a new
// SPIRE version's statements are noticed rather than silently unlabelled.
//
// Run it with `make spire-labels` (about 6 minutes: SPIRE's expiry prune runs
// every 5 minutes and cannot be configured); never edit the output by hand.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/pgcluster"
	"github.com/spiredb/spiredb/internal/spirefixture"
	"github.com/spiredb/spiredb/internal/spiretest"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/spire"
)

func main() {
	out := flag.String("out", "spire/statements.json", "output file")
	pruneWait := flag.Duration("prune-wait", 5*time.Minute+20*time.Second, "how long to let SPIRE run for its 5-minute expiry prune (0 skips it)")
	raw := flag.Bool("raw", false, "print every statement with its phase instead of writing the catalog")
	flag.Parse()
	if err := run(*out, *pruneWait, *raw); err != nil {
		fmt.Fprintln(os.Stderr, "spire-labels:", err)
		os.Exit(1)
	}
}

// observed is one pg_stat_statements row and the phase that first saw it.
type observed struct {
	QueryID int64  `json:"queryid"`
	Phase   string `json:"phase"`
	Calls   int64  `json:"calls"`
	Query   string `json:"query"`
}

type recorder struct {
	conn  *pgx.Conn
	seen  map[int64]bool
	stmts []observed
}

// phase runs fn, then records the statements that are new since the last
// phase. Background work (the reload every 5 s) lands in whichever phase it
// happens to run in; the rules label by text, the phase only documents.
func (r *recorder) phase(ctx context.Context, name string, fn func() error) error {
	fmt.Fprintf(os.Stderr, "spire-labels: %s\n", name)
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	rows, err := r.conn.Query(ctx, pg.Marker+`SELECT queryid, calls, query FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND strpos(query, $1) = 0`, pg.Marker)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var o observed
		if err := rows.Scan(&o.QueryID, &o.Calls, &o.Query); err != nil {
			return err
		}
		if r.seen[o.QueryID] {
			continue
		}
		r.seen[o.QueryID] = true
		o.Phase = name
		r.stmts = append(r.stmts, o)
	}
	return rows.Err()
}

func run(out string, pruneWait time.Duration, raw bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// log_statement = 'all': the log gives each statement as spire-server
	// sent it, with its literals and bound parameters (the catalog's
	// examples, which the index benchmark runs)
	c, err := pgcluster.Start(ctx, pgcluster.Options{BinDir: os.Getenv("SPIREDB_PG_BIN"), Settings: map[string]string{"log_statement": "'all'"}})
	if err != nil {
		return err
	}
	defer func() { _ = c.Stop() }()
	if _, err := c.CreateDatabase(ctx, "spire"); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DSN("spire"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		return err
	}
	// SPIRE reloads in pages of 10,000: 12,000 entries give a first page
	// and a later one, which are different statements.
	if _, err := spirefixture.Load(ctx, conn, spire.SchemaSQL, spirefixture.Spec{Entries: 12000, Agents: 5}); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, pg.Marker+"SELECT pg_stat_statements_reset()"); err != nil {
		return err
	}
	r := &recorder{conn: conn, seen: map[int64]bool{}}

	var srv *spiretest.Server
	defer func() {
		if srv != nil {
			srv.Stop()
		}
	}()
	start := func(experimental ...string) error {
		var err error
		srv, err = spiretest.Start(ctx, spiretest.Options{ConnectionString: c.KVDSN("spire"), Experimental: experimental})
		return err
	}
	cli := func(args ...string) error {
		_, err := srv.CLI(ctx, args...)
		return err
	}
	// cliAllowFail runs a command whose failure is the point (a lookup of
	// something absent) or does not matter: the statement still ran.
	cliAllowFail := func(args ...string) error {
		_, _ = srv.CLI(ctx, args...)
		return nil
	}
	sleep := func(d time.Duration) func() error {
		return func() error { time.Sleep(d); return nil }
	}

	steps := []struct {
		name string
		fn   func() error
	}{
		{"server start (default cache)", func() error { return start() }},
		{"default cache: reloads", sleep(12 * time.Second)},
		{"entry create", func() error {
			entries := spirefixture.GenerateEntries(40, 99, spirefixture.FederatedTrustDomains(2))
			for i := range entries {
				entries[i].SpiffeID += "-labels"
				if i%4 == 0 {
					entries[i].EntryExpiry = time.Now().Add(30 * time.Second).Unix()
				}
			}
			return srv.CreateEntries(ctx, entries)
		}},
		{"entry read", func() error {
			for _, args := range [][]string{
				{"entry", "count"},
				{"entry", "show"},
				{"entry", "show", "-spiffeID", "spiffe://" + spiretest.TrustDomain + "/ns-1/sa-1/w-1"},
				{"entry", "show", "-parentID", "spiffe://" + spiretest.TrustDomain + "/spire/agent/k8s_psat/cluster/node-1"},
				{"entry", "show", "-selector", "k8s:ns:ns-1"},
				{"entry", "show", "-federatesWith", spirefixture.FederatedTrustDomains(1)[0]},
			} {
				if err := cli(args...); err != nil {
					return err
				}
			}
			return nil
		}},
		{"entry update and delete", func() error { return updateDelete(ctx, srv) }},
		{"agent API", func() error {
			for _, args := range [][]string{
				{"agent", "list"},
				{"agent", "count"},
				{"agent", "list", "-selector", "join_token:x"},
			} {
				if err := cli(args...); err != nil {
					return err
				}
			}
			return agentShowEvictBan(ctx, srv)
		}},
		{"bundle and federation API", func() error {
			_ = cliAllowFail("bundle", "show")
			_ = cliAllowFail("bundle", "list")
			_ = cliAllowFail("bundle", "count")
			_ = cliAllowFail("federation", "list")
			_ = cliAllowFail("federation", "create", "-trustDomain", "labels.example", "-bundleEndpointURL", "https://127.0.0.1:1/", "-bundleEndpointProfile", "https_web")
			_ = cliAllowFail("federation", "show", "-id", "labels.example")
			_ = cliAllowFail("federation", "update", "-trustDomain", "labels.example", "-bundleEndpointURL", "https://127.0.0.1:2/", "-bundleEndpointProfile", "https_web")
			_ = cliAllowFail("federation", "delete", "-id", "labels.example")
			_ = cliAllowFail("bundle", "delete", "-id", spirefixture.FederatedTrustDomains(2)[1], "-mode", "dissociate")
			return nil
		}},
		{"join token", func() error {
			return cli("token", "generate", "-spiffeID", "spiffe://"+spiretest.TrustDomain+"/labels-node")
		}},
		{"server stop", func() error { srv.Halt(); srv = nil; return nil }},
		{"server start (events-based cache)", func() error {
			return start("events_based_cache = true", `prune_events_older_than = "6s"`)
		}},
		{"events-based cache: polls and prunes", func() error {
			entries := spirefixture.GenerateEntries(5, 7, nil)
			for i := range entries {
				entries[i].SpiffeID += "-events"
			}
			if err := srv.CreateEntries(ctx, entries); err != nil {
				return err
			}
			time.Sleep(15 * time.Second)
			return nil
		}},
	}
	if pruneWait > 0 {
		steps = append(steps, struct {
			name string
			fn   func() error
		}{"expiry prune", sleep(pruneWait)})
	}
	for _, s := range steps {
		if err := r.phase(ctx, s.name, s.fn); err != nil {
			if srv != nil {
				return fmt.Errorf("%w (spire-server log: %s)", err, srv.LogTail(10))
			}
			return err
		}
	}
	if raw {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r.stmts)
	}
	examples, err := examplesFromLog(c.LogFile())
	if err != nil {
		return fmt.Errorf("reading the server log: %w", err)
	}
	return writeCatalog(out, r.stmts, examples)
}
