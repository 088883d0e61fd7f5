package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/spiredb/spiredb/internal/version"
)

type versionInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
	Go      string `json:"go"`
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print spiredb's version",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			v := versionInfo{Version: version.String(), Commit: version.Revision(), Go: runtime.Version()}
			return g.out.print(v, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "spiredb %s (commit %s, %s)\n", v.Version, orNone(v.Commit), v.Go)
				return err
			})
		},
	}
}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
