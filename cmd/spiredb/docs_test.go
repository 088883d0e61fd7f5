package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra/doc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var updateDocs = flag.Bool("update-docs", false, "regenerate docs/cli from the command tree")

// The CLI reference in docs/cli is generated from the cobra tree; this test
// fails when it drifts. Regenerate with `make docs`.
func TestCLIReference(t *testing.T) {
	// defaults that read the environment must not leak into the docs
	for _, v := range []string{"SPIREDB_LOG_LEVEL", "SPIREDB_LOG_FORMAT"} {
		t.Setenv(v, "")
	}
	root := newRootCmd(&bytes.Buffer{}, &bytes.Buffer{})
	root.DisableAutoGenTag = true
	dir := t.TempDir()
	require.NoError(t, doc.GenMarkdownTree(root, dir))
	want := filepath.Join("..", "..", "docs", "cli")
	if *updateDocs {
		require.NoError(t, os.RemoveAll(want))
		require.NoError(t, os.MkdirAll(want, 0o755))
	}
	got, err := filepath.Glob(filepath.Join(dir, "*.md"))
	require.NoError(t, err)
	require.NotEmpty(t, got)
	for _, g := range got {
		b, err := os.ReadFile(g)
		require.NoError(t, err)
		target := filepath.Join(want, filepath.Base(g))
		if *updateDocs {
			require.NoError(t, os.WriteFile(target, b, 0o644))
			continue
		}
		have, err := os.ReadFile(target)
		if !assert.NoError(t, err, "docs/cli lacks %s: run make docs", filepath.Base(g)) {
			continue
		}
		assert.Equal(t, string(have), string(b), "docs/cli/%s drifted from the command tree: run make docs", filepath.Base(g))
	}
	existing, err := filepath.Glob(filepath.Join(want, "*.md"))
	require.NoError(t, err)
	assert.Len(t, existing, len(got), "docs/cli has pages for commands that no longer exist: run make docs")
}
