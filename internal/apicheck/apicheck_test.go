package apicheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/spiredb/spiredb"

// public reports whether a package of the module is meant for library
// users.
func public(path string) bool {
	rest, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return false
	}
	for _, p := range []string{"internal", "cmd", "scripts", "integration", "tools"} {
		if rest == p || strings.HasPrefix(rest, p+"/") {
			return false
		}
	}
	return true
}

func internalPath(path string) bool {
	return strings.HasPrefix(path, module+"/internal/") || strings.Contains(path, "/internal/") && strings.HasPrefix(path, module)
}

// load type-checks the module's public packages from the compiler's export
// data (go list -export), cgo packages included.
func load(t *testing.T) map[string]*types.Package {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-export", "-deps", "-json=ImportPath,Export,Error", module+"/...")
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.String())
	}
	exports := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath, Export string
			Error              *struct{ Err string }
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Error != nil {
			t.Fatalf("%s: %s", p.ImportPath, p.Error.Err)
		}
		exports[p.ImportPath] = p.Export
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	pkgs := map[string]*types.Package{}
	for path := range exports {
		if !public(path) {
			continue
		}
		p, err := imp.Import(path)
		if err != nil {
			t.Fatalf("importing %s: %v", path, err)
		}
		pkgs[path] = p
	}
	return pkgs
}

// mentions lists the internal types reachable from t without passing
// through another named type (named types are checked where declared).
func mentions(t types.Type, seen map[types.Type]bool) []string {
	if seen[t] {
		return nil
	}
	seen[t] = true
	var out []string
	switch x := t.(type) {
	case *types.Named:
		if p := x.Obj().Pkg(); p != nil && internalPath(p.Path()) {
			out = append(out, p.Path()+"."+x.Obj().Name())
		}
		for i := range x.TypeArgs().Len() {
			out = append(out, mentions(x.TypeArgs().At(i), seen)...)
		}
	case *types.Alias:
		out = append(out, mentions(types.Unalias(x), seen)...)
	case *types.Pointer:
		out = append(out, mentions(x.Elem(), seen)...)
	case *types.Slice:
		out = append(out, mentions(x.Elem(), seen)...)
	case *types.Array:
		out = append(out, mentions(x.Elem(), seen)...)
	case *types.Map:
		out = append(out, mentions(x.Key(), seen)...)
		out = append(out, mentions(x.Elem(), seen)...)
	case *types.Chan:
		out = append(out, mentions(x.Elem(), seen)...)
	case *types.Signature:
		for _, tup := range []*types.Tuple{x.Params(), x.Results()} {
			for i := range tup.Len() {
				out = append(out, mentions(tup.At(i).Type(), seen)...)
			}
		}
	case *types.Struct:
		for i := range x.NumFields() {
			if f := x.Field(i); f.Exported() || f.Embedded() {
				out = append(out, mentions(f.Type(), seen)...)
			}
		}
	case *types.Interface:
		for i := range x.NumMethods() {
			if m := x.Method(i); m.Exported() {
				out = append(out, mentions(m.Type(), seen)...)
			}
		}
		for i := range x.NumEmbeddeds() {
			out = append(out, mentions(x.EmbeddedType(i), seen)...)
		}
	}
	return out
}

// exposure lists, for a package, "Name: internal type" for every exported
// name whose API mentions an internal type.
func exposure(p *types.Package) []string {
	var out []string
	report := func(where string, t types.Type) {
		for _, m := range mentions(t, map[types.Type]bool{}) {
			out = append(out, fmt.Sprintf("%s.%s mentions %s", p.Path(), where, m))
		}
	}
	scope := p.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		switch o := obj.(type) {
		case *types.TypeName:
			if o.IsAlias() {
				report(name, o.Type())
				continue
			}
			named, ok := o.Type().(*types.Named)
			if !ok {
				continue
			}
			report(name, named.Underlying())
			ms := types.NewMethodSet(types.NewPointer(named))
			for i := range ms.Len() {
				if m := ms.At(i).Obj(); m.Exported() {
					report(name+"."+m.Name(), m.Type())
				}
			}
		default:
			report(name, obj.Type())
		}
	}
	return out
}

// No exported name of a public package mentions an internal type: callers
// outside the module must be able to build every argument and match every
// error.
func TestNoInternalTypeInPublicAPI(t *testing.T) {
	pkgs := load(t)
	if len(pkgs) < 8 {
		t.Fatalf("found only %d public packages: %v", len(pkgs), pkgs)
	}
	var bad []string
	for _, p := range pkgs {
		bad = append(bad, exposure(p)...)
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%d exported names mention internal types:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}

// The check finds what it looks for: a type from this module's internal
// packages, in a signature, behind a pointer, a slice and a struct field.
func TestExposureFindsInternalTypes(t *testing.T) {
	internal := types.NewPackage(module+"/internal/x", "x")
	secret := types.NewNamed(types.NewTypeName(0, internal, "Secret", nil), types.Typ[types.Int], nil)
	pub := types.NewPackage(module+"/pub", "pub")
	field := types.NewField(0, pub, "S", types.NewSlice(types.NewPointer(secret)), false)
	st := types.NewNamed(types.NewTypeName(0, pub, "Opts", nil), types.NewStruct([]*types.Var{field}, nil), nil)
	pub.Scope().Insert(st.Obj())
	fn := types.NewFunc(0, pub, "Run", types.NewSignatureType(nil, nil, nil,
		types.NewTuple(types.NewVar(0, pub, "o", st)), types.NewTuple(types.NewVar(0, pub, "", secret)), false))
	pub.Scope().Insert(fn)
	got := exposure(pub)
	want := []string{module + "/pub.Opts mentions " + module + "/internal/x.Secret", module + "/pub.Run mentions " + module + "/internal/x.Secret"}
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("exposure = %q, want %q", got, want)
	}
}

// harness are the test harness's packages: only tests and the developer
// scripts may use them.
var harness = []string{"internal/harness", "internal/pgcluster", "internal/pgtest", "internal/s3test", "internal/spiretest",
	"internal/spirefixture", "internal/tcpproxy", "internal/pgbouncertest"}

func isHarness(path string) bool {
	for _, h := range harness {
		if path == module+"/"+h || strings.HasPrefix(path, module+"/"+h+"/") {
			return true
		}
	}
	return false
}

// No production package (the CLI included) imports the test harness,
// directly or through another package.
func TestProductionDoesNotImportTheHarness(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+"/cmd/spiredb")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 20 {
		t.Fatalf("go list found only %d packages", len(deps))
	}
	for _, d := range deps {
		if isHarness(d) {
			t.Errorf("the spiredb binary depends on the test harness package %s", d)
		}
	}
	list := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", module+"/...")
	list.Dir = "../.."
	out, err = list.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || isHarness(f[0]) || strings.Contains(f[0], "/scripts/") || strings.HasSuffix(f[0], "/integration") {
			continue
		}
		for _, imp := range f[1:] {
			if isHarness(imp) {
				t.Errorf("%s imports the test harness package %s", f[0], imp)
			}
		}
	}
}
