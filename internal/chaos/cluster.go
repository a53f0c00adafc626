package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options shape a test cluster.
type Options struct {
	Bin           string // the demo binary (BuildDemo)
	Size          int    // members bootstrapped statically (default 3)
	Spare         int    // extra slots for nodes that join later
	SnapshotCount int    // -snapshot-count (default 200)
	LogDir        string // where node logs go (default a test temp dir)
	// TLS runs every node over mutual TLS with certificates of one
	// throwaway CA (see tls.go); nodes advertise https:// URLs.
	TLS bool
}

// Cluster is a set of demo processes wired through a proxy per direction
// per pair of nodes and per address of the target (its port and its spare
// port, see Node.Move).
type Cluster struct {
	T       testing.TB
	Nodes   []*Node           // all slots; Nodes[i].Index == i+1
	proxies map[[3]int]*Proxy // {from, to, to's port} -> proxy
	opt     Options

	tls *clusterTLS // nil without Options.TLS

	stopMon chan struct{}
	monDone chan struct{}
	monMu   sync.Mutex
	leaders map[uint64]map[uint64]bool // term -> ids that said they were leader
}

// NewCluster allocates Size+Spare slots, starts the first Size as a static
// cluster and waits for a leader.
func NewCluster(t testing.TB, opt Options) *Cluster {
	t.Helper()
	c := newSlots(t, opt)
	peers := peersFlag(c.Nodes[:c.opt.Size])
	for _, n := range c.Nodes[:c.opt.Size] {
		if err := n.Start("-id", strconv.Itoa(n.Index), "-peers", peers, "-snapshot-count", strconv.Itoa(c.opt.SnapshotCount)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitLeader(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	return c
}

// NewStandalone starts the first slot as a standalone node (no flags but
// its address and data directory); the Spare slots can join it later.
func NewStandalone(t testing.TB, opt Options) *Cluster {
	t.Helper()
	opt.Size = 1
	c := newSlots(t, opt)
	if err := c.Nodes[0].Start("-snapshot-count", strconv.Itoa(c.opt.SnapshotCount)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Nodes[0].Status(ctx)
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("standalone node never answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newSlots allocates the slots and their proxies and starts the monitor.
func newSlots(t testing.TB, opt Options) *Cluster {
	t.Helper()
	if opt.Size == 0 {
		opt.Size = 3
	}
	if opt.SnapshotCount == 0 {
		opt.SnapshotCount = 200
	}
	if opt.LogDir == "" {
		opt.LogDir = t.TempDir()
	}
	c := &Cluster{T: t, opt: opt, proxies: map[[3]int]*Proxy{}, leaders: map[uint64]map[uint64]bool{}}
	total := opt.Size + opt.Spare
	base := t.TempDir()
	scheme := "http"
	if opt.TLS {
		var err error
		if c.tls, err = newClusterTLS(filepath.Join(base, "tls"), total); err != nil {
			t.Fatal(err)
		}
		scheme = "https"
	}
	held, err := holdPorts(total)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= total; i++ {
		port := held[i-1].Addr().(*net.TCPAddr).Port
		n := &Node{
			Index: i, port: port, scheme: scheme, url: fmt.Sprintf("%s://127.0.0.1:%d", scheme, port),
			Dir: filepath.Join(base, fmt.Sprintf("n%d", i)), LogPath: filepath.Join(opt.LogDir, fmt.Sprintf("n%d.log", i)),
			bin: opt.Bin, held: []net.Listener{held[i-1]},
		}
		if c.tls != nil {
			n.tlsArgs, n.client = c.tls.nodeArgs[i-1], c.tls.admin
		}
		c.Nodes = append(c.Nodes, n)
		if err := n.reserveSpare(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.shutdown)
	for _, from := range c.Nodes {
		var dial []string
		for _, to := range c.Nodes {
			if from == to {
				continue
			}
			for _, port := range []int{to.port, to.sparePort} {
				p, err := NewProxy(fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					t.Fatal(err)
				}
				c.proxies[[3]int{from.Index, to.Index, port}] = p
				dial = append(dial, fmt.Sprintf("%s://127.0.0.1:%d=%s://%s", scheme, port, scheme, p.Addr()))
			}
		}
		from.env = []string{"EMBEDRAFT_TEST_DIAL=" + strings.Join(dial, ",")}
	}
	c.stopMon, c.monDone = make(chan struct{}), make(chan struct{})
	go c.monitor() // exits when shutdown closes stopMon
	return c
}

// JoinArgs are the flags for slot n to join through target.
func (c *Cluster) JoinArgs(target *Node) []string {
	return []string{"-join", target.URL(), "-snapshot-count", strconv.Itoa(c.opt.SnapshotCount)}
}

func (c *Cluster) shutdown() {
	if c.stopMon != nil {
		close(c.stopMon)
		<-c.monDone
	}
	for _, n := range c.Nodes {
		_ = n.Kill() // a node that exited by itself was reported already
		n.releaseSpare()
	}
	for _, p := range c.proxies {
		p.Close()
	}
}

// Isolate cuts every connection to and from node k (both directions).
func (c *Cluster) Isolate(k int) {
	for key, p := range c.proxies {
		if key[0] == k || key[1] == k {
			p.SetBlackhole(true)
		}
	}
}

// CutOneWay blackholes the connections from dials to (at both its
// addresses).
func (c *Cluster) CutOneWay(from, to int) {
	for key, p := range c.proxies {
		if key[0] == from && key[1] == to {
			p.SetBlackhole(true)
		}
	}
}

// DelayAll delays every proxied chunk by d plus up to jitter.
func (c *Cluster) DelayAll(d, jitter time.Duration) {
	for _, p := range c.proxies {
		p.SetDelay(d, jitter)
	}
}

// DropAllConns resets every proxied connection.
func (c *Cluster) DropAllConns() {
	for _, p := range c.proxies {
		p.DropConns()
	}
}

// HealAll removes every network fault.
func (c *Cluster) HealAll() {
	for _, p := range c.proxies {
		p.Heal()
	}
}

// Running returns the nodes whose process is alive.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Members returns the running nodes that are in cluster mode (not removed).
func (c *Cluster) Members() []*Node {
	var out []*Node
	for _, n := range c.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := n.Status(ctx)
		cancel()
		if err == nil && st.Mode == "cluster" {
			out = append(out, n)
		}
	}
	return out
}

// WaitLeader waits until every running member agrees on a leader and
// returns its node.
func (c *Cluster) WaitLeader(timeout time.Duration) (*Node, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		lead, why := c.agreedLeader()
		if lead != nil {
			return lead, nil
		}
		last = why
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("no agreed leader after %v: %s", timeout, last)
}

func (c *Cluster) agreedLeader() (*Node, string) {
	var leadID uint64
	var leader *Node
	for _, n := range c.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := n.Status(ctx)
		cancel()
		if err != nil {
			return nil, fmt.Sprintf("node %d: %v", n.Index, err)
		}
		if st.Mode == "removed" {
			continue
		}
		if st.Leader == 0 || (leadID != 0 && st.Leader != leadID) {
			return nil, fmt.Sprintf("node %d sees leader %d, others %d", n.Index, st.Leader, leadID)
		}
		leadID = st.Leader
		if st.State == "leader" && st.ID == leadID {
			leader = n
		}
	}
	if leader == nil {
		return nil, fmt.Sprintf("leader %d not among the running nodes", leadID)
	}
	return leader, ""
}

// Converged is the outcome of WaitConverged.
type Converged struct {
	Applied uint64
	State   map[string]string
}

// WaitConverged waits until every running member has applied the same
// index and holds the same state.
func (c *Cluster) WaitConverged(timeout time.Duration) (Converged, error) {
	deadline := time.Now().Add(timeout)
	var why string
	for time.Now().Before(deadline) {
		conv, err := c.converged()
		if err == nil {
			return conv, nil
		}
		why = err.Error()
		time.Sleep(100 * time.Millisecond)
	}
	return Converged{}, fmt.Errorf("not converged after %v: %s", timeout, why)
}

func (c *Cluster) converged() (Converged, error) {
	var first *Converged
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range c.Members() {
		st, err := n.Status(ctx)
		if err != nil {
			return Converged{}, err
		}
		state, err := n.State(ctx)
		if err != nil {
			return Converged{}, err
		}
		st2, err := n.Status(ctx)
		if err != nil || st2.Applied != st.Applied {
			return Converged{}, fmt.Errorf("node %d still applying", n.Index)
		}
		if first == nil {
			first = &Converged{Applied: st.Applied, State: state}
			continue
		}
		if st.Applied != first.Applied {
			return Converged{}, fmt.Errorf("node %d applied %d, another %d", n.Index, st.Applied, first.Applied)
		}
		if d := diff(first.State, state); d != "" {
			return Converged{}, fmt.Errorf("node %d state differs: %s", n.Index, d)
		}
	}
	if first == nil {
		return Converged{}, fmt.Errorf("no running member")
	}
	return *first, nil
}

func diff(a, b map[string]string) string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			out = append(out, fmt.Sprintf("%s: %q vs %q", k, v, w))
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("%s: absent vs %q", k, w))
		}
	}
	sort.Strings(out)
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("and %d more", len(out)-5))
	}
	return strings.Join(out, "; ")
}

// monitor records which node claims leadership in which term.
func (c *Cluster) monitor() {
	defer close(c.monDone)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stopMon:
			return
		case <-t.C:
		}
		for _, n := range c.Running() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			st, err := n.Status(ctx)
			cancel()
			if err != nil || st.State != "leader" || st.Mode != "cluster" {
				continue
			}
			c.monMu.Lock()
			if c.leaders[st.Term] == nil {
				c.leaders[st.Term] = map[uint64]bool{}
			}
			c.leaders[st.Term][st.ID] = true
			c.monMu.Unlock()
		}
	}
}

// LeaderViolations lists terms in which more than one node said it was
// leader.
func (c *Cluster) LeaderViolations() []string {
	c.monMu.Lock()
	defer c.monMu.Unlock()
	var out []string
	for term, ids := range c.leaders {
		if len(ids) > 1 {
			out = append(out, fmt.Sprintf("term %d: leaders %v", term, ids))
		}
	}
	return out
}

// LogProblems scans every node log for panics, fatal errors, races, and a
// demo that exited with an error.
func (c *Cluster) LogProblems() []string {
	var out []string
	for _, n := range c.Nodes {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			continue
		}
		for _, bad := range []string{"panic:", "fatal error:", "DATA RACE", "http: panic serving", "\ndemo: "} {
			// An error exit the scenario asked for (ExpectExit, WaitExit)
			// is not a problem; a panic is, wherever it is.
			if i := n.findProblem(string(b), bad, bad == "\ndemo: "); i >= 0 {
				end := min(len(b), i+300)
				out = append(out, fmt.Sprintf("node %d log: %s", n.Index, b[i:end]))
			}
		}
	}
	return out
}
