package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/spiredb/spiredb/backup"
)

// keyFlags name the age keys of client-side encryption: recipients (public
// keys, or files of them) to encrypt to, identity files to decrypt with.
// Identities are read from files only, so that no secret is ever on a
// command line; the files' names may appear in output, never their content.
type keyFlags struct {
	recipients []string
	identities []string
}

func (k *keyFlags) registerRecipients(fs *pflag.FlagSet) {
	fs.StringArrayVar(&k.recipients, "recipient", nil,
		"encrypt to this age public key (age1…), or to every key in this file; repeatable")
}

func (k *keyFlags) registerIdentities(fs *pflag.FlagSet) {
	fs.StringArrayVar(&k.identities, "identity", nil,
		"age identity file (AGE-SECRET-KEY-1… lines) that opens encrypted backups; repeatable (default $SPIREDB_IDENTITY_FILE)")
}

// keys parses the flags. An invalid recipient or an unreadable identity is
// a usage error naming the flag's value (a file name or a public key).
func (k *keyFlags) keys() (backup.Keys, error) {
	var out backup.Keys
	rs, err := backup.ParseRecipients(k.recipients)
	if err != nil {
		return out, usageErrorf("--recipient: %w", err)
	}
	out.Recipients = rs
	files := k.identityFiles()
	ids, err := backup.ReadIdentities(files)
	if err != nil {
		return out, usageErrorf("--identity: %w", err)
	}
	out.Identities = ids
	return out, nil
}

func (k *keyFlags) identityFiles() []string {
	if len(k.identities) > 0 {
		return k.identities
	}
	if f := os.Getenv("SPIREDB_IDENTITY_FILE"); f != "" {
		return []string{f}
	}
	return nil
}

// fetchArgs are the identity arguments a restore_command needs: absolute,
// since PostgreSQL runs it in the data directory.
func (k *keyFlags) fetchArgs() []string {
	var args []string
	for _, f := range k.identityFiles() {
		if abs, err := filepath.Abs(f); err == nil {
			f = abs
		}
		args = append(args, "--identity", f)
	}
	return args
}
