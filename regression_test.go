package embedraft_test

// Regression tests for the library bugs the fuzz targets found. The ones
// whose bug killed the process run their scenario in a child process
// (TestRegressionChild), so that a regression fails cleanly instead of
// taking the test binary down.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3/raftpb"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

const regressionChildEnv = "EMBEDRAFT_REGRESSION_CHILD"

// regressionScenarios run in a child process. Each fails (or crashes the
// child) if its bug comes back.
var regressionScenarios = map[string]func(t *testing.T){}

// TestRegressionChild runs one of regressionScenarios, named by
// EMBEDRAFT_REGRESSION_CHILD; it is started by runRegressionChild and skips
// otherwise.
func TestRegressionChild(t *testing.T) {
	name := os.Getenv(regressionChildEnv)
	if name == "" {
		t.Skip("runs only as the child process of a TestRegression test")
	}
	run, ok := regressionScenarios[name]
	if !ok {
		t.Fatalf("no scenario %q", name)
	}
	run(t)
}

// runRegressionChild runs scenario name in a child process and fails with
// the child's panic or failure.
func runRegressionChild(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRegressionChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), regressionChildEnv+"="+name)
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
		if strings.Contains(l, "regression_test.go") || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "FAIL") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// forgedCases are raft messages that anyone who can reach a node's HTTP
// port can send to POST /raft with the public cluster id (no token
// configured). rafthttp hands them to peerRaft.Process, which steps them
// into raft unchecked. DisableProposalForwarding means no real peer ever
// sends MsgProp, and raft treats a message with term 0 as a local one.
var forgedCases = []struct {
	name    string
	symptom string // what the message did before the fix
	leader  bool   // send to the leader (else to a follower)
	msg     func(target, leader uint64) raftpb.Message
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

// forgedInTermCases are raft messages in the current term that follow the
// follower's last entry, as only a member (or someone who can reach the peer
// routes without a token) can send.
var forgedInTermCases = []struct {
	name    string
	symptom string
	inTerm  func(target, leader, term, last uint64) raftpb.Message
}{
	{name: "HeartbeatInTermCommitPastLog", symptom: "a MsgHeartbeat in the current term with a commit index past the log panics raft on a follower (tocommit out of range)",
		inTerm: func(_, leader, term, _ uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgHeartbeat, From: leader, Term: term, Commit: 1 << 40}
		}},
	{name: "AppendWithBadConfChange", symptom: "an append in the current term carrying an undecodable membership change is committed; the follower then stops for good (every restart fails on it)",
		inTerm: func(_, leader, term, last uint64) raftpb.Message {
			return raftpb.Message{Type: raftpb.MsgApp, From: leader, Term: term, LogTerm: term, Index: last, Commit: last + 1,
				Entries: []raftpb.Entry{{Term: term, Index: last + 1, Type: raftpb.EntryConfChange, Data: []byte{0xff, 0xff}}}}
		}},
	{name: "AppendWithJointConfChange", symptom: "an append carrying a membership change raft cannot apply (leave a joint config it is not in) panics the follower when applied",
		inTerm: func(_, leader, term, last uint64) raftpb.Message {
			cc := raftpb.ConfChangeV2{} // no changes: "leave joint"
			data, _ := cc.Marshal()
			return raftpb.Message{Type: raftpb.MsgApp, From: leader, Term: term, LogTerm: term, Index: last, Commit: last + 1,
				Entries: []raftpb.Entry{{Term: term, Index: last + 1, Type: raftpb.EntryConfChangeV2, Data: data}}}
		}},
}

func init() {
	for _, fc := range forgedInTermCases {
		regressionScenarios["forged/"+fc.name] = func(t *testing.T) {
			forgedScenario(t, false, func(target, lead *tc.Member) raftpb.Message {
				st := target.Node.Status()
				m := fc.inTerm(target.ID, lead.ID, st.Term, st.Commit)
				m.To = target.ID
				return m
			})
		}
	}
}

func init() {
	for _, fc := range forgedCases {
		regressionScenarios["forged/"+fc.name] = func(t *testing.T) {
			forgedScenario(t, fc.leader, func(target, lead *tc.Member) raftpb.Message { return fc.msg(target.ID, lead.ID) })
		}
	}
}

// forgedScenario sends one forged raft message to the leader or a follower
// of a 3-member cluster and checks that every member keeps running and
// nothing forged reached the state.
func forgedScenario(t *testing.T, toLeader bool, build func(target, lead *tc.Member) raftpb.Message) {
	c := tc.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	c.MustSet(lead, "a", "1")
	c.WaitConverged(10 * time.Second)
	target := lead
	if !toLeader {
		target = c.Followers()[0]
	}
	msg := build(target, lead)
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
	t.Logf("POST /raft with %s to member %d: %d", msg.Type, target.ID, resp.StatusCode)
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
	for _, m := range c.Members {
		m.Stop()
		m.Restart()
	}
	c.WaitConverged(10 * time.Second)
}

// Raft messages forged by anyone who knows the cluster id (public on GET
// /raft/api/status) crash or stop members when no token is set: see
// forgedCases. Expected: the peer routes refuse such messages with a 4xx
// (or ignore them) and every member keeps running.
func TestRegressionForgedPeerMessage(t *testing.T) {
	for _, fc := range forgedCases {
		t.Run(fc.name, func(t *testing.T) {
			runRegressionChild(t, "forged/"+fc.name)
		})
	}
	for _, fc := range forgedInTermCases {
		t.Run(fc.name, func(t *testing.T) {
			runRegressionChild(t, "forged/"+fc.name)
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
	regressionScenarios["addNodeWithoutPort"] = func(t *testing.T) {
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
	runRegressionChild(t, "addNodeWithoutPort")
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
	regressionScenarios["staticPeerWithoutPort"] = func(t *testing.T) {
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
	runRegressionChild(t, "staticPeerWithoutPort")
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
