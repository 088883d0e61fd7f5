package doctor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/hcl/token"
	"github.com/jackc/pgx/v5"

	"github.com/spiredb/spiredb/internal/dsn"
	"github.com/spiredb/spiredb/pg"
	"github.com/spiredb/spiredb/replication"
)

// The sql DataStore's plugin_data keys in SPIRE 1.13
// (pkg/server/datastore/sqlcommon.Configuration). SPIRE decodes them with
// hcl and ignores any other key without a word.
var sqlDataStoreKeys = []string{
	"database_type", "connection_string", "ro_connection_string", "root_ca_path", "client_cert_path",
	"client_key_path", "conn_max_lifetime", "max_open_conns", "max_idle_conns", "disable_migration", "log_sql",
}

// libpqDriverKeys are the connection-string keys lib/pq v1.10.9 (the
// driver SPIRE's postgres dialect uses) keeps for itself (isDriverSetting);
// every other key goes to PostgreSQL in the startup packet, where it must
// be a startup parameter or a run-time setting, or the connection fails.
var libpqDriverKeys = []string{
	"host", "port", "password", "sslmode", "sslcert", "sslkey", "sslrootcert", "sslinline", "sslsni",
	"fallback_application_name", "connect_timeout", "disable_prepared_binary_result", "binary_parameters",
	"krbsrvname", "krbspn",
}

// startupKeys are startup-packet parameters that are not settings.
var startupKeys = []string{"user", "dbname", "options", "replication"}

// notForLibPQ are keys operators copy from pgx or libpq that lib/pq sends
// to the server as settings, which PostgreSQL refuses.
var notForLibPQ = map[string]string{
	"pool_max_conns":                "a pgxpool setting (use max_open_conns)",
	"pool_min_conns":                "a pgxpool setting",
	"pool_max_conn_lifetime":        "a pgxpool setting (use conn_max_lifetime)",
	"pool_max_conn_idle_time":       "a pgxpool setting",
	"pool_health_check_period":      "a pgxpool setting",
	"pool_max_conn_lifetime_jitter": "a pgxpool setting",
	"statement_cache_capacity":      "a pgx setting",
	"description_cache_capacity":    "a pgx setting",
	"default_query_exec_mode":       "a pgx setting",
	"target_session_attrs":          "a libpq setting lib/pq does not have (point ro_connection_string at a standby instead)",
	"load_balance_hosts":            "a libpq setting lib/pq does not have",
	"passfile":                      "a libpq setting lib/pq does not have",
	"gssencmode":                    "a libpq setting lib/pq does not have",
	"channel_binding":               "a libpq setting lib/pq does not have",
	"sslpassword":                   "a libpq setting lib/pq does not have",
	"keepalives":                    "a libpq setting lib/pq does not have",
	"keepalives_idle":               "a libpq setting lib/pq does not have",
	"service":                       "a libpq setting lib/pq does not have",
	"hostaddr":                      "a libpq setting lib/pq does not have",
}

// libpqSSLModes are the sslmode values lib/pq v1.10.9 accepts ("" means
// require).
var libpqSSLModes = []string{"disable", "require", "verify-ca", "verify-full"}

// SPIREConfigOptions configure CheckSPIREConfig.
type SPIREConfigOptions struct {
	// Servers is how many spire-servers share the datastore with this
	// configuration (default 1).
	Servers int
	// Connect makes the check connect with the configuration's own
	// connection strings, as SPIRE would: max_connections, the primary
	// really a primary, ro_connection_string really a ready standby of it,
	// run-time parameters known to the server.
	Connect bool
	// MaxLag is the standby's allowed replay lag (default 16MB).
	MaxLag replication.Limit
	// Base is the options every connection starts from (timeouts,
	// application name); its DSN is replaced.
	Base pg.Options
}

// SPIREConfigReport is what CheckSPIREConfig found.
type SPIREConfigReport struct {
	DatabaseType     string `json:"database_type"`
	MaxOpenConns     int    `json:"max_open_conns"`
	Servers          int    `json:"servers"`
	MaxConnections   int    `json:"max_connections,omitempty"`
	Available        int    `json:"available_connections,omitempty"`
	DisableMigration bool   `json:"disable_migration"`
	ReadOnly         bool   `json:"ro_connection_string"`
	Connected        bool   `json:"connected"`
	FindingList
}

// ConfigSyntaxError is a server.conf hcl cannot parse, or one without the
// sql DataStore.
type ConfigSyntaxError struct{ Err error }

func (e *ConfigSyntaxError) Error() string { return e.Err.Error() }
func (e *ConfigSyntaxError) Unwrap() error { return e.Err }

// sqlConf is the sql DataStore's plugin_data as SPIRE decodes it.
type sqlConf struct {
	DatabaseType     ast.Node `hcl:"database_type"`
	ConnectionString string   `hcl:"connection_string"`
	ROConnection     string   `hcl:"ro_connection_string"`
	ConnMaxLifetime  *string  `hcl:"conn_max_lifetime"`
	MaxOpenConns     *int     `hcl:"max_open_conns"`
	MaxIdleConns     *int     `hcl:"max_idle_conns"`
	DisableMigration bool     `hcl:"disable_migration"`
}

// CheckSPIREConfig checks the sql DataStore of a spire-server
// configuration (HCL, parsed with the library SPIRE uses).
func CheckSPIREConfig(ctx context.Context, data []byte, o SPIREConfigOptions) (*SPIREConfigReport, error) {
	if o.Servers <= 0 {
		o.Servers = 1
	}
	if o.MaxLag.IsZero() {
		o.MaxLag = replication.Limit{Bytes: 16 << 20}
	}
	root, err := hcl.ParseBytes(data)
	if err != nil {
		return nil, &ConfigSyntaxError{Err: fmt.Errorf("not a valid spire-server configuration: %w", err)}
	}
	list, ok := root.Node.(*ast.ObjectList)
	if !ok {
		return nil, &ConfigSyntaxError{Err: errors.New("not a valid spire-server configuration: no top-level blocks")}
	}
	pd, pos, err := sqlPluginData(list)
	if err != nil {
		return nil, &ConfigSyntaxError{Err: err}
	}
	r := &SPIREConfigReport{Servers: o.Servers, MaxOpenConns: 100}

	// keys SPIRE would silently ignore
	for _, item := range pd.Items {
		if len(item.Keys) == 0 {
			continue
		}
		k := item.Keys[0].Token.Value().(string)
		if !slices.Contains(sqlDataStoreKeys, k) {
			hint := ""
			if near := nearest(k, sqlDataStoreKeys); near != "" {
				hint = fmt.Sprintf(" (did you mean %s?)", near)
			}
			r.add(Error, "sql.unknown_key", fmt.Sprintf("line %d: %q is not a key of the sql DataStore%s: spire-server ignores it without a word",
				item.Pos().Line, k, hint), "remove it, or spell it as one of: "+strings.Join(sqlDataStoreKeys, ", "))
		}
	}
	var c sqlConf
	if err := hcl.DecodeObject(&c, pd); err != nil {
		return nil, &ConfigSyntaxError{Err: fmt.Errorf("line %d: the sql DataStore's plugin_data: %w", pos.Line, err)}
	}
	r.DisableMigration = c.DisableMigration
	r.ReadOnly = c.ROConnection != ""
	// secrets in the file are masked wherever they might surface
	dsn.RememberDSN(c.ConnectionString)
	dsn.RememberDSN(c.ROConnection)

	r.DatabaseType = databaseType(c.DatabaseType)
	switch r.DatabaseType {
	case "":
		r.add(Error, "sql.database_type", "database_type is missing: spire-server refuses to start", `database_type = "postgres"`)
	case "postgres", "aws_postgres":
	default:
		r.add(Info, "sql.database_type", fmt.Sprintf("database_type is %q: spiredb checks PostgreSQL datastores only", r.DatabaseType), "")
		r.finish()
		return r, nil
	}
	if c.MaxOpenConns != nil {
		r.MaxOpenConns = *c.MaxOpenConns
	}
	if c.MaxOpenConns != nil && *c.MaxOpenConns <= 0 {
		r.add(Warning, "sql.max_open_conns", fmt.Sprintf("max_open_conns = %d means no limit: each server opens as many connections as it has requests", *c.MaxOpenConns),
			"set a limit that fits max_connections (spire-server's default is 100)")
	}
	if c.MaxIdleConns != nil && c.MaxOpenConns != nil && *c.MaxOpenConns > 0 && *c.MaxIdleConns > *c.MaxOpenConns {
		r.add(Info, "sql.max_idle_conns", fmt.Sprintf("max_idle_conns (%d) above max_open_conns (%d): Go's database/sql keeps at most max_open_conns", *c.MaxIdleConns, *c.MaxOpenConns), "")
	}
	if c.ConnMaxLifetime != nil {
		if _, err := time.ParseDuration(*c.ConnMaxLifetime); err != nil {
			r.add(Error, "sql.conn_max_lifetime", fmt.Sprintf("conn_max_lifetime %q is not a Go duration: spire-server refuses to start", *c.ConnMaxLifetime), `e.g. conn_max_lifetime = "1h"`)
		}
	}
	if o.Servers > 1 && !c.DisableMigration {
		r.add(Info, "sql.disable_migration", fmt.Sprintf("disable_migration is off on %d servers: in a rolling upgrade the first upgraded server migrates the schema while older ones still run on it", o.Servers),
			"during an upgrade, let one server migrate (spiredb spire upgrade-check), and set disable_migration = true on the others")
	}

	primary := checkConnString(r, "connection_string", c.ConnectionString, true)
	var standby dsn.Params
	if c.ROConnection != "" {
		standby = checkConnString(r, "ro_connection_string", c.ROConnection, false)
	}
	if o.Connect && primary != nil && r.DatabaseType == "postgres" {
		if err := checkLive(ctx, r, o, primary, standby); err != nil {
			return nil, err
		}
	}
	r.finish()
	return r, nil
}

// sqlPluginData finds plugins { DataStore "sql" { plugin_data { ... } } }.
func sqlPluginData(root *ast.ObjectList) (*ast.ObjectList, token.Pos, error) {
	plugins := root.Filter("plugins")
	if len(plugins.Items) == 0 {
		return nil, token.Pos{}, errors.New("no plugins block: not a spire-server configuration")
	}
	for _, p := range plugins.Items {
		body, ok := p.Val.(*ast.ObjectType)
		if !ok {
			continue
		}
		ds := body.List.Filter("DataStore", "sql")
		for _, item := range ds.Items {
			dsBody, ok := item.Val.(*ast.ObjectType)
			if !ok {
				continue
			}
			pd := dsBody.List.Filter("plugin_data")
			for _, pdi := range pd.Items {
				if obj, ok := pdi.Val.(*ast.ObjectType); ok {
					return obj.List, pdi.Pos(), nil
				}
			}
			return nil, item.Pos(), fmt.Errorf("line %d: DataStore \"sql\" has no plugin_data block", item.Pos().Line)
		}
	}
	return nil, token.Pos{}, errors.New(`no DataStore "sql" plugin in the plugins block`)
}

// databaseType reads database_type: a string, or a block naming the type
// (aws_postgres { region = ... }).
func databaseType(n ast.Node) string {
	switch v := n.(type) {
	case *ast.LiteralType:
		if s, ok := v.Token.Value().(string); ok {
			return s
		}
	case *ast.ObjectType:
		for _, item := range v.List.Items {
			if len(item.Keys) > 0 {
				if s, ok := item.Keys[0].Token.Value().(string); ok {
					return s
				}
			}
		}
	case *ast.ObjectList:
		for _, item := range v.Items {
			if len(item.Keys) > 0 {
				if s, ok := item.Keys[0].Token.Value().(string); ok {
					return s
				}
			}
		}
	}
	return ""
}

// checkConnString checks a connection string as lib/pq will read it, and
// returns its parameters as lib/pq connects (sslmode require when unset).
func checkConnString(r *SPIREConfigReport, name, s string, required bool) dsn.Params {
	if strings.TrimSpace(s) == "" {
		if required {
			r.add(Error, "sql."+name, name+" is empty: spire-server cannot connect", "")
		}
		return nil
	}
	p, err := dsn.Parse(s)
	if err != nil {
		r.add(Error, "sql."+name, fmt.Sprintf("%s: %v", name, err), "")
		return nil
	}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	bad := false
	for _, k := range keys {
		if why, ok := notForLibPQ[k]; ok {
			bad = true
			r.add(Error, "sql."+name+".parameter", fmt.Sprintf("%s has %s, %s: lib/pq sends it to PostgreSQL as a setting and the connection fails (unrecognized configuration parameter)", name, k, why),
				"remove "+k+" from "+name)
		}
	}
	if h := p["host"]; strings.Contains(h, ",") {
		bad = true
		r.add(Error, "sql."+name+".host", fmt.Sprintf("%s names several hosts: lib/pq connects to one", name),
			"one host (a load balancer or a DNS name that follows the primary)")
	}
	mode := p["sslmode"]
	switch {
	case !slices.Contains(libpqSSLModes, mode) && mode != "":
		bad = true
		r.add(Error, "sql."+name+".sslmode", fmt.Sprintf("%s has sslmode=%s, which lib/pq does not support (only %s): spire-server cannot connect",
			name, mode, strings.Join(libpqSSLModes, ", ")), "sslmode=verify-full with sslrootcert, or disable on a local socket")
	case mode == "disable" && !localHost(p["host"]):
		r.add(Warning, "sql."+name+".sslmode", fmt.Sprintf("%s has sslmode=disable to %s: SPIRE's queries and the database password cross the network unencrypted", name, hostOf(p)),
			"sslmode=verify-full with sslrootcert")
	case mode == "" || mode == "require":
		what := "sslmode=require"
		if mode == "" {
			what = "no sslmode, so lib/pq's default, require,"
		}
		r.add(Info, "sql."+name+".sslmode", fmt.Sprintf("%s has %s: encrypted, but the server's certificate is not verified (and a server without TLS refuses the connection)", name, what),
			"sslmode=verify-full with sslrootcert")
	}
	if bad {
		return nil
	}
	if mode == "" {
		p["sslmode"] = "require"
	}
	return p
}

func localHost(h string) bool {
	return h == "" || strings.HasPrefix(h, "/") || h == "localhost" || h == "127.0.0.1" || h == "::1"
}

func hostOf(p dsn.Params) string {
	if p["host"] == "" {
		return "the default host"
	}
	return p["host"]
}

// checkLive connects with the configuration's connection strings.
func checkLive(ctx context.Context, r *SPIREConfigReport, o SPIREConfigOptions, primary, standby dsn.Params) error {
	connect := func(p dsn.Params) (*pgx.Conn, error) {
		opts := o.Base
		opts.DSN = p.String()
		opts.Config, opts.Pool = nil, nil
		if opts.ApplicationName == "" {
			opts.ApplicationName = "spiredb-spire-check-config"
		}
		return pg.Connect(ctx, opts)
	}
	conn, err := connect(primary)
	if err != nil {
		r.add(Error, "sql.connection_string.connect", fmt.Sprintf("connecting with connection_string failed: %v", err), "")
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r.Connected = true
	var inRecovery bool
	var maxConns, reserved, others int
	var sysID int64
	if err := conn.QueryRow(ctx, pg.Marker+`SELECT pg_catalog.pg_is_in_recovery(),
		pg_catalog.current_setting('max_connections')::int,
		pg_catalog.current_setting('superuser_reserved_connections')::int
		  + coalesce(pg_catalog.current_setting('reserved_connections', true)::int, 0),
		(SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'
		   AND application_name NOT LIKE 'spire%' AND pid <> pg_catalog.pg_backend_pid())::int,
		(SELECT system_identifier FROM pg_catalog.pg_control_system())`).Scan(&inRecovery, &maxConns, &reserved, &others, &sysID); err != nil {
		return fmt.Errorf("reading the server's settings: %w", err)
	}
	if inRecovery {
		r.add(Error, "sql.connection_string.primary", "connection_string reaches a standby (in recovery): spire-server writes on every start and fails", "point connection_string at the primary")
	}
	r.MaxConnections = maxConns
	r.Available = maxConns - reserved
	need := o.Servers * r.MaxOpenConns
	if r.MaxOpenConns > 0 && need > r.Available {
		r.add(Error, "sql.max_open_conns", fmt.Sprintf("%d servers × max_open_conns %d = %d connections, above the %d max_connections leaves to ordinary roles (%d reserved)",
			o.Servers, r.MaxOpenConns, need, r.Available, reserved),
			fmt.Sprintf("max_open_conns = %d or less, or raise max_connections (restart), or put PgBouncer in session mode in front", max(1, r.Available/o.Servers)))
	} else if r.MaxOpenConns > 0 && need+others > r.Available {
		r.add(Warning, "sql.max_open_conns", fmt.Sprintf("%d servers × max_open_conns %d = %d connections, and %d other sessions are open now: %d slots",
			o.Servers, r.MaxOpenConns, need, others, r.Available), "leave room for backups, monitoring and administrators")
	}
	if err := checkSettingKeys(ctx, r, conn, "connection_string", primary); err != nil {
		return err
	}
	if standby == nil {
		return nil
	}
	sconn, err := connect(standby)
	if err != nil {
		r.add(Error, "sql.ro_connection_string.connect", fmt.Sprintf("connecting with ro_connection_string failed: %v", err), "")
		return nil
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	var standbyID int64
	if err := sconn.QueryRow(ctx, pg.Marker+"SELECT pg_catalog.pg_is_in_recovery(), (SELECT system_identifier FROM pg_catalog.pg_control_system())").
		Scan(&inRecovery, &standbyID); err != nil {
		return fmt.Errorf("reading the standby: %w", err)
	}
	switch {
	case !inRecovery:
		r.add(Error, "sql.ro_connection_string.standby", "ro_connection_string reaches a primary, not a standby: SPIRE's stale-tolerant reads go to a server that is not this datastore's copy (or is the primary itself)",
			"point ro_connection_string at a streaming standby of the primary (spiredb replica bootstrap), or remove it")
	case standbyID != sysID:
		r.add(Error, "sql.ro_connection_string.standby", "ro_connection_string reaches a standby of another cluster (its system identifier differs from the primary's): SPIRE would read another datastore",
			"point ro_connection_string at a standby of this primary")
	default:
		st, err := replication.ReadStatus(ctx, sconn, o.MaxLag)
		if err != nil {
			return err
		}
		for _, p := range st.Problems {
			r.add(Error, "sql.ro_connection_string.standby", "ro_connection_string's standby is not ready: "+p, "spiredb replica status")
		}
	}
	return checkSettingKeys(ctx, r, sconn, "ro_connection_string", standby)
}

// checkSettingKeys: keys lib/pq sends as settings must be settings this
// server knows (the connection above went through pgx, which does the
// same, so it would have failed on a setting the server refuses; this
// names the key when it is merely unknown to lib/pq).
func checkSettingKeys(ctx context.Context, r *SPIREConfigReport, conn *pgx.Conn, name string, p dsn.Params) error {
	for k := range p {
		if slices.Contains(libpqDriverKeys, k) || slices.Contains(startupKeys, k) || k == "application_name" {
			continue
		}
		var known bool
		if err := conn.QueryRow(ctx, pg.Marker+"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE name = lower($1))", k).Scan(&known); err != nil {
			return err
		}
		if !known {
			r.add(Error, "sql."+name+".parameter", fmt.Sprintf("%s has %s, which is neither a lib/pq setting nor a PostgreSQL setting: the connection fails", name, k), "remove "+k)
		}
	}
	return nil
}

// nearest returns the key within edit distance 2 of k, if any.
func nearest(k string, keys []string) string {
	best, bestD := "", 3
	for _, c := range keys {
		if d := editDistance(k, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
