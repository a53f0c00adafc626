// Package reliability runs the demo as real processes under injected faults
// and checks what clients saw: linearizability (porcupine), no lost
// acknowledged write, convergence, one leader per term, no panics.
//
// The default run (go test ./...) runs every scenario once, short. Set
// EMBEDRAFT_ROUNDS=N for N randomized rounds (TestReliabilityRounds), and
// EMBEDRAFT_CHAOS_LOGS=DIR to keep node logs and failure visualizations.
package reliability_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/embedraft/embedraft/internal/chaos"
)

var demoBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "embedraft-reliability")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if testing.Short() {
		os.Exit(m.Run())
	}
	demoBin, err = chaos.BuildDemo(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run is one scenario execution.
type run struct {
	t   *testing.T
	c   *chaos.Cluster
	w   *chaos.Workload
	rng *rand.Rand
	// leaderKills are the moments a leader was killed (for recovery time).
	leaderKills []time.Time
	// expectMembers is how many members the cluster has at the end.
	expectMembers int
	// restarts are the windows in which a node was deliberately down
	// (rolling-restart).
	restarts []restartWindow
	// avoid holds nodes clients stay away from for a while; paused stops
	// every client (pauseTraffic).
	mu     sync.Mutex
	avoid  map[*chaos.Node]bool
	paused bool
	// counter is the idempotent-retries scenario's increment clients.
	counter *incrementer
	// burst is kill-follower-busy-stream's writes through the follower.
	burst *burst
}

// targets are the running nodes clients may use.
func (r *run) targets() []*chaos.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.paused {
		return nil
	}
	var out []*chaos.Node
	for _, n := range r.c.Running() {
		if !r.avoid[n] {
			out = append(out, n)
		}
	}
	return out
}

func (r *run) setAvoid(n *chaos.Node, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.avoid[n] = on
}

// scenario injects one fault mid-traffic and heals it before returning.
type scenario struct {
	name  string
	spare int // extra node slots (joins)
	snap  int // -snapshot-count (0: 200)
	fault func(r *run)
	// after, if set, runs once traffic has stopped, before the end checks.
	after func(r *run)
	// form starts the cluster (nil: chaos.NewCluster, a static cluster).
	form func(testing.TB, chaos.Options) *chaos.Cluster
	// tls runs the cluster over mutual TLS (chaos.Options.TLS).
	tls bool
}

var scenarios = []scenario{
	{name: "kill-follower", fault: func(r *run) {
		f := r.follower()
		must(r.t, f.Kill())
		r.sleep(2 * time.Second)
		must(r.t, f.Restart())
	}},
	{name: "kill-follower-busy-stream", fault: killFollowerBusyStream, after: killFollowerBusyStreamAfter},
	{name: "kill-leader", fault: func(r *run) {
		l := r.leader()
		r.leaderKills = append(r.leaderKills, time.Now())
		must(r.t, l.Kill())
		r.sleep(2 * time.Second)
		must(r.t, l.Restart())
	}},
	{name: "kill-all-restart", fault: func(r *run) {
		for _, n := range r.c.Running() {
			must(r.t, n.Kill())
		}
		for _, n := range r.c.Nodes[:3] {
			must(r.t, n.Restart())
		}
	}},
	{name: "pause-leader", fault: func(r *run) {
		l := r.leader()
		must(r.t, l.Pause())
		r.sleep(3 * time.Second)
		must(r.t, l.Resume())
	}},
	{name: "isolate-leader", fault: func(r *run) {
		l := r.leader()
		r.c.Isolate(l.Index)
		r.sleep(3 * time.Second)
		r.c.HealAll()
	}},
	{name: "one-way-cut-from-leader", fault: func(r *run) {
		l := r.leader()
		for _, n := range r.c.Nodes[:3] {
			if n != l {
				r.c.CutOneWay(l.Index, n.Index)
			}
		}
		r.sleep(3 * time.Second)
		r.c.HealAll()
	}},
	{name: "delay-and-drops", fault: func(r *run) {
		r.c.DelayAll(5*time.Millisecond, 15*time.Millisecond)
		for range 6 {
			r.sleep(500 * time.Millisecond)
			r.c.DropAllConns()
		}
		r.c.HealAll()
	}},
	{name: "follower-needs-snapshot", snap: 40, fault: func(r *run) {
		f := r.follower()
		r.setAvoid(f, true) // clients keep the others busy so they compact past it
		r.c.Isolate(f.Index)
		r.sleep(3 * time.Second)
		r.c.HealAll()
		r.setAvoid(f, false)
		r.sleep(time.Duration(r.rng.IntN(300)) * time.Millisecond)
		must(r.t, f.Kill()) // possibly while it installs the snapshot
		must(r.t, f.Restart())
	}},
	{name: "kill-leader-during-join", spare: 1, fault: func(r *run) {
		joiner := r.c.Nodes[3]
		must(r.t, joiner.Start(r.c.JoinArgs(r.follower())...))
		l := r.leader()
		r.leaderKills = append(r.leaderKills, time.Now())
		must(r.t, l.Kill())
		r.sleep(1500 * time.Millisecond)
		must(r.t, l.Restart())
		r.expectMembers = 4
	}},
	{name: "kill-leader-during-removal", fault: func(r *run) {
		f, l := r.follower(), r.leader()
		id := r.statusOf(f).ID
		done := make(chan struct{})
		go func() { // returns after one attempt
			defer close(done)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _, _ = l.Post(ctx, "/raft/api/deleteNode", map[string]uint64{"id": id})
		}()
		r.sleep(time.Duration(r.rng.IntN(50)) * time.Millisecond)
		r.leaderKills = append(r.leaderKills, time.Now())
		must(r.t, l.Kill())
		<-done
		r.sleep(time.Second)
		must(r.t, l.Restart())
		// The removal may or may not have committed; finish it for a known end.
		r.removeEventually(id)
		r.expectMembers = 2
	}},
	{name: "remove-and-readd-wiped", fault: func(r *run) {
		f := r.follower()
		id := r.statusOf(f).ID
		r.removeEventually(id)
		must(r.t, f.Kill())
		must(r.t, f.Wipe())
		must(r.t, f.Start(r.c.JoinArgs(r.leader())...))
		r.sleep(time.Second)
		if st := r.statusOf(f); st.ID == id || st.Mode != "cluster" {
			r.t.Errorf("re-added node: %+v (old id %d)", st, id)
		}
	}},
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (r *run) sleep(d time.Duration) { time.Sleep(d) }

func (r *run) leader() *chaos.Node {
	r.t.Helper()
	l, err := r.c.WaitLeader(20 * time.Second)
	must(r.t, err)
	return l
}

func (r *run) follower() *chaos.Node {
	r.t.Helper()
	l := r.leader()
	for _, n := range r.c.Running() {
		if n != l && r.statusOf(n).Mode == "cluster" {
			return n
		}
	}
	r.t.Fatal("no follower")
	return nil
}

func (r *run) statusOf(n *chaos.Node) chaos.Status {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.Status(ctx)
	must(r.t, err)
	return st
}

// removeEventually retries deleteNode of id until the cluster no longer
// has it.
func (r *run) removeEventually(id uint64) {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		l, err := r.c.WaitLeader(10 * time.Second)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		code, body, err := l.Post(ctx, "/raft/api/deleteNode", map[string]uint64{"id": id})
		cancel()
		if err == nil && (code == 200 || (code == 404 && strings.Contains(string(body), "already removed"))) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.t.Fatalf("member %d could not be removed", id)
}

// result is what one scenario run measured.
type result struct {
	scenario      string
	stats         chaos.Stats
	lost          int
	verdict       porcupine.CheckResult
	recoveries    []time.Duration // leader kill -> first acknowledged write
	problems      []string
	visualization string
}

func runScenario(t *testing.T, sc scenario, seed uint64, traffic time.Duration) result {
	logDir := os.Getenv("EMBEDRAFT_CHAOS_LOGS")
	if logDir != "" {
		logDir = filepath.Join(logDir, fmt.Sprintf("%s-%d", sc.name, seed))
		must(t, os.MkdirAll(logDir, 0o755))
	}
	form := chaos.NewCluster
	if sc.form != nil {
		form = sc.form
	}
	c := form(t, chaos.Options{Bin: demoBin, Size: 3, Spare: sc.spare, SnapshotCount: sc.snap, LogDir: logDir, TLS: sc.tls})
	r := &run{t: t, c: c, rng: rand.New(rand.NewPCG(seed, 7)), expectMembers: 3, avoid: map[*chaos.Node]bool{}}
	w := &chaos.Workload{Clients: 6, HotKeys: 4, Targets: r.targets, Start: time.Now(), TLS: c.ClientTLS()}
	r.w = w
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // a scenario that stops early stops its clients too
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.Run(ctx) }() // ends on cancel
	r.sleep(traffic)
	sc.fault(r)
	r.sleep(traffic)
	cancel()
	wg.Wait()
	if sc.after != nil {
		sc.after(r)
	}

	res := result{scenario: sc.name, stats: w.Stats()}
	c.HealAll()
	conv, err := c.WaitConverged(45 * time.Second)
	if err != nil {
		res.problems = append(res.problems, err.Error())
	} else {
		members := c.Members()
		if len(members) != r.expectMembers {
			res.problems = append(res.problems, fmt.Sprintf("%d members at the end, want %d", len(members), r.expectMembers))
		}
		for _, k := range w.AckedUniqueKeys() {
			if conv.State[k] != "1" {
				res.lost++
			}
		}
		fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := w.FinalReads(fctx, members); err != nil {
			res.problems = append(res.problems, err.Error())
		}
		fcancel()
	}
	visDir := logDir
	if visDir == "" {
		visDir = t.TempDir()
	}
	res.verdict, res.visualization, err = chaos.CheckLinearizable(w.History(), visDir, 60*time.Second)
	if err != nil {
		res.problems = append(res.problems, err.Error())
	}
	for _, k := range r.leaderKills {
		if d, ok := w.FirstAckAfter(k); ok {
			res.recoveries = append(res.recoveries, d)
		}
	}
	res.problems = append(res.problems, c.LeaderViolations()...)
	res.problems = append(res.problems, c.LogProblems()...)
	return res
}

func (res result) check(t *testing.T) {
	t.Helper()
	s := res.stats
	t.Logf("%s: attempted=%d acknowledged=%d indeterminate=%d rejected=%d reads=%d lost=%d linearizable=%s recoveries=%v",
		res.scenario, s.Attempted, s.Acknowledged, s.Indeterminate, s.Rejected, s.Reads, res.lost, verdictName(res.verdict), res.recoveries)
	if res.lost > 0 {
		t.Errorf("%d acknowledged writes lost", res.lost)
	}
	if res.verdict != porcupine.Ok {
		t.Errorf("history is not linearizable (%s); visualization: %s", verdictName(res.verdict), res.visualization)
	}
	if s.Acknowledged == 0 {
		t.Errorf("no write was acknowledged")
	}
	for _, p := range res.problems {
		t.Error(p)
	}
}

func verdictName(r porcupine.CheckResult) string {
	switch r {
	case porcupine.Ok:
		return "ok"
	case porcupine.Illegal:
		return "ILLEGAL"
	default:
		return "UNKNOWN"
	}
}

// TestReliability runs every scenario once, short.
func TestReliability(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			runScenario(t, sc, uint64(i+1), 1500*time.Millisecond).check(t)
		})
	}
}

// TestReliabilityRounds runs EMBEDRAFT_ROUNDS randomized scenario runs and
// prints a summary table.
func TestReliabilityRounds(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("EMBEDRAFT_ROUNDS"))
	if rounds == 0 {
		t.Skip("set EMBEDRAFT_ROUNDS=N for the long tier")
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	var all []result
	pool := append(append([]scenario(nil), scenarios...), operatorScenarios...)
	for i := range rounds {
		sc := pool[rng.IntN(len(pool))]
		traffic := time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		t.Run(fmt.Sprintf("%03d-%s", i, sc.name), func(t *testing.T) {
			res := runScenario(t, sc, seed+uint64(i), traffic)
			res.check(t)
			all = append(all, res)
		})
	}
	t.Log("\n" + summarize(all))
}

// summarize renders the per-scenario totals as a markdown table.
func summarize(all []result) string {
	type agg struct {
		runs, attempted, acked, indet, lost, notOK int
	}
	by := map[string]*agg{}
	var rec []time.Duration
	for _, r := range all {
		a := by[r.scenario]
		if a == nil {
			a = &agg{}
			by[r.scenario] = a
		}
		a.runs++
		a.attempted += r.stats.Attempted
		a.acked += r.stats.Acknowledged
		a.indet += r.stats.Indeterminate
		a.lost += r.lost
		if r.verdict != porcupine.Ok {
			a.notOK++
		}
		rec = append(rec, r.recoveries...)
	}
	names := make([]string, 0, len(by))
	for n := range by {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("| scenario | runs | writes attempted | acknowledged | indeterminate | acked lost | not linearizable |\n|---|---|---|---|---|---|---|\n")
	var tot agg
	for _, n := range names {
		a := by[n]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d |\n", n, a.runs, a.attempted, a.acked, a.indet, a.lost, a.notOK)
		tot.runs += a.runs
		tot.attempted += a.attempted
		tot.acked += a.acked
		tot.indet += a.indet
		tot.lost += a.lost
		tot.notOK += a.notOK
	}
	fmt.Fprintf(&b, "| total | %d | %d | %d | %d | %d | %d |\n", tot.runs, tot.attempted, tot.acked, tot.indet, tot.lost, tot.notOK)
	if len(rec) > 0 {
		sort.Slice(rec, func(i, j int) bool { return rec[i] < rec[j] })
		p := func(q float64) time.Duration { return rec[min(len(rec)-1, int(q*float64(len(rec))))] }
		fmt.Fprintf(&b, "\nleader kill -> first acknowledged write, %d kills: p50 %v, p99 %v, max %v\n",
			len(rec), p(0.50).Round(time.Millisecond), p(0.99).Round(time.Millisecond), rec[len(rec)-1].Round(time.Millisecond))
	}
	return b.String()
}
