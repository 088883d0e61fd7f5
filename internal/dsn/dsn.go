// Package dsn redacts secrets from PostgreSQL connection strings and from any
// text that may carry one (log lines, error messages).
//
// Every DSN that spiredb prints or logs goes through Redact; every log record
// goes through RedactText by way of the logging handler in internal/logging.
package dsn

import (
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Mask replaces a secret.
const Mask = "xxxxx"

var (
	// scheme://user:password@host — the password ends at the last '@' before
	// the host part; a password may itself hold '@' when badly encoded, so
	// match greedily up to the last '@' that precedes a host character.
	// An unencoded password may hold / ? # @ too: mask up to the last '@'
	// of the whitespace-delimited token (masking too much is safe).
	urlUserinfo = regexp.MustCompile(`(?i)([a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)(\S*)(@)`)
	// key=value form: password = 'quoted \' value' or password=bare
	kvPassword = regexp.MustCompile(`(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|[^\s&'"\\])*)`)
	// S3/AWS style secrets that may appear in URLs or flags.
	awsSecret = regexp.MustCompile(`(?i)(\b(?:aws_secret_access_key|secret_access_key|secret[_-]?key|aws_session_token|x-amz-security-token|x-amz-signature)\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&,]*)`)
	// SQL's password literal (a program's error quoting its command:
	// PASSWORD '…', OPTIONS (password '…'))
	sqlPassword = regexp.MustCompile(`(?i)(\bpassword\s+)((?:E|U&)?'(?:[^'\\]|''|\\.)*'?)`)
	// an age identity (backup encryption): AGE-SECRET-KEY-1 and bech32
	ageSecret = regexp.MustCompile(`(?i)(AGE-SECRET-KEY-)[0-9a-z]+`)
)

// Redact returns dsn with its password masked. It accepts URL
// (postgres://user:pass@host/db?password=...) and key=value
// (host=... password='...') forms; anything else is returned with any
// password-looking part masked.
func Redact(dsn string) string {
	// the text's own shape first: an unencoded password may hold / ? # @,
	// which a URL parser takes for the host, path, query or fragment
	red := RedactText(dsn)
	if strings.Contains(red, "://") {
		if u, err := url.Parse(red); err == nil && u.Scheme != "" {
			if _, ok := u.User.Password(); ok {
				u.User = url.UserPassword(u.User.Username(), Mask)
			}
			q := u.Query()
			changed := false
			for k := range q {
				if strings.EqualFold(k, "password") || strings.EqualFold(k, "sslpassword") {
					q.Set(k, Mask)
					changed = true
				}
			}
			if changed {
				u.RawQuery = q.Encode()
			}
			return RedactText(u.String())
		}
	}
	return red
}

// MinSecretLen is the shortest remembered secret masked wherever it
// appears; shorter ones are masked only where their place shows (a URL's
// userinfo, password=...), since masking every "ab" would garble output.
const MinSecretLen = 4

var (
	secretsMu sync.RWMutex
	secrets   []string // longest first
)

// Remember registers secrets (passwords, keys) that RedactText masks
// wherever they appear, in any of the encodings they may be printed in:
// redaction through the parsed configuration, not only by the shape of
// the text around them.
func Remember(values ...string) {
	secretsMu.Lock()
	defer secretsMu.Unlock()
	for _, v := range values {
		for _, form := range []string{v, url.QueryEscape(v), url.PathEscape(v), strings.TrimPrefix(url.UserPassword("", v).String(), ":"),
			strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v), strings.ReplaceAll(v, `'`, `''`)} {
			if len(form) >= MinSecretLen && !slices.Contains(secrets, form) {
				secrets = append(secrets, form)
			}
		}
	}
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
}

// RememberDSN registers the secrets a connection string carries, as
// parsed and, for a URL, as written: an unencoded password holding @ / ?
// or # is not what a URL parser finds, but it must not be printed either.
func RememberDSN(s string) {
	if p, err := Parse(s); err == nil {
		Remember(p.Secrets()...)
	}
	Remember(rawURLPassword(s)...)
}

// Misread reports whether a URL's password, as written between the user's
// ':' and the last '@', differs from what the parser found (parsed): an
// unencoded @ / ? or # made the parser take part of the password for the
// host, database or query, which would then be printed and looked up.
func Misread(s, parsed string) bool {
	raw := rawURLPassword(s)
	return len(raw) > 0 && raw[len(raw)-1] != parsed
}

// rawURLPassword returns what stands between the user's ':' and the last
// '@' of a URL's first token, raw and percent-decoded.
func rawURLPassword(s string) []string {
	_, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil
	}
	if i := strings.IndexAny(rest, " \t\n"); i >= 0 {
		rest = rest[:i]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return nil
	}
	_, pw, ok := strings.Cut(rest[:at], ":")
	if !ok || pw == "" {
		return nil
	}
	out := []string{pw}
	if dec, err := url.PathUnescape(pw); err == nil && dec != pw {
		out = append(out, dec)
	}
	return out
}

// RedactText masks every password-looking part of free text: remembered
// secrets, URL userinfo passwords, password=... pairs, AWS secret keys and
// age identities.
// It is applied to every log record and to every error message the CLI
// prints.
func RedactText(s string) string {
	if s == "" {
		return s
	}
	secretsMu.RLock()
	for _, v := range secrets {
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, Mask)
		}
	}
	secretsMu.RUnlock()
	lower := strings.ToLower(s)
	if strings.Contains(lower, "://") && strings.Contains(s, "@") {
		s = urlUserinfo.ReplaceAllString(s, "${1}"+Mask+"${3}")
	}
	if strings.Contains(lower, "password") {
		s = kvPassword.ReplaceAllString(s, "${1}"+Mask)
		s = sqlPassword.ReplaceAllStringFunc(s, func(m string) string {
			if strings.HasSuffix(m, "'*****'") { // masked already (statement texts)
				return m
			}
			return sqlPassword.ReplaceAllString(m, "${1}'"+Mask+"'")
		})
	}
	if strings.Contains(lower, "secret") || strings.Contains(lower, "x-amz-") || strings.Contains(lower, "session_token") {
		s = awsSecret.ReplaceAllString(s, "${1}"+Mask)
	}
	if strings.Contains(lower, "age-secret-key-") {
		s = ageSecret.ReplaceAllString(s, "${1}"+Mask)
	}
	return s
}
