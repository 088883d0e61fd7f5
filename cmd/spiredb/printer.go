package main

import (
	"encoding/json"
	"fmt"
	"io"
)

// printer is the one way commands write their result: -o text or -o json.
type printer struct {
	format string
	w      io.Writer
}

func newPrinter(format string, w io.Writer) (*printer, error) {
	switch format {
	case "text", "json", "conf", "sql", "pgbouncer":
		return &printer{format: format, w: w}, nil
	}
	return nil, usageErrorf("invalid --output %q: want text or json (conf, sql and pgbouncer for tune recommend)", format)
}

// print writes v as indented JSON, or through text for -o text.
func (p *printer) print(v any, text func(w io.Writer) error) error {
	switch p.format {
	case "conf", "sql", "pgbouncer":
		return usageErrorf("-o %s is only for tune recommend", p.format)
	}
	if p.format == "json" {
		enc := json.NewEncoder(p.w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	if text == nil {
		_, err := fmt.Fprintln(p.w, v)
		return err
	}
	return text(p.w)
}
