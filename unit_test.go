package embedraft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3/raftpb"

	"github.com/embedraft/embedraft/transport"
)

func TestConfigValidate(t *testing.T) {
	peers := map[uint64]string{1: "http://127.0.0.1:1", 2: "http://127.0.0.1:2"}
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means valid
	}{
		{"standalone OK", Config{AdvertiseURL: "http://a:1", DataDir: "d"}, nil},
		{"static OK", Config{ID: 2, AdvertiseURL: "http://127.0.0.1:2", DataDir: "d", Peers: peers}, nil},
		{"static advertise defaults to peer", Config{ID: 2, AdvertiseURL: "http://127.0.0.1:2/", DataDir: "d", Peers: peers}, nil},
		{"missing everything", Config{}, []string{"DataDir is required", "AdvertiseURL"}},
		{"bad scheme", Config{AdvertiseURL: "ftp://a:1", DataDir: "d"}, []string{"scheme"}},
		{"path in URL", Config{AdvertiseURL: "http://a:1/x", DataDir: "d"}, []string{"scheme://host:port only"}},
		{"no host", Config{AdvertiseURL: "http://", DataDir: "d"}, []string{"no host"}},
		{"empty port", Config{AdvertiseURL: "http://127.0.0.1:", DataDir: "d"}, []string{"empty port"}},
		{"port out of range", Config{AdvertiseURL: "http://a:70000", DataDir: "d"}, []string{"1-65535"}},
		{"id not in peers", Config{ID: 3, AdvertiseURL: "http://a:3", DataDir: "d", Peers: peers}, []string{"not in Peers"}},
		{"peers without id", Config{AdvertiseURL: "http://a:1", DataDir: "d", Peers: peers}, []string{"ID is required"}},
		{"duplicate peer URL", Config{ID: 1, AdvertiseURL: "http://x:1", DataDir: "d",
			Peers: map[uint64]string{1: "http://x:1", 2: "http://x:1"}}, []string{"share the URL"}},
		{"election below heartbeat", Config{AdvertiseURL: "http://a:1", DataDir: "d", ElectionTicks: 2, HeartbeatTicks: 2},
			[]string{"must exceed"}},
		{"tiny tick", Config{AdvertiseURL: "http://a:1", DataDir: "d", TickInterval: time.Microsecond}, []string{"below 1ms"}},
		{"negative sizes", Config{AdvertiseURL: "http://a:1", DataDir: "d", MaxRequestBytes: -1, LeaderWait: -1},
			[]string{"MaxRequestBytes", "LeaderWait"}},
		{"request bytes beyond 1 GiB", Config{AdvertiseURL: "http://a:1", DataDir: "d", MaxRequestBytes: 1<<30 + 1},
			[]string{"MaxRequestBytes", "1 GiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.SnapshotCount != DefaultSnapshotCount || c.TickInterval != 100*time.Millisecond ||
		c.ElectionTicks != 10 || c.HeartbeatTicks != 1 || c.ID != 1 || c.Logger == nil {
		t.Fatalf("defaults: %+v", c)
	}
	if c.SnapshotBytes != DefaultSnapshotBytes || c.CatchUpBytes != DefaultSnapshotBytes/2 {
		t.Fatalf("SnapshotBytes %d, CatchUpBytes %d: want %d and half of it", c.SnapshotBytes, c.CatchUpBytes, DefaultSnapshotBytes)
	}
	if c := (Config{SnapshotBytes: 1 << 40}).withDefaults(); c.CatchUpBytes != DefaultCatchUpBytes {
		t.Fatalf("CatchUpBytes %d with a huge SnapshotBytes, want the %d ceiling", c.CatchUpBytes, DefaultCatchUpBytes)
	}
	if c := (Config{Peers: map[uint64]string{2: "http://a:2"}}).withDefaults(); c.ID != 0 {
		t.Fatalf("ID defaulted with Peers: %d", c.ID)
	}
}

func TestParsePeers(t *testing.T) {
	tests := []struct {
		in      string
		want    map[uint64]string
		wantErr string
	}{
		{"", map[uint64]string{}, ""},
		{"1=http://a:1, 2=http://b:2/", map[uint64]string{1: "http://a:1", 2: "http://b:2"}, ""},
		{"1=http://a:1,1=http://b:2", nil, "given twice"},
		{"x=http://a:1", nil, "integer from 1"},
		{"0=http://a:1", nil, "integer from 1"},
		{"1http://a:1", nil, "not id=URL"},
		{"1=a:1", nil, "scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePeers(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("got %v %v, want %v", got, err, tt.want)
			}
		})
	}
}

func TestEntryEnvelopeRoundTrip(t *testing.T) {
	for _, e := range []entryEnvelope{
		{Kind: kindPropose, ReqID: 1<<63 + 5, Origin: 3, Payload: []byte(`{"key":"a"}`)},
		{Kind: kindInit, ReqID: 0, Origin: 1, Payload: nil},
		{Kind: kindNoop, ReqID: 7, Origin: 1 << 40},
	} {
		got, err := unmarshalEntry(e.marshal())
		if err != nil || got.Kind != e.Kind || got.ReqID != e.ReqID || got.Origin != e.Origin || !bytes.Equal(got.Payload, e.Payload) {
			t.Fatalf("round trip of %+v: %+v %v", e, got, err)
		}
	}
}

func TestEntryEnvelopeRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {1}, {2, 1, 0, 0}, {1, 9, 0, 0}, {1, 1}, {1, 1, 0x80}, {1, 1, 1, 0xff}} {
		if _, err := unmarshalEntry(b); !errors.Is(err, errBadEnvelope) {
			t.Errorf("unmarshalEntry(%v) = %v, want errBadEnvelope", b, err)
		}
	}
}

func TestSnapshotEnvelope(t *testing.T) {
	b := marshalSnapshot([]byte(`{"members":{}}`), []byte("service-bytes"))
	m, s, err := unmarshalSnapshot(b)
	if err != nil || string(m) != `{"members":{}}` || string(s) != "service-bytes" {
		t.Fatalf("got %q %q %v", m, s, err)
	}
	for _, bad := range [][]byte{nil, []byte("XXXX\x00"), append(snapMagic[:], 0xff, 0x01)} {
		if _, _, err := unmarshalSnapshot(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestRegistryConfChangesAndRestore(t *testing.T) {
	r := newRegistry()
	add := func(id uint64, typ raftpb.ConfChangeType, addr string) {
		cc := raftpb.ConfChange{Type: typ, NodeID: id, Context: confContext{ID: id, Addr: addr}.marshal()}
		if err := r.applyConfChange(cc.AsV2()); err != nil {
			t.Fatal(err)
		}
	}
	add(1, raftpb.ConfChangeAddNode, "http://a:1")
	add(4, raftpb.ConfChangeAddLearnerNode, "http://a:4")
	add(4, raftpb.ConfChangeAddNode, "") // promotion keeps the address
	add(2, raftpb.ConfChangeAddNode, "http://a:2")
	add(2, raftpb.ConfChangeRemoveNode, "")
	if m, _ := r.member(4); m.Role != RoleVoter || m.Addr != "http://a:4" {
		t.Fatalf("promoted member: %+v", m)
	}
	if _, ok := r.member(2); ok || !r.isRemoved(2) || r.isRemoved(1) {
		t.Fatalf("removal not recorded: %+v", r.st)
	}
	r2 := newRegistry()
	if err := r2.restore(r.marshal()); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(r2.members()) != fmt.Sprint(r.members()) || !r2.isRemoved(2) || r2.st.MaxID != 4 {
		t.Fatalf("restored %+v, want %+v", r2.st, r.st)
	}
	if err := r2.restore([]byte("{")); err == nil {
		t.Fatal("restore accepted bad JSON")
	}
}

func TestStatusOf(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 200},
		{fmt.Errorf("x: %w", ErrBadRequest), http.StatusBadRequest},
		{ErrCommit, http.StatusBadRequest},
		{ErrTooLarge, http.StatusRequestEntityTooLarge},
		{ErrUnauthorized, http.StatusUnauthorized},
		{ErrWrongCluster, http.StatusForbidden},
		{ErrNotFound, http.StatusNotFound},
		{ErrConflict, http.StatusConflict},
		{ErrNoLeader, http.StatusServiceUnavailable},
		{ErrNotLeader, http.StatusServiceUnavailable},
		{ErrStopped, http.StatusServiceUnavailable},
		{ErrRemoved, http.StatusServiceUnavailable},
		{fmt.Errorf("%w: %w", ErrUnknownOutcome, context.DeadlineExceeded), http.StatusGatewayTimeout},
		{context.DeadlineExceeded, http.StatusGatewayTimeout},
		{errors.New("boom"), http.StatusInternalServerError},
	}
	for _, tt := range tests {
		if got := StatusOf(tt.err); got != tt.want {
			t.Errorf("StatusOf(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
	if codeOf(fmt.Errorf("%w: x", ErrNotLeader)) != "not_leader" || codeOf(nil) != codeOK {
		t.Fatal("codeOf")
	}
}

// transport's checks of peer and admin requests answer 401 without proof
// of the token or a certificate, 403 for a certificate the CA refuses,
// 400 for anything else.
func TestPeerCheckErrorStatus(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{transport.ErrPeerToken, http.StatusUnauthorized},
		{transport.ErrNoClientCert, http.StatusUnauthorized},
		{fmt.Errorf("%w: expired", transport.ErrClientCert), http.StatusForbidden},
		{fmt.Errorf("%w: X-Server-Version: bad", transport.ErrPeerHeader), http.StatusBadRequest},
	} {
		err := peerCheckError(tt.err)
		if got := StatusOf(err); got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("peerCheckError(%v) = %v, status %d, want %d and the cause kept", tt.err, err, got, tt.want)
		}
	}
}

func TestStaticClusterIDIsDerivedFromMembers(t *testing.T) {
	a := staticClusterID(map[uint64]string{1: "http://a:1", 2: "http://a:2"})
	b := staticClusterID(map[uint64]string{2: "http://a:2/", 1: "http://a:1"})
	c := staticClusterID(map[uint64]string{1: "http://a:1", 2: "http://a:3"})
	if a != b || a == c || a == 0 {
		t.Fatalf("ids %x %x %x", a, b, c)
	}
	if x, y := randomClusterID(), randomClusterID(); x == y {
		t.Fatal("random cluster ids repeat")
	}
}

func TestStaticRestoreClusterIDIsDerivedFromMembersAndBackup(t *testing.T) {
	peers := map[uint64]string{1: "http://a:1", 2: "http://a:2"}
	a := restoredClusterID(peers, "aa")
	b := restoredClusterID(map[uint64]string{2: "http://a:2/", 1: "http://a:1"}, "aa")
	c := restoredClusterID(peers, "bb")
	d := restoredClusterID(map[uint64]string{1: "http://a:1", 2: "http://a:3"}, "aa")
	if a != b || a == c || a == d || a == 0 || a == staticClusterID(peers) {
		t.Fatalf("ids %x %x %x %x, static %x", a, b, c, d, staticClusterID(peers))
	}
}

func TestIndexNotifier(t *testing.T) {
	n := newIndexNotifier(3)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- n.wait(context.Background(), 5, stop) }()
	n.set(4)
	n.set(2) // never goes back
	if n.get() != 4 {
		t.Fatalf("index %d", n.get())
	}
	n.set(5)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.wait(ctx, 9, stop); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with cancelled ctx: %v", err)
	}
	close(stop)
	if err := n.wait(context.Background(), 9, stop); !errors.Is(err, ErrStopped) {
		t.Fatalf("wait after stop: %v", err)
	}
}
