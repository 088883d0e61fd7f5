// Package dsn redacts secrets from PostgreSQL connection strings and from any
// text that may carry one (log lines, error messages).
//
// Every DSN that spiredb prints or logs goes through Redact; every log record
// goes through RedactText by way of the logging handler in internal/logging.
package dsn

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces a secret.
const Mask = "xxxxx"

var (
	// scheme://user:password@host — the password ends at the last '@' before
	// the host part; a password may itself hold '@' when badly encoded, so
	// match greedily up to the last '@' that precedes a host character.
	urlUserinfo = regexp.MustCompile(`(?i)([a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)([^\s/?#]*)(@)`)
	// key=value form: password = 'quoted \' value' or password=bare
	kvPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)`)
	// S3/AWS style secrets that may appear in URLs or flags.
	awsSecret = regexp.MustCompile(`(?i)(\b(?:aws_secret_access_key|secret_access_key|secret[_-]?key|aws_session_token|x-amz-security-token|x-amz-signature)\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&,]*)`)
)

// Redact returns dsn with its password masked. It accepts URL
// (postgres://user:pass@host/db?password=...) and key=value
// (host=... password='...') forms; anything else is returned with any
// password-looking part masked.
func Redact(dsn string) string {
	if strings.Contains(dsn, "://") {
		if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
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
	return RedactText(dsn)
}

// RedactText masks every password-looking part of free text: URL userinfo
// passwords, password=... pairs and AWS secret keys. It is applied to every
// log record and to every error message the CLI prints.
func RedactText(s string) string {
	if s == "" {
		return s
	}
	lower := strings.ToLower(s)
	if strings.Contains(lower, "://") && strings.Contains(s, "@") {
		s = urlUserinfo.ReplaceAllString(s, "${1}"+Mask+"${3}")
	}
	if strings.Contains(lower, "password") {
		s = kvPassword.ReplaceAllString(s, "${1}"+Mask)
	}
	if strings.Contains(lower, "secret") || strings.Contains(lower, "x-amz-") || strings.Contains(lower, "session_token") {
		s = awsSecret.ReplaceAllString(s, "${1}"+Mask)
	}
	return s
}

// StripPassword returns dsn without its password, for handing to a libpq
// program on the command line (the password goes in PGPASSWORD instead).
func StripPassword(s string) string {
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err == nil && u.Scheme != "" {
			if u.User != nil {
				u.User = url.User(u.User.Username())
			}
			q := u.Query()
			if q.Has("password") {
				q.Del("password")
				u.RawQuery = q.Encode()
			}
			return u.String()
		}
	}
	return strings.TrimSpace(kvPassword.ReplaceAllString(s, ""))
}
