package embedraft

// Fuzz targets for the library's internal codecs: the entry envelope, the
// snapshot envelope, the static member list and the membership state of a
// snapshot. None may panic on any input; what they accept must round-trip.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3/raftpb"

	"github.com/embedraft/embedraft/transport"
)

func FuzzUnmarshalEntry(f *testing.F) {
	for _, e := range []entryEnvelope{
		{Kind: kindPropose, ReqID: 1<<63 + 5, Origin: 3, Payload: []byte(`{"key":"a"}`)},
		{Kind: kindInit, Origin: 1},
		{Kind: kindNoop, ReqID: 7, Origin: 1 << 40},
		{Version: entryVersionKeyed, Kind: kindPropose, ReqID: 9, Origin: 2, Time: 1_700_000_000_000,
			Payload: []byte("\x02k1\x02{}{\"key\":\"a\"}")},
		{Version: entryVersionKeyed, Kind: kindBatch, Origin: 2, Time: 1,
			Payload: marshalBatch([]proposal{{reqID: 1, key: "k", obj: []byte("1"), data: []byte("d")}, {reqID: 2}}, true)},
	} {
		f.Add(e.marshal())
	}
	for _, b := range [][]byte{nil, {1}, {2, 1, 0, 0}, {1, 9, 0, 0}, {1, 1}, {1, 1, 0x80}, {1, 1, 1, 0xff},
		{1, 1, 0x80, 0x00, 0x00}, append([]byte{1, 1}, bytes.Repeat([]byte{0xff}, 11)...)} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := unmarshalEntry(b)
		if err != nil {
			if !errors.Is(err, errBadEnvelope) {
				t.Fatalf("unmarshalEntry(%x): %v does not wrap errBadEnvelope", b, err)
			}
			return
		}
		if e.Kind < kindPropose || e.Kind > maxKind {
			t.Fatalf("unmarshalEntry(%x) accepted kind %d", b, e.Kind)
		}
		if e.Kind == kindPropose || e.Kind == kindBatch {
			_, _ = e.writes() // never panics
		}
		if len(e.Payload) > len(b)-4 || !bytes.HasSuffix(b, e.Payload) {
			t.Fatalf("unmarshalEntry(%x): payload %x is not the tail of the input", b, e.Payload)
		}
		// What it accepts it writes back the same (varints re-encoded
		// canonically).
		again, err := unmarshalEntry(e.marshal())
		if err != nil || again.Kind != e.Kind || again.ReqID != e.ReqID || again.Origin != e.Origin ||
			again.Version != e.Version || again.Time != e.Time || !bytes.Equal(again.Payload, e.Payload) {
			t.Fatalf("round trip of %+v: %+v, %v", e, again, err)
		}
	})
}

func FuzzEntryEnvelopeRoundTrip(f *testing.F) {
	f.Add(uint8(kindPropose), uint64(0), uint64(0), []byte(nil))
	f.Add(uint8(kindInit), uint64(1<<63), uint64(1<<64-1), []byte("state"))
	f.Fuzz(func(t *testing.T, kind uint8, req, origin uint64, payload []byte) {
		e := entryEnvelope{Kind: entryKind(kind%3 + 1), ReqID: req, Origin: origin, Payload: payload}
		got, err := unmarshalEntry(e.marshal())
		if err != nil || got.Kind != e.Kind || got.ReqID != req || got.Origin != origin || !bytes.Equal(got.Payload, payload) {
			t.Fatalf("round trip of %+v: %+v, %v", e, got, err)
		}
	})
}

func FuzzUnmarshalSnapshot(f *testing.F) {
	f.Add(marshalSnapshot([]byte(`{"members":{}}`), []byte("service-bytes")))
	f.Add(marshalSnapshot(nil, nil))
	for _, b := range [][]byte{nil, []byte("XXXX\x00"), append(snapMagic[:], 0xff, 0x01), append(snapMagic[:], 0x05, 'a'),
		append(snapMagic[:], bytes.Repeat([]byte{0xff}, 10)...), append(snapMagic[:], 0x80, 0x00)} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		members, service, err := unmarshalSnapshot(b)
		if err != nil {
			if members != nil || service != nil {
				t.Fatalf("unmarshalSnapshot(%x) failed (%v) but returned data", b, err)
			}
			return
		}
		if len(members)+len(service) > len(b)-5 || !bytes.HasSuffix(b, service) {
			t.Fatalf("unmarshalSnapshot(%x): parts %x %x do not fit the input", b, members, service)
		}
		m2, s2, err := unmarshalSnapshot(marshalSnapshot(members, service))
		if err != nil || !bytes.Equal(m2, members) || !bytes.Equal(s2, service) {
			t.Fatalf("round trip of %q %q: %q %q %v", members, service, m2, s2, err)
		}
	})
}

func FuzzSnapshotEnvelopeRoundTrip(f *testing.F) {
	f.Add([]byte(`{"members":{}}`), []byte("service"))
	f.Add([]byte(nil), []byte(nil))
	f.Fuzz(func(t *testing.T, members, service []byte) {
		m, s, err := unmarshalSnapshot(marshalSnapshot(members, service))
		if err != nil || !bytes.Equal(m, members) || !bytes.Equal(s, service) {
			t.Fatalf("round trip of %q %q: %q %q %v", members, service, m, s, err)
		}
	})
}

// formatPeers writes peers back in the form ParsePeers reads.
func formatPeers(peers map[uint64]string) string {
	parts := make([]string, 0, len(peers))
	for _, id := range sortedIDs(peers) {
		parts = append(parts, fmt.Sprintf("%d=%s", id, peers[id]))
	}
	return strings.Join(parts, ",")
}

func FuzzParsePeers(f *testing.F) {
	for _, s := range []string{"", " ", "1=http://a:1, 2=http://b:2/", "1=http://a:1,1=http://b:2", "x=http://a:1",
		"0=http://a:1", "1http://a:1", "1=a:1", "1=http://a:1,", ",", "1=", "=http://a:1", "18446744073709551616=http://a:1",
		"1=https://[::1]:8080", "1=http://a:1/x", "1=http://u@a:1", "1=http://a:1?x#y", "+1=http://a:1", "1=http://a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		peers, err := ParsePeers(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("ParsePeers(%q): %v does not wrap ErrInvalidConfig", s, err)
			}
			return
		}
		for id, u := range peers {
			if id == 0 {
				t.Fatalf("ParsePeers(%q) accepted id 0", s)
			}
			if err := checkURL(u); err != nil || strings.HasSuffix(u, "/") {
				t.Fatalf("ParsePeers(%q) accepted URL %q (%v)", s, u, err)
			}
		}
		again, err := ParsePeers(formatPeers(peers))
		if err != nil || fmt.Sprint(again) != fmt.Sprint(peers) {
			t.Fatalf("ParsePeers(%q) = %v; written back and parsed again: %v %v", s, peers, again, err)
		}
		for _, u := range peers {
			if _, err := types.NewURLs([]string{u}); err != nil {
				t.Fatalf("ParsePeers accepted %q, which rafthttp refuses: %v", u, err)
			}
		}
	})
}

// A member URL without a port passes checkURL (so ParsePeers and
// Config.Validate accept it), but rafthttp needs host:port: New then fails
// for the node's own URL, and panics (rafthttp AddPeer logs "failed NewURLs"
// at zap's Panic level) for a peer's.
func TestRegressionParsePeersURLWithoutPort(t *testing.T) {
	peers, err := ParsePeers("1=http://127.0.0.1:1,2=http://127.0.0.1")
	if err == nil {
		t.Errorf("ParsePeers accepted a URL without a port: %v", peers)
	}
	cfg := Config{ID: 1, AdvertiseURL: "http://127.0.0.1:1", DataDir: t.TempDir(),
		Peers: map[uint64]string{1: "http://127.0.0.1:1", 2: "http://127.0.0.1"}}
	if err := cfg.Validate(); err == nil {
		t.Errorf("Config.Validate accepted a peer URL without a port")
	}
}

// FuzzRegistryRestore restores the membership state of a snapshot from any
// bytes: what it accepts reads back the same through marshal, what it
// refuses leaves the state alone.
func FuzzRegistryRestore(f *testing.F) {
	r := newRegistry()
	for _, cc := range []raftpb.ConfChange{
		{Type: raftpb.ConfChangeAddNode, NodeID: 1, Context: confContext{ID: 1, Addr: "http://a:1"}.marshal()},
		{Type: raftpb.ConfChangeAddLearnerNode, NodeID: 4, Context: confContext{ID: 4, Addr: "http://a:4"}.marshal()},
		{Type: raftpb.ConfChangeRemoveNode, NodeID: 2},
	} {
		if err := r.applyConfChange(cc.AsV2()); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(r.marshal())
	for _, s := range []string{"", "{", "null", "{}", `{"members":null}`, `{"members":{"x":{}}}`, `{"members":{"1":5}}`,
		`{"members":{"18446744073709551615":{"id":1}}}`, `{"removed":[1,1,1]}`, `{"max_id":-1}`, `[]`, `{"members":{"1":{}}} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newRegistry()
		r.st.MaxID = 7 // a failed restore must leave the state alone
		if err := r.restore(b); err != nil {
			if r.st.MaxID != 7 || len(r.st.Members) != 0 {
				t.Fatalf("failed restore of %q changed the state: %+v", b, r.st)
			}
			return
		}
		if r.st.Members == nil {
			t.Fatalf("restore(%q) left a nil member map", b)
		}
		// The accessors work on whatever was accepted.
		ms := r.members()
		for id := range ms {
			if _, ok := r.member(id); !ok {
				t.Fatalf("member %d listed but not found", id)
			}
		}
		_ = r.isRemoved(r.maxID())
		_ = r.removedIDs()
		// What it accepted it writes back and reads again the same.
		first := r.marshal()
		r2 := newRegistry()
		if err := r2.restore(first); err != nil {
			t.Fatalf("restore of its own marshal %s: %v", first, err)
		}
		if second := r2.marshal(); !bytes.Equal(first, second) {
			t.Fatalf("restore(marshal) not stable:\n%s\n%s", first, second)
		}
	})
}

// FuzzRegistryApplyConfChange applies a conf change with any context: the
// registry may refuse the context, never panic, and records the member id.
func FuzzRegistryApplyConfChange(f *testing.F) {
	f.Add(uint8(0), uint64(1), confContext{ID: 1, Addr: "http://a:1"}.marshal())
	f.Add(uint8(1), uint64(5), []byte(`{"id":5}`))
	f.Add(uint8(2), uint64(5), []byte(`{`))
	f.Add(uint8(3), uint64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, typ uint8, id uint64, ctx []byte) {
		r := newRegistry()
		cc := raftpb.ConfChange{Type: raftpb.ConfChangeType(typ % 4), NodeID: id, Context: ctx}
		err := r.applyConfChange(cc.AsV2())
		if err != nil && json.Valid(ctx) && bytes.HasPrefix(bytes.TrimSpace(ctx), []byte("{")) &&
			!strings.Contains(err.Error(), "cannot unmarshal") {
			t.Fatalf("JSON object context %q refused: %v", ctx, err)
		}
		if err == nil && r.maxID() != id {
			t.Fatalf("max id %d after a change of %d", r.maxID(), id)
		}
	})
}

// FuzzDecodeAnswer decodes any answer a peer may send: never a panic, and
// never a success for a non-2xx status.
func FuzzDecodeAnswer(f *testing.F) {
	f.Add(200, []byte(`{"code":"000000","msg":"ok","data":{"id":2,"cluster_id":"a","peers":{}}}`))
	f.Add(503, []byte(`{"code":"not_leader","error":"embedraft: not leader"}`))
	f.Add(200, []byte(`{"code":"000000","data":5}`))
	f.Add(500, []byte(`<html>`))
	f.Add(404, []byte(`{"code":"000000"}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		var jr JoinResponse
		err := decodeAnswer(&transport.Response{Status: status, Body: body}, &jr)
		if err == nil && status/100 != 2 {
			t.Fatalf("status %d %q decoded as a success", status, body)
		}
		if err != nil {
			if s := StatusOf(err); s < 400 || s > 599 {
				t.Fatalf("status %d %q: error %v maps to %d", status, body, err, s)
			}
		}
	})
}

// The status every sentinel maps to is a 4xx or one of 503 and 504: the
// library's own errors never make a 500.
func TestSentinelStatuses(t *testing.T) {
	var codes []string
	for _, c := range errorCodes {
		s := StatusOf(fmt.Errorf("wrapped: %w", c.err))
		if s >= 500 && s != http.StatusServiceUnavailable && s != http.StatusGatewayTimeout && !errors.Is(c.err, ErrStorage) {
			t.Errorf("%s (%v) maps to %d", c.code, c.err, s)
		}
		codes = append(codes, c.code)
	}
	sort.Strings(codes)
	for i := 1; i < len(codes); i++ {
		if codes[i] == codes[i-1] {
			t.Errorf("code %q used twice", codes[i])
		}
	}
}
