package tuning

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Inputs describe the server and the SPIRE deployment in front of it.
type Inputs struct {
	RAM          int64  `json:"ram_bytes"`
	CPUs         int    `json:"cpus"`
	Storage      string `json:"storage"` // ssd, hdd or network
	SpireServers int    `json:"spire_servers"`
	MaxOpenConns int    `json:"max_open_conns"` // SPIRE DataStore "sql" max_open_conns, default 100
	Pooler       string `json:"pooler"`         // none or pgbouncer
	// ArchiveStore is the backup store WAL is archived into (spiredb wal
	// push --store); empty leaves it to SPIREDB_STORE in the server's
	// environment.
	ArchiveStore string `json:"archive_store,omitempty"`
}

// Validate fills defaults and refuses what cannot be sized.
func (in *Inputs) Validate() error {
	if in.Storage == "" {
		in.Storage = "ssd"
	}
	if in.SpireServers == 0 {
		in.SpireServers = 1
	}
	if in.MaxOpenConns == 0 {
		in.MaxOpenConns = 100
	}
	if in.Pooler == "" {
		in.Pooler = "none"
	}
	switch {
	case in.RAM < 256<<20:
		return errors.New("--ram must be at least 256MB")
	case in.CPUs < 1:
		return errors.New("--cpus must be at least 1")
	case in.SpireServers < 1 || in.SpireServers > 1000:
		return errors.New("--spire-servers must be between 1 and 1000")
	case in.MaxOpenConns < 1 || in.MaxOpenConns > 10000:
		return errors.New("--max-open-conns must be between 1 and 10000")
	}
	if in.Storage != "ssd" && in.Storage != "hdd" && in.Storage != "network" {
		return fmt.Errorf("invalid --storage %q: want ssd, hdd or network", in.Storage)
	}
	if in.Pooler != "none" && in.Pooler != "pgbouncer" {
		return fmt.Errorf("invalid --pooler %q: want none or pgbouncer", in.Pooler)
	}
	return nil
}

// Setting is one recommended parameter.
type Setting struct {
	Name    string `json:"name"`
	Value   string `json:"value"`
	Reason  string `json:"reason"`
	Restart bool   `json:"restart"` // takes effect only after a restart
}

// Recommendation is the set of settings for Inputs.
type Recommendation struct {
	Inputs   Inputs    `json:"inputs"`
	Settings []Setting `json:"settings"`
	// WorstCaseMemory is shared_buffers + max_connections × work_mem × 2
	// (two sort/hash nodes each) + maintenance_work_mem × autovacuum
	// workers; it never exceeds RAM.
	WorstCaseMemory int64 `json:"worst_case_memory_bytes"`
	// TableSQL tunes autovacuum on SPIRE's churning tables.
	TableSQL []string `json:"table_sql"`
}

// Get returns the recommended value of a setting.
func (r *Recommendation) Get(name string) (Setting, bool) {
	for _, s := range r.Settings {
		if s.Name == name {
			return s, true
		}
	}
	return Setting{}, false
}

// Recommend sizes PostgreSQL for a SPIRE workload.
func Recommend(in Inputs) (*Recommendation, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	r := &Recommendation{Inputs: in}
	add := func(name, value string, restart bool, reason string, args ...any) {
		r.Settings = append(r.Settings, Setting{Name: name, Value: value, Restart: restart, Reason: fmt.Sprintf(reason, args...)})
	}

	// connections
	maxConn := in.SpireServers*in.MaxOpenConns + 20
	connReason := fmt.Sprintf("%d spire-server(s) × max_open_conns %d, plus 20 for replication, backups and operators", in.SpireServers, in.MaxOpenConns)
	if in.Pooler == "pgbouncer" {
		maxConn = max(4*in.CPUs+20, 50)
		connReason = fmt.Sprintf("pgbouncer in transaction mode multiplexes SPIRE's %d×%d client connections onto about 4 per core; set its default_pool_size to %d",
			in.SpireServers, in.MaxOpenConns, 4*in.CPUs)
	}

	if in.Pooler == "none" && maxConn > 5000 {
		return nil, fmt.Errorf("%d connections (%d servers × max_open_conns %d) is more than PostgreSQL serves well: put pgbouncer in front (--pooler pgbouncer) or lower max_open_conns",
			maxConn, in.SpireServers, in.MaxOpenConns)
	}
	sharedBuffers := roundMB(min(in.RAM/4, 16<<30))
	maintenance := roundMB(min(max(in.RAM/16, 16<<20), 1<<30))
	const avWorkers = 3
	// work_mem: SPIRE's reload page sorts a few MB; size it from what is
	// left after shared_buffers and maintenance, for every connection
	// running two sort/hash nodes at once, within [4MB, 64MB]
	budget := in.RAM - sharedBuffers - maintenance*avWorkers - in.RAM/8 // leave 1/8 to the OS
	workMem := roundMB(min(max(budget/int64(maxConn*2), 4<<20), 64<<20))
	worst := func() int64 { return sharedBuffers + int64(maxConn)*workMem*2 + maintenance*avWorkers }
	for worst() > in.RAM && workMem > 64<<10 { // PostgreSQL's minimum is 64kB
		if workMem > 1<<20 {
			workMem -= 1 << 20
		} else {
			workMem = max(workMem/2, 64<<10)
		}
	}
	for worst() > in.RAM && sharedBuffers > 128<<20 {
		sharedBuffers = roundMB(sharedBuffers * 3 / 4)
	}
	if worst() > in.RAM {
		return nil, fmt.Errorf("%d connections cannot fit in %s of RAM even with work_mem at 64kB: put pgbouncer in front (--pooler pgbouncer) or add memory",
			maxConn, pgSize(in.RAM))
	}
	r.WorstCaseMemory = worst()

	add("max_connections", fmt.Sprint(maxConn), true, "%s", connReason)
	add("shared_buffers", pgSize(sharedBuffers), true, "a quarter of RAM (at most 16GB): SPIRE re-reads its whole entry set every 5 s, keep it cached")
	add("effective_cache_size", pgSize(roundMB(in.RAM*3/4)), false, "three quarters of RAM: shared_buffers plus the OS page cache")
	add("work_mem", pgSize(workMem), false, "the cache reload sorts each 10,000-row page (3.4 MB spilled at 20k entries); sized so that %d connections × 2 sorts still fit in RAM", maxConn)
	add("maintenance_work_mem", pgSize(maintenance), false, "RAM/16 within [16MB, 1GB]: index builds and vacuum of the events tables")
	add("autovacuum_max_workers", fmt.Sprint(avWorkers), true, "the default; SPIRE's churn is in a few tables, tuned per table below")
	add("autovacuum_naptime", "15s", false, "events tables get a row per change and are pruned with DELETE: visit them often")

	// WAL and checkpoints
	add("wal_buffers", "16MB", true, "the useful maximum; SPIRE commits many small transactions")
	add("checkpoint_completion_target", "0.9", false, "spread checkpoint writes")
	add("checkpoint_timeout", "15min", false, "fewer full-page writes after checkpoints")
	maxWal := "4GB"
	if in.RAM < 4<<30 {
		maxWal = "2GB"
	}
	add("max_wal_size", maxWal, false, "checkpoints on time, not on WAL volume, during bulk entry registration")
	add("min_wal_size", "512MB", false, "keep recycled WAL segments for bursts")

	// continuous archiving: point-in-time recovery (backup run --physical)
	archive := "spiredb wal push %p"
	if in.ArchiveStore != "" {
		archive += " --store " + in.ArchiveStore
	}
	add("archive_mode", "on", true, "continuous WAL archiving: with backup run --physical, restore to any second instead of the last dump (a standby replays a mass delete in milliseconds)")
	add("archive_command", "'"+strings.ReplaceAll(archive, "'", "''")+"'", false, "spiredb archives each segment into the backup store, compressed and checksummed; the server's environment carries the store's credentials (AWS chain)%s",
		map[bool]string{true: "", false: " and SPIREDB_STORE"}[in.ArchiveStore != ""])
	add("archive_timeout", "60s", false, "the RPO bound when writes are few: a segment is archived at least every minute (forced segments are mostly zeros and compress to almost nothing)")

	// replication, switchover and rejoin
	add("wal_log_hints", "on", true, "replica rejoin turns a fenced old primary into a standby with pg_rewind, which needs wal_log_hints (or data checksums) from before the switchover; without it every switchover costs a full copy")
	slotCap := "16GB"
	if in.RAM < 4<<30 {
		slotCap = "8GB"
	}
	add("max_slot_wal_keep_size", slotCap, false, "a slot whose standby is gone keeps WAL until pg_wal's disk is full, and with the default -1 it never becomes 'lost' (the lost-slot alert cannot fire); 4 × max_wal_size, keep it well under pg_wal's free space")
	add("hot_standby_feedback", "on", false, "for standbys serving SPIRE's ro_connection_string (set it everywhere: a promoted server's standbys need it too): vacuum on the primary otherwise cancels their long reads, such as the full cache reload")

	// planner and I/O for the storage
	switch in.Storage {
	case "ssd":
		add("random_page_cost", "1.1", false, "SSD: random reads cost about what sequential ones do (measured: 1k-entry page 12.1 → 7.0 ms)")
		add("effective_io_concurrency", "200", false, "SSD: many concurrent reads")
	case "network":
		add("random_page_cost", "1.5", false, "network storage (EBS, PD): fast random reads with some latency")
		add("effective_io_concurrency", "100", false, "network storage serves many requests in parallel")
	case "hdd":
		add("random_page_cost", "4", false, "spinning disks: random reads are expensive")
		add("effective_io_concurrency", "2", false, "spinning disks: few concurrent reads")
	}
	workers := max(in.CPUs, 8)
	add("max_worker_processes", fmt.Sprint(workers), true, "background and parallel workers: one per core, at least 8")
	add("max_parallel_workers", fmt.Sprint(in.CPUs), false, "at most one parallel worker per core")
	add("max_parallel_workers_per_gather", fmt.Sprint(min(max(in.CPUs/2, 0), 4)), false, "reload pages are small: at most half the cores, 4 at the most")

	// observability
	add("shared_preload_libraries", "'pg_stat_statements'", true, "per-statement statistics (spiredb stats top); needs CREATE EXTENSION pg_stat_statements")
	add("pg_stat_statements.max", "10000", true, "SPIRE runs few statement shapes; room for operators' ones")
	add("track_io_timing", "on", false, "I/O time per statement in pg_stat_statements")
	add("log_min_duration_statement", "1s", false, "log anything slower than a reload page should ever be")

	sort.SliceStable(r.Settings, func(i, j int) bool { return r.Settings[i].Name < r.Settings[j].Name })
	for _, t := range []string{"registered_entries_events", "attested_node_entries_events"} {
		r.TableSQL = append(r.TableSQL, fmt.Sprintf("ALTER TABLE %s SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);", t))
	}
	r.TableSQL = append(r.TableSQL, "ALTER TABLE registered_entries SET (autovacuum_vacuum_scale_factor = 0.05);",
		"ALTER TABLE selectors SET (autovacuum_vacuum_scale_factor = 0.05);")
	return r, nil
}

// Conf renders a postgresql.conf snippet.
func (r *Recommendation) Conf() string {
	var b strings.Builder
	b.WriteString("# spiredb tune recommend: settings for a SPIRE datastore\n")
	for _, s := range r.Settings {
		restart := ""
		if s.Restart {
			restart = " (restart)"
		}
		fmt.Fprintf(&b, "%s = %s\t# %s%s\n", s.Name, confValue(s.Value), s.Reason, restart)
	}
	return b.String()
}

// PgBouncerINI renders a pgbouncer.ini for the spire-servers in front of
// this server: transaction pooling, a client limit for every server's
// max_open_conns, server connections sized to the cores. SPIRE's lib/pq
// uses named prepared statements, which transaction pooling carries only
// from PgBouncer 1.21 on (max_prepared_statements).
func (r *Recommendation) PgBouncerINI() string {
	in := r.Inputs
	pool := 4 * in.CPUs
	var b strings.Builder
	fmt.Fprintf(&b, `; spiredb tune recommend -o pgbouncer: %d spire-server(s) × max_open_conns %d
; Needs PgBouncer 1.21 or later: SPIRE's lib/pq uses named prepared statements,
; which transaction pooling carries only with max_prepared_statements.
; spiredb's backup run, migrate, migrate backfill and indexes apply need a
; session of their own: give them a direct DSN, not this pooler.
[databases]
; SPIRE's connection_string points here; dbname as in SPIRE's DataStore
spire = host=POSTGRESQL_HOST port=5432 dbname=spire

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = transaction
max_prepared_statements = 200
; every spire-server may open max_open_conns, plus room for operators
max_client_conn = %d
; server connections: about 4 per core (max_connections is %s)
default_pool_size = %d
reserve_pool_size = %d
reserve_pool_timeout = 3
; SPIRE closes idle connections after 30 s
server_idle_timeout = 60
ignore_startup_parameters = extra_float_digits
`, in.SpireServers, in.MaxOpenConns, in.SpireServers*in.MaxOpenConns+50, r.value("max_connections"), pool, max(in.CPUs, 2))
	return b.String()
}

func (r *Recommendation) value(name string) string {
	s, _ := r.Get(name)
	return s.Value
}

// SQL renders ALTER SYSTEM statements (and the per-table settings).
func (r *Recommendation) SQL() string {
	var b strings.Builder
	b.WriteString("-- spiredb tune recommend: run as a superuser, then SELECT pg_reload_conf(); restart for the settings marked so\n")
	for _, s := range r.Settings {
		restart := ""
		if s.Restart {
			restart = " -- needs a restart"
		}
		fmt.Fprintf(&b, "ALTER SYSTEM SET %s = %s;%s\n", s.Name, sqlValue(s.Value), restart)
	}
	b.WriteString("SELECT pg_reload_conf();\n")
	for _, t := range r.TableSQL {
		b.WriteString(t + "\n")
	}
	return b.String()
}

func confValue(v string) string {
	if strings.HasPrefix(v, "'") {
		return v
	}
	if strings.ContainsAny(v, "kMGBms") && !strings.ContainsAny(v, ".") {
		return "'" + v + "'"
	}
	return v
}

func sqlValue(v string) string {
	if strings.HasPrefix(v, "'") {
		return v
	}
	return "'" + v + "'"
}
