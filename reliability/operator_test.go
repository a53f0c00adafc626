package reliability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft/internal/chaos"
)

// Operator mistakes: a member restarted on a wiped data directory, a
// standalone data directory reused for a cluster, a removal that would
// leave no quorum. Each runs like the other scenarios (traffic before and
// after, the same end checks) and also asserts what the operator sees: a
// refused start exits non-zero and says why, a refused change gets 409.

// refuseWithin bounds how long a start that must be refused may run.
const refuseWithin = 15 * time.Second

var operatorScenarios = append([]scenario{
	{name: "wipe-static-voter", fault: func(r *run) {
		f := r.follower()
		id := r.statusOf(f).ID
		must(r.t, f.Kill())
		must(r.t, f.Wipe())
		r.expectRefusal(f, "data was lost") // exactly its original -id and -peers
		r.expectServing("after the wiped member's refused start")
		r.rejoinFresh(f, id, 3)
	}},
	{name: "wipe-joined-voter", form: chaos.NewJoined, fault: func(r *run) {
		n := r.c.Nodes[2]
		st := r.statusOf(n)
		if st.State == "leader" {
			r.leaderKills = append(r.leaderKills, time.Now())
		}
		must(r.t, n.Kill())
		must(r.t, n.Wipe())
		r.expectRefusal(n, "data was lost") // its original -join, refused with 409
		r.expectServing("after the wiped member's refused join")
		r.rejoinFresh(n, st.ID, 3)
	}},
	{name: "wiped-voter-stale-peer", fault: wipedVoterStalePeer},
	{name: "standalone-then-cluster", form: chaos.NewStandalone, spare: 2, fault: standaloneThenCluster},
	{name: "remove-leader-voter-down", fault: removeLeaderVoterDown},
	{name: "move-member", fault: moveMember},
	{name: "quorum-loss-force-new-cluster", fault: quorumLossForceNewCluster},
	{name: "rolling-restart", fault: rollingRestart, after: rollingRestartAfter},
	{name: "idempotent-retries", fault: idempotentRetries, after: idempotentRetriesAfter},
}, tlsScenarios()...) // secure_test.go

// TestOperator runs every operator-mistake scenario once, short.
func TestOperator(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	for i, sc := range operatorScenarios {
		t.Run(sc.name, func(t *testing.T) {
			runScenario(t, sc, uint64(101+i), 1500*time.Millisecond).check(t)
		})
	}
}

// wipedVoterStalePeer is the reproduction from issue 7: member 2 misses
// writes that 1 and 3 acknowledge; 1 and 3 die, 1 loses its data, 1 and 2
// come back. Member 1 must not help the stale member 2 become leader (that
// would drop the writes 2 never saw): it refuses to start, or it starts and
// no leader is elected until 3 is back.
func wipedVoterStalePeer(r *run) {
	n1, n2, n3 := r.c.Nodes[0], r.c.Nodes[1], r.c.Nodes[2]
	before := len(r.w.AckedUniqueKeys())
	if r.leader() == n2 {
		r.leaderKills = append(r.leaderKills, time.Now())
	}
	must(r.t, n2.Kill())
	r.expectServing("with member 2 down")
	r.sleep(500 * time.Millisecond)
	must(r.t, n3.Kill())
	must(r.t, n1.Kill())
	r.sleep(200 * time.Millisecond) // let answers that raced the kills be recorded
	missed := r.w.AckedUniqueKeys()[before:]
	acks := r.w.Stats().Acknowledged
	r.t.Logf("%d unique writes acknowledged while member 2 was down", len(missed))
	must(r.t, n1.Wipe())
	must(r.t, n1.Restart())
	must(r.t, n2.Restart())
	exited := r.staleWindow(n1, n2, missed, 3*time.Second)
	if got := r.w.Stats().Acknowledged; got > acks {
		r.t.Errorf("%d workload writes acknowledged while member 3 was down (member 1 wiped, member 2 stale)", got-acks)
	}
	must(r.t, n3.Restart())
	if _, err := r.c.WaitLeader(15 * time.Second); err != nil {
		r.t.Errorf("after member 3 restarted: %v", err)
	}
	if exited {
		r.rejoinFresh(n1, 1, 3)
	}
}

// staleWindow watches the wiped and the stale member for at least d (from
// when the stale one answers, and until the wiped one has either answered
// or exited): no write may be acknowledged, and a linearizable read that
// succeeds must show every acknowledged key it asks for. It reports
// whether the wiped member exited (checking that it said why).
func (r *run) staleWindow(wiped, stale *chaos.Node, acked []string, d time.Duration) (exited bool) {
	r.t.Helper()
	sample := spread(acked, 20)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	var mu sync.Mutex
	bad := map[string]bool{} // each kind of problem reported once per node
	report := func(key, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if !bad[key] {
			bad[key] = true
			r.t.Errorf(format, args...)
		}
	}
	answers := func(n *chaos.Node) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err := n.Status(ctx)
		return err == nil
	}
	start := time.Now()
	var end time.Time // set once the stale member answers
	wipedSeen := false
	for i := 0; ; i++ {
		if wiped.Exited() {
			ex, err := wiped.WaitExit(0)
			must(r.t, err)
			exited = true
			if ex.Code == 0 || !strings.Contains(ex.Stderr, "data was lost") {
				r.t.Errorf("wiped member 1 exited %d without saying its data was lost: %s", ex.Code, tail(ex.Stderr))
			} else {
				r.t.Logf("wiped member 1 refused to start after %v: %s", time.Since(start).Round(time.Millisecond), lastLine(ex.Stderr))
			}
		}
		wipedSeen = wipedSeen || exited || answers(wiped)
		if end.IsZero() && answers(stale) {
			end = time.Now().Add(d)
		}
		switch {
		case !end.IsZero() && time.Now().After(end) && wipedSeen:
			return exited
		case time.Since(start) > 20*time.Second:
			r.t.Errorf("after 20 s: stale member 2 answers=%v, wiped member 1 answered or exited=%v", !end.IsZero(), wipedSeen)
			return exited
		}
		var wg sync.WaitGroup
		for _, n := range []*chaos.Node{wiped, stale} {
			if !n.Running() {
				continue
			}
			wg.Add(2)
			go func() { // one bounded request
				defer wg.Done()
				body := fmt.Sprintf(`{"key":"probe-%d-%d","value":"1"}`, n.Index, i)
				resp, err := client.Post(n.URL()+"/raft/api/set", "application/json", strings.NewReader(body))
				if err != nil {
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 == 2 {
					report(fmt.Sprint("write ", n.Index), "node %d acknowledged a write while member 3 was down: %d %s", n.Index, resp.StatusCode, b)
				}
			}()
			go func() { // one bounded request
				defer wg.Done()
				if len(sample) == 0 {
					return
				}
				key := sample[i%len(sample)]
				code, b, err := get(client, n.URL()+"/kv/"+key)
				if err == nil && (code == 404 || (code == 200 && string(b) != "1")) {
					report(fmt.Sprint("read ", n.Index), "node %d: linearizable read of acknowledged %s answered %d %q while member 3 was down", n.Index, key, code, b)
				}
			}()
		}
		wg.Wait()
		time.Sleep(100 * time.Millisecond)
	}
}

// standaloneThenCluster: a standalone node with acknowledged writes is
// killed; its data directory is refused as a static member's (-peers), and
// accepted with -cluster as a one-member cluster holding every write; two
// nodes then join it.
func standaloneThenCluster(r *run) {
	a := r.c.Nodes[0]
	must(r.t, a.Kill())
	r.sleep(200 * time.Millisecond) // let answers that raced the kill be recorded
	acked := r.w.AckedUniqueKeys()
	backup, err := a.BackupDir()
	must(r.t, err)
	if !r.expectRefusal(a, "standalone", r.c.StaticArgs(a, r.c.Nodes)...) {
		must(r.t, a.RestoreDir(backup)) // whatever that start did, go on from the standalone data
	}
	must(r.t, a.Start(r.c.ClusterArgs()...))
	l, err := r.c.WaitLeader(20 * time.Second)
	if err != nil {
		r.t.Fatalf("standalone data restarted with -cluster: %v", err)
	}
	if st := r.statusOf(a); l != a || st.Mode != "cluster" {
		r.t.Errorf("standalone data restarted with -cluster: %+v", st)
	}
	r.checkHas(a, acked, "standalone data restarted with -cluster")
	for _, n := range r.c.Nodes[1:3] {
		must(r.t, n.Start(r.c.JoinArgs(a)...))
		if err := r.c.WaitVoters(n.Index, 30*time.Second); err != nil {
			r.t.Fatal(err)
		}
	}
}

// removeLeaderVoterDown: with a follower down, removing the leader would
// leave one live voter of two, so it is refused (409 conflict) and the
// leader stays; removing the down follower leaves two live voters of two
// and is allowed.
func removeLeaderVoterDown(r *run) {
	l, f := r.leader(), r.follower()
	lid, fid := r.statusOf(l).ID, r.statusOf(f).ID
	must(r.t, f.Kill())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	code, body, err := l.Post(ctx, "/raft/api/deleteNode", map[string]uint64{"id": lid})
	cancel()
	var env struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(body, &env)
	if err != nil || code != http.StatusConflict || env.Code != "conflict" {
		r.t.Errorf("deleteNode of the leader %d with member %d down: %d %v %s, want 409 conflict", lid, fid, code, err, body)
	}
	l2, err := r.c.WaitLeader(10 * time.Second)
	if err != nil {
		r.t.Fatalf("after deleteNode of the leader: %v", err)
	}
	if l2 != l {
		r.t.Errorf("leader moved from node %d to node %d after a refused removal", l.Index, l2.Index)
	}
	if !r.expectServing("after deleteNode of the leader") {
		r.t.Fatal("the cluster stopped serving; not going on")
	}
	r.rejoinFresh(f, fid, 3) // removing the down follower is allowed
}

// expectRefusal starts n with args (none: the flags of its last start) and
// checks that the demo refuses: it exits non-zero within refuseWithin with
// want in its stderr. It reports whether it did; a start that was not
// refused has been killed.
func (r *run) expectRefusal(n *chaos.Node, want string, args ...string) bool {
	r.t.Helper()
	r.setAvoid(n, true)
	defer r.setAvoid(n, false)
	start := time.Now()
	ex, err := n.ExpectExit(refuseWithin, args...)
	switch {
	case err != nil:
		r.t.Errorf("node %d %v: %v", n.Index, n.Args(), err)
	case ex.Code == 0 || !strings.Contains(ex.Stderr, want):
		r.t.Errorf("node %d %v exited %d, want non-zero with %q in stderr: %s", n.Index, n.Args(), ex.Code, want, tail(ex.Stderr))
	default:
		r.t.Logf("node %d refused to start in %v: %s", n.Index, time.Since(start).Round(time.Millisecond), lastLine(ex.Stderr))
		return true
	}
	return false
}

// expectServing waits until a client write issued from now on is
// acknowledged, and reports whether one was.
func (r *run) expectServing(when string) bool {
	r.t.Helper()
	t0 := time.Now()
	for time.Since(t0) < 15*time.Second {
		if _, ok := r.w.FirstAckAfter(t0); ok {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Errorf("%s: no write acknowledged within 15 s", when)
	return false
}

// rejoinFresh is the documented recovery for a member whose data was lost:
// remove its old id through a live node (200), then start it with an empty
// data directory and -join. It must get a new id and become a voter.
func (r *run) rejoinFresh(n *chaos.Node, oldID uint64, voters int) {
	r.t.Helper()
	l := r.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	code, body, err := l.Post(ctx, "/raft/api/deleteNode", map[string]uint64{"id": oldID})
	cancel()
	if err != nil || code != http.StatusOK {
		r.t.Errorf("deleteNode %d on node %d: %d %v %s, want 200", oldID, l.Index, code, err, body)
		r.removeEventually(oldID)
	}
	must(r.t, n.Wipe())
	must(r.t, n.Start(r.c.JoinArgs(l)...))
	if err := r.c.WaitVoters(voters, 30*time.Second); err != nil {
		r.t.Fatalf("after node %d joined again: %v", n.Index, err)
	}
	if st := r.statusOf(n); st.ID == oldID || st.Mode != "cluster" || st.ID == 0 {
		r.t.Errorf("node %d joined again as %+v; want a new id (not %d) in cluster mode", n.Index, st, oldID)
	}
}

// checkHas checks that n holds every key in keys with value "1": its whole
// local state, and linearizable reads of a sample.
func (r *run) checkHas(n *chaos.Node, keys []string, when string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := n.State(ctx)
	if err != nil {
		r.t.Errorf("%s: GET /kv?consistency=local: %v", when, err)
	}
	var missing []string
	for _, k := range keys {
		if state[k] != "1" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		r.t.Errorf("%s: %d of %d acknowledged keys missing locally, e.g. %v", when, len(missing), len(keys), missing[:min(5, len(missing))])
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, k := range spread(keys, 100) {
		if code, b, err := get(client, n.URL()+"/kv/"+k); err != nil || code != 200 || string(b) != "1" {
			r.t.Errorf("%s: linearizable GET /kv/%s: %d %v %q", when, k, code, err, b)
			return
		}
	}
	r.t.Logf("%s: all %d acknowledged keys present", when, len(keys))
}

func get(client *http.Client, url string) (int, []byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// spread returns at most n elements of s, evenly spaced, the last included.
func spread(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, s[(i+1)*len(s)/n-1])
	}
	return out
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 600 {
		s = "..." + s[len(s)-600:]
	}
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}
