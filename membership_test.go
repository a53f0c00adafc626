package embedraft_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// waitVoters waits until every running member lists exactly want as voters.
func waitVoters(t *testing.T, c *tc.Cluster, want int) {
	t.Helper()
	tc.Eventually(t, 15*time.Second, func() error {
		for _, m := range c.Running() {
			voters := 0
			for _, p := range m.Node.Peers().Peers {
				if p.Role == embedraft.RoleVoter {
					voters++
				}
			}
			if voters != want {
				return fmt.Errorf("member %d sees %d voters, want %d: %+v", m.ID, voters, want, m.Node.Peers())
			}
		}
		return nil
	})
}

// A standalone node with 100 keys becomes a cluster when a second node
// joins; both end up with exactly those keys.
func TestSwitchoverCarriesStandaloneState(t *testing.T) {
	// A StreamSnapshotter service's state goes in as the first snapshot;
	// another's as an init entry.
	for _, tt := range []struct {
		name     string
		new      func(testing.TB, ...tc.Option) *tc.Cluster
		snapshot bool
	}{{"snapshot", tc.NewSingle, true}, {"init entry", tc.NewSingleWholeSnapshots, false}} {
		t.Run(tt.name, func(t *testing.T) { testSwitchoverCarriesState(t, tt.new(t), tt.snapshot) })
	}
}

func testSwitchoverCarriesState(t *testing.T, c *tc.Cluster, bySnapshot bool) {
	a := c.Members[0]
	want := map[string]string{}
	for i := range 100 {
		k, v := fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i)
		c.MustSet(a, k, v)
		want[k] = v
	}
	b := c.Join(a)
	if b.ID != 2 {
		t.Fatalf("joiner got id %d, want 2", b.ID)
	}
	for _, m := range []*tc.Member{a, b} {
		if st := m.Node.Status(); st.Mode != embedraft.ModeCluster {
			t.Fatalf("member %d mode %s", m.ID, st.Mode)
		}
	}
	state := c.WaitConverged(10 * time.Second)
	if fmt.Sprint(state) != fmt.Sprint(want) {
		t.Fatalf("after switchover state has %d keys, want exactly the 100 standalone keys", len(state))
	}
	waitVoters(t, c, 2)
	c.MustSet(b, "after", "1")
	if v, _ := b.Store.Get("after"); v != "1" {
		t.Fatal("write through the joiner not applied on it")
	}
	// The joiner got the state by a streamed snapshot, or by the init
	// entry (and then has no state file yet).
	if got := len(stateFiles(t, b)); (got > 0) != bySnapshot {
		t.Fatalf("joiner has %d state files (state by snapshot: %v)", got, bySnapshot)
	}
	for _, m := range []*tc.Member{a, b} {
		m.Stop()
		m.Restart()
	}
	if state := c.WaitConverged(10 * time.Second); len(state) != len(want)+1 {
		t.Fatalf("after restarts state has %d keys, want %d", len(state), len(want)+1)
	}
}

// Writes racing the switch all succeed and are applied exactly once.
func TestSwitchoverWithConcurrentWrites(t *testing.T) {
	c := tc.NewSingle(t)
	a := c.Members[0]
	const writers, perWriter = 4, 40
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan string, writers*perWriter)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perWriter {
				code, body, err := c.Set(a, fmt.Sprintf("w%d-%d", w, i), "x")
				if err != nil || code != 200 {
					errs <- fmt.Sprintf("w%d-%d: %d %v %s", w, i, code, err, body)
				}
			}
		}()
	}
	close(start)
	b := c.Join(a)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("write failed across the switch: %s", e)
	}
	state := c.WaitConverged(10 * time.Second)
	if len(state) != writers*perWriter {
		t.Fatalf("state has %d keys, want %d", len(state), writers*perWriter)
	}
	if got := a.Store.CommitCount(); got != writers*perWriter {
		t.Fatalf("the switching node applied %d writes, want exactly %d (none twice)", got, writers*perWriter)
	}
	if got := a.Store.PreProcessCount(); got != writers*perWriter {
		t.Fatalf("PreProcessData ran %d times, want %d", got, writers*perWriter)
	}
	_ = b
}

// A node joins through a follower; all three become voters without manual
// promotion; membership is the same everywhere.
func TestJoinThroughFollowerAndAutoPromotion(t *testing.T) {
	c := tc.NewSingle(t)
	a := c.Members[0]
	c.MustSet(a, "x", "1")
	b := c.Join(a)
	waitVoters(t, c, 2)
	follower := b
	if c.WaitLeader(5*time.Second) == b {
		follower = a
	}
	cm := c.Join(follower)
	if cm.ID != 3 {
		t.Fatalf("third node got id %d, want 3", cm.ID)
	}
	waitVoters(t, c, 3)
	c.MustSet(cm, "y", "2")
	state := c.WaitConverged(10 * time.Second)
	if len(state) != 2 {
		t.Fatalf("state %v", state)
	}
	for _, m := range c.Members {
		pl := m.Node.Peers()
		for id, want := range map[string]string{"1": a.URL, "2": b.URL, "3": cm.URL} {
			if pl.Peers[id].Addr != want {
				t.Fatalf("member %d has peer %s at %q, want %q", m.ID, id, pl.Peers[id].Addr, want)
			}
		}
	}
}

// deleteNode of a follower and then of the leader; removed nodes stop,
// say so, and cannot come back under their id.
func TestRemoveFollowerThenLeader(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(5 * time.Second)
	f := c.Followers()[0]
	code, body, _ := c.Post(f, "/raft/api/deleteNode", []byte(fmt.Sprintf(`{"id":%d}`, f.ID))) // via itself
	if code != 200 {
		t.Fatalf("delete follower: %d %s", code, body)
	}
	tc.Eventually(t, 10*time.Second, func() error {
		if m := f.Node.Status().Mode; m != embedraft.ModeRemoved {
			return fmt.Errorf("removed follower mode %s", m)
		}
		return nil
	})
	c.MustSet(leader, "after-follower-removal", "1")
	if n := len(leader.Node.Peers().Peers); n != 2 {
		t.Fatalf("leader lists %d peers after removal", n)
	}
	// The removed follower refuses to come back under its id.
	f.Stop()
	f.Restart()
	if st := f.Node.Status(); st.Mode != embedraft.ModeRemoved {
		t.Fatalf("restarted removed node is %s", st.Mode)
	}
	code, body, _ = c.Post(leader, "/raft/api/addNode", []byte(fmt.Sprintf(`{"addr":"http://127.0.0.1:1","id":%d}`, f.ID)))
	if code != http.StatusConflict || !strings.Contains(string(body), "removed") {
		t.Fatalf("re-adding a removed id: %d %s", code, body)
	}
	// Remove the leader through the other member: it steps down first.
	var other *tc.Member
	for _, m := range c.Members {
		if m != leader && m != f {
			other = m
		}
	}
	code, body, _ = c.Post(other, "/raft/api/deleteNode", []byte(fmt.Sprintf(`{"id":%d}`, leader.ID)))
	if code != 200 {
		t.Fatalf("delete leader: %d %s", code, body)
	}
	tc.Eventually(t, 10*time.Second, func() error {
		if m := leader.Node.Status().Mode; m != embedraft.ModeRemoved {
			return fmt.Errorf("removed leader mode %s", m)
		}
		return nil
	})
	if st := other.Node.Status(); st.Leader != other.ID {
		t.Fatalf("remaining member status %+v", st)
	}
	c.MustSet(other, "after-leader-removal", "1")
	code, body, _ = c.Post(other, "/raft/api/deleteNode", []byte(`{"id":99}`))
	if code != 404 {
		t.Fatalf("delete unknown id: %d %s", code, body)
	}
}

// A joined node restarted with its original settings (including Join) comes
// back as the same member: same id, same peers, no duplicate.
func TestRestartJoinedNodeKeepsIdentity(t *testing.T) {
	c := tc.NewSingle(t)
	a := c.Members[0]
	b := c.Join(a)
	waitVoters(t, c, 2)
	c.MustSet(b, "k", "v")
	b.Stop()
	b.Restart()
	if b.Node.ID() != 2 {
		t.Fatalf("restarted joiner has id %d", b.Node.ID())
	}
	c.WaitConverged(10 * time.Second)
	for _, m := range c.Members {
		pl := m.Node.Peers()
		if len(pl.Peers) != 2 || pl.Peers["2"].Addr != b.URL {
			t.Fatalf("member %d peers after restart: %+v", m.ID, pl)
		}
	}
}

// After compaction, a restarted node and a newly joined node both learn
// every peer address (from the snapshot envelope).
func TestPeersSurviveCompaction(t *testing.T) {
	small := func(cfg *embedraft.Config) { cfg.SnapshotCount = 10; cfg.CatchUpEntries = 2 }
	c := tc.NewSingle(t, small)
	a := c.Members[0]
	b := c.Join(a, small)
	waitVoters(t, c, 2)
	for i := range 60 {
		c.MustSet(c.Members[i%2], fmt.Sprintf("k%d", i), "v")
	}
	c.WaitConverged(10 * time.Second)
	b.Stop()
	b.Restart()
	cm := c.Join(a, small)
	waitVoters(t, c, 3)
	state := c.WaitConverged(15 * time.Second)
	if len(state) != 60 {
		t.Fatalf("state has %d keys", len(state))
	}
	for _, m := range []*tc.Member{b, cm} {
		pl := m.Node.Peers()
		if pl.Peers["1"].Addr != a.URL || pl.Peers["2"].Addr != b.URL || pl.Peers["3"].Addr != cm.URL {
			t.Fatalf("member %d does not know every peer: %+v", m.ID, pl)
		}
	}
	if cm.Store.ResetCount() == 0 {
		t.Fatal("the new node caught up without a snapshot; the test did not exercise compaction")
	}
}

// A member joining a cluster whose log is compacted is sent a snapshot the
// leader makes for it; the followers make none for the join.
func TestJoinSnapshotTakenByLeaderOnly(t *testing.T) {
	small := func(cfg *embedraft.Config) { cfg.SnapshotCount = 10; cfg.CatchUpEntries = 2 }
	c := tc.NewStatic(t, 3, small)
	leader := c.WaitLeader(5 * time.Second)
	for i := range 25 {
		c.MustSet(leader, fmt.Sprintf("k%d", i), "v")
	}
	c.WaitConverged(10 * time.Second)
	lastWrite := leader.Node.Status().Applied
	joiner := c.Join(leader, small)
	waitVoters(t, c, 4)
	if state := c.WaitConverged(15 * time.Second); len(state) != 25 {
		t.Fatalf("state has %d keys, want 25", len(state))
	}
	if joiner.Store.ResetCount() == 0 {
		t.Fatal("the new member caught up without a snapshot; the test did not exercise compaction")
	}
	for _, m := range c.Members {
		if m == joiner {
			continue
		}
		newest := uint64(0)
		for _, f := range stateFiles(t, m) {
			var term, index uint64
			if _, err := fmt.Sscanf(filepath.Base(f), "%016x-%016x.state", &term, &index); err != nil {
				t.Fatalf("state file %s: %v", f, err)
			}
			newest = max(newest, index)
		}
		switch isLeader := m == leader; {
		case isLeader && newest <= lastWrite:
			t.Errorf("the leader made no snapshot for the join (newest at %d, last write %d)", newest, lastWrite)
		case !isLeader && newest > lastWrite:
			t.Errorf("follower %d made a snapshot at %d for the join (last write %d)", m.ID, newest, lastWrite)
		}
	}
}

// Concurrent joins get distinct ids; at most one change is in flight (the
// others are told 409 and the joiners retry).
func TestConcurrentJoins(t *testing.T) {
	c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
	a := c.Members[0]
	c.WaitLeader(5 * time.Second)
	var wg sync.WaitGroup
	ids := make(chan uint64, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := c.TryJoin(a.URL)
			if err != nil {
				t.Errorf("join: %v", err)
				return
			}
			ids <- m.ID
		}()
	}
	wg.Wait()
	close(ids)
	var got []int
	for id := range ids {
		got = append(got, int(id))
	}
	sort.Ints(got)
	if fmt.Sprint(got) != "[2 3 4]" {
		t.Fatalf("joiners got ids %v, want [2 3 4]", got)
	}
	waitVoters(t, c, 4)

	// Raw addNode requests racing each other: each is 200 or 409, the 200s
	// get distinct ids.
	var mu sync.Mutex
	codes := map[int]int{}
	seen := map[uint64]bool{}
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, err := c.Post(a, "/raft/api/addNode", []byte(fmt.Sprintf(`{"addr":"http://127.0.0.1:%d"}`, 40000+i)))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			codes[code]++
			if code == 200 {
				var env struct{ Data embedraft.JoinResponse }
				_ = json.Unmarshal(body, &env)
				if seen[env.Data.ID] {
					t.Errorf("id %d given twice", env.Data.ID)
				}
				seen[env.Data.ID] = true
			} else if code != 409 || !strings.Contains(string(body), "change_in_flight") {
				t.Errorf("addNode: %d %s", code, body)
			}
		}()
	}
	wg.Wait()
	if codes[200] == 0 {
		t.Fatalf("no addNode succeeded: %v", codes)
	}
}

// Bad membership requests get a 4xx and change nothing.
func TestMembershipBadInput(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(5 * time.Second)
	f := c.Followers()[0]
	before := leader.Node.Peers()
	cid := leader.Node.Status().ClusterID
	cases := []struct {
		name, path, body string
		status           int
		msg              string
	}{
		{"malformed JSON", "/raft/api/addNode", `{"addr":`, 400, "invalid JSON"},
		{"wrong type", "/raft/api/addNode", `{"addr":5}`, 400, "invalid JSON"},
		{"unknown field", "/raft/api/addNode", `{"addr":"http://a:1","x":1}`, 400, "unknown field"},
		{"bad URL", "/raft/api/addNode", `{"addr":"not a url"}`, 400, "addr"},
		{"URL with path", "/raft/api/addNode", `{"addr":"http://a:1/x"}`, 400, "addr"},
		{"duplicate address", "/raft/api/addNode", fmt.Sprintf(`{"addr":%q,"id":9}`, f.URL), 409, "already member"},
		{"id in use", "/raft/api/addNode", `{"addr":"http://127.0.0.1:2","id":1}`, 409, "in use"},
		{"id used before", "/raft/node/join", `{"addr":"http://127.0.0.1:2","id":3}`, 409, "in use"},
		{"wrong cluster", "/raft/node/join", `{"addr":"http://127.0.0.1:2","cluster_id":"abc"}`, 403, "cluster"},
		{"delete unknown", "/raft/api/deleteNode", `{"id":42}`, 404, "no member 42"},
		{"delete zero", "/raft/api/deleteNode", `{"id":0}`, 400, "positive"},
		{"delete wrong type", "/raft/api/deleteNode", `{"id":"1"}`, 400, "invalid JSON"},
		{"delete trailing", "/raft/api/deleteNode", `{"id":1}{}`, 400, "trailing"},
	}
	for _, m := range []*tc.Member{leader, f} {
		for _, tt := range cases {
			t.Run(fmt.Sprintf("%s/member%d", tt.name, m.ID), func(t *testing.T) {
				code, body, err := c.Post(m, tt.path, []byte(tt.body))
				if err != nil || code != tt.status || !strings.Contains(string(body), tt.msg) {
					t.Fatalf("%d %s (%v), want %d with %q", code, body, err, tt.status, tt.msg)
				}
			})
		}
	}
	after := leader.Node.Peers()
	if fmt.Sprint(after.Peers) != fmt.Sprint(before.Peers) {
		t.Fatalf("membership changed: %v -> %v", before.Peers, after.Peers)
	}
	_ = cid
}

// A node with a token refuses peer and admin calls without it; joining with
// the token works.
func TestTokenRequiredOnPeerAndAdminRoutes(t *testing.T) {
	withToken := func(cfg *embedraft.Config) { cfg.Token = "s3cret" }
	c := tc.NewSingle(t, withToken)
	a := c.Members[0]
	for _, path := range []string{"/raft/api/addNode", "/raft/node/join", "/raft/api/deleteNode"} {
		resp, err := c.Client.Post(a.URL+path, "application/json", bytes.NewReader([]byte(`{"addr":"http://127.0.0.1:3"}`)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("%s without token: %d", path, resp.StatusCode)
		}
	}
	if _, err := c.TryJoin(a.URL); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("join without token: %v", err)
	}
	if a.Node.Mode() != embedraft.ModeStandalone {
		t.Fatal("refused join changed the node's mode")
	}
	b := c.Join(a, withToken)
	waitVoters(t, c, 2)
	c.MustSet(b, "k", "v")
	// rafthttp's routes need the token too (peers prove it through the
	// cluster id they send): the public cluster id is not enough.
	for _, path := range []string{"/raft", "/raft/snapshot", "/raft/stream/message/1"} {
		req, _ := http.NewRequest(http.MethodPost, b.URL+path, strings.NewReader("garbage"))
		req.Header.Set("X-Etcd-Cluster-ID", b.Node.Status().ClusterID)
		resp, err := c.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("%s without token: %d", path, resp.StatusCode)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Node.Send(ctx, []byte(`{"key":"k2","value":"v"}`)); err != nil {
		t.Fatal(err)
	}
}

// A joined node whose data directory belongs to one cluster refuses to start
// when told to join a node of another cluster.
func TestRestartRefusesAnotherClustersTarget(t *testing.T) {
	c := tc.NewSingle(t)
	a := c.Members[0]
	b := c.Join(a)
	waitVoters(t, c, 2)
	other := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
	other.WaitLeader(5 * time.Second)
	b.Stop()
	cfg := embedraft.Config{AdvertiseURL: b.URL, DataDir: b.Dir, Join: other.Members[0].URL}
	_, err := embedraft.New(cfg, nopService{})
	if err == nil || !strings.Contains(err.Error(), "belongs to cluster") {
		t.Fatalf("restart joining another cluster: %v", err)
	}
	b.Restart() // with its own target it comes back as before
	if b.Node.ID() != 2 || b.Node.Mode() != embedraft.ModeCluster {
		t.Fatalf("restarted member: id %d mode %s", b.Node.ID(), b.Node.Mode())
	}
}

// A member restarted on its data directory with a new address keeps its id
// and membership; the cluster learns the new address through the log and
// every member dials it there. A follower moves, then the leader.
func TestMemberMovesToNewAddress(t *testing.T) {
	c := tc.NewStatic(t, 3)
	for round, pick := range []string{"follower", "leader"} {
		lead := c.WaitLeader(10 * time.Second)
		m := lead
		if pick == "follower" {
			m = c.Followers()[0]
		}
		c.MustSet(lead, fmt.Sprintf("before-%d", round), "1")
		m.Stop()
		newURL := m.MoveToNewPort()
		m.Restart()
		if m.Node.ID() != m.ID {
			t.Fatalf("moved member has id %d, want %d", m.Node.ID(), m.ID)
		}
		tc.Eventually(t, 20*time.Second, func() error {
			for _, o := range c.Running() {
				if got := o.Node.Peers().Peers[fmt.Sprint(m.ID)].Addr; got != newURL {
					return fmt.Errorf("member %d lists %d at %q, want %q", o.ID, m.ID, got, newURL)
				}
			}
			return nil
		})
		// Every member reaches it at the new address: writes through it
		// and through the others converge, and it can lead.
		c.SetEventually(fmt.Sprintf("after-%d", round), "1", 20*time.Second)
		c.MustSet(m, fmt.Sprintf("via-moved-%d", round), "1")
		state := c.WaitConverged(20 * time.Second)
		if len(state) != 3*(round+1) {
			t.Fatalf("state after the move: %v", state)
		}
		if len(m.Node.Peers().Peers) != 3 {
			t.Fatalf("membership after the move: %v", m.Node.Peers())
		}
	}
}

// After losing two of three members for good, the survivor restarts with
// ForceNewCluster as a one-member cluster with every write; new members join
// it. Restarting it again with the flag keeps the members that joined.
func TestForceNewClusterAfterQuorumLoss(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	for i := range 20 {
		c.MustSet(c.Running()[i%3], fmt.Sprintf("k%d", i), "v")
	}
	cid := lead.Node.Status().ClusterID
	for _, m := range c.Followers() {
		m.Stop()
		m.Wipe()
	}
	lead.Stop()
	force := func(cfg *embedraft.Config) { cfg.ForceNewCluster = true }
	if err := lead.TryRestart(force); err != nil {
		t.Fatalf("force new cluster: %v", err)
	}
	st := lead.Node.Status()
	if st.State != "leader" || st.ClusterID != cid || st.ID != lead.ID {
		t.Fatalf("after force: %+v (cluster %s, id %d)", st, cid, lead.ID)
	}
	if n := len(lead.Node.Peers().Peers); n != 1 {
		t.Fatalf("after force: %d members", n)
	}
	for i := range 20 {
		if code, v := readKey(t, c, lead, fmt.Sprintf("k%d", i)); code != 200 || !strings.Contains(v, "v") {
			t.Fatalf("k%d after force: %d %s", i, code, v)
		}
	}
	c.MustSet(lead, "after-force", "1")
	c.Join(lead)
	c.Join(lead)
	waitVoters(t, c, 3)
	state := c.WaitConverged(20 * time.Second)
	if len(state) != 21 {
		t.Fatalf("state after joins: %d keys", len(state))
	}
	// One-shot: the flag given again does not drop the new members.
	lead.Stop()
	if err := lead.TryRestart(force); err != nil {
		t.Fatalf("restart with the flag again: %v", err)
	}
	c.WaitLeader(20 * time.Second)
	if n := len(lead.Node.Peers().Peers); n != 3 {
		t.Fatalf("the flag given again dropped members: %v", lead.Node.Peers())
	}
	c.SetEventually("after-restart", "1", 20*time.Second)
	// Without a WAL the flag is refused.
	if _, err := embedraft.New(embedraft.Config{AdvertiseURL: "http://127.0.0.1:1", DataDir: t.TempDir(), ForceNewCluster: true}, nopService{}); !errors.Is(err, embedraft.ErrInvalidConfig) {
		t.Fatalf("force without a WAL: %v", err)
	}
}
