package embedraft_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// restoreOpt makes a one-member cluster from the backup at file.
func restoreOpt(file string) tc.Option {
	return func(cfg *embedraft.Config) { cfg.Cluster, cfg.Restore = true, file }
}

// writeBackup takes a backup with Node.Backup into a file.
func writeBackup(t *testing.T, n *embedraft.Node) (string, embedraft.BackupInfo) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "state.backup")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := n.Backup(ctx, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	return file, info
}

// TestBackupUnderWritesRestores takes a backup from a follower while
// writers run, restores it into a new one-member cluster and checks the
// restored state: every write acknowledged before Backup was called is
// there, every key there was written with that value, and each writer's
// keys form a prefix of its sequence (its writes are sequential, so a later
// one is committed after an earlier one).
func TestBackupUnderWritesRestores(t *testing.T) {
	// Frequent snapshots: the follower compacts its log while backing up.
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.SnapshotCount = 50 })
	follower := c.Followers()[0]

	const writers = 4
	type ack struct {
		seq int
		at  time.Time
	}
	var (
		mu    sync.Mutex
		acks  = make([][]ack, writers)
		stop  = make(chan struct{})
		wg    sync.WaitGroup
		value = func(w, i int) string { return fmt.Sprintf("v%d-%d", w, i) }
		key   = func(w, i int) string { return fmt.Sprintf("w%d-%06d", w, i) }
	)
	for w := range writers {
		wg.Add(1)
		go func() { // exits when stop is closed
			defer wg.Done()
			m := c.Members[w%len(c.Members)]
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := c.Set(m, key(w, i), value(w, i))
				if err != nil || code != http.StatusOK {
					// Outcome unknown: the writer stops, so its keys
					// still form a sequence with at most this one extra.
					t.Logf("writer %d: write %d: %d %v %s", w, i, code, err, body)
					return
				}
				mu.Lock()
				acks[w] = append(acks[w], ack{seq: i, at: time.Now()})
				mu.Unlock()
			}
		}()
	}
	// Let some writes through, then back up mid-way.
	tc.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for w := range writers {
			if len(acks[w]) < 20 {
				return fmt.Errorf("writer %d has %d acks", w, len(acks[w]))
			}
		}
		return nil
	})
	started := time.Now()
	file, info := writeBackup(t, follower.Node)
	took := time.Since(started)
	// Keep writing after the backup, so that it is really mid-way, then stop.
	mu.Lock()
	after := make([]int, writers)
	for w := range writers {
		after[w] = len(acks[w]) + 10
	}
	mu.Unlock()
	tc.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for w := range writers {
			if len(acks[w]) < after[w] {
				return fmt.Errorf("writer %d has %d acks, waiting for %d", w, len(acks[w]), after[w])
			}
		}
		return nil
	})
	close(stop)
	wg.Wait()
	t.Logf("backup at index %d, %d bytes, took %v", info.Index, info.Bytes, took)

	st := follower.Node.Status()
	if info.ClusterID != st.ClusterID || info.NodeID != follower.ID || info.Mode != embedraft.ModeCluster ||
		info.Index == 0 || info.Term == 0 {
		t.Fatalf("backup info %+v, follower status %+v", info, st)
	}

	r := tc.NewSingle(t, restoreOpt(file))
	rm := r.Members[0]
	r.WaitLeader(10 * time.Second)
	got := rm.Store.Snapshot()

	mu.Lock()
	defer mu.Unlock()
	total := 0
	for w := range writers {
		var before int // acknowledged before Backup was called
		for _, a := range acks[w] {
			if a.at.Before(started) {
				before = a.seq + 1
			}
		}
		n := 0
		for ; ; n++ {
			if _, ok := got[key(w, n)]; !ok {
				break
			}
		}
		if n < before {
			t.Errorf("writer %d: restored %d keys, but %d were acknowledged before the backup", w, n, before)
		}
		if max := len(acks[w]) + 1; n > max {
			t.Errorf("writer %d: restored %d keys, only %d were written", w, n, max)
		}
		total += n
	}
	for k, v := range got {
		var w, i int
		if _, err := fmt.Sscanf(k, "w%d-%d", &w, &i); err != nil || w < 0 || w >= writers || v != value(w, i) {
			t.Errorf("restored key %q=%q was never written", k, v)
			continue
		}
		if i > 0 {
			if _, ok := got[key(w, i-1)]; !ok {
				t.Errorf("restored %s without %s: not a prefix", k, key(w, i-1))
			}
		}
	}
	if total != len(got) {
		t.Errorf("restored %d keys, %d in writer prefixes", len(got), total)
	}
	acked := 0
	for w := range writers {
		acked += len(acks[w])
	}
	if total >= acked {
		t.Errorf("restored %d keys of %d acknowledged: the backup was not taken mid-way", total, acked)
	}
	t.Logf("restored %d keys of %d acknowledged", len(got), acked)

	t.Run("NewClusterOneMemberJoinable", func(t *testing.T) {
		rst := rm.Node.Status()
		if rst.Mode != embedraft.ModeCluster || rst.ClusterID == "0" || rst.ClusterID == info.ClusterID {
			t.Fatalf("restored status %+v, backup cluster %s", rst, info.ClusterID)
		}
		if pl := rm.Node.Peers(); len(pl.Peers) != 1 || pl.Peers["1"].Addr != rm.URL {
			t.Fatalf("restored peers %+v", pl)
		}
		j := r.Join(rm)
		r.MustSet(rm, "after", "restore")
		state := r.WaitConverged(20 * time.Second)
		if v := state["after"]; v != "restore" || len(state) != len(got)+1 {
			t.Fatalf("converged state has %d keys (after=%q), want %d", len(state), v, len(got)+1)
		}
		if jst := j.Node.Status(); jst.ClusterID != rst.ClusterID {
			t.Fatalf("joiner in cluster %s, restored one is %s", jst.ClusterID, rst.ClusterID)
		}
	})

	t.Run("RestartWithSameRestore", func(t *testing.T) {
		// The same command again restarts from the WAL; another backup
		// is refused.
		rm.Stop()
		if err := rm.TryRestart(); err != nil {
			t.Fatalf("restart with the same Restore: %v", err)
		}
		r.WaitLeader(10 * time.Second)
		if v, _ := rm.Store.Get("after"); v != "restore" {
			t.Fatalf("restarted restored node lost a write")
		}
		other, _ := writeBackup(t, rm.Node)
		rm.Stop()
		err := rm.TryRestart(func(cfg *embedraft.Config) { cfg.Restore = other })
		if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), "restored from another backup") {
			t.Fatalf("restart with another backup: %v", err)
		}
		if err := rm.TryRestart(func(cfg *embedraft.Config) { cfg.Restore = "" }); err != nil {
			t.Fatalf("restart without Restore: %v", err)
		}
		r.WaitLeader(10 * time.Second)
		if v, _ := rm.Store.Get("after"); v != "restore" {
			t.Fatalf("restarted restored node lost a write")
		}
	})
}

// TestBackupRoute takes a backup over HTTP from a standalone node with a
// token, and restores it.
func TestBackupRoute(t *testing.T) {
	c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Token = "tk" })
	m := c.Members[0]
	c.MustSet(m, "a", "1")
	c.MustSet(m, "b", "2")

	get := func(token string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, m.URL+"/raft/api/backup", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	t.Run("ErrUnauthorized", func(t *testing.T) {
		for _, tok := range []string{"", "wrong"} {
			resp := get(tok)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), `"unauthorized"`) {
				t.Errorf("token %q: %d %s", tok, resp.StatusCode, body)
			}
		}
	})
	t.Run("OK", func(t *testing.T) {
		resp := get("tk")
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("backup: %d %v %s", resp.StatusCode, err, body)
		}
		h := resp.Header
		if h.Get("Content-Type") != "application/octet-stream" ||
			h.Get("Content-Disposition") != "attachment; filename=embedraft-0-0.backup" ||
			h.Get("X-Embedraft-Index") != "0" || h.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("headers %v (%d bytes)", h, len(body))
		}
		info, err := embedraft.VerifyBackup(bytes.NewReader(body))
		if err != nil || info.Mode != embedraft.ModeStandalone || info.ClusterID != "0" || info.Bytes != int64(len(body)) {
			t.Fatalf("verify: %+v %v", info, err)
		}
		file := filepath.Join(t.TempDir(), "standalone.backup")
		if err := os.WriteFile(file, body, 0o600); err != nil {
			t.Fatal(err)
		}
		r := tc.NewSingle(t, restoreOpt(file))
		r.WaitLeader(10 * time.Second)
		if got := r.Members[0].Store.Snapshot(); len(got) != 2 || got["a"] != "1" || got["b"] != "2" {
			t.Fatalf("restored %v", got)
		}
	})
}

// TestRestoreRefused checks every refusal: a corrupted, truncated or
// missing file, a data dir that already holds a WAL, and configurations
// that cannot restore. Nothing is created in the data dir.
func TestRestoreRefused(t *testing.T) {
	c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
	m := c.Members[0]
	c.WaitLeader(10 * time.Second)
	c.MustSet(m, "k", "v")
	file, _ := writeBackup(t, m.Node)
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	variant := func(name string, b []byte) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	newNode := func(cfg embedraft.Config) error {
		if cfg.AdvertiseURL == "" {
			cfg.AdvertiseURL = "http://127.0.0.1:1"
		}
		n, err := embedraft.New(cfg, kvstore.New())
		if err == nil {
			_ = n.Close(context.Background())
		}
		return err
	}
	for _, tt := range []struct {
		name string
		cfg  embedraft.Config
		want string
	}{
		{"ErrCorrupted", embedraft.Config{Cluster: true, Restore: variant("flipped", flipped)}, "checksum mismatch"},
		{"ErrTruncated", embedraft.Config{Cluster: true, Restore: variant("cut", good[:len(good)-7])}, "checksum mismatch"},
		{"ErrTooShort", embedraft.Config{Cluster: true, Restore: variant("short", good[:20])}, "truncated"},
		{"ErrNotBackup", embedraft.Config{Cluster: true, Restore: variant("json", []byte(`{"k":"v"}`))}, "bad magic"},
		{"ErrMissing", embedraft.Config{Cluster: true, Restore: filepath.Join(t.TempDir(), "none")}, "no such file"},
		{"ErrNoClusterNorPeers", embedraft.Config{Restore: file}, "Restore needs Cluster"},
		{"ErrForceNewCluster", embedraft.Config{Cluster: true, ForceNewCluster: true, Restore: file}, "exclusive"},
		{"ErrPeersAdvertise", embedraft.Config{ID: 1, AdvertiseURL: "http://127.0.0.1:2",
			Peers: map[uint64]string{1: "http://127.0.0.1:1"}, Restore: file}, "differs from Peers"},
		{"ErrJoin", embedraft.Config{Cluster: true, Join: "http://127.0.0.1:2", Restore: file}, "exclusive"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DataDir = t.TempDir()
			err := newNode(tt.cfg)
			if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(tt.cfg.DataDir); len(entries) != 0 {
				t.Errorf("refused restore left %v in the data dir", entries)
			}
		})
	}
	t.Run("ErrDataDirHasWAL", func(t *testing.T) {
		m.Stop()
		err := m.TryRestart(restoreOpt(file))
		if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), "already holds a WAL") {
			t.Fatalf("restore over a WAL: %v", err)
		}
		m.Restart()
		if v, _ := m.Store.Get("k"); v != "v" {
			t.Fatalf("refused restore changed the node's state")
		}
	})
}
