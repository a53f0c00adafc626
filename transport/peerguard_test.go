package transport

import (
	"context"
	"errors"
	"math"
	"net/http/httptest"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.uber.org/zap"
)

// The route constants are rafthttp's, which it exports only as variables.
func TestRaftRoutesAreRafthttps(t *testing.T) {
	for _, c := range []struct{ ours, theirs string }{
		{RaftPath, rafthttp.RaftPrefix},
		{RaftStreamPrefix, rafthttp.RaftStreamPrefix + "/"},
		{ProbingPath, rafthttp.ProbingPrefix},
		{SnapshotPath, rafthttp.RaftSnapshotPrefix},
	} {
		if c.ours != c.theirs {
			t.Errorf("route %q, rafthttp serves %q", c.ours, c.theirs)
		}
	}
}

func TestCheckSender(t *testing.T) {
	tr, err := NewPeerTransport(PeerConfig{ID: 1, ClusterID: 9, URL: "http://127.0.0.1:1", Raft: nopRaft{}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Stop()
	tr.AddPeer(types.ID(2), []string{"http://127.0.0.1:1"})
	ok := raftpb.Message{Type: raftpb.MsgHeartbeat, From: 2, To: 1, Term: 3}
	for _, c := range []struct {
		name string
		edit func(*raftpb.Message)
		tr   *rafthttp.Transport
		want string
	}{
		{"OK heartbeat from a peer", func(*raftpb.Message) {}, tr, ""},
		{"OK read index with term 0 and its context", func(m *raftpb.Message) {
			m.Type, m.Term, m.Entries = raftpb.MsgReadIndex, 0, []raftpb.Entry{{Data: []byte("ctx")}}
		}, tr, ""},
		{"to another member", func(m *raftpb.Message) { m.To = 3 }, tr, "addressed to another member"},
		{"from itself", func(m *raftpb.Message) { m.From = 1 }, tr, "bad sender"},
		{"from 0", func(m *raftpb.Message) { m.From = 0 }, tr, "bad sender"},
		{"a local message", func(m *raftpb.Message) { m.Type = raftpb.MsgHup }, tr, "message type MsgHup is never sent by a peer"},
		{"a proposal", func(m *raftpb.Message) { m.Type = raftpb.MsgProp }, tr, "message type MsgProp is never sent by a peer"},
		{"term max", func(m *raftpb.Message) { m.Term = math.MaxUint64 }, tr, "term out of range"},
		{"term 0", func(m *raftpb.Message) { m.Term = 0 }, tr, "term 0"},
		{"read index without context", func(m *raftpb.Message) { m.Type = raftpb.MsgReadIndex }, tr, "read index without its context"},
		{"not a peer", func(m *raftpb.Message) { m.From = 5 }, tr, "sender is not a peer"},
		{"no transport", func(*raftpb.Message) {}, nil, "sender is not a peer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := ok
			c.edit(&m)
			if got := CheckSender(m, 1, c.tr); got != c.want {
				t.Fatalf("CheckSender = %q, want %q", got, c.want)
			}
		})
	}
}

// nopRaft is a rafthttp.Raft that takes nothing.
type nopRaft struct{}

func (nopRaft) Process(context.Context, raftpb.Message) error { return nil }
func (nopRaft) IsIDRemoved(uint64) bool                       { return false }
func (nopRaft) ReportUnreachable(uint64)                      {}
func (nopRaft) ReportSnapshot(uint64, raft.SnapshotStatus)    {}

func TestCheckPeerRequest(t *testing.T) {
	const tokenID = 0xabc
	for _, c := range []struct {
		name    string
		path    string
		headers map[string]string
		tokenID uint64
		want    error
	}{
		{"OK no token", RaftPath, nil, 0, nil},
		{"OK token proven", RaftPath, map[string]string{HeaderRaftClusterID: types.ID(tokenID).String()}, tokenID, nil},
		{"OK probe needs no token", ProbingPath, nil, tokenID, nil},
		{"token missing", RaftStreamPrefix + "message/2", nil, tokenID, ErrPeerToken},
		{"token wrong", SnapshotPath, map[string]string{HeaderRaftClusterID: "abd"}, tokenID, ErrPeerToken},
		{"bad server version", RaftPath, map[string]string{"X-Server-Version": "v3"}, 0, ErrPeerHeader},
		{"bad min cluster version", RaftPath, map[string]string{"X-Min-Cluster-Version": "x.y"}, 0, ErrPeerHeader},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", c.path, nil)
			r.Header.Set("X-PeerURLs", "http://attacker:1")
			for k, v := range c.headers {
				r.Header.Set(k, v)
			}
			if err := CheckPeerRequest(r, c.tokenID); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("CheckPeerRequest = %v, want %v", err, c.want)
			}
			if c.want == nil && r.Header.Get("X-PeerURLs") != "" {
				t.Fatal("X-PeerURLs kept: a request could claim its own URLs")
			}
		})
	}
}

func TestToken(t *testing.T) {
	for _, c := range []struct {
		name, token, header string
		want                bool
	}{
		{"OK no token needed", "", "", true},
		{"OK token", "s3cret", "Bearer s3cret", true},
		{"missing", "s3cret", "", false},
		{"wrong", "s3cret", "Bearer s3cres", false},
		{"not bearer", "s3cret", "Basic s3cret", false},
		{"prefix of the token", "s3cret", "Bearer s3c", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/raft/api/addNode", nil)
			if c.header != "" {
				r.Header.Set("Authorization", c.header)
			}
			if got := HasToken(r, c.token); got != c.want {
				t.Fatalf("HasToken = %v, want %v", got, c.want)
			}
		})
	}
	r := httptest.NewRequest("GET", "/", nil)
	SetToken(r, "s3cret")
	if !HasToken(r, "s3cret") {
		t.Fatal("SetToken's request does not carry the token")
	}
	SetToken(r, "")
	if !HasToken(r, "s3cret") {
		t.Fatal("SetToken with no token changed the header")
	}
	var none *TLS
	if err := none.CheckClientCert(httptest.NewRequest("GET", "/", nil)); err != nil {
		t.Fatalf("without TLS every request passes: %v", err)
	}
}

// The id members derive from the token must not change between versions:
// members of a cluster in a rolling upgrade would refuse each other.
func TestPeerClusterID(t *testing.T) {
	if got := PeerClusterID(0x1234, ""); got != 0x1234 {
		t.Fatalf("without a token: %#x, want the cluster id", got)
	}
	if got := PeerClusterID(0x1234, "s3cret"); got != 0x88f3597735198253 {
		t.Fatalf("with a token: %#x, want 0x88f3597735198253 (as every earlier version)", got)
	}
	if PeerClusterID(0x1234, "s3cret") == PeerClusterID(0x1234, "other") || PeerClusterID(0x1234, "s3cret") == PeerClusterID(0x1235, "s3cret") {
		t.Fatal("the id does not depend on both the token and the cluster id")
	}
	r := httptest.NewRequest("POST", ProposePath, nil)
	if got, ok := FromCluster(r, 0x1234); ok || got != "" {
		t.Fatalf("no header: %q %v", got, ok)
	}
	r.Header.Set(HeaderClusterID, "1234")
	if got, ok := FromCluster(r, 0x1234); !ok || got != "1234" {
		t.Fatalf("same cluster: %q %v", got, ok)
	}
	if _, ok := FromCluster(r, 0x1235); ok {
		t.Fatal("another cluster's id accepted")
	}
}
