package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spiredb/spiredb/internal/spiretest"
)

// updateDelete updates and deletes one of the entries "entry create" made.
func updateDelete(ctx context.Context, srv *spiretest.Server) error {
	out, err := srv.CLI(ctx, "entry", "show", "-output", "json", "-spiffeID", "spiffe://"+spiretest.TrustDomain+"/ns-2/sa-2/w-2-labels")
	if err != nil {
		return err
	}
	var doc struct {
		Entries []struct {
			ID       string `json:"id"`
			ParentID struct {
				TrustDomain string `json:"trust_domain"`
				Path        string `json:"path"`
			} `json:"parent_id"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("entry show: %w", err)
	}
	if len(doc.Entries) == 0 {
		return errors.New("entry show: the created entry is not there")
	}
	e := doc.Entries[0]
	parent := "spiffe://" + e.ParentID.TrustDomain + e.ParentID.Path
	if _, err := srv.CLI(ctx, "entry", "update", "-entryID", e.ID, "-parentID", parent,
		"-spiffeID", "spiffe://"+spiretest.TrustDomain+"/ns-2/sa-2/w-2-labels-updated",
		"-selector", "k8s:ns:updated", "-selector", "k8s:sa:updated", "-dns", "updated.example"); err != nil {
		return err
	}
	_, err = srv.CLI(ctx, "entry", "delete", "-entryID", e.ID)
	return err
}

// agentShowEvictBan shows, evicts and bans fixture agents, and purges
// expired ones (none, with the default -expiredFor).
func agentShowEvictBan(ctx context.Context, srv *spiretest.Server) error {
	out, err := srv.CLI(ctx, "agent", "list", "-output", "json")
	if err != nil {
		return err
	}
	var doc struct {
		Agents []struct {
			ID struct {
				TrustDomain string `json:"trust_domain"`
				Path        string `json:"path"`
			} `json:"id"`
		} `json:"agents"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("agent list: %w", err)
	}
	if len(doc.Agents) < 3 {
		return fmt.Errorf("agent list: %d agents, want the fixture's", len(doc.Agents))
	}
	id := func(i int) string { return "spiffe://" + doc.Agents[i].ID.TrustDomain + doc.Agents[i].ID.Path }
	for _, args := range [][]string{
		{"agent", "show", "-spiffeID", id(0)},
		{"agent", "evict", "-spiffeID", id(1)},
		{"agent", "ban", "-spiffeID", id(2)},
		{"agent", "purge", "-dryRun"},
		{"agent", "purge"},
	} {
		if _, err := srv.CLI(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}
