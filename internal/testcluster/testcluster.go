// Package testcluster runs embedraft nodes in-process on real loopback
// listeners for tests: each member has its own port, data directory and
// http.Server, and can be stopped and restarted on the same address.
package testcluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
)

// Member is one node of a test cluster.
type Member struct {
	ID    uint64
	URL   string
	Dir   string
	Store *kvstore.Store
	Node  *embedraft.Node

	c    *Cluster
	cfg  embedraft.Config
	addr string
	srv  *http.Server
	done chan struct{}
}

// Cluster is a set of members.
type Cluster struct {
	T       testing.TB
	mu      sync.Mutex // guards Members while members join concurrently
	Members []*Member
	Client  *http.Client
	logs    *logSink
	base    string // parent of the members' data directories
	// wholeSnapshots hides the store's StreamSnapshotter from the nodes
	// (NewSingleWholeSnapshots).
	wholeSnapshots bool
}

// wholeService is the store without its StreamSnapshotter (and
// IndexedCommitter): snapshots and the switchover go through GetSnapshot
// and GetInit as one buffer.
type wholeService struct {
	embedraft.IService
	embedraft.ResultCommitter
}

// NewSingleWholeSnapshots is NewSingle with members (the first and those
// that join) whose service implements only IService and ResultCommitter.
func NewSingleWholeSnapshots(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return newSingle(t, true, opts)
}

// dataDir makes a new member data directory.
func (c *Cluster) dataDir() string {
	c.T.Helper()
	dir, err := os.MkdirTemp(c.base, "member")
	if err != nil {
		c.T.Fatalf("data dir: %v", err)
	}
	return dir
}

// Option adjusts every member's config.
type Option func(*embedraft.Config)

// probe applies opts to an empty config: options that set CertFile make the
// members serve https (node.ServerTLSConfig) and advertise https URLs, and
// with CAFile the cluster's Client trusts that CA (it presents no
// certificate: client routes only).
func (c *Cluster) probe(opts []Option) (scheme string) {
	var cfg embedraft.Config
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.CertFile == "" {
		return "http"
	}
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			c.T.Fatalf("read CA: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b)
		c.Client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	return "https"
}

// NewStatic starts an n-member static cluster and waits for a leader.
func NewStatic(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	c := newCluster(t)
	scheme := c.probe(opts)
	peers := map[uint64]string{}
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		lns[i] = ln
		peers[uint64(i+1)] = scheme + "://" + ln.Addr().String()
	}
	for i := range n {
		id := uint64(i + 1)
		cfg := embedraft.Config{ID: id, AdvertiseURL: peers[id], DataDir: c.dataDir(), Peers: peers}
		m := &Member{ID: id, URL: peers[id], Dir: cfg.DataDir, c: c, addr: lns[i].Addr().String()}
		m.cfg = c.configure(cfg, id, opts)
		c.Members = append(c.Members, m)
		if err := m.start(lns[i]); err != nil {
			t.Fatalf("start member %d: %v", id, err)
		}
	}
	c.WaitLeader(10 * time.Second)
	c.WaitStarted()
	return c
}

// WaitStarted waits until every running member records every voter as
// started (the leader's kindStarted entry), so that tests counting log
// entries see none appear later.
func (c *Cluster) WaitStarted() {
	c.T.Helper()
	Eventually(c.T, 10*time.Second, func() error {
		for _, m := range c.Running() {
			mv := m.Node.Membership()
			for _, p := range mv.Members {
				if p.Role == embedraft.RoleVoter && !slices.Contains(mv.Started, p.ID) {
					return fmt.Errorf("member %d does not yet record voter %d as started", m.ID, p.ID)
				}
			}
		}
		return nil
	})
}

// NewSingle starts one member with cfg adjusted by opts (standalone unless an
// option sets Cluster or Peers).
func NewSingle(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	return newSingle(t, false, opts)
}

func newSingle(t testing.TB, wholeSnapshots bool, opts []Option) *Cluster {
	t.Helper()
	c := newCluster(t)
	c.wholeSnapshots = wholeSnapshots
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	url := c.probe(opts) + "://" + ln.Addr().String()
	m := &Member{ID: 1, URL: url, Dir: c.dataDir(), c: c, addr: ln.Addr().String()}
	m.cfg = c.configure(embedraft.Config{AdvertiseURL: url, DataDir: m.Dir}, 1, opts)
	c.Members = append(c.Members, m)
	if err := m.start(ln); err != nil {
		t.Fatalf("start: %v", err)
	}
	return c
}

func newCluster(t testing.TB) *Cluster {
	c := &Cluster{T: t, logs: &logSink{t: t}, Client: &http.Client{Timeout: 30 * time.Second}}
	// Members' data directories live under one temporary directory made
	// here, before the cleanup that stops the nodes: cleanups run last
	// first, so it is removed only once every node is closed (a TempDir
	// made later would be removed while its node still writes).
	c.base = t.TempDir()
	// Registered first, so it runs last: logs stop after every node closed.
	t.Cleanup(c.logs.close)
	t.Cleanup(func() {
		for _, m := range c.Running() {
			m.Stop()
		}
		c.Client.CloseIdleConnections()
	})
	return c
}

func (c *Cluster) configure(cfg embedraft.Config, id uint64, opts []Option) embedraft.Config {
	cfg.Logger = slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelInfo})).
		With("member", id)
	// Fast timers keep the suite short; the raft ratios stay the defaults'.
	cfg.TickInterval = 20 * time.Millisecond
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

func (m *Member) start(ln net.Listener) error {
	m.Store = kvstore.New()
	if m.ID == 0 {
		m.cfg.Logger = m.cfg.Logger.With("addr", m.addr)
	}
	// As the demo does: standalone writes are durable in the store's own
	// log, written only while the node is standalone.
	var nodeRef atomic.Pointer[embedraft.Node]
	standalone := func() bool { n := nodeRef.Load(); return n != nil && n.Mode() == embedraft.ModeStandalone }
	if err := os.MkdirAll(m.cfg.DataDir, 0o750); err != nil {
		ln.Close()
		return err
	}
	if err := m.Store.OpenStandaloneLog(filepath.Join(m.cfg.DataDir, "standalone.log"), standalone); err != nil {
		ln.Close()
		return err
	}
	var svc embedraft.IService = m.Store
	if m.c.wholeSnapshots {
		svc = wholeService{m.Store, m.Store}
	}
	node, err := embedraft.New(m.cfg, svc)
	if err != nil {
		_ = m.Store.CloseStandaloneLog()
		ln.Close()
		return err
	}
	nodeRef.Store(node)
	m.Node = node
	m.Store.SetReader(node)
	mux := http.NewServeMux()
	mux.Handle("/kv", m.Store)
	mux.Handle("/kv/", m.Store)
	mux.Handle("/", node.Handler())
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(m.c.logs, fmt.Sprintf("member %d http: ", m.ID), 0)}
	if m.cfg.CertFile != "" {
		ln = tls.NewListener(ln, node.ServerTLSConfig())
	}
	m.done = make(chan struct{})
	go func() { // exits when the server is closed by Stop
		defer close(m.done)
		_ = m.srv.Serve(ln)
	}()
	return nil
}

// Running reports whether the member is started.
func (m *Member) Running() bool { return m.Node != nil }

// Stop closes the node and its server. Safe to call twice.
func (m *Member) Stop() {
	if m.Node == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Node.Close(ctx); err != nil {
		m.c.T.Errorf("member %d: close: %v", m.ID, err)
	}
	_ = m.srv.Close()
	<-m.done
	_ = m.Store.CloseStandaloneLog()
	m.Node = nil
}

// Restart starts the member again on the same address and data directory.
func (m *Member) Restart() {
	m.c.T.Helper()
	var ln net.Listener
	Eventually(m.c.T, 10*time.Second, func() error {
		var err error
		ln, err = net.Listen("tcp", m.addr)
		return err
	})
	if err := m.start(ln); err != nil {
		m.c.T.Fatalf("restart member %d: %v", m.ID, err)
	}
}

// TryRestart starts the member again on the same address and data
// directory, with opts applied to a copy of its configuration, and returns
// New's error instead of failing the test.
func (m *Member) TryRestart(opts ...Option) error {
	m.c.T.Helper()
	var ln net.Listener
	Eventually(m.c.T, 10*time.Second, func() error {
		var err error
		ln, err = net.Listen("tcp", m.addr)
		return err
	})
	saved := m.cfg
	for _, o := range opts {
		o(&m.cfg)
	}
	err := m.start(ln)
	if err != nil {
		m.Node = nil
	}
	m.cfg = saved
	return err
}

// MoveToNewPort gives a stopped member a new loopback address (its data
// directory, and its Peers naming the old address, are kept) and returns
// its new URL, now its AdvertiseURL for the next restart.
func (m *Member) MoveToNewPort() string {
	m.c.T.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.c.T.Fatalf("listen: %v", err)
	}
	m.addr = ln.Addr().String()
	ln.Close()
	scheme, _, _ := strings.Cut(m.URL, "://")
	m.URL = scheme + "://" + m.addr
	m.cfg.AdvertiseURL = m.URL
	return m.URL
}

// Wipe deletes the member's data directory (the member must be stopped),
// as an operator who lost a disk would.
func (m *Member) Wipe() {
	m.c.T.Helper()
	if m.Node != nil {
		m.c.T.Fatalf("wipe member %d: still running", m.ID)
	}
	if err := os.RemoveAll(m.Dir); err != nil {
		m.c.T.Fatalf("wipe member %d: %v", m.ID, err)
	}
}

// Join starts a new member that joins the cluster through target (any
// member, or a standalone node). It returns once the node has been given
// its membership; the member's ID is the one the leader assigned.
func (c *Cluster) Join(target *Member, opts ...Option) *Member {
	c.T.Helper()
	m, err := c.TryJoin(target.URL, opts...)
	if err != nil {
		c.T.Fatalf("join via member %d: %v", target.ID, err)
	}
	return m
}

// TryJoin is Join through any URL, returning the error instead of failing.
func (c *Cluster) TryJoin(targetURL string, opts ...Option) (*Member, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	url := c.probe(opts) + "://" + ln.Addr().String()
	m := &Member{URL: url, Dir: c.dataDir(), c: c, addr: ln.Addr().String()}
	m.cfg = c.configure(embedraft.Config{AdvertiseURL: url, DataDir: m.Dir, Join: targetURL}, 0, opts)
	if err := m.start(ln); err != nil {
		return nil, err
	}
	m.ID = m.Node.ID()
	c.mu.Lock()
	c.Members = append(c.Members, m)
	c.mu.Unlock()
	return m, nil
}

// Member returns the member with id, or nil.
func (c *Cluster) Member(id uint64) *Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.Members {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// Running returns the started members.
func (c *Cluster) Running() []*Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Member
	for _, m := range c.Members {
		if m.Running() {
			out = append(out, m)
		}
	}
	return out
}

// WaitLeader waits until all running members agree on one running leader.
func (c *Cluster) WaitLeader(timeout time.Duration) *Member {
	c.T.Helper()
	var leader *Member
	Eventually(c.T, timeout, func() error {
		leader = nil
		var lead uint64
		for _, m := range c.Running() {
			st := m.Node.Status()
			if st.Leader == 0 || (lead != 0 && st.Leader != lead) {
				return fmt.Errorf("no agreed leader: member %d sees %d, others %d", m.ID, st.Leader, lead)
			}
			lead = st.Leader
		}
		for _, m := range c.Running() {
			if m.ID == lead && m.Node.Status().State == "leader" {
				leader = m
				return nil
			}
		}
		return fmt.Errorf("leader %d is not running or not yet leader", lead)
	})
	return leader
}

// Followers returns the running members that are not the leader.
func (c *Cluster) Followers() []*Member {
	lead := c.WaitLeader(10 * time.Second)
	var out []*Member
	for _, m := range c.Running() {
		if m != lead {
			out = append(out, m)
		}
	}
	return out
}

// Set writes key=value through m's POST /raft/api/set and returns the
// status and body.
func (c *Cluster) Set(m *Member, key, value string) (int, []byte, error) {
	return c.set(context.Background(), m, key, value)
}

// SetWithin is Set giving up after timeout (the write may still be
// applied after that).
func (c *Cluster) SetWithin(m *Member, key, value string, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.set(ctx, m, key, value)
}

func (c *Cluster) set(ctx context.Context, m *Member, key, value string) (int, []byte, error) {
	body, _ := json.Marshal(kvstore.Op{Key: key, Value: value})
	return c.post(ctx, m, "/raft/api/set", body)
}

// Post sends body to path on m.
func (c *Cluster) Post(m *Member, path string, body []byte) (int, []byte, error) {
	return c.post(context.Background(), m, path, body)
}

func (c *Cluster) post(ctx context.Context, m *Member, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// MustSet writes and fails the test unless the write is acknowledged.
func (c *Cluster) MustSet(m *Member, key, value string) {
	c.T.Helper()
	code, body, err := c.Set(m, key, value)
	if err != nil || code != http.StatusOK {
		c.T.Fatalf("set %s=%s on member %d: status %d, err %v, body %s", key, value, m.ID, code, err, body)
	}
}

// SetEventually retries a write through any running member until one
// acknowledges it (use across failures, where an attempt may be refused).
func (c *Cluster) SetEventually(key, value string, timeout time.Duration) {
	c.T.Helper()
	Eventually(c.T, timeout, func() error {
		var last error
		for _, m := range c.Running() {
			code, body, err := c.Set(m, key, value)
			if err == nil && code == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("write %s via member %d: %d %v %s", key, m.ID, code, err, body)
		}
		return last
	})
}

// WaitConverged waits until every running member has applied the same index
// and holds the same state, and returns that state.
func (c *Cluster) WaitConverged(timeout time.Duration) map[string]string {
	c.T.Helper()
	var state map[string]string
	Eventually(c.T, timeout, func() error {
		ms := c.Running()
		state = ms[0].Store.Snapshot()
		applied := ms[0].Node.Status().Applied
		for _, m := range ms[1:] {
			if a := m.Node.Status().Applied; a != applied {
				return fmt.Errorf("not converged: applied %d on member %d, %d on member %d", applied, ms[0].ID, a, m.ID)
			}
			if s := m.Store.Snapshot(); !mapsEqual(state, s) {
				return fmt.Errorf("not converged: member %d has %d keys, member %d has %d", ms[0].ID, len(state), m.ID, len(s))
			}
		}
		return nil
	})
	return state
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Eventually polls cond every 10ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logSink routes node logs to t.Log until the test ends.
type logSink struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (l *logSink) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}
