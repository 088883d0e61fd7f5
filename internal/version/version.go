// Package version reports spiredb's own version.
package version

import "runtime/debug"

// Version is set at build time with
// -ldflags "-X github.com/spiredb/spiredb/internal/version.Version=v1.2.3";
// otherwise it comes from the module's build info.
var Version = ""

// Commit is set at build time like Version; otherwise from VCS build info.
var Commit = ""

// String returns the version, "(devel)" when unknown.
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// Revision returns the VCS commit the binary was built from, if known.
func Revision() string {
	if Commit != "" {
		return Commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" && dirty {
			rev += "-dirty"
		}
		return rev
	}
	return ""
}
