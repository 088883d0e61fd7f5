package spire

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a SPIRE release number.
type Version struct{ Major, Minor, Patch int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// ParseVersion reads "1.13.3", "v1.13.3" or "1.13" (patch 0); a suffix
// such as "-rc1" or "+build" is ignored.
func ParseVersion(s string) (Version, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(t, "-+ "); i >= 0 {
		t = t[:i]
	}
	f := strings.Split(t, ".")
	if len(f) < 2 || len(f) > 3 {
		return Version{}, fmt.Errorf("invalid SPIRE version %q: want MAJOR.MINOR.PATCH, e.g. 1.14.0", s)
	}
	var n [3]int
	for i, p := range f {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return Version{}, fmt.Errorf("invalid SPIRE version %q: want MAJOR.MINOR.PATCH, e.g. 1.14.0", s)
		}
		n[i] = v
	}
	return Version{n[0], n[1], n[2]}, nil
}

// UpgradeStep is SPIRE's version rule applied to one move of the servers'
// release.
type UpgradeStep struct {
	From Version `json:"from"`
	To   Version `json:"to"`
	// OK: SPIRE supports the move in one step (same major, at most one
	// minor version apart, as its sqlstore isCompatibleCodeVersion and its
	// upgrade guide require: old and new servers share the datastore
	// during a rolling upgrade).
	OK bool `json:"ok"`
	// Path is the supported sequence of minor releases when OK is false.
	Path []string `json:"path,omitempty"`
	// Downgrade: To is older than From.
	Downgrade bool   `json:"downgrade"`
	Reason    string `json:"reason"`
}

// CheckUpgradeStep applies SPIRE's one-minor-version rule to moving a
// datastore whose migrations.code_version is from to release to.
func CheckUpgradeStep(from, to Version) UpgradeStep {
	st := UpgradeStep{From: from, To: to}
	switch {
	case from.Major != to.Major:
		st.Reason = fmt.Sprintf("SPIRE does not move between major versions in place (%d.x to %d.x)", from.Major, to.Major)
	case to.Minor > from.Minor+1:
		st.Reason = fmt.Sprintf("%s skips %d minor release(s): SPIRE supports upgrading one minor version at a time (servers within one minor of the datastore's code_version %s)",
			to, to.Minor-from.Minor-1, from)
		for m := from.Minor + 1; m <= to.Minor; m++ {
			st.Path = append(st.Path, fmt.Sprintf("%d.%d.x", from.Major, m))
		}
	case to.Minor < from.Minor-1:
		st.Downgrade = true
		st.Reason = fmt.Sprintf("%s is %d minor releases older than the datastore's code_version %s: SPIRE supports one minor version down at most, and not below the schema",
			to, from.Minor-to.Minor, from)
	case to.Minor < from.Minor || (to.Minor == from.Minor && to.Patch < from.Patch):
		st.OK, st.Downgrade = true, true
		st.Reason = fmt.Sprintf("a downgrade from %s to %s: within one minor version, which SPIRE supports while the schema version is one %s knows", from, to, to)
	default:
		st.OK = true
		st.Reason = fmt.Sprintf("%s to %s is within one minor version", from, to)
	}
	return st
}
