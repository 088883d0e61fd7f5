package dsn

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Params are a connection string's libpq keywords and values, parsed from
// either form (postgres://user:pass@host:port/db?k=v or k=v k2='v 2').
// spiredb derives every connection string it hands on (to pg_dump,
// pg_restore, pg_basebackup) from Params, never by editing the text.
type Params map[string]string

// secretKeys are the keywords whose values are secrets.
var secretKeys = []string{"password", "sslpassword"}

// Parse reads a libpq connection string. An empty string gives empty
// Params (libpq then uses the PG* environment variables).
func Parse(s string) (Params, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Params{}, nil
	}
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return parseURL(s)
	}
	return parseKV(s)
}

func parseURL(s string) (Params, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url's error quotes the input: never show it
		return nil, errors.New("not a valid postgres:// URL (a password with / ? # @ or : must be percent-encoded)")
	}
	p := Params{}
	if u.User != nil {
		if name := u.User.Username(); name != "" {
			p["user"] = name
		}
		if pw, ok := u.User.Password(); ok {
			p["password"] = pw
		}
	}
	var hosts, ports []string
	for _, hp := range strings.Split(u.Host, ",") {
		if hp == "" {
			continue
		}
		h, port := hp, ""
		if i := strings.LastIndex(hp, ":"); i >= 0 && !strings.HasSuffix(hp, "]") {
			h, port = hp[:i], hp[i+1:]
		}
		hosts = append(hosts, strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
		ports = append(ports, port)
	}
	if len(hosts) > 0 {
		p["host"] = strings.Join(hosts, ",")
	}
	if strings.Join(ports, "") != "" {
		p["port"] = strings.Join(ports, ",")
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		p["dbname"] = db
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, errors.New("not a valid postgres:// URL: bad query parameters")
	}
	for k, vs := range q {
		// a query parameter overrides the URL's parts, as in libpq
		p[k] = vs[len(vs)-1]
	}
	return p, nil
}

func parseKV(s string) (Params, error) {
	p := Params{}
	i := 0
	skipSpace := func() {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(s) {
			return p, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		skipSpace()
		if i >= len(s) || s[i] != '=' || key == "" {
			return nil, fmt.Errorf("invalid connection string: missing \"=\" after %q", clipKey(key))
		}
		i++
		skipSpace()
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				i++
				if c == '\'' {
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return nil, fmt.Errorf("invalid connection string: unterminated quoted value of %q", clipKey(key))
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		p[key] = val.String()
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func clipKey(k string) string {
	if len(k) > 32 {
		return k[:32] + "…"
	}
	return k
}

// String renders the params as a key=value connection string, every
// value quoted, keys sorted.
func (p Params) String() string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteString("=")
		b.WriteString(QuoteValue(p[k]))
	}
	return b.String()
}

// QuoteValue quotes a connection string value: 'it”s' in libpq's
// backslash form.
func QuoteValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Clone copies the params.
func (p Params) Clone() Params {
	c := make(Params, len(p))
	for k, v := range p {
		c[k] = v
	}
	return c
}

// WithoutSecrets returns a copy without password and sslpassword.
func (p Params) WithoutSecrets() Params {
	c := p.Clone()
	for _, k := range secretKeys {
		delete(c, k)
	}
	return c
}

// Secrets returns the secret values the params carry (password,
// sslpassword), for redaction.
func (p Params) Secrets() []string {
	var out []string
	for _, k := range secretKeys {
		if v := p[k]; v != "" {
			out = append(out, v)
		}
	}
	return out
}
