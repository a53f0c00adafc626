package embedraft_test

// The harness shared by the fuzz targets and table tests for every HTTP
// route of a node (invariant 6: bad input gets a 4xx with a clear message
// and changes nothing). The targets are in fuzz_write_test.go,
// fuzz_membership_test.go, fuzz_peer_test.go and routes_test.go.
//
// Each fuzz target starts one 3-member cluster before f.Fuzz and sends every
// input to it over real HTTP. After each input it checks that
//
//   - the answer is not a 5xx other than 503 and 504, and the request got an
//     answer at all (a handler panic drops the connection);
//   - every member is still running (Node.Err() == nil, mode cluster) and the
//     member that got the input still accepts a valid write;
//   - a rejected (4xx) request changed nothing: after that one valid write
//     (a sentinel key) and convergence, every store holds exactly the
//     previous state plus the sentinel, the applied index moved by exactly
//     one (unless an election added its empty entry), and the membership is
//     the same.
//
// `go test` runs only the seed corpus. Fuzz one target with, e.g.:
//
//	go test -run XXX -fuzz FuzzSetRoute -fuzztime 45s .
//
// Library bugs found this way are pinned by the TestRegression* tests in
// regression_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// fuzzMaxBody is the MaxRequestBytes of the fuzzed clusters: small, so that
// oversized bodies are cheap to produce.
const fuzzMaxBody = 256

// sentinelKey is the key of the valid write made after every input.
const sentinelKey = "__sentinel"

// fuzzOptions gives the fuzzed clusters a small request limit and sends
// their logs to logs (the cluster's own log sink reports to the *testing.F,
// which must not be used inside the fuzz target).
func fuzzOptions(logs *ringLog, extra ...tc.Option) []tc.Option {
	opts := []tc.Option{func(cfg *embedraft.Config) {
		cfg.MaxRequestBytes = fuzzMaxBody
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}}
	return append(opts, extra...)
}

// ringLog keeps the last lines the nodes logged, shown when an input fails.
type ringLog struct {
	mu    sync.Mutex
	lines []string
	next  int
}

const ringLogLines = 200

func (l *ringLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := strings.TrimSuffix(string(p), "\n")
	if len(l.lines) < ringLogLines {
		l.lines = append(l.lines, line)
	} else {
		l.lines[l.next] = line
		l.next = (l.next + 1) % ringLogLines
	}
	return len(p), nil
}

func (l *ringLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append(append([]string(nil), l.lines[l.next:]...), l.lines[:l.next]...)
	return strings.Join(out, "\n")
}

// fuzzCluster is one fuzz target's cluster and the state it last agreed on.
// Inputs of one target run one after the other (seed corpus subtests run
// sequentially; a fuzz worker calls the target serially), so it needs no
// lock.
type fuzzCluster struct {
	c      *tc.Cluster
	logs   *ringLog
	client *http.Client
	seq    int
	prev   *clusterView
}

// clusterView is the converged state of the cluster.
type clusterView struct {
	leader  uint64
	term    uint64
	applied uint64
	state   map[string]string
	peers   string
}

func newFuzzCluster(f *testing.F, extra ...tc.Option) *fuzzCluster {
	logs := &ringLog{}
	c := tc.NewStatic(f, 3, fuzzOptions(logs, extra...)...)
	h := &fuzzCluster{c: c, logs: logs, client: &http.Client{Timeout: 20 * time.Second}}
	f.Cleanup(h.client.CloseIdleConnections)
	return h
}

// done, deferred first in a fuzz target, prints the nodes' recent logs when
// the input failed, and forgets the agreed state (it may be stale).
func (h *fuzzCluster) done(t *testing.T) {
	if t.Failed() {
		h.prev = nil
		t.Logf("last node logs:\n%s", h.logs)
	}
}

// leader waits for the running members to agree on a leader.
func (h *fuzzCluster) leader(t *testing.T) *tc.Member {
	t.Helper()
	var lead *tc.Member
	waitFor(t, 15*time.Second, func() error {
		lead = nil
		var id uint64
		for _, m := range h.c.Running() {
			st := m.Node.Status()
			if st.Leader == 0 || (id != 0 && st.Leader != id) {
				return fmt.Errorf("no agreed leader: member %d sees %d", m.ID, st.Leader)
			}
			id = st.Leader
			if st.State == "leader" {
				lead = m
			}
		}
		if lead == nil || lead.ID != id {
			return fmt.Errorf("leader %d not yet leader", id)
		}
		return nil
	})
	return lead
}

// pick chooses the member an input goes to: 0 the leader, 1 and 2 the
// followers, in id order.
func (h *fuzzCluster) pick(t *testing.T, sel uint8) *tc.Member {
	t.Helper()
	lead := h.leader(t)
	if sel%3 == 0 {
		return lead
	}
	var fs []*tc.Member
	for _, m := range h.c.Running() {
		if m != lead {
			fs = append(fs, m)
		}
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].ID < fs[j].ID })
	return fs[int(sel%3-1)%len(fs)]
}

// settle waits until every member has applied the same index and holds the
// same state, and returns that view.
func (h *fuzzCluster) settle(t *testing.T) *clusterView {
	t.Helper()
	var v *clusterView
	waitFor(t, 15*time.Second, func() error {
		ms := h.c.Running()
		st := ms[0].Node.Status()
		v = &clusterView{applied: st.Applied, state: ms[0].Store.Snapshot(), peers: fmt.Sprint(ms[0].Node.Peers().Peers)}
		for _, m := range ms {
			s := m.Node.Status()
			if s.Applied != v.applied || s.Applied < s.Commit {
				return fmt.Errorf("member %d applied %d (commit %d), member %d applied %d",
					m.ID, s.Applied, s.Commit, ms[0].ID, v.applied)
			}
			if got := m.Store.Snapshot(); fmt.Sprint(got) != fmt.Sprint(v.state) {
				return fmt.Errorf("member %d state differs from member %d's", m.ID, ms[0].ID)
			}
			if p := fmt.Sprint(m.Node.Peers().Peers); p != v.peers {
				return fmt.Errorf("member %d peers %s, member %d peers %s", m.ID, p, ms[0].ID, v.peers)
			}
			if s.State == "leader" {
				v.leader, v.term = m.ID, s.Term
			}
			// The leader records voters as started through the log: wait
			// for that entry, which is no input's doing.
			mv := m.Node.Membership()
			for _, p := range mv.Members {
				if p.Role == embedraft.RoleVoter && !slices.Contains(mv.Started, p.ID) {
					return fmt.Errorf("member %d does not yet record voter %d as started", m.ID, p.ID)
				}
			}
		}
		if v.leader == 0 {
			return errors.New("no leader")
		}
		return nil
	})
	return v
}

// before returns the state the cluster agreed on before this input.
func (h *fuzzCluster) before(t *testing.T) *clusterView {
	t.Helper()
	if h.prev == nil {
		// A write first: it commits the current leader's first entry, so
		// that no election is still settling.
		h.sentinel(t, h.leader(t), "warm-up")
		h.prev = h.settle(t)
	}
	return h.prev
}

// outcome says what an input did, for after's checks.
type outcome int

const (
	// outcomeRejected: answered 4xx; nothing may have changed.
	outcomeRejected outcome = iota
	// outcomeAccepted: answered 2xx, or 503/504 (the outcome is unknown); the
	// state may have changed.
	outcomeAccepted
)

func outcomeOf(code int) outcome {
	if code/100 == 4 {
		return outcomeRejected
	}
	return outcomeAccepted
}

// after checks the cluster after an input sent to target: every member
// alive, target still takes a valid write, and (if rejected) nothing changed.
func (h *fuzzCluster) after(t *testing.T, target *tc.Member, o outcome, what string) {
	t.Helper()
	before := h.before(t)
	h.prev = nil
	for _, m := range h.c.Running() {
		if err := m.Node.Err(); err != nil {
			t.Fatalf("after %s: member %d stopped: %v", what, m.ID, err)
		}
		if mode := m.Node.Mode(); mode != embedraft.ModeCluster {
			t.Fatalf("after %s: member %d is %s", what, m.ID, mode)
		}
	}
	val := h.sentinel(t, target, what)
	v := h.settle(t)
	h.prev = v
	if o != outcomeRejected {
		return
	}
	want := copyState(before.state)
	want[sentinelKey] = val
	if fmt.Sprint(v.state) != fmt.Sprint(want) {
		t.Fatalf("rejected %s changed the state:\nbefore %v\nafter  %v", what, before.state, v.state)
	}
	if v.peers != before.peers {
		t.Fatalf("rejected %s changed the membership:\nbefore %s\nafter  %s", what, before.peers, v.peers)
	}
	if v.term == before.term && v.applied != before.applied+1 {
		t.Fatalf("rejected %s reached the log: applied %d -> %d with one valid write", what, before.applied, v.applied)
	}
}

// sentinel writes the sentinel key through m, retrying while the answer is
// 503 or 504, and returns the value written.
func (h *fuzzCluster) sentinel(t *testing.T, m *tc.Member, what string) string {
	t.Helper()
	h.seq++
	val := strconv.Itoa(h.seq)
	body, _ := json.Marshal(kvstore.Op{Key: sentinelKey, Value: val})
	waitFor(t, 15*time.Second, func() error {
		code, resp, err := h.post(m, "/raft/api/set", body, nil)
		if err != nil || code == 503 || code == 504 {
			return fmt.Errorf("after %s: valid write via member %d: %d %v %s", what, m.ID, code, err, resp)
		}
		if code != 200 {
			t.Fatalf("after %s: valid write via member %d: %d %s", what, m.ID, code, resp)
		}
		return nil
	})
	return val
}

func copyState(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// post sends body to path on m with the given headers.
func (h *fuzzCluster) post(m *tc.Member, path string, body []byte, hdr http.Header) (int, []byte, error) {
	return h.do(context.Background(), m, http.MethodPost, path, body, hdr)
}

func (h *fuzzCluster) do(ctx context.Context, m *tc.Member, method, path string, body []byte, hdr http.Header) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, m.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// checkAnswer fails on a transport error (no answer: the handler panicked or
// the node dropped the connection) and on a 5xx other than 503 and 504. A
// library route's error must be a JSON envelope with a message.
func checkAnswer(t *testing.T, what string, code int, body []byte, err error, envelope bool) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: no answer: %v", what, err)
	}
	if code >= 500 && code != 503 && code != 504 {
		t.Fatalf("%s: status %d: %s", what, code, body)
	}
	if code < 100 || code >= 600 {
		t.Fatalf("%s: status %d", what, code)
	}
	if envelope && code >= 400 {
		var env struct {
			Code  string `json:"code"`
			Error string `json:"error"`
		}
		if jerr := json.Unmarshal(body, &env); jerr != nil || env.Code == "" || env.Error == "" {
			t.Fatalf("%s: status %d without an error envelope: %q", what, code, body)
		}
	}
}

// pickClusterID chooses the cluster id a fuzzed request carries: none, the
// node's own, or the fuzzed value.
func pickClusterID(sel uint8, actual, fuzzed string) string {
	switch sel % 3 {
	case 1:
		return actual
	case 2:
		return fuzzed
	}
	return ""
}

// checkBodyStatus checks the statuses every JSON route owes any body: 413
// over the limit, 400 when it does not decode. It reports whether one of
// those cases applied.
func checkBodyStatus(t *testing.T, what string, code int, resp, body []byte, decoded bool) bool {
	t.Helper()
	switch {
	case len(body) > fuzzMaxBody:
		if code != 413 {
			t.Fatalf("%s: status %d, want 413", what, code)
		}
	case !decoded:
		if code != 400 {
			t.Fatalf("%s: status %d, want 400: %s", what, code, resp)
		}
	default:
		return false
	}
	return true
}

// waitFor is tc.Eventually on the *testing.T of a fuzz input (the
// cluster's own helpers report to the *testing.F, which must not be used
// there).
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	tc.Eventually(t, timeout, cond)
}

// lenientDecode decodes the first JSON value of body the way the library's
// decoder does, but accepting more (unknown fields, trailing data): an input
// it cannot decode, the library cannot either.
func lenientDecode(body []byte, v interface{}) bool {
	return json.NewDecoder(bytes.NewReader(body)).Decode(v) == nil
}

// validHeaderValue reports whether Go's client sends v as a header value.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// loopbackAddr reports whether addr names this machine, so that adding it
// as a member makes the nodes dial nothing outside.
func loopbackAddr(addr string) bool {
	u, err := url.Parse(strings.TrimSuffix(addr, "/"))
	if err != nil {
		return true // refused before anything dials it
	}
	host := u.Hostname()
	if host == "" || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
