package reliability_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embedraft/embedraft/internal/chaos"
)

// fetchBackup saves GET /raft/api/backup of n into a file.
func fetchBackup(t *testing.T, n *chaos.Node) string {
	t.Helper()
	resp, err := http.Get(n.URL() + "/raft/api/backup")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("backup from node %d: %d %v", n.Index, resp.StatusCode, err)
	}
	file := filepath.Join(t.TempDir(), "cluster.backup")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// The demo's -restore with -peers: three demo processes with empty data
// directories, each given the same backup and -peers, come up as a new
// cluster holding the backup; the same command again restarts them from
// their WAL, and another backup file is refused.
func TestDemoRestorePeers(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	c := chaos.NewCluster(t, chaos.Options{Bin: demoBin})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const keys = 100
	for i := range keys {
		n := c.Nodes[i%len(c.Nodes)]
		code, body, err := n.Post(ctx, "/raft/api/set", map[string]string{"key": fmt.Sprintf("k%03d", i), "value": "v"})
		if err != nil || code != http.StatusOK {
			t.Fatalf("write %d via node %d: %d %v %s", i, n.Index, code, err, body)
		}
	}
	old, err := c.Nodes[0].Status(ctx)
	must(t, err)
	file := fetchBackup(t, c.Nodes[1])
	for _, n := range c.Nodes {
		must(t, n.Stop())
		must(t, n.Wipe())
	}
	args := func(n *chaos.Node, backup string) []string {
		return append(c.StaticArgs(n, c.Nodes), "-restore", backup)
	}
	for _, n := range c.Nodes {
		must(t, n.Start(args(n, file)...))
	}
	conv, err := c.WaitConverged(30 * time.Second)
	must(t, err)
	if len(conv.State) != keys {
		t.Fatalf("restored cluster holds %d keys, want %d", len(conv.State), keys)
	}
	st, err := c.Nodes[2].Status(ctx)
	must(t, err)
	if st.ClusterID == old.ClusterID || st.Mode != "cluster" {
		t.Fatalf("restored status %+v, old cluster %s", st, old.ClusterID)
	}
	if _, err := c.WaitLeader(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	code, body, err := c.Nodes[2].Post(ctx, "/raft/api/set", map[string]string{"key": "after", "value": "restore"})
	if err != nil || code != http.StatusOK {
		t.Fatalf("write after restore: %d %v %s", code, err, body)
	}

	// The same command again: a restart from the WAL.
	for _, n := range c.Nodes {
		must(t, n.Stop())
		must(t, n.Restart())
	}
	if conv, err = c.WaitConverged(30 * time.Second); err != nil || len(conv.State) != keys+1 || conv.State["after"] != "restore" {
		t.Fatalf("after restarting with the same flags: %d keys (%v)", len(conv.State), err)
	}

	// Another backup file on a restored data directory is refused.
	other := fetchBackup(t, c.Nodes[0])
	n := c.Nodes[0]
	must(t, n.Stop())
	ex, err := n.ExpectExit(20*time.Second, args(n, other)...)
	must(t, err)
	if ex.Code == 0 || !strings.Contains(ex.Stderr, "restored from another backup") {
		t.Fatalf("restart with another backup: exit %d, stderr %s", ex.Code, ex.Stderr)
	}
	must(t, n.Start(args(n, file)...))
	if conv, err = c.WaitConverged(30 * time.Second); err != nil || len(conv.State) != keys+1 {
		t.Fatalf("after the refused restart: %d keys (%v)", len(conv.State), err)
	}
	for _, p := range c.LogProblems() {
		t.Error(p)
	}
}
