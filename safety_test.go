package embedraft_test

// Regression tests for operator mistakes and forged peer traffic that lost
// acknowledged writes, crashed a node or split the membership (issue 7).
// Each failed on the code before its fix.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// membershipOf reads a member's GET /raft/node/membership.
func membershipOf(t *testing.T, c *tc.Cluster, m *tc.Member) embedraft.MembershipView {
	t.Helper()
	resp, err := c.Client.Get(m.URL + "/raft/node/membership")
	if err != nil {
		t.Fatalf("membership of %d: %v", m.ID, err)
	}
	defer resp.Body.Close()
	var env struct {
		Data embedraft.MembershipView `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatalf("membership of %d: %v", m.ID, err)
	}
	return env.Data
}

// waitStarted waits until every running member records ids as started.
func waitStarted(t *testing.T, c *tc.Cluster, ids ...uint64) {
	t.Helper()
	tc.Eventually(t, 10*time.Second, func() error {
		for _, m := range c.Running() {
			v := membershipOf(t, c, m)
			for _, id := range ids {
				if !slices.Contains(v.Started, id) {
					return fmt.Errorf("member %d does not record %d as started: %v", m.ID, id, v.Started)
				}
			}
		}
		return nil
	})
}

func readKey(t *testing.T, c *tc.Cluster, m *tc.Member, key string) (int, string) {
	t.Helper()
	resp, err := c.Client.Get(m.URL + "/kv/" + key)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	return resp.StatusCode, readAll(resp)
}

// A static member whose data directory was wiped and that is restarted with
// its usual flags bootstrapped again with an empty log: with its vote it
// could elect a stale member and lose acknowledged writes. It is refused.
func TestSafetyWipedStaticMemberRefused(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	c.MustSet(lead, "acked", "1")
	waitStarted(t, c, 1, 2, 3)
	victim := c.Followers()[0]
	victim.Stop()
	victim.Wipe()
	err := victim.TryRestart()
	if !errors.Is(err, embedraft.ErrMemberDataLost) || !strings.Contains(err.Error(), "deleteNode") {
		t.Fatalf("restart of wiped member %d: %v, want ErrMemberDataLost with the recovery", victim.ID, err)
	}
	if embedraft.StatusOf(err) != http.StatusConflict {
		t.Fatalf("status of %v: %d", err, embedraft.StatusOf(err))
	}
	// The documented recovery: remove the member, join afresh.
	lead = c.WaitLeader(10 * time.Second)
	if code, body, err := c.Post(lead, "/raft/api/deleteNode", fmt.Appendf(nil, `{"id":%d}`, victim.ID)); err != nil || code != 200 {
		t.Fatalf("remove wiped member: %d %v %s", code, err, body)
	}
	fresh := c.Join(lead)
	if fresh.ID == victim.ID {
		t.Fatalf("rejoined under the old id %d", fresh.ID)
	}
	waitVoters(t, c, 3)
	c.WaitConverged(10 * time.Second)
	if code, v := readKey(t, c, fresh, "acked"); code != 200 || !strings.Contains(v, "1") {
		t.Fatalf("acknowledged key on the new member: %d %s", code, v)
	}
}

// The reproduction: member 2 down, a write acknowledged by 1 and 3;
// 3 and 1 stopped, 1 wiped, then 1 and 2 restarted. Member 2 used to become
// leader with member 1's vote, and the acknowledged key was gone.
func TestSafetyWipedMemberDoesNotElectStaleLeader(t *testing.T) {
	c := tc.NewStatic(t, 3)
	c.WaitLeader(10 * time.Second)
	waitStarted(t, c, 1, 2, 3)
	m1, m2, m3 := c.Member(1), c.Member(2), c.Member(3)
	m2.Stop()
	c.SetEventually("acked", "yes", 10*time.Second)
	m3.Stop()
	m1.Stop()
	m1.Wipe()
	// Member 1 starts first: nobody can vouch for it, so its vote is gated.
	if err := m1.TryRestart(); err != nil {
		t.Fatalf("restart wiped member 1 with no peer up: %v", err)
	}
	m2.Restart()
	// For several election timeouts, nobody may become leader: member 2 is
	// stale and member 1 must not vote for it.
	end := time.Now().Add(2 * time.Second)
	for time.Now().Before(end) {
		for _, m := range c.Running() {
			if st := m.Node.Status(); st.State == "leader" {
				t.Fatalf("member %d became leader without member 3, which holds the acknowledged write", m.ID)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	m3.Restart()
	lead := c.WaitLeader(20 * time.Second)
	if lead.ID == 2 {
		t.Logf("member 2 leads after catching up from 3")
	}
	tc.Eventually(t, 20*time.Second, func() error {
		for _, m := range c.Running() {
			if code, v := readKey(t, c, m, "acked"); code != 200 || !strings.Contains(v, "yes") {
				return fmt.Errorf("member %d: acknowledged key: %d %s", m.ID, code, v)
			}
		}
		return nil
	})
	if m1.Running() {
		if err := m1.Node.Err(); err != nil && !errors.Is(err, embedraft.ErrMemberDataLost) {
			t.Fatalf("member 1 stopped with %v", err)
		}
	}
}

// A joined member whose data directory was wiped asked to join again from
// its address and was given its old id: it then ran as a voter with an
// empty log (and raft panicked on the leader's next heartbeat).
func TestSafetyWipedJoinedMemberRefused(t *testing.T) {
	c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
	first := c.Members[0]
	c.Join(first)
	third := c.Join(first)
	waitVoters(t, c, 3)
	c.MustSet(c.WaitLeader(10*time.Second), "acked", "1")
	waitStarted(t, c, 1, 2, 3)
	third.Stop()
	third.Wipe()
	err := third.TryRestart()
	if !errors.Is(err, embedraft.ErrMemberDataLost) {
		t.Fatalf("rejoin of wiped member: %v, want ErrMemberDataLost", err)
	}
	// An address registered with addNode but never started may still join
	// (idempotent pre-registration).
	lead := c.WaitLeader(10 * time.Second)
	code, body, err := c.Post(lead, "/raft/api/addNode", []byte(`{"addr":"http://127.0.0.1:1"}`))
	if err != nil || code != 200 {
		t.Fatalf("addNode: %d %v %s", code, err, body)
	}
	code2, body2, _ := c.Post(lead, "/raft/api/addNode", []byte(`{"addr":"http://127.0.0.1:1"}`))
	if code2 != 200 || !bytes.Equal(body, body2) {
		t.Fatalf("second addNode of a never-started member: %d %s (first %s)", code2, body2, body)
	}
}

// An add whose wait timed out (it may still commit) released the change
// gate, and the next add was decided on the stale membership: the same id
// for two addresses.
func TestSafetyTimedOutAddKeepsChangeInFlight(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.ElectionTicks = 200 })
	lead := c.WaitLeader(20 * time.Second)
	for _, f := range c.Followers() {
		f.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := lead.Node.AddMember(ctx, embedraft.JoinRequest{Addr: "http://127.0.0.1:11"})
	cancel()
	if !errors.Is(err, embedraft.ErrUnknownOutcome) {
		t.Fatalf("add without quorum: %v, want ErrUnknownOutcome", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = lead.Node.AddMember(ctx, embedraft.JoinRequest{Addr: "http://127.0.0.1:12"})
	cancel()
	if !errors.Is(err, embedraft.ErrChangeInFlight) {
		t.Fatalf("second add while the first may commit: %v, want ErrChangeInFlight", err)
	}
	for _, m := range c.Members {
		if !m.Running() {
			m.Restart()
		}
	}
	lead = c.WaitLeader(20 * time.Second)
	var resp embedraft.JoinResponse
	tc.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		resp, err = c.WaitLeader(20*time.Second).Node.AddMember(ctx, embedraft.JoinRequest{Addr: "http://127.0.0.1:12"})
		return err
	})
	peers := lead.Node.Peers().Peers
	addrs := map[string]uint64{}
	for _, m := range peers {
		if other, dup := addrs[m.Addr]; dup {
			t.Fatalf("address %s under ids %d and %d", m.Addr, other, m.ID)
		}
		addrs[m.Addr] = m.ID
	}
	if id, ok := addrs["http://127.0.0.1:11"]; ok && id == resp.ID {
		t.Fatalf("id %d given to two addresses: %v", id, peers)
	}
	if got := peers[fmt.Sprint(resp.ID)].Addr; got != "http://127.0.0.1:12" {
		t.Fatalf("member %d has address %q, want :12 (%v)", resp.ID, got, peers)
	}
}

// A static bootstrap (or a join) over a data directory that held standalone
// writes started raft without them; -cluster now carries them over.
func TestSafetyStandaloneWritesCarriedOrRefused(t *testing.T) {
	c := tc.NewSingle(t)
	m := c.Members[0]
	c.MustSet(m, "standalone", "kept")
	m.Stop()
	err := m.TryRestart(func(cfg *embedraft.Config) {
		cfg.ID, cfg.Peers = 1, map[uint64]string{1: m.URL, 2: "http://127.0.0.1:2"}
	})
	if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), "standalone") {
		t.Fatalf("static bootstrap over standalone writes: %v", err)
	}
	err = m.TryRestart(func(cfg *embedraft.Config) { cfg.Join = "http://127.0.0.1:2" })
	if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), "standalone") {
		t.Fatalf("join over standalone writes: %v", err)
	}
	if err := m.TryRestart(func(cfg *embedraft.Config) { cfg.Cluster = true }); err != nil {
		t.Fatalf("restart with Cluster: %v", err)
	}
	if st := m.Node.Status(); st.Mode != embedraft.ModeCluster {
		t.Fatalf("mode %s", st.Mode)
	}
	if code, v := readKey(t, c, m, "standalone"); code != 200 || !strings.Contains(v, "kept") {
		t.Fatalf("standalone write after -cluster restart: %d %s", code, v)
	}
	c.Join(m)
	waitVoters(t, c, 2)
	state := c.WaitConverged(10 * time.Second)
	if state["standalone"] != "kept" {
		t.Fatalf("joined member's state: %v", state)
	}
	m.Stop()
	m.Restart() // from the WAL now
	if code, v := readKey(t, c, m, "standalone"); code != 200 || !strings.Contains(v, "kept") {
		t.Fatalf("after a cluster restart: %d %s", code, v)
	}
}

// A standalone node kept serving writes after Close, and a join after Close
// created a WAL that never got a leader.
func TestSafetyClosedMeansClosed(t *testing.T) {
	c := tc.NewSingle(t)
	m := c.Members[0]
	c.MustSet(m, "before", "1")
	node, h := m.Node, m.Node.Handler()
	if err := node.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Send(context.Background(), []byte(`{"key":"after","value":"1"}`)); !errors.Is(err, embedraft.ErrStopped) {
		t.Fatalf("Send after Close: %v", err)
	}
	if _, err := node.AddMember(context.Background(), embedraft.JoinRequest{Addr: "http://127.0.0.1:3"}); !errors.Is(err, embedraft.ErrStopped) {
		t.Fatalf("AddMember after Close: %v", err)
	}
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/raft/api/set", `{"key":"after","value":"1"}`},
		{"POST", "/raft/node/join", `{"addr":"http://127.0.0.1:3"}`},
		{"POST", "/raft/api/addNode", `{"addr":"http://127.0.0.1:3"}`},
		{"GET", "/readyz", ""},
		{"GET", "/healthz", ""},
	} {
		rec := httptestRecorder(h, r.method, r.path, r.body)
		if rec != http.StatusServiceUnavailable {
			t.Errorf("%s %s after Close: %d, want 503", r.method, r.path, rec)
		}
	}
	if _, err := os.Stat(filepath.Join(m.Dir, "wal")); !os.IsNotExist(err) {
		t.Fatalf("a WAL was created after Close: %v", err)
	}
	if _, ok := m.Store.Snapshot()["after"]; ok {
		t.Fatal("a write was applied after Close")
	}
	m.Stop()
}

// Close during a switchover read the cluster-mode fields while the switch
// set them (a data race under -race), and the node could be left half
// switched.
func TestSafetyCloseDuringSwitchover(t *testing.T) {
	for i := range 5 {
		c := tc.NewSingle(t)
		m := c.Members[0]
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = m.Node.AddMember(ctx, embedraft.JoinRequest{Addr: "http://127.0.0.1:4"})
		}()
		time.Sleep(time.Duration(i) * time.Millisecond) // vary where Close lands in the switch
		if err := m.Node.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		m.Stop()
	}
}

// Removing a member while another voter was down either handed leadership
// to the dead voter or left the cluster without a quorum.
func TestSafetyRemovalThatBreaksQuorumRefused(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	down := c.Followers()[0]
	down.Stop()
	tc.Eventually(t, 10*time.Second, func() error {
		code, body, err := c.Post(lead, "/raft/api/deleteNode", fmt.Appendf(nil, `{"id":%d}`, lead.ID))
		if err != nil || code != http.StatusConflict {
			return fmt.Errorf("remove the leader with a voter down: %d %v %s", code, err, body)
		}
		return nil
	})
	if st := lead.Node.Status(); st.State != "leader" {
		t.Fatalf("leader stepped down: %+v", st)
	}
	c.MustSet(lead, "still", "serving")
	// Removing the down voter itself leaves two live voters of two.
	if code, body, err := c.Post(lead, "/raft/api/deleteNode", fmt.Appendf(nil, `{"id":%d}`, down.ID)); err != nil || code != 200 {
		t.Fatalf("remove the down voter: %d %v %s", code, err, body)
	}
	c.MustSet(lead, "after", "removal")
}

// A removed node's REMOVED marker was written without fsync; when it was
// lost, the restart replayed the node's own removal and New failed with
// "node stopped" instead of starting in removed mode.
func TestSafetyRemovedMarkerLost(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	victim := c.Followers()[0]
	if code, body, err := c.Post(lead, "/raft/api/deleteNode", fmt.Appendf(nil, `{"id":%d}`, victim.ID)); err != nil || code != 200 {
		t.Fatalf("remove: %d %v %s", code, err, body)
	}
	tc.Eventually(t, 10*time.Second, func() error {
		if st := victim.Node.Status(); st.Mode != embedraft.ModeRemoved {
			return fmt.Errorf("mode %s", st.Mode)
		}
		return nil
	})
	victim.Stop()
	if err := os.Remove(filepath.Join(victim.Dir, "REMOVED")); err != nil {
		t.Fatalf("the removed marker: %v", err)
	}
	if err := victim.TryRestart(); err != nil {
		t.Fatalf("restart after losing the marker: %v", err)
	}
	// Removed at once when its log holds the removal; when it had heard of
	// it from a peer first, its peers tell it again.
	tc.Eventually(t, 10*time.Second, func() error {
		if st := victim.Node.Status(); st.Mode != embedraft.ModeRemoved {
			return fmt.Errorf("restarted in mode %s, want removed", st.Mode)
		}
		return nil
	})
}

// rafthttp's snapshot route wrote its body to snap/<index>.snap.db before
// any check, and kept it; a POST /raft of any type was read up to 1 GiB.
// (Forged streams that get past the message checks: snapstream_test.go.)
func TestSafetyPeerRoutesBounded(t *testing.T) {
	c := tc.NewStatic(t, 3)
	m := c.WaitLeader(10 * time.Second)
	hdr := peerHeaders(m.Node.Status().ClusterID)
	post := func(path string, body []byte) int {
		req, _ := http.NewRequest(http.MethodPost, m.URL+path, bytes.NewReader(body))
		req.Header = hdr.Clone()
		resp, err := c.Client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 3 {
		if code := post("/raft/snapshot", bytes.Repeat([]byte{byte(i)}, 1<<20)); code != http.StatusBadRequest &&
			code != http.StatusRequestEntityTooLarge {
			t.Errorf("POST /raft/snapshot of garbage: %d, want 400 or 413", code)
		}
	}
	files, _ := filepath.Glob(filepath.Join(m.Dir, "snap", "*.snap.db"))
	temps, _ := filepath.Glob(filepath.Join(m.Dir, "snap", "state", "*"))
	if len(files)+len(temps) > 0 {
		t.Fatalf("the snapshot route left files: %v %v", files, temps)
	}
	// A heartbeat-typed message (type 8) padded to 1 MiB is refused before
	// it is read whole.
	big := append([]byte{0x08, 0x08}, bytes.Repeat([]byte{0}, 1<<20)...)
	if code := post("/raft", big); code != http.StatusRequestEntityTooLarge && code != http.StatusBadRequest {
		t.Fatalf("POST /raft of a 1 MiB heartbeat: %d, want 413 or 400", code)
	}
	if code := post("/raft", []byte("not a raft message")); code != http.StatusBadRequest {
		t.Fatalf("POST /raft of garbage: %d, want 400", code)
	}
	c.MustSet(m, "after", "1")
}

// httptestRecorder serves one request on h and returns its status.
func httptestRecorder(h http.Handler, method, path, body string) int {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec.Code
}

// GET /readyz?noleader is ready once a member has applied what it knows to
// be committed, leader or not (orchestrators that start pods in parallel).
func TestReadyzNoLeader(t *testing.T) {
	c := tc.NewStatic(t, 3)
	c.WaitLeader(10 * time.Second)
	survivor := c.Members[0]
	for _, m := range c.Members[1:] {
		m.Stop()
	}
	tc.Eventually(t, 10*time.Second, func() error {
		if st := survivor.Node.Status(); st.Leader != 0 {
			return fmt.Errorf("still sees leader %d", st.Leader)
		}
		return nil
	})
	if code := httptestRecorder(survivor.Node.Handler(), "GET", "/readyz", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz without a leader: %d", code)
	}
	if code := httptestRecorder(survivor.Node.Handler(), "GET", "/readyz?noleader", ""); code != http.StatusOK {
		t.Fatalf("/readyz?noleader without a leader: %d", code)
	}
}

// Close on a leader hands leadership to a live voter before it stops, so
// the others do not wait an election timeout; writes through followers
// during the hand-off are retried on the new leader, not failed.
func TestCloseLeaderHandsOff(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	others := c.Followers()
	term := lead.Node.Status().Term
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var failed []string
	var mu sync.Mutex
	var acked atomic.Int64
	waitAcked := func(n int64) {
		target := acked.Load() + n
		tc.Eventually(t, 10*time.Second, func() error {
			if got := acked.Load(); got < target {
				return fmt.Errorf("%d writes acknowledged, want %d", got, target)
			}
			return nil
		})
	}
	for i, f := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := c.Set(f, fmt.Sprintf("w%d-%d", i, j), "v")
				if err != nil || code != 200 {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%d %v %s", code, err, body))
					mu.Unlock()
				} else {
					acked.Add(1)
				}
			}
		}()
	}
	waitAcked(20) // writes flow before the hand-off
	lead.Stop()
	var newLead uint64
	for _, f := range others {
		if st := f.Node.Status(); st.State == "leader" {
			newLead = f.ID
		}
	}
	if newLead == 0 {
		t.Fatalf("no member leads right after the leader closed: it did not hand over")
	}
	if st := c.Member(newLead).Node.Status(); st.Term != term+1 {
		t.Fatalf("new leader's term %d, want %d (one transfer)", st.Term, term+1)
	}
	waitAcked(20) // and on the new leader
	close(stop)
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d writes failed during the hand-off, e.g. %s", len(failed), failed[0])
	}
}

// A new static member must advertise its own Peers entry; a restarted one
// may advertise another address (it moved).
func TestStaticBootstrapAdvertiseMustMatchPeers(t *testing.T) {
	peers := map[uint64]string{1: "http://127.0.0.1:1", 2: "http://127.0.0.1:2"}
	_, err := embedraft.New(embedraft.Config{ID: 1, AdvertiseURL: "http://127.0.0.1:3", DataDir: t.TempDir(), Peers: peers}, nopService{})
	if !errors.Is(err, embedraft.ErrInvalidConfig) || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("fresh static member advertising another URL: %v", err)
	}
}
