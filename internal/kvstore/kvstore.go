// Package kvstore is the replicated key-value service of the demo, an
// embedraft.IService. Tests use it as a realistic service.
package kvstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/embedraft/embedraft"
)

// MaxKeyBytes bounds a key.
const MaxKeyBytes = 1024

// Op is a write request body: {"key":"k","value":"v"}
// sets a value; {"key":"k","add":N} adds the integer N (may be negative) to
// the key's integer value (absent counts as 0) and answers the value after
// the add. An Op with Add set is an add; its Value must be empty. In the
// log it is encoded in binary (opcodec.go).
type Op struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Add   *int64 `json:"add,omitempty"`
}

// Reader gives the store linearizable reads; *embedraft.Node implements it.
type Reader interface {
	LinearizableRead(ctx context.Context) error
}

// Store is an in-memory map replicated through embedraft.
type Store struct {
	mu sync.RWMutex
	// data is the state; while a snapshot view holds frozen (snapshot.go),
	// data holds only the writes since the view was captured, and a key's
	// value is data's, else frozen's (the demo never deletes a key).
	data   map[string]string
	frozen map[string]string
	gen    uint64 // bumped when frozen is set or dropped

	sender     embedraft.IRaftSender
	reader     Reader
	slog       *standaloneLog // nil unless OpenStandaloneLog
	preprocess atomic.Int64
	commits    atomic.Int64
	resets     atomic.Int64
	writeHook  atomic.Pointer[func() error]
	commitHook atomic.Pointer[func()]
}

// New returns an empty store.
func New() *Store { return &Store{data: map[string]string{}} }

// SetCommitHook makes every later CommitResult call f first, outside the
// store's lock; tests use it to make the service's Commit slow. nil
// removes it.
func (s *Store) SetCommitHook(f func()) { setHook(&s.commitHook, f) }

// setHook installs f in h, or removes the hook when f is nil.
func setHook[F func() | func() error](h *atomic.Pointer[F], f F) {
	if f == nil {
		h.Store(nil)
		return
	}
	h.Store(&f)
}

// SetReader sets what linearizable reads wait on (the node).
func (s *Store) SetReader(r Reader) { s.reader = r }

// ParseOp decodes and checks a write body strictly.
func ParseOp(body []byte) (Op, error) {
	op, simple := parseSimpleOp(body)
	if !simple {
		var err error
		if op, err = parseFullOp(body); err != nil {
			return op, err
		}
	}
	return op, checkOp(op)
}

// parseFullOp decodes a write body with the JSON decoder: unknown fields
// and trailing data are refused.
func parseFullOp(body []byte) (Op, error) {
	var op Op
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&op); err != nil {
		return op, fmt.Errorf("invalid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return op, errors.New("trailing data after JSON object")
	}
	return op, nil
}

// checkOp checks a decoded write.
func checkOp(op Op) error {
	if op.Key == "" {
		return errors.New(`"key" is required`)
	}
	if len(op.Key) > MaxKeyBytes {
		return fmt.Errorf("key is %d bytes, limit %d", len(op.Key), MaxKeyBytes)
	}
	if op.Add != nil && op.Value != "" {
		return errors.New(`"value" and "add" are exclusive`)
	}
	return nil
}

// PreProcessData checks the body and returns it canonically encoded. An add
// to a value that is not an integer (now, on the leader) is refused here;
// CommitResult checks again, since the value may change before the entry
// applies.
func (s *Store) PreProcessData(body []byte) (interface{}, []byte, error) {
	s.preprocess.Add(1)
	op, err := ParseOp(body)
	if err != nil {
		return nil, nil, err
	}
	if op.Add != nil {
		s.mu.RLock()
		_, err := s.resultLocked(op)
		s.mu.RUnlock()
		if err != nil {
			return nil, nil, err
		}
	}
	return op, encodeOp(op), nil
}

// PreProcessCount is how many times PreProcessData ran on this node.
func (s *Store) PreProcessCount() int64 { return s.preprocess.Load() }

// Commit applies one write (CommitResult without its result).
func (s *Store) Commit(data []byte) error {
	_, err := s.CommitResult(data)
	return err
}

// CommitResult applies one write and returns the key's value after it, as
// an Op {"key":"k","value":"v"} (embedraft.ResultCommitter). An add to a
// value that is not an integer, or that overflows int64, is an error and
// changes nothing. In standalone mode with a standalone log open, the write
// is made durable first.
func (s *Store) CommitResult(data []byte) (interface{}, error) {
	if f := s.commitHook.Load(); f != nil {
		(*f)()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	op, err := decodeOp(data)
	if err != nil {
		return nil, err
	}
	value, err := s.resultLocked(op)
	if err != nil {
		return nil, err
	}
	if s.slog != nil && s.slog.active() {
		if err := s.slog.append(data); err != nil {
			return nil, err
		}
	}
	s.data[op.Key] = value
	s.commits.Add(1)
	return Op{Key: op.Key, Value: value}, nil
}

// resultLocked is the key's value after op, or why op cannot apply.
func (s *Store) resultLocked(op Op) (string, error) {
	if op.Add == nil {
		return op.Value, nil
	}
	var cur int64
	if v, ok := s.getLocked(op.Key); ok {
		var err error
		if cur, err = strconv.ParseInt(v, 10, 64); err != nil {
			return "", fmt.Errorf("cannot add to %q: its value is not an integer", op.Key)
		}
	}
	sum := cur + *op.Add
	if (*op.Add > 0 && sum < cur) || (*op.Add < 0 && sum > cur) {
		return "", fmt.Errorf("cannot add %d to %q: int64 overflow", *op.Add, op.Key)
	}
	return strconv.FormatInt(sum, 10), nil
}

// CommitCount is how many writes Commit applied on this node.
func (s *Store) CommitCount() int64 { return s.commits.Load() }

func (s *Store) apply(data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applyLocked(data)
}

func (s *Store) applyLocked(data []byte) error {
	op, err := decodeOp(data)
	if err != nil {
		return err
	}
	value, err := s.resultLocked(op)
	if err != nil {
		return err
	}
	s.data[op.Key] = value
	return nil
}

// GetInit returns the whole map.
func (s *Store) GetInit() ([]byte, error) { return s.GetSnapshot() }

// GetSnapshot returns the whole map as JSON.
func (s *Store) GetSnapshot() ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return json.Marshal(s.mergedLocked())
}

// ResetSnap replaces the map.
func (s *Store) ResetSnap(data []byte) error {
	m := map[string]string{}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &m); err != nil {
			return fmt.Errorf("decode snapshot: %w", err)
		}
	}
	if m == nil { // "null"
		m = map[string]string{}
	}
	s.mu.Lock()
	s.data, s.frozen = m, nil
	s.gen++
	s.mu.Unlock()
	s.resets.Add(1)
	return nil
}

// ResetCount is how many times ResetSnap ran (snapshot installs, restarts).
func (s *Store) ResetCount() int64 { return s.resets.Load() }

// SetRaft keeps the sender (unused by the demo's own routes).
func (s *Store) SetRaft(r embedraft.IRaftSender) { s.sender = r }

// Get returns one value from local state.
func (s *Store) Get(key string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.getLocked(key)
}

func (s *Store) getLocked(key string) (string, bool) {
	if v, ok := s.data[key]; ok || s.frozen == nil {
		return v, ok
	}
	v, ok := s.frozen[key]
	return v, ok
}

// mergedLocked is the whole state as one map: data itself, or a copy when
// a snapshot view holds frozen.
func (s *Store) mergedLocked() map[string]string {
	if s.frozen == nil {
		return s.data
	}
	out := make(map[string]string, len(s.frozen)+len(s.data))
	for k, v := range s.frozen {
		out[k] = v
	}
	for k, v := range s.data {
		out[k] = v
	}
	return out
}

// Snapshot returns a copy of the local state.
func (s *Store) Snapshot() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.frozen != nil {
		return s.mergedLocked()
	}
	out := make(map[string]string, len(s.data))
	for k, v := range s.data {
		out[k] = v
	}
	return out
}

// Len is the number of keys.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := len(s.data)
	if s.frozen != nil {
		n = len(s.frozen)
		for k := range s.data {
			if _, ok := s.frozen[k]; !ok {
				n++
			}
		}
	}
	return n
}

// Keys returns the sorted keys.
func (s *Store) Keys() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := s.mergedLocked()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ServeHTTP serves GET /kv/{key} (the raw value, 404 if absent) and GET /kv
// (the whole map as a JSON object). ?consistency=local reads this node's
// state; linearizable (the default) first waits for a ReadIndex.
func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch c := r.URL.Query().Get("consistency"); c {
	case "local":
	case "", "linearizable":
		if s.reader != nil {
			if err := s.reader.LinearizableRead(r.Context()); err != nil {
				http.Error(w, err.Error(), embedraft.StatusOf(err))
				return
			}
		}
	default:
		http.Error(w, fmt.Sprintf("consistency must be local or linearizable, not %q", c), http.StatusBadRequest)
		return
	}
	key, isKey := strings.CutPrefix(r.URL.Path, "/kv/")
	if !isKey {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Snapshot())
		return
	}
	v, ok := s.Get(key)
	if !ok {
		http.Error(w, "key not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte(v))
}
