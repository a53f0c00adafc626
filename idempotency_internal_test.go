package embedraft

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3/raftpb"
)

// IdempotencyTableForTest is the node's key table as kept in snapshots.
func IdempotencyTableForTest(n *Node) string { return string(n.idem.marshal()) }

func TestCheckIdempotencyKey(t *testing.T) {
	for _, tc := range []struct {
		name, key string
		ok        bool
	}{
		{"OK", "a", true},
		{"OKPrintable", "!~azAZ09-_.:/", true},
		{"OKLongest", strings.Repeat("x", 128), true},
		{"ErrEmpty", "", false},
		{"ErrTooLong", strings.Repeat("x", 129), false},
		{"ErrSpace", "a b", false},
		{"ErrTab", "a\tb", false},
		{"ErrControl", "a\x01", false},
		{"ErrDEL", "\x7f", false},
		{"ErrNonASCII", "é", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckIdempotencyKey(tc.key)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrBadRequest)) {
				t.Fatalf("CheckIdempotencyKey(%q) = %v", tc.key, err)
			}
		})
	}
}

func TestEntryWritesRoundTrip(t *testing.T) {
	n := &Node{id: 7}
	batch := []proposal{
		{reqID: 1, data: []byte("one")},
		{reqID: 2, data: []byte("two"), key: "k2", obj: []byte(`{"a":1}`)},
	}
	for _, tc := range []struct {
		name    string
		batch   []proposal
		version byte
	}{
		{"ProposeV1", batch[:1], entryVersion},
		{"ProposeKeyed", batch[1:], entryVersionKeyed},
		{"BatchKeyed", batch, entryVersionKeyed},
		{"BatchV1", []proposal{batch[0], batch[0]}, entryVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := n.batchEntry(tc.batch)
			if err := checkEntry(raftpb.Entry{Type: raftpb.EntryNormal, Data: b}); err != nil {
				t.Fatalf("checkEntry: %v", err)
			}
			env, err := unmarshalEntry(b)
			if err != nil || env.Version != tc.version || env.Origin != 7 {
				t.Fatalf("envelope %+v, %v", env, err)
			}
			if tc.version == entryVersionKeyed && time.Since(time.UnixMilli(env.Time)) > time.Minute {
				t.Fatalf("time stamp %d", env.Time)
			}
			ws, err := env.writes()
			if err != nil || len(ws) != len(tc.batch) {
				t.Fatalf("writes %+v, %v", ws, err)
			}
			for i, w := range ws {
				p := tc.batch[i]
				if w.reqID != p.reqID || w.key != p.key || !bytes.Equal(w.data, p.data) || !bytes.Equal(w.obj, p.obj) {
					t.Fatalf("write %d: %+v, want %+v", i, w, p)
				}
			}
			for cut := 1; cut < len(b); cut++ { // truncations never panic
				if env, err := unmarshalEntry(b[:cut]); err == nil {
					_, _ = env.writes()
				}
			}
		})
	}
}

func TestIdemTable(t *testing.T) {
	tab := newIdemTable(time.Second, 3)
	rec := func(key string, at int64) {
		tab.record(idemOutcome{Key: key, Time: at, Status: 200, Data: []byte(`1`)})
	}
	rec("a", 1000)
	if _, ok := tab.seen("a", 1500); !ok {
		t.Fatal("a forgotten within the window")
	}
	if _, ok := tab.seen("a", 2001); ok {
		t.Fatal("a remembered past the window")
	}
	// The clock never goes back: a leader with a slow clock does not
	// bring a back.
	if _, ok := tab.seen("a", 1200); ok {
		t.Fatal("a came back with an older stamp")
	}
	for i, k := range []string{"b", "c", "d", "e"} {
		rec(k, 3000+int64(i))
	}
	if tab.len() != 3 {
		t.Fatalf("%d keys, limit 3", tab.len())
	}
	if _, ok := tab.seen("b", 3010); ok {
		t.Fatal("the oldest key outlived the limit")
	}
	// Snapshot round trip keeps keys, order and clock.
	b := tab.marshal()
	tab2 := newIdemTable(time.Second, 3)
	if err := tab2.restore(b); err != nil || string(tab2.marshal()) != string(b) {
		t.Fatalf("restore: %v\n%s\n%s", err, b, tab2.marshal())
	}
	if err := tab2.restore(nil); err != nil || tab2.len() != 0 {
		t.Fatalf("restore of nothing: %v, %d keys", err, tab2.len())
	}
}

func TestSnapshotMembersCarryKeys(t *testing.T) {
	n := &Node{reg: newRegistry(), idem: newIdemTable(time.Minute, 10)}
	n.idem.record(idemOutcome{Key: "k", Time: 5, Index: 9, Status: 200, Data: []byte(`{"x":1}`)})
	blob := n.snapshotMembers()
	// The membership decoder reads the blob as before.
	reg := newRegistry()
	if err := reg.restore(blob); err != nil {
		t.Fatalf("registry restore: %v", err)
	}
	n2 := &Node{reg: newRegistry(), idem: newIdemTable(time.Minute, 10)}
	if err := n2.restoreIdempotency(blob); err != nil {
		t.Fatal(err)
	}
	if o, ok := n2.idem.seen("k", 6); !ok || o.Index != 9 || string(o.Data) != `{"x":1}` {
		t.Fatalf("restored %+v %v", o, ok)
	}
	// A blob of an earlier release (no keys) restores an empty table.
	if err := n2.restoreIdempotency(n.reg.marshal()); err != nil || n2.idem.len() != 0 {
		t.Fatalf("old blob: %v, %d keys", err, n2.idem.len())
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(blob, &obj) != nil || obj["members"] == nil || obj[idemField] == nil {
		t.Fatalf("blob %s", blob)
	}
}

func TestForwardWrap(t *testing.T) {
	for _, tc := range []struct{ key, body string }{
		{"", `{"key":"a"}`},
		{"k-1", `{"key":"a"}`},
		{"", "\x00ERK\x05hello"}, // a raw body that looks wrapped
		{"k", ""},
	} {
		key, body, err := unwrapForward(wrapForward(tc.key, []byte(tc.body)))
		if err != nil || key != tc.key || string(body) != tc.body {
			t.Fatalf("round trip of %q %q: %q %q %v", tc.key, tc.body, key, body, err)
		}
	}
	if _, _, err := unwrapForward([]byte("\x00ERK\x03a b")); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad forwarded key: %v", err)
	}
}

// countingService refuses writes of "bad" and counts CommitResult calls.
type countingService struct {
	nopService
	commits int
}

func (s *countingService) CommitResult(data []byte) (interface{}, error) {
	s.commits++
	if string(data) == "bad" {
		return nil, errors.New("refused")
	}
	return map[string]int{"n": s.commits}, nil
}

type nopService struct{}

func (nopService) Commit([]byte) error                                  { return nil }
func (nopService) PreProcessData(b []byte) (interface{}, []byte, error) { return nil, b, nil }
func (nopService) GetInit() ([]byte, error)                             { return nil, nil }
func (nopService) ResetSnap([]byte) error                               { return nil }
func (nopService) GetSnapshot() ([]byte, error)                         { return nil, nil }
func (nopService) SetRaft(IRaftSender)                                  {}

func TestApplyWriteRecordsRefusal(t *testing.T) {
	svc := &countingService{}
	n := &Node{svc: svc, idem: newIdemTable(time.Minute, 10), log: slog.New(slog.DiscardHandler)}
	first := n.applyWrite(5, 1000, batchedWrite{key: "k", data: []byte("bad")})
	again := n.applyWrite(6, 1001, batchedWrite{key: "k", data: []byte("ok")})
	if first.err == nil || again.err == nil || first.err.Error() != again.err.Error() || svc.commits != 1 {
		t.Fatalf("first %+v, again %+v, %d commits", first, again, svc.commits)
	}
	ok1 := n.applyWrite(7, 1002, batchedWrite{key: "j", data: []byte("ok")})
	ok2 := n.applyWrite(8, 1003, batchedWrite{key: "j", data: []byte("ok")})
	if ok1.err != nil || string(ok1.raw) != `{"n":2}` || string(ok2.raw) != `{"n":2}` || svc.commits != 2 {
		t.Fatalf("first %+v, again %+v, %d commits", ok1, ok2, svc.commits)
	}
	// Without a key, the service's result itself.
	if r := n.applyWrite(9, 0, batchedWrite{data: []byte("ok")}); !r.hasResult || r.hasRaw || svc.commits != 3 {
		t.Fatalf("unkeyed %+v", r)
	}
}
