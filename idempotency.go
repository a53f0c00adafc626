package embedraft

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Exactly-once writes. A write may carry an Idempotency-Key (the HTTP
// header, or WithIdempotencyKey for Send). The key travels in the raft entry
// with the write (entry version 2, batch.go), and the apply goroutine keeps
// a replicated table key -> outcome, decided in log order: the first applied
// write with a key is applied and its outcome (status, answer data, commit
// error) recorded; any later write with the same key is not applied (Commit
// is not called) and its writer gets the recorded outcome. The table is
// part of the replicated state: identical on every member, carried in
// snapshots next to the membership, rebuilt by log replay on restart.
//
// Forgetting is deterministic too: entries with keys carry the leader's
// clock (unix milliseconds); the table's clock is the highest stamp applied
// so far (so a leader with a slow clock cannot bring keys back), and a key
// older than IdempotencyWindow by that clock, or beyond IdempotencyKeys, is
// forgotten oldest first.

// HeaderIdempotencyKey is the request header of POST /raft/api/set that
// names a write for exactly-once retries.
const HeaderIdempotencyKey = "Idempotency-Key"

// MaxIdempotencyKeyBytes bounds an Idempotency-Key.
const MaxIdempotencyKeyBytes = 128

// Defaults of the key table's bounds (Config.IdempotencyWindow and
// Config.IdempotencyKeys).
const (
	DefaultIdempotencyWindow = 10 * time.Minute
	DefaultIdempotencyKeys   = 100_000
)

// CheckIdempotencyKey reports whether key is a valid Idempotency-Key: 1 to
// 128 bytes of printable ASCII without space (0x21-0x7E). The error wraps
// ErrBadRequest.
func CheckIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKeyBytes {
		return fmt.Errorf("%w: %s must be 1 to %d bytes, not %d", ErrBadRequest, HeaderIdempotencyKey,
			MaxIdempotencyKeyBytes, len(key))
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: %s byte %d is %#x; only printable ASCII without space (0x21-0x7e) is allowed",
				ErrBadRequest, HeaderIdempotencyKey, i, c)
		}
	}
	return nil
}

type idemKeyCtx struct{}

// WithIdempotencyKey returns a context that makes Send use key as the
// write's Idempotency-Key: a Send retried with the same key (on any member,
// before or after a leader change) is applied at most once and returns the
// first outcome. An invalid key makes Send fail with ErrBadRequest; an empty
// key means none.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idemKeyCtx{}, key)
}

func idempotencyKeyFrom(ctx context.Context) string {
	k, _ := ctx.Value(idemKeyCtx{}).(string)
	return k
}

// idemOutcome is the recorded outcome of the first write with a key.
type idemOutcome struct {
	Key    string          `json:"k"`
	Time   int64           `json:"t"` // the leader's stamp of its entry, unix ms
	Index  uint64          `json:"i"` // the entry that applied it
	Status int             `json:"s"` // HTTP status of the answer
	Data   json.RawMessage `json:"d,omitempty"`
	Err    string          `json:"e,omitempty"` // the service's Commit error
}

// result is what the writer of a duplicate is woken with.
func (o idemOutcome) result(index uint64) applyResult {
	r := applyResult{index: index, raw: o.Data, hasRaw: true}
	if o.Status/100 != 2 {
		r.err = errors.New(o.Err)
	}
	return r
}

// idemTable is the replicated key table. The apply goroutine (or, in
// standalone mode, the write holding commitMu) changes it; request
// goroutines read it for the leader's shortcut, hence the lock.
type idemTable struct {
	window int64 // ms
	limit  int

	mu    sync.Mutex
	now   int64 // the highest stamp applied
	m     map[string]*idemOutcome
	order []*idemOutcome // insertion (log) order; may hold superseded items
}

func newIdemTable(window time.Duration, limit int) *idemTable {
	return &idemTable{window: window.Milliseconds(), limit: limit, m: map[string]*idemOutcome{}}
}

// seen advances the table's clock to t, forgets what is out of the window,
// and returns key's outcome if it is remembered. Apply side only.
func (t *idemTable) seen(key string, at int64) (idemOutcome, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.now = max(t.now, at)
	t.evictLocked()
	o, ok := t.m[key]
	if !ok || o.Time+t.window < t.now {
		return idemOutcome{}, false
	}
	return *o, true
}

// record remembers the outcome of the first write with o.Key. Apply side only.
func (t *idemTable) record(o idemOutcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.now = max(t.now, o.Time)
	p := &o
	t.m[o.Key] = p
	t.order = append(t.order, p)
	t.evictLocked()
}

// peek is the leader's shortcut: key's outcome if remembered and within the
// window by wall clock now. The log-order decision stays authoritative.
func (t *idemTable) peek(key string, now int64) (idemOutcome, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o, ok := t.m[key]
	if !ok || o.Time+t.window < max(now, t.now) {
		return idemOutcome{}, false
	}
	return *o, true
}

func (t *idemTable) evictLocked() {
	i := 0
	for ; i < len(t.order); i++ {
		o := t.order[i]
		live := t.m[o.Key] == o
		if live && o.Time+t.window >= t.now && len(t.m) <= t.limit {
			break
		}
		if live {
			delete(t.m, o.Key)
		}
	}
	if i > 0 {
		t.order = append(t.order[:0:0], t.order[i:]...)
	}
}

func (t *idemTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// idemState is the table as kept in a snapshot.
type idemState struct {
	Now  int64         `json:"now"`
	Keys []idemOutcome `json:"keys"` // oldest first
}

func (t *idemTable) marshal() json.RawMessage {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := idemState{Now: t.now, Keys: make([]idemOutcome, 0, len(t.m))}
	for _, o := range t.order {
		if t.m[o.Key] == o {
			st.Keys = append(st.Keys, *o)
		}
	}
	b, _ := json.Marshal(st) // strings, numbers and valid raw JSON always encode
	return b
}

// restore replaces the table; empty b (a snapshot of an earlier release)
// means an empty table.
func (t *idemTable) restore(b []byte) error {
	var st idemState
	if len(b) > 0 {
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Errorf("idempotency keys: %w", err)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.now, t.m, t.order = st.Now, make(map[string]*idemOutcome, len(st.Keys)), make([]*idemOutcome, 0, len(st.Keys))
	for i := range st.Keys {
		p := &st.Keys[i]
		t.m[p.Key] = p
		t.order = append(t.order, p)
	}
	t.evictLocked()
	return nil
}

func (t *idemTable) reset() { _ = t.restore(nil) }

// The table travels in the snapshot envelope inside the membership JSON
// object, under idemField: the envelope's format does not change, and the
// membership decoder ignores the field (and a snapshot without it restores
// an empty table).
const idemField = "idempotency"

// snapshotMembers is the membership blob of a snapshot envelope: the
// registry's JSON with the key table added.
func (n *Node) snapshotMembers() []byte {
	return withIdempotency(n.reg.marshal(), n.idem.marshal())
}

// withIdempotency puts the key table idem into the membership JSON object
// members (unchanged if it is not one).
func withIdempotency(members, idem []byte) []byte {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(members, &obj); err != nil || obj == nil {
		return members
	}
	obj[idemField] = idem
	b, err := json.Marshal(obj)
	if err != nil {
		return members
	}
	return b
}

// restoreIdempotency loads the key table from a snapshot's membership blob.
func (n *Node) restoreIdempotency(members []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(members, &obj); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	return n.idem.restore(obj[idemField])
}

// applyWrite applies one client write of a committed entry (index, stamped
// at) and returns what its writer is woken with. It runs on the apply
// goroutine, or on the standalone write path under commitMu (index 0, at the
// node's clock).
func (n *Node) applyWrite(index uint64, at int64, w batchedWrite) applyResult {
	return n.applyWriteAt(Position{Index: index}, at, w)
}

// applyWriteAt is applyWrite with the write's position in its entry, for
// an IndexedCommitter.
func (n *Node) applyWriteAt(pos Position, at int64, w batchedWrite) applyResult {
	index := pos.Index
	if w.key != "" {
		if o, ok := n.idem.seen(w.key, at); ok {
			n.log.Debug("duplicate idempotency key; not applied", "index", index, "first", o.Index)
			return o.result(index)
		}
	}
	r := n.commitData(pos, w.data)
	r.index = index
	if r.err != nil {
		n.log.Debug("service rejected entry", "index", index, "err", r.err)
	}
	if w.key != "" {
		o := idemOutcome{Key: w.key, Time: at, Index: index, Status: http.StatusOK, Data: w.obj}
		switch {
		case r.err != nil:
			o.Status, o.Err, o.Data = StatusOf(ErrCommit), r.err.Error(), nil
		case r.hasResult:
			b, err := json.Marshal(r.result)
			if err != nil {
				n.log.Error("encode the service's result", "index", index, "err", err)
				b = []byte("null")
			}
			o.Data = b
		}
		if len(o.Data) == 0 || !json.Valid(o.Data) {
			o.Data = nil
		}
		n.idem.record(o)
		r.raw, r.hasRaw = o.Data, true
	}
	return r
}

// commitData hands data to the service: in cluster mode (pos.Index > 0)
// CommitIndexedResult for an IndexedResultCommitter; else CommitResult for
// a ResultCommitter; else, in cluster mode, CommitIndexed for an
// IndexedCommitter; else Commit.
func (n *Node) commitData(pos Position, data []byte) applyResult {
	if irc, ok := n.svc.(IndexedResultCommitter); ok && pos.Index > 0 {
		res, err := irc.CommitIndexedResult(pos, data)
		return applyResult{err: err, result: res, hasResult: err == nil}
	}
	if rc, ok := n.svc.(ResultCommitter); ok {
		res, err := rc.CommitResult(data)
		return applyResult{err: err, result: res, hasResult: err == nil}
	}
	if ic, ok := n.svc.(IndexedCommitter); ok && pos.Index > 0 {
		return applyResult{err: ic.CommitIndexed(pos, data)}
	}
	return applyResult{err: n.svc.Commit(data)}
}

// answer turns a write's apply result into its writeResult: the recorded
// JSON when the write had a key (the same bytes any retry gets), else the
// service's result, else PreProcessData's object.
func (r applyResult) answer(object interface{}) writeResult {
	switch {
	case r.hasRaw:
		if r.raw == nil {
			return writeResult{index: r.index}
		}
		return writeResult{object: r.raw, index: r.index}
	case r.hasResult:
		return writeResult{object: r.result, index: r.index}
	}
	return writeResult{object: object, index: r.index}
}

// shortcut answers a keyed write from the applied table without proposing
// it, when the key is already there. ok is false otherwise.
func (n *Node) shortcut(key string) (writeResult, bool, error) {
	if key == "" {
		return writeResult{}, false, nil
	}
	o, ok := n.idem.peek(key, time.Now().UnixMilli())
	if !ok {
		return writeResult{}, false, nil
	}
	r := o.result(o.Index)
	if r.err != nil {
		return writeResult{index: o.Index}, true, fmt.Errorf("%w: %v", ErrCommit, r.err)
	}
	return r.answer(nil), true, nil
}

// A follower forwards a keyed write to the leader over the forwarding
// stream, which carries bodies only: it prefixes the body with
// forwardKeyMagic, the key's uvarint length and the key. A body that
// starts with the magic by itself is wrapped too (with an empty key), so
// the leader's unwrapping is never ambiguous. (A JSON body never starts
// with a NUL byte.)
var forwardKeyMagic = []byte{0, 'E', 'R', 'K'}

// maxForwardPrefix bounds what wrapForward adds to a body.
const maxForwardPrefix = 4 + binary.MaxVarintLen64 + MaxIdempotencyKeyBytes

func wrapForward(key string, body []byte) []byte {
	if key == "" && !bytes.HasPrefix(body, forwardKeyMagic) {
		return body
	}
	buf := make([]byte, 0, len(forwardKeyMagic)+binary.MaxVarintLen64+len(key)+len(body))
	buf = append(buf, forwardKeyMagic...)
	buf = appendBytes(buf, []byte(key))
	return append(buf, body...)
}

// unwrapForward undoes wrapForward on the leader.
func unwrapForward(b []byte) (key string, body []byte, err error) {
	if !bytes.HasPrefix(b, forwardKeyMagic) {
		return "", b, nil
	}
	k, body, err := cutBytes(b[len(forwardKeyMagic):], "forwarded key")
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if len(k) > 0 {
		if err := CheckIdempotencyKey(string(k)); err != nil {
			return "", nil, err
		}
	}
	return string(k), body, nil
}
