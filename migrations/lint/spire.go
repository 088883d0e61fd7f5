package lint

import (
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/spiredb/spiredb/spire"
)

// spireSchema is what the linter knows of SPIRE's tables: columns with
// their types, and SPIRE's own indexes, parsed from the schema a real
// spire-server created (spire.SchemaSQL, `make spire-fixture`).
type spireSchema struct {
	columns map[string]map[string]string // table → column → type name
	indexes map[string][]spireIndex      // table → indexes
}

type spireIndex struct {
	name string
	keys []string
}

// hotTables take SPIRE's steady traffic: every reload, every entry change.
var hotTables = map[string]bool{
	"registered_entries": true, "selectors": true, "dns_names": true, "federated_registration_entries": true,
	"registered_entries_events": true, "attested_node_entries": true, "attested_node_entries_events": true,
	"node_resolver_map_entries": true, "bundles": true,
}

var loadSpire = sync.OnceValues(func() (*spireSchema, error) {
	res, err := pg_query.Parse(spire.SchemaSQL)
	if err != nil {
		return nil, err
	}
	s := &spireSchema{columns: map[string]map[string]string{}, indexes: map[string][]spireIndex{}}
	for _, raw := range res.Stmts {
		switch n := raw.Stmt.Node.(type) {
		case *pg_query.Node_CreateStmt:
			t := n.CreateStmt.Relation.Relname
			cols := map[string]string{}
			for _, el := range n.CreateStmt.TableElts {
				if cd := el.GetColumnDef(); cd != nil {
					cols[cd.Colname] = typeName(cd.TypeName)
				}
			}
			s.columns[t] = cols
		case *pg_query.Node_IndexStmt:
			ix := n.IndexStmt
			var keys []string
			for _, p := range ix.IndexParams {
				if e := p.GetIndexElem(); e != nil {
					keys = append(keys, e.Name)
				}
			}
			t := ix.Relation.Relname
			s.indexes[t] = append(s.indexes[t], spireIndex{name: ix.Idxname, keys: keys})
		}
	}
	return s, nil
})

func typeName(t *pg_query.TypeName) string {
	if t == nil || len(t.Names) == 0 {
		return ""
	}
	return strings.ToLower(t.Names[len(t.Names)-1].GetString_().Sval)
}
