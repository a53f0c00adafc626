package embedraft_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
)

// indexedStore records the log positions CommitIndexed is given and skips
// writes at or before the last one it holds, as a service that persists
// its state with its position would. It wraps the demo's store without
// its ResultCommitter (which would take precedence).
type indexedStore struct {
	kv      *kvstore.Store
	mu      sync.Mutex
	held    embedraft.Position
	seen    []embedraft.Position
	skipped int
}

func (s *indexedStore) CommitIndexed(at embedraft.Position, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, at)
	if !at.After(s.held) {
		s.skipped++
		return nil
	}
	s.held = at
	return s.kv.Commit(data)
}

func (s *indexedStore) Commit(data []byte) error        { return s.kv.Commit(data) }
func (s *indexedStore) GetInit() ([]byte, error)        { return s.kv.GetInit() }
func (s *indexedStore) GetSnapshot() ([]byte, error)    { return s.kv.GetSnapshot() }
func (s *indexedStore) ResetSnap(data []byte) error     { return s.kv.ResetSnap(data) }
func (s *indexedStore) SetRaft(r embedraft.IRaftSender) { s.kv.SetRaft(r) }
func (s *indexedStore) PreProcessData(body []byte) (interface{}, []byte, error) {
	return s.kv.PreProcessData(body)
}

func startIndexed(t *testing.T, dir string, svc *indexedStore) (*embedraft.Node, func()) {
	t.Helper()
	return startIndexedService(t, dir, svc)
}

func startIndexedService(t *testing.T, dir string, svc embedraft.IService) (*embedraft.Node, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	node, err := embedraft.New(embedraft.Config{
		AdvertiseURL: "http://" + ln.Addr().String(), DataDir: dir, Cluster: true,
		TickInterval: 10 * time.Millisecond,
	}, svc)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: node.Handler()}
	go srv.Serve(ln) // ends on Close below
	return node, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = node.Close(ctx)
		_ = srv.Close()
	}
}

// The apply loop prefers CommitIndexed, with strictly increasing positions,
// and a service holding its writes may skip them when the log is replayed.
func TestIndexedCommitter(t *testing.T) {
	dir := t.TempDir()
	svc := &indexedStore{kv: kvstore.New()}
	node, stop := startIndexed(t, dir, svc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, k := range []string{"a", "b", "c"} {
		if _, err := node.Send(ctx, []byte(`{"key":"`+k+`","value":"1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	svc.mu.Lock()
	if len(svc.seen) != 3 || svc.skipped != 0 {
		t.Fatalf("CommitIndexed saw %v, skipped %d", svc.seen, svc.skipped)
	}
	for i := 1; i < len(svc.seen); i++ {
		if !svc.seen[i].After(svc.seen[i-1]) {
			t.Fatalf("positions do not increase: %v", svc.seen)
		}
	}
	svc.seen = nil
	svc.mu.Unlock()

	// A restart replays the log (no snapshot yet): the service, which kept
	// its state and position, skips every write.
	_, stop = startIndexed(t, dir, svc)
	defer stop()
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if svc.skipped != 3 || svc.kv.Len() != 3 {
		t.Fatalf("replay: skipped %d of %v, %d keys", svc.skipped, svc.seen, svc.kv.Len())
	}
}

// indexedResultStore is indexedStore with results: the demo's add.
type indexedResultStore struct {
	indexedStore
	results map[embedraft.Position]interface{}
}

func (s *indexedResultStore) CommitIndexedResult(at embedraft.Position, data []byte) (interface{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, at)
	if !at.After(s.held) {
		s.skipped++
		return s.results[at], nil
	}
	s.held = at
	res, err := s.kv.CommitResult(data)
	if err == nil {
		s.results[at] = res
	}
	return res, err
}

// A service that is both indexed and result-computing gets the position
// and the client gets its result.
func TestIndexedResultCommitter(t *testing.T) {
	svc := &indexedResultStore{indexedStore: indexedStore{kv: kvstore.New()}, results: map[embedraft.Position]interface{}{}}
	node, stop := startIndexedService(t, t.TempDir(), svc)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for want := 1; want <= 3; want++ {
		got, err := node.Send(ctx, []byte(`{"key":"n","add":1}`))
		if err != nil {
			t.Fatal(err)
		}
		var op kvstore.Op
		if raw, ok := got.(json.RawMessage); !ok || json.Unmarshal(raw, &op) != nil || op.Value != strconv.Itoa(want) {
			t.Fatalf("add %d answered %#v", want, got)
		}
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if len(svc.seen) != 3 {
		t.Fatalf("CommitIndexedResult saw %v", svc.seen)
	}
}
