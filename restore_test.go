package embedraft_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// restorePeersOpt starts every member of a static cluster from the backup
// at file (Config.Restore with Peers).
func restorePeersOpt(file string) tc.Option {
	return func(cfg *embedraft.Config) { cfg.Restore = file }
}

// checkHas fails unless state holds every key of want with its value.
func checkHas(t *testing.T, who string, state, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got, ok := state[k]; !ok || got != v {
			t.Fatalf("%s: %s=%q (present %v), want %q", who, k, got, ok, v)
		}
	}
}

// TestRestoreStaticPeers backs up a 3-member cluster under writes and
// restores it into three new data directories with the same backup file and
// the same Peers (as etcdutl snapshot restore does): a new cluster with its
// own id, holding every write acknowledged before the backup and the
// Idempotency-Key table, that keeps its state across restarts (with or
// without Restore), refuses another backup on its WAL, refuses a wiped
// member, and never talks to a member restored from another backup.
func TestRestoreStaticPeers(t *testing.T) {
	src := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.SnapshotCount = 50 })
	// A keyed add before the backup: its key must be remembered after the
	// restore, so a retry is not applied twice.
	if a := setWithKey(t, src, src.Members[0], "add-1", addBody("ctr", 5)); a.Status != http.StatusOK {
		t.Fatalf("keyed add: %+v", a)
	}
	var (
		mu      sync.Mutex
		acked   = map[string]string{} // acknowledged before the backup started
		started time.Time
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w, m := range src.Members {
		wg.Add(1)
		go func() { // exits when stop is closed, or on a failed write
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprintf("w%d-%05d", w, i), fmt.Sprintf("v%d", i)
				if code, body, err := src.Set(m, k, v); err != nil || code != http.StatusOK {
					t.Logf("writer %d: %d %v %s", w, code, err, body)
					return
				}
				mu.Lock()
				if started.IsZero() {
					acked[k] = v
				}
				mu.Unlock()
			}
		}()
	}
	tc.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 150 {
			return fmt.Errorf("%d writes acknowledged", len(acked))
		}
		return nil
	})
	mu.Lock()
	started = time.Now()
	before := len(acked)
	mu.Unlock()
	file, info := writeBackup(t, src.Followers()[0].Node)
	close(stop)
	wg.Wait()
	t.Logf("backup at index %d (%d bytes), %d writes acknowledged before it", info.Index, info.Bytes, before)
	srcCluster := src.Members[0].Node.Status().ClusterID
	for _, m := range src.Members {
		m.Stop() // the old cluster is gone
	}

	c := tc.NewStatic(t, 3, restorePeersOpt(file))
	cid := c.Members[0].Node.Status().ClusterID
	for _, m := range c.Members {
		st := m.Node.Status()
		if st.Mode != embedraft.ModeCluster || st.ClusterID != cid {
			t.Fatalf("member %d: %+v, member 1 is in cluster %s", m.ID, st, cid)
		}
		if pl := m.Node.Peers(); len(pl.Peers) != 3 {
			t.Fatalf("member %d peers %+v", m.ID, pl)
		}
	}
	if cid == srcCluster || cid == "0" {
		t.Fatalf("restored cluster id %s, backed-up cluster %s", cid, srcCluster)
	}
	state := c.WaitConverged(20 * time.Second)
	for _, m := range c.Members {
		checkHas(t, fmt.Sprintf("restored member %d", m.ID), m.Store.Snapshot(), acked)
	}
	if state["ctr"] != "5" {
		t.Fatalf("ctr=%q after restore, want 5", state["ctr"])
	}

	t.Run("IdempotencyKeysRestored", func(t *testing.T) {
		for _, m := range c.Members { // the leader, and followers forwarding
			a := setWithKey(t, c, m, "add-1", addBody("ctr", 5))
			if a.Status != http.StatusOK || a.Data != valueJSON("ctr", "5") {
				t.Fatalf("retry via member %d: %+v", m.ID, a)
			}
		}
		if v := converged(c, "ctr"); v != "5" {
			t.Fatalf("ctr=%q after retries, want 5 (applied again)", v)
		}
	})

	t.Run("NewWrites", func(t *testing.T) {
		for _, m := range c.Members {
			c.MustSet(m, fmt.Sprintf("after-%d", m.ID), "x")
		}
		state = c.WaitConverged(20 * time.Second)
		if len(state) != len(c.Members[0].Store.Snapshot()) || state["after-3"] != "x" {
			t.Fatalf("state after new writes: %d keys", len(state))
		}
	})

	t.Run("Restart", func(t *testing.T) {
		for _, m := range c.Members { // same flags: Restore and Peers
			m.Stop()
			m.Restart()
			c.WaitLeader(10 * time.Second)
		}
		for _, m := range c.Members { // without Restore
			m.Stop()
			if err := m.TryRestart(func(cfg *embedraft.Config) { cfg.Restore = "" }); err != nil {
				t.Fatalf("restart member %d without Restore: %v", m.ID, err)
			}
			c.WaitLeader(10 * time.Second)
		}
		c.MustSet(c.Members[1], "after-restarts", "y")
		got := c.WaitConverged(20 * time.Second)
		state["after-restarts"] = "y"
		checkHas(t, "after restarts", got, state)
		if len(got) != len(state) {
			t.Fatalf("after restarts: %d keys, want %d", len(got), len(state))
		}
		if st := c.Members[0].Node.Status(); st.ClusterID != cid {
			t.Fatalf("cluster id %s after restarts, was %s", st.ClusterID, cid)
		}
	})

	other, _ := writeBackup(t, c.Members[0].Node) // a different backup

	t.Run("ErrOtherBackupOnWAL", func(t *testing.T) {
		m := c.Members[1]
		m.Stop()
		err := m.TryRestart(restorePeersOpt(other))
		if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), "restored from another backup") {
			t.Fatalf("restart with another backup: %v", err)
		}
		// The backup file deleted after the restore: the same command
		// still restarts the member.
		gone := filepath.Join(t.TempDir(), "deleted.backup")
		if err := m.TryRestart(restorePeersOpt(gone)); err != nil {
			t.Fatalf("restart with the backup file gone: %v", err)
		}
		c.WaitConverged(20 * time.Second)
	})

	t.Run("ErrWipedMember", func(t *testing.T) {
		c.WaitStarted()
		m := c.Members[2]
		m.Stop()
		m.Wipe()
		err := m.TryRestart()
		if !errors.Is(err, embedraft.ErrMemberDataLost) {
			t.Fatalf("wiped member restarted with the same flags: %v", err)
		}
		if _, err := os.Stat(filepath.Join(m.Dir, "wal")); !os.IsNotExist(err) {
			t.Fatalf("refused restore left a WAL: %v", err)
		}
	})

	t.Run("OtherBackupStaysApart", func(t *testing.T) {
		// Member 3's slot (stopped, wiped) restored from another file: its
		// cluster id differs, so the others never talk to it.
		m := c.Members[2]
		m.Wipe()
		if err := m.TryRestart(restorePeersOpt(other)); err != nil {
			t.Logf("member restored from another backup refused: %v", err)
			return
		}
		defer m.Stop()
		if st := m.Node.Status(); st.ClusterID == cid {
			t.Fatalf("member restored from another backup joined cluster %s", cid)
		}
		c.MustSet(c.Members[0], "apart", "z")
		tc.Eventually(t, 10*time.Second, func() error {
			for _, o := range c.Members[:2] {
				if v, _ := o.Store.Get("apart"); v != "z" {
					return fmt.Errorf("member %d has not applied the write", o.ID)
				}
			}
			return nil
		})
		if v, ok := m.Store.Get("apart"); ok {
			t.Fatalf("the apart member got the cluster's write (%q)", v)
		}
		if st := m.Node.Status(); st.Leader != 0 && st.Leader != m.ID {
			t.Fatalf("the apart member follows %d", st.Leader)
		}
		for _, o := range c.Members[:2] {
			if got := o.Store.Snapshot(); got["apart"] != "z" || len(got) != len(state)+1 {
				t.Fatalf("member %d has %d keys, want %d", o.ID, len(got), len(state)+1)
			}
		}
	})
}
