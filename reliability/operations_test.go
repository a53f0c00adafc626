package reliability_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/embedraft/embedraft/internal/chaos"
)

// Operations the README documents, run as scenarios of the operator list:
// moving a member to a new address, recovering from quorum loss with
// -force-new-cluster, and a rolling restart.

// moveWithin bounds how long every member may take to list a moved member
// at its new address.
const moveWithin = 20 * time.Second

// moveMember moves a follower, then the leader, to a new port.
func moveMember(r *run) {
	r.moveNode(r.follower())
	r.moveNode(r.leader())
}

// moveNode stops n (SIGTERM or kill -9, at random) and restarts it on its
// data directory at its spare port, with its flags unchanged (its -id and
// -peers still name the old address, and no -advertise). It must keep its
// id, and every member must list it at the new address within moveWithin.
func (r *run) moveNode(n *chaos.Node) {
	r.t.Helper()
	st := r.statusOf(n)
	old := n.URL()
	how := "SIGTERM"
	if r.rng.IntN(2) == 0 {
		how = "kill -9"
		if st.State == "leader" {
			r.leaderKills = append(r.leaderKills, time.Now())
		}
		must(r.t, n.Kill())
	} else {
		must(r.t, n.Stop())
	}
	must(r.t, n.Move())
	must(r.t, n.Restart())
	start := time.Now()
	if err := r.waitAddress(st.ID, n.URL(), moveWithin); err != nil {
		r.t.Errorf("%s (%s) of member %d, restarted at %s (was %s): %v", how, st.State, st.ID, n.URL(), old, err)
		return
	}
	if now := r.statusOf(n); now.ID != st.ID || now.ClusterID != st.ClusterID || now.Mode != "cluster" {
		r.t.Errorf("moved member %d came back as %+v", st.ID, now)
	}
	r.t.Logf("%s of %s %d, restarted at %s (was %s): every member lists it there after %v",
		how, st.State, st.ID, n.URL(), old, time.Since(start).Round(time.Millisecond))
}

// waitAddress waits until every running node lists member id at addr,
// with the cluster's three members.
func (r *run) waitAddress(id uint64, addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	why := ""
	for time.Now().Before(deadline) {
		if why = r.addressWhy(id, addr); why == "" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("after %v: %s", d, why)
}

func (r *run) addressWhy(id uint64, addr string) string {
	for _, n := range r.c.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		pl, err := n.Peers(ctx)
		cancel()
		if err != nil {
			return fmt.Sprintf("node %d: %v", n.Index, err)
		}
		m, ok := pl.Peers[strconv.FormatUint(id, 10)]
		switch {
		case !ok:
			return fmt.Sprintf("node %d does not list member %d: %+v", n.Index, id, pl.Peers)
		case m.Addr != addr:
			return fmt.Sprintf("node %d lists member %d at %s", n.Index, id, m.Addr)
		case len(pl.Peers) != 3:
			return fmt.Sprintf("node %d lists %d members", n.Index, len(pl.Peers))
		}
	}
	return ""
}

// quorumLossForceNewCluster: traffic stops; two of three members are
// killed and lose their data; the one left (the most advanced) restarts
// with -force-new-cluster and must lead a one-member cluster with every
// acknowledged write, keeping its id and the cluster id. Two fresh nodes
// join it (new ids), traffic resumes, and a later restart with the flag
// still given must keep the three members.
func quorumLossForceNewCluster(r *run) {
	r.pauseTraffic()
	acked := r.w.AckedUniqueKeys()
	nodes := r.c.Nodes[:3]
	sts := make([]chaos.Status, len(nodes))
	oldIDs := map[uint64]bool{}
	var best uint64
	for i, n := range nodes {
		sts[i] = r.statusOf(n)
		oldIDs[sts[i].ID] = true
		best = max(best, sts[i].Commit)
	}
	var candidates []int
	for i, st := range sts {
		if st.Commit == best {
			candidates = append(candidates, i)
		}
	}
	k := candidates[r.rng.IntN(len(candidates))]
	s, was := nodes[k], sts[k]
	r.t.Logf("before the loss: %s; %d unique writes acknowledged; node %d (%s, commit %d) survives",
		commits(nodes, sts), len(acked), s.Index, was.State, was.Commit)
	for _, n := range nodes {
		if n != s {
			must(r.t, n.Kill())
			must(r.t, n.Wipe())
		}
	}
	if was.State == "leader" {
		r.leaderKills = append(r.leaderKills, time.Now())
	}
	must(r.t, s.Kill())
	must(r.t, s.Start(append(s.Args(), "-force-new-cluster")...))
	start := time.Now()
	l, err := r.c.WaitLeader(20 * time.Second)
	if err != nil {
		r.t.Fatalf("survivor restarted with -force-new-cluster: %v", err)
	}
	st := r.statusOf(s)
	if l != s || st.ID != was.ID || st.ClusterID != was.ClusterID || st.Mode != "cluster" {
		r.t.Errorf("survivor restarted with -force-new-cluster: %+v, want leader with id %d in cluster %s", st, was.ID, was.ClusterID)
	}
	if err := r.c.WaitVoters(1, 10*time.Second); err != nil {
		r.t.Errorf("survivor restarted with -force-new-cluster: %v", err)
	}
	r.t.Logf("survivor %d leads a one-member cluster %v after its restart", st.ID, time.Since(start).Round(time.Millisecond))
	r.checkHas(s, acked, "survivor restarted with -force-new-cluster")
	for i, n := range nodes {
		if n == s {
			continue
		}
		must(r.t, n.Start(r.c.JoinArgs(s)...))
		if err := r.c.WaitVoters(len(r.c.Running()), 30*time.Second); err != nil {
			r.t.Fatalf("fresh node %d joining the survivor: %v", n.Index, err)
		}
		if got := r.statusOf(n); oldIDs[got.ID] || got.ClusterID != was.ClusterID {
			r.t.Errorf("fresh node %d joined as %+v; want a new id (not %d) in cluster %s", n.Index, got, sts[i].ID, was.ClusterID)
		}
	}
	r.resumeTraffic()
	r.expectServing("after the new members joined")

	// One-shot: the flag is still in the survivor's arguments.
	st = r.statusOf(s)
	if st.State == "leader" {
		r.leaderKills = append(r.leaderKills, time.Now())
	}
	must(r.t, s.Kill())
	must(r.t, s.Restart())
	if err := r.c.WaitVoters(3, 30*time.Second); err != nil {
		r.t.Errorf("survivor restarted again with -force-new-cluster still given: %v", err)
	}
	if again := r.statusOf(s); again.ID != was.ID || again.Mode != "cluster" {
		r.t.Errorf("survivor restarted again: %+v", again)
	}
}

func commits(nodes []*chaos.Node, sts []chaos.Status) string {
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = fmt.Sprintf("node %d %s commit %d", n.Index, sts[i].State, sts[i].Commit)
	}
	return strings.Join(parts, ", ")
}

// pauseTraffic stops every client and waits until no request is in flight.
func (r *run) pauseTraffic() {
	r.t.Helper()
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for quiet := 0; quiet < 2; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			r.t.Fatalf("%d client requests still in flight 15 s after traffic stopped", r.w.InFlight())
		}
		quiet++
		if r.w.InFlight() > 0 {
			quiet = 0
		}
	}
}

func (r *run) resumeTraffic() {
	r.mu.Lock()
	r.paused = false
	r.mu.Unlock()
}

// restartWindow is when a node was being restarted: from just before its
// SIGTERM until it was back and caught up.
type restartWindow struct {
	node     int
	from, to time.Time
}

// rollingRestart restarts each member in turn with SIGTERM and the same
// flags, waiting until all are caught up before the next.
func rollingRestart(r *run) {
	for _, n := range r.c.Nodes[:3] {
		st := r.statusOf(n)
		commit := r.statusOf(r.leader()).Commit
		from := time.Now()
		must(r.t, n.Stop())
		down := time.Since(from)
		must(r.t, n.Restart())
		if err := r.waitCaughtUp(n, commit, 30*time.Second); err != nil {
			r.t.Fatalf("after restarting node %d: %v", n.Index, err)
		}
		to := time.Now()
		r.mu.Lock()
		r.restarts = append(r.restarts, restartWindow{n.Index, from, to})
		r.mu.Unlock()
		r.t.Logf("node %d (%s): SIGTERM to exit %v, back and caught up %v later",
			n.Index, st.State, down.Round(time.Millisecond), to.Sub(from.Add(down)).Round(time.Millisecond))
	}
}

// waitCaughtUp waits until every running node knows a leader and has
// applied its commit index, and n has applied at least atLeast.
func (r *run) waitCaughtUp(n *chaos.Node, atLeast uint64, d time.Duration) error {
	deadline := time.Now().Add(d)
	why := ""
	for time.Now().Before(deadline) {
		if why = r.caughtUpWhy(n, atLeast); why == "" {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not caught up after %v: %s", d, why)
}

func (r *run) caughtUpWhy(restarted *chaos.Node, atLeast uint64) string {
	for _, n := range r.c.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := n.Status(ctx)
		cancel()
		switch {
		case err != nil:
			return fmt.Sprintf("node %d: %v", n.Index, err)
		case st.Leader == 0:
			return fmt.Sprintf("node %d knows no leader", n.Index)
		case st.Applied != st.Commit:
			return fmt.Sprintf("node %d applied %d of %d", n.Index, st.Applied, st.Commit)
		case n == restarted && st.Applied < atLeast:
			return fmt.Sprintf("node %d applied %d, the leader had committed %d before its restart", n.Index, st.Applied, atLeast)
		}
	}
	return ""
}

// rollingRestartAfter checks the clients' failed writes: each must have
// been answered 503, or failed to connect to the node being restarted at
// that moment. It logs the figures.
func rollingRestartAfter(r *run) {
	r.mu.Lock()
	windows := slices.Clone(r.restarts)
	r.mu.Unlock()
	if len(windows) == 0 {
		return // the fault stopped early and said why
	}
	restarting := func(f chaos.WriteFailure) bool {
		for _, w := range windows {
			if w.node == f.Node && !f.Return.Before(w.from) && !f.Call.After(w.to) {
				return true
			}
		}
		return false
	}
	byStatus := map[string]int{}
	var unavailable, connRestarting int
	var bad []string
	var unsure []chaos.WriteFailure // unique keys answered neither 2xx nor 503
	for _, f := range r.w.Failures() {
		switch {
		case f.Status == 503:
			unavailable++
			continue
		case f.Status == 0 && restarting(f):
			connRestarting++
			continue
		case f.Status != 0:
			byStatus[fmt.Sprintf("%d %s", f.Status, f.Code)]++
			bad = append(bad, fmt.Sprintf("node %d (restarting=%v) answered %d %s at %s", f.Node, restarting(f), f.Status, f.Code, f.Return.Format("15:04:05.000")))
		default:
			byStatus["connection error"]++
			bad = append(bad, fmt.Sprintf("node %d (not being restarted): %s at %s", f.Node, f.Err, f.Return.Format("15:04:05.000")))
		}
		if strings.HasPrefix(f.Key, "u-") {
			unsure = append(unsure, f)
		}
	}
	s := r.w.Stats()
	first, last := windows[0].from, windows[len(windows)-1].to
	gap, at := r.w.MaxAckGap(first, last)
	r.t.Logf("rolling restart over %v: writes attempted=%d acknowledged=%d failed=%d: 503=%d, connection errors to the node being restarted=%d, anything else=%d %v; max pause between acknowledged writes %v (from %s)",
		last.Sub(first).Round(time.Millisecond), s.Attempted, s.Acknowledged, unavailable+connRestarting+len(bad),
		unavailable, connRestarting, len(bad), byStatus, gap.Round(time.Millisecond), at.Format("15:04:05.000"))
	if len(bad) == 0 {
		return
	}
	r.t.Errorf("%d failed writes were neither 503 nor a connection error to the node being restarted, e.g. %v", len(bad), bad[:min(5, len(bad))])
	if len(unsure) == 0 {
		return
	}
	// Say whether those writes took effect after all (unique keys only).
	conv, err := r.c.WaitConverged(45 * time.Second)
	if err != nil {
		return // the end checks report it
	}
	applied := 0
	for _, f := range unsure {
		if conv.State[f.Key] == f.Value {
			applied++
		}
	}
	r.t.Logf("of those, %d wrote a unique key: %d of them were applied after all", len(unsure), applied)
}
