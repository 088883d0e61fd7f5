package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// stdin is where confirmations are read; a variable for tests.
var stdin io.Reader = os.Stdin

// stdinIsTerminal reports whether someone can answer a question.
var stdinIsTerminal = func() bool {
	f, ok := stdin.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// addYes registers --yes on a command that deletes, fences, promotes or
// replaces.
func addYes(cmd *cobra.Command) {
	cmd.Flags().Bool("yes", false, "confirm: required when not on a terminal (scripts, Jobs); on a terminal spiredb asks")
}

// explicit refuses a dangerous command whose target would come from the
// environment ($SPIREDB_DSN, PG*, $SPIREDB_STORE) rather than a flag on
// its own command line: a fence or a prune must never hit the live
// primary or the production store by default.
func explicit(cmd *cobra.Command, flag string) error {
	if !cmd.Flags().Changed(flag) {
		return usageErrorf("%s takes its target only from --%s (never from the environment): name it explicitly", cmd.CommandPath(), flag)
	}
	return nil
}

// confirm asks before the action: --yes, or "yes" typed on a terminal.
func (g *globals) confirm(cmd *cobra.Command, action string) error {
	if yes, _ := cmd.Flags().GetBool("yes"); yes {
		return nil
	}
	if !stdinIsTerminal() {
		return usageErrorf("%s: not on a terminal, so pass --yes to confirm", action)
	}
	fmt.Fprintf(g.stderr, "%s\nType yes to go on: ", action)
	line, _ := bufio.NewReader(stdin).ReadString('\n')
	if strings.TrimSpace(line) != "yes" {
		return usageErrorf("%s: not confirmed", action)
	}
	return nil
}
