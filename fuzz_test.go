package embedraft_test

// Fuzz targets and table tests for every HTTP route of a node (invariant 6:
// bad input gets a 4xx with a clear message and changes nothing).
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
// Library bugs found this way are pinned by tests that skip with "BUG: ..."
// (run them anyway with EMBEDRAFT_RUN_BUGS=1); the fuzz targets skip the
// inputs of those known classes so that fuzzing goes on finding new ones.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	pathpkg "path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"

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

// waitFor is tc.Eventually for a *testing.T inside a fuzz target (the
// cluster's own helpers report to the *testing.F, which must not be used
// there).
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
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
		time.Sleep(5 * time.Millisecond)
	}
}

// strictOp is an independent oracle for a write body: exactly one JSON
// object with a string "key" (1..MaxKeyBytes bytes) and an optional string
// "value", nothing else, nothing after it.
func strictOp(body []byte) (kvstore.Op, error) {
	var op kvstore.Op
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&op); err != nil {
		return op, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return op, fmt.Errorf("trailing data (%v)", err)
	}
	if op.Key == "" || len(op.Key) > kvstore.MaxKeyBytes {
		return op, errors.New("bad key")
	}
	return op, nil
}

// lenientDecode decodes the first JSON value of body the way the library's
// decoder does, but accepting more (unknown fields, trailing data): an input
// it cannot decode, the library cannot either.
func lenientDecode(body []byte, v interface{}) bool {
	return json.NewDecoder(bytes.NewReader(body)).Decode(v) == nil
}

// wantWriteStatus is what a write route must answer body with, once the
// request reached the body checks: 413 over the limit, 400 when empty or not
// an Op, 200 otherwise.
func wantWriteStatus(body []byte) (status int, op kvstore.Op) {
	switch {
	case len(body) > fuzzMaxBody:
		return 413, op
	case len(body) == 0:
		return 400, op
	}
	op, err := strictOp(body)
	if err != nil {
		return 400, op
	}
	return 200, op
}

func seedBodies() [][]byte {
	return [][]byte{
		nil,
		[]byte(`{"key":"a","value":"1"}`),
		[]byte(`{"key":"b"}`),
		[]byte(`{"key":`),
		[]byte(`{"key":1,"value":"x"}`),
		[]byte(`{"key":"a","value":"x","x":1}`),
		[]byte(`{"value":"x"}`),
		[]byte(`{"key":""}`),
		[]byte(`{"key":"a"}{"key":"b"}`),
		[]byte(`null`),
		[]byte(`[]`),
		[]byte(`"key"`),
		[]byte("\xff\xfe\x00"),
		[]byte(`{"key":"` + strings.Repeat("k", fuzzMaxBody) + `"}`),
		bytes.Repeat([]byte("x"), fuzzMaxBody+1),
		[]byte(`{"key":"é\u0000","value":"\ud800"}`),
	}
}

// FuzzSetRoute: POST /raft/api/set on the leader and on followers.
func FuzzSetRoute(f *testing.F) {
	for i, b := range seedBodies() {
		f.Add(uint8(i), b)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		defer h.done(t)
		want, op := wantWriteStatus(body)
		m := h.pick(t, sel)
		h.before(t)
		code, resp, err := h.post(m, "/raft/api/set", body, nil)
		what := fmt.Sprintf("set %q via member %d", body, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		if code != want && !(want == 200 && (code == 503 || code == 504)) {
			t.Fatalf("%s: status %d, want %d: %s", what, code, want, resp)
		}
		if code == 200 {
			if v, found := m.Store.Get(op.Key); !found || v != op.Value {
				t.Fatalf("%s: acknowledged but member %d holds %q=%q (%v)", what, m.ID, op.Key, v, found)
			}
		}
		h.after(t, m, outcomeOf(code), what)
	})
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

// FuzzProposeRoute: POST /raft/node/propose, the route followers forward
// writes to, with no, the right or any cluster id header.
func FuzzProposeRoute(f *testing.F) {
	for i, b := range seedBodies() {
		f.Add(uint8(i), uint8(i), "", b)
	}
	f.Add(uint8(0), uint8(2), "1234", []byte(`{"key":"a"}`))
	f.Add(uint8(1), uint8(2), " ", []byte(`{"key":"a"}`))
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel, hdrSel uint8, cid string, body []byte) {
		defer h.done(t)
		if !validHeaderValue(cid) {
			t.Skip("not a header value")
		}
		want, op := wantWriteStatus(body)
		m := h.pick(t, sel)
		h.before(t)
		clusterID := m.Node.Status().ClusterID
		hdr := http.Header{}
		switch hdrSel % 3 {
		case 1:
			cid = clusterID
		case 2:
		default:
			cid = ""
		}
		if cid != "" {
			hdr.Set("X-Embedraft-Cluster-Id", cid)
		}
		isLeader := m.Node.Status().State == "leader"
		code, resp, err := h.post(m, "/raft/node/propose", body, hdr)
		what := fmt.Sprintf("propose %q (cluster %q) to member %d", body, cid, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		switch {
		case strings.Trim(cid, " \t") != clusterID:
			want = 403
		case !isLeader && len(body) > 0 && len(body) <= fuzzMaxBody:
			// Only the leader runs PreProcessData: a follower refuses
			// any body it cannot check itself.
			want = 503
		}
		if code != want && !(want == 200 && (code == 503 || code == 504)) {
			t.Fatalf("%s: status %d, want %d: %s", what, code, want, resp)
		}
		if code == 200 {
			if v, found := m.Store.Get(op.Key); !found || v != op.Value {
				t.Fatalf("%s: acknowledged but member %d holds %q=%q (%v)", what, m.ID, op.Key, v, found)
			}
		}
		h.after(t, m, outcomeOf(code), what)
	})
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

func seedJoins() [][]byte {
	return [][]byte{
		nil,
		[]byte(`{}`),
		[]byte(`{"addr":`),
		[]byte(`{"addr":5}`),
		[]byte(`{"addr":"http://127.0.0.1:1","x":1}`),
		[]byte(`{"addr":"not a url"}`),
		[]byte(`{"addr":"http://127.0.0.1:1/x"}`),
		[]byte(`{"addr":"ftp://127.0.0.1:1"}`),
		[]byte(`{"addr":"http://user@127.0.0.1:1"}`),
		[]byte(`{"addr":"http://127.0.0.1:1","id":1}`),
		[]byte(`{"addr":"http://127.0.0.1:1","id":-1}`),
		[]byte(`{"addr":"http://127.0.0.1:1","id":1.5}`),
		[]byte(`{"addr":"http://127.0.0.1:1","cluster_id":"abc"}`),
		[]byte(`{"addr":"http://127.0.0.1:1"}{}`),
		[]byte(`{"addr":"http://127.0.0.1:1"}`),
		[]byte(`{"addr":"http://127.0.0.1:2/","id":77}`),
		[]byte(`{"addr":"http://[::1]:3"}`),
		bytes.Repeat([]byte(" "), fuzzMaxBody+1),
	}
}

// fuzzJoin fuzzes a membership-adding route (join or addNode). An accepted
// request must have added exactly the learner it answered with (which is
// then removed again) or named an existing member.
func fuzzJoin(f *testing.F, path string) {
	for i, b := range seedJoins() {
		f.Add(uint8(i), uint8(i), "", b)
	}
	f.Add(uint8(1), uint8(2), "ffff", []byte(`{"addr":"http://127.0.0.1:1"}`))
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel, hdrSel uint8, cid string, body []byte) {
		defer h.done(t)
		if !validHeaderValue(cid) {
			t.Skip("not a header value")
		}
		var req embedraft.JoinRequest
		decoded := lenientDecode(body, &req)
		if decoded && !loopbackAddr(req.Addr) {
			t.Skip("would dial a remote host")
		}
		m := h.pick(t, sel)
		before := h.before(t)
		clusterID := m.Node.Status().ClusterID
		hdr := http.Header{}
		switch hdrSel % 3 {
		case 1:
			hdr.Set("X-Embedraft-Cluster-Id", clusterID)
		case 2:
			if cid != "" {
				hdr.Set("X-Embedraft-Cluster-Id", cid)
			}
		}
		code, resp, err := h.post(m, path, body, hdr)
		what := fmt.Sprintf("%s %q (cluster header %q) via member %d", path, body, hdr.Get("X-Embedraft-Cluster-Id"), m.ID)
		checkAnswer(t, what, code, resp, err, true)
		switch {
		case len(body) > fuzzMaxBody:
			if code != 413 {
				t.Fatalf("%s: status %d, want 413", what, code)
			}
		case !decoded:
			if code != 400 {
				t.Fatalf("%s: status %d, want 400: %s", what, code, resp)
			}
		case !goodAddr(req.Addr):
			if code/100 != 4 {
				t.Fatalf("%s: status %d for a bad address, want a 4xx: %s", what, code, resp)
			}
		case req.ID > embedraft.MaxMemberID:
			if code != 400 {
				t.Fatalf("%s: status %d for id %d, want 400: %s", what, code, req.ID, resp)
			}
		}
		if code != 200 {
			h.after(t, m, outcomeOf(code), what)
			return
		}
		var env struct {
			Data embedraft.JoinResponse `json:"data"`
		}
		if err := json.Unmarshal(resp, &env); err != nil {
			t.Fatalf("%s: answer %s: %v", what, resp, err)
		}
		jr := env.Data
		addr := strings.TrimSuffix(req.Addr, "/")
		if jr.ID == 0 || jr.ClusterID != clusterID {
			t.Fatalf("%s: answered id %d cluster %q", what, jr.ID, jr.ClusterID)
		}
		if req.ID != 0 && jr.ID != req.ID {
			t.Fatalf("%s: asked for id %d, answered %d", what, req.ID, jr.ID)
		}
		// A follower answers with the leader's answer, possibly before it
		// has applied the change itself.
		var got embedraft.NodeInfo
		waitFor(t, 10*time.Second, func() error {
			var ok bool
			if got, ok = m.Node.Peers().Peers[strconv.FormatUint(jr.ID, 10)]; !ok || got.Addr != addr {
				return fmt.Errorf("%s: answered id %d but member %d lists %+v", what, jr.ID, m.ID, got)
			}
			return nil
		})
		if strings.Contains(before.peers, fmt.Sprintf("{%d %s ", jr.ID, addr)) {
			h.after(t, m, outcomeRejected, what+" (existing member)") // idempotent: nothing changed
			return
		}
		if got.Role != embedraft.RoleLearner {
			t.Fatalf("%s: new member %d is a %s, want a learner", what, jr.ID, got.Role)
		}
		// Remove the learner again so that the cluster stays as it was.
		lead := h.leader(t)
		del, _ := json.Marshal(embedraft.RemoveRequest{ID: jr.ID})
		waitFor(t, 15*time.Second, func() error {
			code, resp, err := h.post(lead, "/raft/api/deleteNode", del, nil)
			if err != nil || code != 200 {
				return fmt.Errorf("remove added member %d: %d %v %s", jr.ID, code, err, resp)
			}
			return nil
		})
		h.after(t, m, outcomeAccepted, what)
		if h.prev.peers != before.peers {
			t.Fatalf("%s: membership after add and remove:\n%s\nwant\n%s", what, h.prev.peers, before.peers)
		}
	})
}

// goodAddr is an independent check of a member address: http(s), a host
// and a port (1 to 65535), nothing else.
func goodAddr(s string) bool {
	s = strings.TrimSuffix(s, "/")
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return false
	}
	if port, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || port == 0 {
		return false
	}
	if _, err := types.NewURLs([]string{s}); err != nil {
		return false
	}
	return u.Path == "" && u.RawQuery == "" && u.Fragment == "" && u.User == nil && u.Opaque == "" && !u.ForceQuery
}

// FuzzJoinRoute: POST /raft/node/join, the route a joining node calls.
func FuzzJoinRoute(f *testing.F) { fuzzJoin(f, "/raft/node/join") }

// FuzzAddNodeRoute: POST /raft/api/addNode, the admin route.
func FuzzAddNodeRoute(f *testing.F) { fuzzJoin(f, "/raft/api/addNode") }

// FuzzDeleteNodeRoute: POST /raft/api/deleteNode with anything but a
// current member's id (a valid removal is not bad input): always a 4xx.
func FuzzDeleteNodeRoute(f *testing.F) {
	for i, b := range [][]byte{
		nil, []byte(`{}`), []byte(`{"id":0}`), []byte(`{"id":42}`), []byte(`{"id":"1"}`), []byte(`{"id":-1}`),
		[]byte(`{"id":1.0}`), []byte(`{"id":1e3}`), []byte(`{"id":18446744073709551616}`), []byte(`{"id":1}{}`),
		[]byte(`{"id":9,"x":1}`), []byte(`{"ID":99}`), []byte(`null`), []byte(`[1]`), bytes.Repeat([]byte("1"), fuzzMaxBody+1),
	} {
		f.Add(uint8(i), b)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		defer h.done(t)
		var req embedraft.RemoveRequest
		decoded := lenientDecode(body, &req)
		m := h.pick(t, sel)
		h.before(t)
		if _, member := m.Node.Peers().Peers[strconv.FormatUint(req.ID, 10)]; decoded && member {
			t.Skip("a valid removal")
		}
		code, resp, err := h.post(m, "/raft/api/deleteNode", body, nil)
		what := fmt.Sprintf("deleteNode %q via member %d", body, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		want := 0 // any 4xx
		switch {
		case len(body) > fuzzMaxBody:
			want = 413
		case !decoded, req.ID == 0:
			want = 400
		}
		if code/100 != 4 || (want != 0 && code != want) {
			t.Fatalf("%s: status %d, want %v: %s", what, code, map[bool]interface{}{true: want, false: "a 4xx"}[want != 0], resp)
		}
		h.after(t, m, outcomeRejected, what)
	})
}

// FuzzTransferLeaderRoute: POST /raft/api/transferLeader. A transfer to a
// voter may succeed; anything else is a 4xx (or 503 on a follower) and
// changes nothing.
func FuzzTransferLeaderRoute(f *testing.F) {
	for i, b := range [][]byte{
		nil, []byte(`{}`), []byte(`{"to":0}`), []byte(`{"to":42}`), []byte(`{"to":"1"}`), []byte(`{"to":-1}`),
		[]byte(`{"to":2}`), []byte(`{"to":1}{}`), []byte(`{"to":1,"x":1}`), []byte(`{"to":1e300}`),
		bytes.Repeat([]byte("1"), fuzzMaxBody+1),
	} {
		f.Add(uint8(i), b)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		defer h.done(t)
		var req struct {
			To uint64 `json:"to"`
		}
		decoded := lenientDecode(body, &req)
		m := h.pick(t, sel)
		before := h.before(t)
		_, member := m.Node.Peers().Peers[strconv.FormatUint(req.To, 10)]
		code, resp, err := h.post(m, "/raft/api/transferLeader", body, nil)
		what := fmt.Sprintf("transferLeader %q via member %d", body, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		switch {
		case len(body) > fuzzMaxBody:
			if code != 413 {
				t.Fatalf("%s: status %d, want 413", what, code)
			}
		case !decoded:
			if code != 400 {
				t.Fatalf("%s: status %d, want 400: %s", what, code, resp)
			}
		case !member:
			if code/100 != 4 {
				t.Fatalf("%s: status %d for a non-member, want a 4xx: %s", what, code, resp)
			}
		}
		h.after(t, m, outcomeOf(code), what)
		if code/100 == 4 && h.prev.term == before.term && h.prev.leader != before.leader {
			t.Fatalf("%s: rejected, but the leader moved from %d to %d", what, before.leader, h.prev.leader)
		}
	})
}

// peerRoutes are rafthttp's routes, with the method a peer uses.
var peerRoutes = []struct{ path, method string }{
	{"/raft", http.MethodPost},
	{"/raft/snapshot", http.MethodPost},
	{"/raft/stream/message/", http.MethodGet},
	{"/raft/stream/msgapp/", http.MethodGet}, // rafthttp's msgappv2 stream
	{"/raft/probing", http.MethodGet},
}

// peerVersion is the etcd version a peer announces (rafthttp refuses peers
// below 3.0 before it looks at anything else).
const peerVersion = "3.5.0"

// raftMessage decodes the raft message a peer request carries, as rafthttp
// does: the whole body on /raft, a length-prefixed message on
// /raft/snapshot. ok is false when rafthttp would refuse the body.
func raftMessage(path string, body []byte) (m raftpb.Message, ok bool) {
	switch path {
	case "/raft":
		return m, len(body) <= 64<<10 && m.Unmarshal(body) == nil
	case "/raft/snapshot":
		if len(body) < 8 {
			return m, false
		}
		l := binary.BigEndian.Uint64(body)
		if l > 1<<30 {
			return m, false // refused with 413 before rafthttp reads it
		}
		if l > 1<<20 {
			// rafthttp allocates l bytes up front: not worth a fuzz
			// worker's memory, so count it as a forged message.
			return raftpb.Message{Type: raftpb.MsgSnap}, true
		}
		ok = l <= uint64(len(body)-8) && m.Unmarshal(body[8:8+l]) == nil && m.Type == raftpb.MsgSnap
		return m, ok
	}
	return m, false
}

// versionAccepted reports whether rafthttp accepts a peer announcing
// version ver (it refuses peers below 3.0).
func versionAccepted(ver string) bool {
	major, _, _ := strings.Cut(ver, ".")
	ma, _ := strconv.ParseUint(major, 10, 64)
	return ma >= 3
}

// FuzzPeerRoutes sends random requests to rafthttp's routes, with no, a
// wrong or the right cluster id (X-Etcd-Cluster-ID, the status route's
// cluster_id).
func FuzzPeerRoutes(f *testing.F) {
	msg := func(m raftpb.Message) []byte { b, _ := m.Marshal(); return b }
	framed := func(l uint64, rest []byte) []byte { return append(binary.BigEndian.AppendUint64(nil, l), rest...) }
	seeds := []struct {
		route, method, hdr uint8
		cid, ver, from     string
		raftTo             bool
		body               []byte
	}{
		{0, 0, 0, "", "", "", false, []byte("garbage")},
		{0, 0, 1, "", "", "", false, []byte("\x00\x01garbage")},
		{0, 0, 1, "", "", "", false, []byte{0xff, 0xff, 0xff}},
		{0, 0, 2, "1234", "", "", false, msg(raftpb.Message{Type: raftpb.MsgProp})},
		{0, 1, 1, "", "", "", false, nil},
		{0, 0, 1, "", "2.0.0", "", false, nil},
		{0, 0, 1, "", "99.0.0", "", false, []byte{0x08}},
		{1, 0, 1, "", "", "", false, framed(5, []byte("ab"))},
		{1, 0, 1, "", "", "", false, framed(1<<40, nil)},
		{1, 0, 1, "", "", "", false, framed(2, []byte{0x08, 0x01})},
		{1, 0, 1, "", "", "", false, []byte{0, 1}},
		{1, 2, 2, "x", "", "", false, framed(0, nil)},
		{2, 0, 1, "", "", "2", false, nil},
		{2, 0, 1, "", "", "zz", true, nil},
		{2, 0, 1, "", "", "ffffffff", true, nil},
		{2, 1, 1, "", "", "2", true, []byte("x")},
		{3, 0, 1, "", "", "3", true, nil},
		{3, 0, 0, "", "", "", false, nil},
		{4, 0, 0, "", "", "", false, nil},
		{4, 3, 1, "", "", "", false, []byte("x")},
	}
	for _, s := range seeds {
		f.Add(uint8(len(s.body)), s.route, s.method, s.hdr, s.cid, s.ver, s.from, s.raftTo, s.body)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel, route, method, hdrSel uint8, cid, ver, from string, raftTo bool, body []byte) {
		defer h.done(t)
		if !validHeaderValue(cid) || !validHeaderValue(ver) {
			t.Skip("not a header value")
		}
		if ver == "" {
			ver = peerVersion
		}
		r := peerRoutes[int(route)%len(peerRoutes)]
		m := h.pick(t, sel)
		h.before(t)
		clusterID := m.Node.Status().ClusterID
		hdr := http.Header{}
		hdr.Set("X-Server-Version", ver)
		switch hdrSel % 3 {
		case 1:
			cid = clusterID
		case 2:
		default:
			cid = ""
		}
		if cid != "" {
			hdr.Set("X-Etcd-Cluster-ID", cid)
		}
		if raftTo {
			hdr.Set("X-Raft-To", strconv.FormatUint(m.ID, 16))
		}
		path := r.path
		stream := strings.HasPrefix(path, "/raft/stream/")
		if stream {
			path += url.PathEscape(from)
		}
		verb := r.method
		switch method % 4 {
		case 1:
			verb = map[string]string{http.MethodGet: http.MethodPost, http.MethodPost: http.MethodGet}[verb]
		case 2:
			verb = http.MethodPut
		case 3:
			verb = http.MethodDelete
		}
		// A request that hands raft a message (the right cluster id, an
		// accepted version, a body rafthttp decodes) is a forged peer
		// message. Without a cluster token a well-formed one is trusted by
		// design (the peer routes authenticate peers only with a token), so
		// such inputs are skipped unless EMBEDRAFT_FUZZ_FORGED is set; the
		// malformed ones raft would crash on are refused
		// (TestRegressionForgedPeerMessage).
		right := strings.Trim(cid, " \t") == clusterID
		msg, decoded := raftMessage(r.path, body)
		stepped := right && verb == http.MethodPost && versionAccepted(ver) && decoded
		if stepped && !raft.IsLocalMsg(msg.Type) && os.Getenv("EMBEDRAFT_FUZZ_FORGED") == "" {
			t.Skip("a forged raft message without a token")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if stream {
			// An accepted stream stays open: a real peer's handshake.
			cancel()
			ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		}
		code, resp, err := h.do(ctx, m, verb, path, body, hdr)
		cancel()
		what := fmt.Sprintf("%s %s (cluster %q, version %q, to %v) %q to member %d", verb, path, cid, ver, raftTo, body, m.ID)
		if stream && code == 200 && errors.Is(err, context.DeadlineExceeded) {
			err = nil
		}
		checkAnswer(t, what, code, resp, err, false)
		if code/100 == 2 && !right && r.path != "/raft/probing" {
			t.Fatalf("%s: accepted without the cluster id: %d", what, code)
		}
		if code/100 == 2 && !stepped && (r.path == "/raft" || r.path == "/raft/snapshot") {
			t.Fatalf("%s: status %d for a body that is no raft message", what, code)
		}
		h.after(t, m, outcomeOf(code), what)
	})
}

// ---- Known bugs. Each test skips with "BUG: ..." (EMBEDRAFT_RUN_BUGS=1 runs
// it); the ones that kill the process run their scenario in a child process
// (TestRegressionChild), so that they fail cleanly instead of taking the test
// binary down.

const bugChildEnv = "EMBEDRAFT_BUG_CHILD"

// bugScenarios run in a child process. Each fails (or crashes the child)
// while its bug is there.
var bugScenarios = map[string]func(t *testing.T){}

// TestRegressionChild runs one of bugScenarios, named by EMBEDRAFT_BUG_CHILD; it is
// started by runBugChild and skips otherwise.
func TestRegressionChild(t *testing.T) {
	name := os.Getenv(bugChildEnv)
	if name == "" {
		t.Skip("runs only as the child process of a TestRegression test")
	}
	run, ok := bugScenarios[name]
	if !ok {
		t.Fatalf("no scenario %q", name)
	}
	run(t)
}

// runBugChild runs scenario name in a child process and fails with the
// child's panic or failure.
func runBugChild(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRegressionChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), bugChildEnv+"="+name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scenario %q: child %v:\n%s", name, err, excerpt(out))
	}
}

// excerpt keeps the interesting lines of a child's output: its panic and
// the first goroutine's stack, or its failures.
func excerpt(out []byte) string {
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "panic: ") {
			end := min(i+16, len(lines))
			return strings.Join(lines[i:end], "\n")
		}
	}
	var keep []string
	for _, l := range lines {
		if strings.Contains(l, "fuzz_test.go") || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "FAIL") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// peerHeaders are the headers of a well-behaved rafthttp peer of cluster
// clusterID (hex, as the status route shows it).
func peerHeaders(clusterID string) http.Header {
	h := http.Header{}
	h.Set("X-Server-Version", peerVersion)
	h.Set("X-Etcd-Cluster-ID", clusterID)
	h.Set("Content-Type", "application/protobuf")
	return h
}

// forgedCases are raft messages that anyone who can reach a node's HTTP
// port can send to POST /raft with the public cluster id (no token
// configured). rafthttp hands them to peerRaft.Process, which steps them
// into raft unchecked. DisableProposalForwarding means no real peer ever
// sends MsgProp, and raft treats a message with term 0 as a local one.
var forgedCases = []struct {
	name   string
	bug    string
	leader bool // send to the leader (else to a follower)
	msg    func(target, leader uint64) raftpb.Message
}{
	{"EmptyMsgPropToLeader", "an empty MsgProp on POST /raft panics raft on the leader (stepped empty MsgProp)", true,
		func(_, _ uint64) raftpb.Message { return raftpb.Message{Type: raftpb.MsgProp} }},
	{"MsgPropWithGarbageEntry", "a MsgProp carrying bytes that are no entry envelope is committed; every member then stops with ErrStorage, for good (it is in the WAL)", true,
		func(_, _ uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgProp, Entries: []raftpb.Entry{{Data: []byte("garbage")}}}
		}},
	{"MsgPropWithForgedWrite", "a MsgProp carrying a well-formed envelope is committed and applied on every member: a write that bypassed the set route and PreProcessData", true,
		func(_, _ uint64) raftpb.Message {
			data := append([]byte{1, 1, 0, 0}, `{"key":"forged","value":"x"}`...) // version 1, kind propose, req 0, origin 0
			return raftpb.Message{Type: raftpb.MsgProp, Entries: []raftpb.Entry{{Data: data}}}
		}},
	{"MsgPropWithBadConfChange", "a MsgProp carrying an EntryConfChange that does not decode panics raft on the leader", true,
		func(_, _ uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgProp, Entries: []raftpb.Entry{{Type: raftpb.EntryConfChange, Data: []byte{0xff}}}}
		}},
	{"HeartbeatCommitPastLog", "a term-0 MsgHeartbeat with a commit index past the log panics raft on a follower (tocommit out of range)", false,
		func(_, leader uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgHeartbeat, From: leader, Commit: 1 << 40}
		}},
	{"ReadIndexWithoutEntries", "a MsgReadIndex without entries panics raft on the leader (index out of range in readOnly.addRequest)", true,
		func(_, _ uint64) raftpb.Message { return raftpb.Message{Type: raftpb.MsgReadIndex} }},
	{"SnapshotWithGarbageData", "a MsgSnap whose data is no snapshot envelope is installed by a follower, which then stops with ErrStorage, for good (the snapshot is on disk)", false,
		func(target, leader uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgSnap, From: leader, Snapshot: raftpb.Snapshot{
				Data:     []byte("garbage"),
				Metadata: raftpb.SnapshotMetadata{Index: 1 << 20, Term: 1, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}},
			}}
		}},
	{"VoteWithTermZero", "a term-0 MsgVote from the leader's own id panics raft (term should be set when sending MsgVoteResp)", true,
		func(target, _ uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgVote, From: target, LogTerm: math.MaxUint64, Index: math.MaxUint64}
		}},
	{"TimeoutNowWithMaxTerm", "a MsgTimeoutNow with term 2^64-1 makes a follower campaign at term 0 and panic raft", false,
		func(_, leader uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgTimeoutNow, From: leader, Term: math.MaxUint64}
		}},
}

func init() {
	for _, fc := range forgedCases {
		bugScenarios["forged/"+fc.name] = func(t *testing.T) {
			c := tc.NewStatic(t, 3)
			lead := c.WaitLeader(10 * time.Second)
			c.MustSet(lead, "a", "1")
			c.WaitConverged(10 * time.Second)
			target := lead
			if !fc.leader {
				target = c.Followers()[0]
			}
			msg := fc.msg(target.ID, lead.ID)
			body, err := msg.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest(http.MethodPost, target.URL+"/raft", bytes.NewReader(body))
			req.Header = peerHeaders(target.Node.Status().ClusterID)
			resp, err := c.Client.Do(req)
			if err != nil {
				t.Fatalf("POST /raft: %v", err)
			}
			resp.Body.Close()
			t.Logf("POST /raft with %s to member %d: %d", fc.name, target.ID, resp.StatusCode)
			// Give raft and the apply loops time to act on it.
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) {
				for _, m := range c.Members {
					if err := m.Node.Err(); err != nil {
						t.Fatalf("member %d stopped: %v", m.ID, err)
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			c.SetEventually("after", "1", 10*time.Second)
			state := c.WaitConverged(10 * time.Second)
			if _, ok := state["forged"]; ok {
				t.Fatalf("a forged raft message wrote to the state: %v", state)
			}
		}
	}
}

// Raft messages forged by anyone who knows the cluster id (public on GET
// /raft/api/status) crash or stop members when no token is set: see
// forgedCases. Expected: the peer routes refuse such messages with a 4xx
// (or ignore them) and every member keeps running.
func TestRegressionForgedPeerMessage(t *testing.T) {
	for _, fc := range forgedCases {
		t.Run(fc.name, func(t *testing.T) {
			runBugChild(t, "forged/"+fc.name)
		})
	}
}

// A peer request whose X-Server-Version (or X-Min-Cluster-Version) is not a
// semantic version panics rafthttp's handler (semver.Must): the client gets
// no answer. No cluster id or token is needed to reach it without a token.
func TestRegressionPeerRouteBadVersionHeader(t *testing.T) {
	c := tc.NewStatic(t, 3)
	m := c.WaitLeader(10 * time.Second)
	for _, path := range []string{"/raft", "/raft/snapshot", "/raft/stream/message/2"} {
		for _, header := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
			method := http.MethodPost
			if strings.Contains(path, "stream") {
				method = http.MethodGet
			}
			req, _ := http.NewRequest(method, m.URL+path, strings.NewReader("x"))
			req.Header.Set("X-Server-Version", peerVersion)
			req.Header.Set(header, "x")
			resp, err := c.Client.Do(req)
			if err != nil {
				t.Errorf("%s %s with %s: x: no answer: %v", method, path, header, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 4 {
				t.Errorf("%s %s with %s: x: status %d, want a 4xx", method, path, header, resp.StatusCode)
			}
		}
	}
}

// The JSON decoders (decodeJSON for the admin routes, kvstore.ParseOp for
// writes) check for trailing data with Decoder.More, which is false before
// a ']' or '}': a body with a trailing ']' or '}' is accepted.
func TestRegressionTrailingJSONAccepted(t *testing.T) {
	c := tc.NewStatic(t, 3)
	m := c.WaitLeader(10 * time.Second)
	for _, tt := range []struct{ path, body string }{
		{"/raft/api/set", `{"key":"t","value":"1"}]`},
		{"/raft/api/set", `{"key":"t","value":"1"}}`},
		{"/raft/api/deleteNode", `{"id":42}}`},
		{"/raft/api/transferLeader", `{"to":42}]`},
		{"/raft/api/addNode", `{"addr":"http://127.0.0.1:1","id":1}]`},
	} {
		code, body, err := c.Post(m, tt.path, []byte(tt.body))
		if err != nil || code != 400 || !strings.Contains(string(body), "trailing") {
			t.Errorf("%s %s: %d %v %s, want 400 trailing data", tt.path, tt.body, code, err, body)
		}
	}
	if v, ok := m.Store.Get("t"); ok {
		t.Errorf("malformed write stored t=%q", v)
	}
}

func init() {
	bugScenarios["addNodeWithoutPort"] = func(t *testing.T) {
		c := tc.NewStatic(t, 3)
		lead := c.WaitLeader(10 * time.Second)
		code, body, err := c.Post(lead, "/raft/api/addNode", []byte(`{"addr":"http://127.0.0.1"}`))
		t.Logf("addNode http://127.0.0.1: %d %v %s", code, err, body)
		if err == nil && code == 200 {
			t.Errorf("an address without a port was accepted")
		}
		for _, m := range c.Members {
			if err := m.Node.Err(); err != nil {
				t.Fatalf("member %d stopped: %v", m.ID, err)
			}
		}
		c.SetEventually("after", "1", 10*time.Second)
	}
}

// An address without a port ("http://127.0.0.1", or "http://host" for a
// node behind port 80) passes checkURL, so AddMember proposes it; every
// member applying the conf change calls rafthttp's AddPeer, whose
// types.NewURLs wants host:port and whose logger then panics. The whole
// cluster crashes, and again on every restart (the entry is in the WAL).
func TestRegressionAddNodeAddrWithoutPort(t *testing.T) {
	runBugChild(t, "addNodeWithoutPort")
}

// An address with an empty, zero or out-of-range port passes checkURL (and
// rafthttp's host:port check): the member is added at an address nobody can
// dial.
func TestRegressionAddNodeInvalidPort(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	before := fmt.Sprint(lead.Node.Peers().Peers)
	for _, addr := range []string{"http://127.0.0.1:", "http://127.0.0.1:0", "http://127.0.0.1:99999"} {
		code, body, err := c.Post(lead, "/raft/api/addNode", []byte(fmt.Sprintf(`{"addr":%q}`, addr)))
		if err != nil || code != 400 {
			t.Errorf("addNode %s: %d %v %s, want 400", addr, code, err, body)
		}
	}
	if after := fmt.Sprint(lead.Node.Peers().Peers); after != before {
		t.Errorf("membership changed:\n%s\n%s", before, after)
	}
}

// A member id of 2^64-1 is accepted; the next id the leader assigns is then
// maxID+1 = 0, a member raft ignores but the registry records, and the
// answer carries id 0 (which a joining node refuses).
func TestRegressionAddNodeMaxIDOverflow(t *testing.T) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	code, body, err := c.Post(lead, "/raft/api/addNode", []byte(`{"addr":"http://127.0.0.1:1","id":18446744073709551615}`))
	t.Logf("addNode id 2^64-1: %d %v %s", code, err, body)
	code, body, err = c.Post(lead, "/raft/api/addNode", []byte(`{"addr":"http://127.0.0.1:2"}`))
	if err != nil || code != 200 {
		t.Fatalf("addNode after it: %d %v %s", code, err, body)
	}
	var env struct {
		Data embedraft.JoinResponse `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	if env.Data.ID == 0 {
		t.Fatalf("assigned member id 0: %s", body)
	}
	if _, ok := lead.Node.Peers().Peers["0"]; ok {
		t.Fatalf("member 0 in the membership: %+v", lead.Node.Peers())
	}
}

func init() {
	bugScenarios["staticPeerWithoutPort"] = func(t *testing.T) {
		peers := map[uint64]string{1: "http://127.0.0.1:1", 2: "http://127.0.0.1"}
		cfg := embedraft.Config{ID: 1, AdvertiseURL: peers[1], DataDir: t.TempDir(), Peers: peers}
		n, err := embedraft.New(cfg, nopService{})
		if err == nil {
			_ = n.Close(context.Background())
			t.Fatal("New accepted a peer URL without a port")
		}
		t.Logf("New: %v", err)
	}
}

// Config.Validate (and ParsePeers, for the demo's -peers) accept a peer URL
// without a port; New then panics in rafthttp's AddPeer instead of
// returning a config error.
func TestRegressionStaticPeerWithoutPort(t *testing.T) {
	runBugChild(t, "staticPeerWithoutPort")
}

// standaloneRoutes are the routes FuzzStandaloneRoutes sends to, with the
// method a client or peer uses.
var standaloneRoutes = []struct{ path, method string }{
	{"/raft/api/set", http.MethodPost},
	{"/raft/node/propose", http.MethodPost},
	{"/raft/node/join", http.MethodPost},
	{"/raft/api/addNode", http.MethodPost},
	{"/raft/api/deleteNode", http.MethodPost},
	{"/raft/api/transferLeader", http.MethodPost},
	{"/raft", http.MethodPost},
	{"/raft/snapshot", http.MethodPost},
	{"/raft/stream/message/2", http.MethodGet},
	{"/raft/probing", http.MethodGet},
}

// FuzzStandaloneRoutes sends any body to every route of a standalone node.
// A rejected request must leave it standalone with its state; a join or
// addNode that succeeds turns it into a cluster, so each input gets a fresh
// node (a standalone node has no raft and no WAL: it starts in
// milliseconds).
func FuzzStandaloneRoutes(f *testing.F) {
	for i, b := range append(seedBodies(), seedJoins()...) {
		f.Add(uint8(i), uint8(i/3), b)
	}
	f.Add(uint8(3), uint8(1), []byte(`{"addr":"http://127.0.0.1:1","id":1}`))
	f.Add(uint8(4), uint8(0), []byte(`{"id":1}`))
	f.Add(uint8(5), uint8(0), []byte(`{"to":1}`))
	f.Add(uint8(2), uint8(2), []byte(`{"addr":"http://127.0.0.1:1"}`))
	client := &http.Client{Timeout: 20 * time.Second}
	f.Cleanup(client.CloseIdleConnections)
	f.Fuzz(func(t *testing.T, route, hdrSel uint8, body []byte) {
		r := standaloneRoutes[int(route)%len(standaloneRoutes)]
		var req embedraft.JoinRequest
		if lenientDecode(body, &req) && !loopbackAddr(req.Addr) {
			t.Skip("would dial a remote host")
		}
		logs := &ringLog{}
		c := tc.NewSingle(t, fuzzOptions(logs)...)
		h := &fuzzCluster{c: c, logs: logs, client: client}
		defer h.done(t)
		m := c.Members[0]
		c.MustSet(m, "seed", "1")
		hdr := http.Header{}
		if r.path == "/raft" || strings.HasPrefix(r.path, "/raft/s") {
			hdr.Set("X-Server-Version", peerVersion)
		}
		switch hdrSel % 3 {
		case 1:
			hdr.Set("X-Embedraft-Cluster-Id", "0")
			hdr.Set("X-Etcd-Cluster-ID", "0")
		case 2:
			hdr.Set("X-Embedraft-Cluster-Id", "abc")
			hdr.Set("X-Etcd-Cluster-ID", "abc")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		code, resp, err := h.do(ctx, m, r.method, r.path, body, hdr)
		what := fmt.Sprintf("%s %s %q to a standalone node", r.method, r.path, body)
		envelope := r.path != "/raft/probing"
		checkAnswer(t, what, code, resp, err, envelope)
		if err := m.Node.Err(); err != nil {
			t.Fatalf("%s: node stopped: %v", what, err)
		}
		if r.path == "/raft/api/set" {
			if want, _ := wantWriteStatus(body); code != want {
				t.Fatalf("%s: status %d, want %d: %s", what, code, want, resp)
			}
		}
		if code/100 != 2 {
			if mode := m.Node.Mode(); mode != embedraft.ModeStandalone {
				t.Fatalf("%s: refused with %d, but the node is now %s", what, code, mode)
			}
			if got := fmt.Sprint(m.Store.Snapshot()); got != "map[seed:1]" {
				t.Fatalf("%s: refused with %d, but the state is %s", what, code, got)
			}
		}
		c.MustSet(m, "after", "1")
	})
}

// AddMember switches a standalone node to a one-member cluster before the
// leader-side checks (id in use, id used before, address already a member)
// run: a request refused by those checks answers 409 but has already, for
// good, turned the node into a cluster (raft, WAL, new cluster id).
func TestRegressionRejectedAddNodeSwitchesStandalone(t *testing.T) {
	for _, path := range []string{"/raft/api/addNode", "/raft/node/join"} {
		c := tc.NewSingle(t)
		m := c.Members[0]
		c.MustSet(m, "k", "v")
		code, body, err := c.Post(m, path, []byte(`{"addr":"http://127.0.0.1:1","id":1}`))
		if err != nil || code/100 != 4 {
			t.Fatalf("%s with the node's own id: %d %v %s, want a 4xx", path, code, err, body)
		}
		if mode := m.Node.Mode(); mode != embedraft.ModeStandalone {
			t.Errorf("%s refused with %d (%s), but the node is now %s (cluster %s)", path, code, body, mode, m.Node.Status().ClusterID)
		}
	}
}

// TestRouteBadInput is the table of bad requests to every route: each gets
// its 4xx and a message saying what is wrong, and together they change
// nothing (state, log, membership, leader).
func TestRouteBadInput(t *testing.T) {
	logs := &ringLog{}
	c := tc.NewStatic(t, 3, fuzzOptions(logs)...)
	h := &fuzzCluster{c: c, logs: logs, client: &http.Client{Timeout: 20 * time.Second}}
	defer h.client.CloseIdleConnections()
	defer h.done(t)
	before := h.before(t)
	lead := h.leader(t)
	var follower *tc.Member
	for _, m := range c.Running() {
		if m != lead {
			follower = m
			break
		}
	}
	cid := lead.Node.Status().ClusterID
	big := bytes.Repeat([]byte("x"), fuzzMaxBody+1)
	bigJSON := []byte(`{"addr":"http://127.0.0.1:1","pad":"` + strings.Repeat("x", fuzzMaxBody) + `"}`)
	peer := func(kv ...string) http.Header {
		h := http.Header{}
		h.Set("X-Server-Version", peerVersion)
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	withCluster := http.Header{"X-Embedraft-Cluster-Id": {cid}}
	cases := []struct {
		name, method, path string
		hdr                http.Header
		body               []byte
		status             int
		msg                string
	}{
		{"set/empty", "POST", "/raft/api/set", nil, nil, 400, "empty body"},
		{"set/not JSON", "POST", "/raft/api/set", nil, []byte("\xff"), 400, "invalid JSON"},
		{"set/two objects", "POST", "/raft/api/set", nil, []byte(`{"key":"a"}{"key":"b"}`), 400, "trailing data"},
		{"set/too large", "POST", "/raft/api/set", nil, big, 413, "too large"},
		{"set/GET", "GET", "/raft/api/set", nil, nil, 405, "not allowed"},
		{"propose/no cluster id", "POST", "/raft/node/propose", nil, []byte(`{"key":"a"}`), 403, "cluster"},
		{"propose/wrong cluster id", "POST", "/raft/node/propose", http.Header{"X-Embedraft-Cluster-Id": {"1"}}, []byte(`{"key":"a"}`), 403, "cluster"},
		{"propose/empty", "POST", "/raft/node/propose", withCluster, nil, 400, "empty body"},
		{"propose/too large", "POST", "/raft/node/propose", withCluster, big, 413, "too large"},
		{"propose/bad body", "POST", "/raft/node/propose", withCluster, []byte(`{"key":1}`), 400, "invalid JSON"},
		{"join/not JSON", "POST", "/raft/node/join", nil, []byte(`{"addr"`), 400, "invalid JSON"},
		{"join/no addr", "POST", "/raft/node/join", nil, []byte(`{}`), 400, "empty URL"},
		{"join/wrong cluster header", "POST", "/raft/node/join", http.Header{"X-Embedraft-Cluster-Id": {"1"}}, []byte(`{"addr":"http://127.0.0.1:1"}`), 403, "cluster"},
		{"join/wrong cluster body", "POST", "/raft/node/join", nil, []byte(`{"addr":"http://127.0.0.1:1","cluster_id":"1"}`), 403, "cluster"},
		{"join/too large", "POST", "/raft/node/join", nil, bigJSON, 413, "too large"},
		{"addNode/negative id", "POST", "/raft/api/addNode", nil, []byte(`{"addr":"http://127.0.0.1:1","id":-1}`), 400, "invalid JSON"},
		{"addNode/id used", "POST", "/raft/api/addNode", nil, []byte(`{"addr":"http://127.0.0.1:1","id":2}`), 409, "in use"},
		{"addNode/query in addr", "POST", "/raft/api/addNode", nil, []byte(`{"addr":"http://127.0.0.1:1?x=1"}`), 400, "addr"},
		{"addNode/too large", "POST", "/raft/api/addNode", nil, bigJSON, 413, "too large"},
		{"deleteNode/unknown", "POST", "/raft/api/deleteNode", nil, []byte(`{"id":99}`), 404, "no member 99"},
		{"deleteNode/zero", "POST", "/raft/api/deleteNode", nil, []byte(`{}`), 400, "positive"},
		{"deleteNode/string id", "POST", "/raft/api/deleteNode", nil, []byte(`{"id":"2"}`), 400, "invalid JSON"},
		{"deleteNode/too large", "POST", "/raft/api/deleteNode", nil, big, 413, "too large"},
		{"transferLeader/unknown", "POST", "/raft/api/transferLeader", nil, []byte(`{"to":99}`), 404, "member 99"},
		{"transferLeader/float", "POST", "/raft/api/transferLeader", nil, []byte(`{"to":1.5}`), 400, "invalid JSON"},
		{"transferLeader/unknown field", "POST", "/raft/api/transferLeader", nil, []byte(`{"to":2,"now":true}`), 400, "unknown field"},
		{"transferLeader/too large", "POST", "/raft/api/transferLeader", nil, big, 413, "too large"},
		{"raft/no version", "POST", "/raft", nil, []byte("x"), 412, "version"},
		{"raft/old version", "POST", "/raft", peer("X-Server-Version", "2.3.0", "X-Etcd-Cluster-ID", cid), []byte("x"), 412, "version"},
		{"raft/wrong cluster", "POST", "/raft", peer("X-Etcd-Cluster-ID", "1"), []byte("x"), 412, "cluster ID mismatch"},
		{"raft/garbage", "POST", "/raft", peer("X-Etcd-Cluster-ID", cid), []byte{0xff, 0xff}, 400, "unmarshal"},
		{"raft/GET", "GET", "/raft", peer("X-Etcd-Cluster-ID", cid), nil, 405, "Method Not Allowed"},
		{"snapshot/short", "POST", "/raft/snapshot", peer("X-Etcd-Cluster-ID", cid), []byte{0, 1}, 400, "snapshot message"},
		{"snapshot/too large", "POST", "/raft/snapshot", peer("X-Etcd-Cluster-ID", cid), binary.BigEndian.AppendUint64(nil, 1<<40), 413, "too large"},
		{"snapshot/truncated", "POST", "/raft/snapshot", peer("X-Etcd-Cluster-ID", cid), binary.BigEndian.AppendUint64(nil, 100), 400, "decode"},
		{"snapshot/not a snapshot", "POST", "/raft/snapshot", peer("X-Etcd-Cluster-ID", cid), append(binary.BigEndian.AppendUint64(nil, 2), 0x08, 0x03), 400, "wrong raft message type"},
		{"stream/bad id", "GET", "/raft/stream/message/zz", peer("X-Etcd-Cluster-ID", cid), nil, 404, "invalid from"},
		{"stream/unknown member", "GET", "/raft/stream/message/99", peer("X-Etcd-Cluster-ID", cid), nil, 404, "sender not found"},
		{"stream/unknown type", "GET", "/raft/stream/other/2", peer("X-Etcd-Cluster-ID", cid), nil, 404, "invalid path"},
		{"stream/wrong to", "GET", "/raft/stream/msgapp/2", peer("X-Etcd-Cluster-ID", cid, "X-Raft-To", "99"), nil, 412, "mismatch"},
		{"stream/POST", "POST", "/raft/stream/message/2", peer("X-Etcd-Cluster-ID", cid), nil, 405, "Method Not Allowed"},
		{"unknown route", "GET", "/raft/api/nope", nil, nil, 404, "no route"},
		{"status/POST", "POST", "/raft/api/status", nil, []byte("{}"), 405, "not allowed"},
	}
	for _, m := range []*tc.Member{lead, follower} {
		for _, tt := range cases {
			if strings.HasPrefix(tt.path, "/raft/stream/") && m.ID == 2 {
				tt.path = strings.Replace(tt.path, "/2", "/1", 1)
			}
			if m != lead && tt.path == "/raft/node/propose" && tt.status == 400 && len(tt.body) > 0 {
				// Only the leader runs PreProcessData.
				tt.status, tt.msg = 503, "not leader"
			}
			t.Run(fmt.Sprintf("%s/member%d", tt.name, m.ID), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				code, body, err := h.do(ctx, m, tt.method, tt.path, tt.body, tt.hdr)
				if err != nil || code != tt.status || !strings.Contains(string(body), tt.msg) {
					t.Fatalf("%s %s: %d %v %q, want %d with %q", tt.method, tt.path, code, err, body, tt.status, tt.msg)
				}
			})
		}
	}
	h.after(t, lead, outcomeRejected, "the bad requests")
	if h.prev.leader != before.leader && h.prev.term == before.term {
		t.Fatalf("bad requests moved the leader from %d to %d", before.leader, h.prev.leader)
	}
}

// TestRoutesRequireToken: with a token, every admin and peer route refuses
// a request without it, or with a wrong one, and nothing changes.
func TestRoutesRequireToken(t *testing.T) {
	logs := &ringLog{}
	c := tc.NewStatic(t, 3, fuzzOptions(logs, func(cfg *embedraft.Config) { cfg.Token = "s3cret" })...)
	h := &fuzzCluster{c: c, logs: logs, client: &http.Client{Timeout: 20 * time.Second}}
	defer h.client.CloseIdleConnections()
	defer h.done(t)
	h.before(t)
	lead := h.leader(t)
	cid := lead.Node.Status().ClusterID
	routes := []struct{ method, path, body string }{
		{"POST", "/raft/api/addNode", `{"addr":"http://127.0.0.1:1"}`},
		{"POST", "/raft/node/join", `{"addr":"http://127.0.0.1:1"}`},
		{"POST", "/raft/api/deleteNode", `{"id":2}`},
		{"POST", "/raft/api/transferLeader", `{"to":2}`},
		{"POST", "/raft/node/propose", `{"key":"a","value":"1"}`},
		{"POST", "/raft", "\x08\x02"}, // an empty MsgProp
		{"POST", "/raft/snapshot", "\x00\x00\x00\x00\x00\x00\x00\x02\x08\x07"},
		{"GET", "/raft/stream/message/2", ""},
		{"GET", "/raft/stream/msgapp/2", ""},
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cre", "Bearer  s3cret", "Basic s3cret", "Bearer s3cret2"} {
		for _, r := range routes {
			t.Run(fmt.Sprintf("%s%s/%q", r.method, r.path, auth), func(t *testing.T) {
				hdr := peerHeaders(cid)
				hdr.Set("X-Embedraft-Cluster-Id", cid)
				hdr.Set("X-Raft-To", "1")
				if auth != "" {
					hdr.Set("Authorization", auth)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				code, body, err := h.do(ctx, lead, r.method, r.path, []byte(r.body), hdr)
				if err != nil || code != 401 {
					t.Fatalf("%d %v %q, want 401", code, err, body)
				}
			})
		}
	}
	h.after(t, lead, outcomeRejected, "requests without the token")
}

// FuzzAnyRoute sends any method and path to a member: the router answers
// every request, never with a 5xx other than 503 and 504, and nothing but a
// write route changes the state. Routes with a target of their own that
// can legitimately change membership or leadership, or that take raft
// messages, are left to those targets.
func FuzzAnyRoute(f *testing.F) {
	for _, s := range []struct{ method, path string }{
		{"GET", "/raft/api/status"}, {"GET", "/raft/api/getPeerList"}, {"GET", "/healthz"}, {"GET", "/readyz"},
		{"GET", "/metrics"}, {"GET", "/kv"}, {"GET", "/kv/a?consistency=local"}, {"GET", "/kv/a?consistency=x"},
		{"POST", "/raft/api/set"}, {"PUT", "/raft/api/set"}, {"DELETE", "/raft/api/status"}, {"GET", "/raft/api/"},
		{"GET", "/raft/node/"}, {"POST", "/raft/node/propose"}, {"GET", "/raft//api/status"}, {"GET", "/raft/api/se%74"},
		{"OPTIONS", "*"}, {"GET", "/../../etc/passwd"}, {"HEAD", "/raft/api/status"}, {"PATCH", "/raft/node/join/"},
	} {
		f.Add(uint8(len(s.path)), s.method, s.path, []byte(`{"key":"a","value":"1"}`))
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, method, path string, body []byte) {
		defer h.done(t)
		m := h.pick(t, sel)
		req, err := http.NewRequest(method, m.URL+"/"+strings.TrimPrefix(path, "/"), nil)
		if err != nil || req.URL.Host != strings.TrimPrefix(m.URL, "http://") {
			t.Skip("not a request")
		}
		clean := pathpkg.Clean("/" + req.URL.Path)
		switch {
		case clean == "/raft" || strings.HasPrefix(clean, "/raft/snapshot") || strings.HasPrefix(clean, "/raft/stream"),
			clean == "/raft/node/join" || clean == "/raft/api/addNode" || clean == "/raft/api/deleteNode" || clean == "/raft/api/transferLeader":
			t.Skip("a route with a target of its own")
		}
		h.before(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		code, resp, err := h.do(ctx, m, method, req.URL.RequestURI(), body, nil)
		what := fmt.Sprintf("%s %s %q to member %d", method, req.URL.RequestURI(), body, m.ID)
		checkAnswer(t, what, code, resp, err, false)
		o := outcomeRejected // nothing may change...
		if clean == "/raft/api/set" || clean == "/raft/node/propose" {
			o = outcomeOf(code) // ...but a write
		}
		h.after(t, m, o, what)
	})
}
