package embedraft_test

import (
	"context"
	"encoding/json"
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

// A write answered by a follower has been applied on that follower: the
// client reads its write there at once, from local state.
func TestClusterFollowerWriteIsAppliedBeforeAnswer(t *testing.T) {
	c := tc.NewStatic(t, 3)
	for i, m := range append(c.Followers(), c.WaitLeader(5*time.Second)) {
		for j := range 20 {
			key, val := fmt.Sprintf("k%d-%d", i, j), fmt.Sprintf("v%d", j)
			c.MustSet(m, key, val)
			if got, ok := m.Store.Get(key); !ok || got != val {
				t.Fatalf("member %d answered the write of %s before applying it (has %q, %v)", m.ID, key, got, ok)
			}
		}
	}
	state := c.WaitConverged(10 * time.Second)
	if len(state) != 60 {
		t.Fatalf("converged state has %d keys, want 60", len(state))
	}
}

// PreProcessData runs once per write, on the leader only.
func TestClusterPreProcessOnlyOnLeader(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(5 * time.Second)
	term := leader.Node.Status().Term
	const perNode = 15
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perNode {
				code, body, err := c.Set(m, fmt.Sprintf("m%d-%d", m.ID, j), "x")
				if err != nil || code != 200 {
					t.Errorf("set via %d: %d %v %s", m.ID, code, err, body)
				}
			}
		}()
	}
	wg.Wait()
	if leader.Node.Status().Term != term {
		t.Skip("leadership changed during the test; counts are not comparable")
	}
	for _, m := range c.Members {
		got := m.Store.PreProcessCount()
		want := int64(0)
		if m == leader {
			want = 3 * perNode
		}
		if got != want {
			t.Errorf("member %d ran PreProcessData %d times, want %d", m.ID, got, want)
		}
	}
}

// With the leader stopped, writes go on through the others, and nothing
// acknowledged before is lost.
func TestClusterLeaderStopped(t *testing.T) {
	c := tc.NewStatic(t, 3)
	old := c.WaitLeader(5 * time.Second)
	for i := range 10 {
		c.MustSet(c.Members[i%3], fmt.Sprintf("before%d", i), "1")
	}
	old.Stop()
	for i := range 10 {
		c.SetEventually(fmt.Sprintf("after%d", i), "2", 10*time.Second)
	}
	if nl := c.WaitLeader(5 * time.Second); nl == old {
		t.Fatal("stopped member is still leader")
	}
	state := c.WaitConverged(10 * time.Second)
	for i := range 10 {
		if state[fmt.Sprintf("before%d", i)] != "1" || state[fmt.Sprintf("after%d", i)] != "2" {
			t.Fatalf("acknowledged write %d lost: %v", i, state)
		}
	}
	old.Restart()
	if got := c.WaitConverged(10 * time.Second); len(got) != 20 {
		t.Fatalf("restarted old leader converged to %d keys, want 20", len(got))
	}
}

// A stopped follower restarts from its WAL and catches up on what it missed.
func TestClusterFollowerRestartCatchesUp(t *testing.T) {
	c := tc.NewStatic(t, 3)
	f := c.Followers()[0]
	c.MustSet(f, "a", "1")
	f.Stop()
	for i := range 20 {
		c.SetEventually(fmt.Sprintf("missed%d", i), "x", 5*time.Second)
	}
	f.Restart()
	if got, ok := f.Store.Get("a"); !ok || got != "1" {
		t.Fatalf("after restart, before catching up, the WAL replay lost a=1 (%q %v)", got, ok)
	}
	state := c.WaitConverged(10 * time.Second)
	if len(state) != 21 {
		t.Fatalf("state has %d keys, want 21", len(state))
	}
	if st := f.Node.Status(); st.Mode != embedraft.ModeCluster || st.ID != f.ID {
		t.Fatalf("restarted follower status %+v", st)
	}
}

// Every member stopped and restarted: every acknowledged write is there.
func TestClusterFullRestartKeepsAcknowledgedWrites(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.SnapshotCount = 25 })
	acked := map[string]string{}
	for i := range 60 {
		k, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
		c.MustSet(c.Members[i%3], k, v)
		acked[k] = v
	}
	before := c.Members[0].Node.Status()
	for _, m := range c.Members {
		m.Stop()
	}
	for _, m := range c.Members {
		m.Restart()
	}
	c.WaitLeader(10 * time.Second)
	state := c.WaitConverged(10 * time.Second)
	for k, v := range acked {
		if state[k] != v {
			t.Fatalf("acknowledged %s=%s lost after full restart (got %q)", k, v, state[k])
		}
	}
	after := c.Members[0].Node.Status()
	if after.ClusterID != before.ClusterID || after.ID != before.ID {
		t.Fatalf("identity changed across restart: %+v -> %+v", before, after)
	}
	if pl := c.Members[0].Node.Peers(); len(pl.Peers) != 3 {
		t.Fatalf("peer list after restart: %+v", pl)
	}
	c.MustSet(c.Members[1], "post-restart", "ok")
}

// A follower that missed more entries than the compaction window keeps
// catches up through a snapshot sent by rafthttp.
func TestClusterLaggingFollowerCatchesUpBySnapshot(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.SnapshotCount = 20
		cfg.CatchUpEntries = 5
	})
	f := c.Followers()[0]
	c.MustSet(f, "first", "1")
	f.Stop()
	for i := range 120 {
		c.SetEventually(fmt.Sprintf("k%d", i), "v", 5*time.Second)
	}
	resetsBefore := int64(0)
	f.Restart()
	resetsBefore = f.Store.ResetCount()
	state := c.WaitConverged(15 * time.Second)
	if len(state) != 121 {
		t.Fatalf("state has %d keys, want 121", len(state))
	}
	if f.Store.ResetCount() <= resetsBefore {
		t.Fatalf("lagging follower caught up without installing a snapshot (ResetSnap calls %d)", f.Store.ResetCount())
	}
	snaps, _ := filepath.Glob(filepath.Join(f.Dir, "snap", "*.snap"))
	if len(snaps) == 0 {
		t.Fatalf("no snapshot file saved on the follower")
	}
	// The follower came back knowing every peer.
	if pl := f.Node.Peers(); len(pl.Peers) != 3 {
		t.Fatalf("follower peers after snapshot: %+v", pl)
	}
}

// Bad input gets a 4xx with a clear message and changes nothing.
func TestClusterBadInput(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.MaxRequestBytes = 4096 })
	leader := c.WaitLeader(5 * time.Second)
	f := c.Followers()[0]
	c.MustSet(f, "seed", "1")
	c.WaitConverged(5 * time.Second)
	applied := leader.Node.Status().Applied
	cases := []struct {
		name   string
		path   string
		body   string
		header map[string]string
		status int
		msg    string
	}{
		{"empty", "/raft/api/set", "", nil, 400, "empty body"},
		{"malformed", "/raft/api/set", `{"key":`, nil, 400, "invalid JSON"},
		{"wrong type", "/raft/api/set", `{"key":1,"value":"x"}`, nil, 400, "invalid JSON"},
		{"unknown field", "/raft/api/set", `{"key":"a","value":"x","x":1}`, nil, 400, "unknown field"},
		{"no key", "/raft/api/set", `{"value":"x"}`, nil, 400, "key"},
		{"too large", "/raft/api/set", `{"key":"a","value":"` + strings.Repeat("x", 5000) + `"}`, nil, 413, "too large"},
		{"propose wrong cluster", "/raft/node/propose", `{"key":"a","value":"x"}`,
			map[string]string{"X-Embedraft-Cluster-Id": "1234"}, 403, "cluster"},
		{"propose no cluster", "/raft/node/propose", `{"key":"a","value":"x"}`, nil, 403, "cluster"},
		{"propose too large", "/raft/node/propose", strings.Repeat("x", 5000),
			map[string]string{"X-Embedraft-Cluster-Id": leader.Node.Status().ClusterID}, 413, "too large"},
		{"raft garbage", "/raft", "\x00\x01garbage", nil, 0, ""},
		{"snapshot without cluster id", "/raft/snapshot", "\x00\x00\x00\x80\x00\x00\x00\x00rest", nil, 412, "cluster ID mismatch"},
		{"unknown route", "/raft/api/nope", "{}", nil, 404, "no route"},
	}
	for _, m := range []*tc.Member{leader, f} {
		for _, tt := range cases {
			t.Run(fmt.Sprintf("%s/member%d", tt.name, m.ID), func(t *testing.T) {
				req, _ := http.NewRequest(http.MethodPost, m.URL+tt.path, strings.NewReader(tt.body))
				for k, v := range tt.header {
					req.Header.Set(k, v)
				}
				resp, err := c.Client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var b strings.Builder
				_, _ = fmt.Fprint(&b, readAll(resp))
				if tt.status == 0 {
					if resp.StatusCode < 400 || resp.StatusCode >= 500 {
						t.Fatalf("status %d, want a 4xx: %s", resp.StatusCode, b.String())
					}
					return
				}
				if resp.StatusCode != tt.status || !strings.Contains(b.String(), tt.msg) {
					t.Fatalf("status %d body %s, want %d containing %q", resp.StatusCode, b.String(), tt.status, tt.msg)
				}
			})
		}
	}
	c.MustSet(leader, "after", "1") // the cluster still works
	state := c.WaitConverged(5 * time.Second)
	if len(state) != 2 {
		t.Fatalf("bad input changed the state: %v", state)
	}
	if got := leader.Node.Status().Applied; got != applied+1 {
		t.Fatalf("bad input reached the log: applied %d -> %d, want +1", applied, got)
	}
}

// A node restarted with flags that contradict its data directory refuses to
// start.
func TestClusterRestartWithContradictingFlags(t *testing.T) {
	c := tc.NewStatic(t, 3)
	m := c.Members[1]
	m.Stop()
	cfg := embedraft.Config{ID: 3, AdvertiseURL: m.URL, DataDir: m.Dir}
	if _, err := embedraft.New(cfg, nopService{}); err == nil || !strings.Contains(err.Error(), "belongs to node 2") {
		t.Fatalf("restart with another id: %v", err)
	}
	other := map[uint64]string{1: "http://127.0.0.1:1", 2: m.URL}
	cfg = embedraft.Config{ID: 2, AdvertiseURL: m.URL, DataDir: m.Dir, Peers: other}
	if _, err := embedraft.New(cfg, nopService{}); err == nil || !strings.Contains(err.Error(), "belongs to cluster") {
		t.Fatalf("restart with another member list: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.Dir, "wal")); err != nil {
		t.Fatal(err)
	}
}

// Send on a follower reports the leader's refusal as an error, not success.
func TestClusterSendOnFollowerReturnsLeaderErrors(t *testing.T) {
	c := tc.NewStatic(t, 3)
	f := c.Followers()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obj, err := f.Node.Send(ctx, []byte(`{"key":""}`))
	if !errors.Is(err, embedraft.ErrBadRequest) || obj != nil {
		t.Fatalf("Send of a bad body on a follower: %v, %v", obj, err)
	}
	obj, err = f.Node.Send(ctx, []byte(`{"key":"k","value":"v"}`))
	raw, _ := obj.(json.RawMessage)
	if err != nil || !strings.Contains(string(raw), `"value":"v"`) {
		t.Fatalf("Send on a follower: %s, %v", obj, err)
	}
	if v, _ := f.Store.Get("k"); v != "v" {
		t.Fatal("Send returned before the follower applied the write")
	}
	// The leader answers Send with the same JSON a follower passes on.
	lobj, err := c.WaitLeader(5*time.Second).Node.Send(ctx, []byte(`{"key":"k","value":"v"}`))
	if lraw, _ := lobj.(json.RawMessage); err != nil || string(lraw) != string(raw) {
		t.Fatalf("Send on the leader: %s, %v; on a follower: %s", lobj, err, obj)
	}
}

// During a leader transfer raft refuses proposals; a write waits it out and
// PreProcessData still runs once for it.
func TestClusterWriteDuringLeaderTransfer(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(5 * time.Second)
	to := c.Followers()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := leader.Store.PreProcessCount()
	done := make(chan error, 1)
	go func() { done <- leader.Node.TransferLeader(ctx, to.ID) }()
	code, body, err := c.Set(leader, "during-transfer", "1")
	if err != nil || (code != 200 && code != 503) {
		t.Fatalf("write during transfer: %d %v %s", code, err, body)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if got := leader.Store.PreProcessCount() - before; got > 1 {
		t.Fatalf("PreProcessData ran %d times on the old leader for one write", got)
	}
	c.SetEventually("after-transfer", "1", 10*time.Second)
	if nl := c.WaitLeader(5 * time.Second); nl != to {
		t.Fatalf("leader is %d, want %d", nl.ID, to.ID)
	}
}

// Linearizable reads (the demo's default GET) work on every member and see
// every write acknowledged before them, wherever it was made.
func TestClusterLinearizableReadsOnEveryMember(t *testing.T) {
	c := tc.NewStatic(t, 3)
	for i, w := range c.Members {
		c.MustSet(w, "k", fmt.Sprint(i))
		for _, r := range c.Members {
			resp, err := c.Client.Get(r.URL + "/kv/k")
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(resp)
			resp.Body.Close()
			if resp.StatusCode != 200 || got != fmt.Sprint(i) {
				t.Fatalf("read on member %d after a write via %d: %d %q, want %q", r.ID, w.ID, resp.StatusCode, got, fmt.Sprint(i))
			}
		}
	}
}
