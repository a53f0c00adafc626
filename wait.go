package embedraft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/etcd/raft/v3"
)

// applyResult is what the apply goroutine reports for a write it applied.
type applyResult struct {
	index uint64
	err   error // the service's Commit error
	// result is ResultCommitter's result (hasResult); raw is the answer
	// recorded for a write with an Idempotency-Key (hasRaw), which wins.
	result    interface{}
	hasResult bool
	raw       json.RawMessage
	hasRaw    bool
}

// waitMap wakes a goroutine waiting for the answer to its request, keyed by
// request id (as etcd's pkg/wait): the apply goroutine answers proposals by
// request id, the raft loop answers ReadIndex requests by request context.
// Each key is answered at most once.
type waitMap[K comparable, V any] struct {
	mu sync.Mutex
	m  map[K]chan V
}

func newWaitMap[K comparable, V any]() *waitMap[K, V] {
	return &waitMap[K, V]{m: map[K]chan V{}}
}

// register must be called before the request is made. Registering a key
// again replaces its waiter.
func (w *waitMap[K, V]) register(key K) <-chan V {
	ch := make(chan V, 1)
	w.mu.Lock()
	w.m[key] = ch
	w.mu.Unlock()
	return ch
}

// cancel forgets a waiter whose caller gave up or was answered.
func (w *waitMap[K, V]) cancel(key K) {
	w.mu.Lock()
	delete(w.m, key)
	w.mu.Unlock()
}

// trigger delivers v to the waiter of key, if any, and forgets it. It never
// blocks: each waiter's channel holds its one answer.
func (w *waitMap[K, V]) trigger(key K, v V) bool {
	w.mu.Lock()
	ch, ok := w.m[key]
	delete(w.m, key)
	w.mu.Unlock()
	if ok {
		ch <- v
	}
	return ok
}

// triggerEach delivers vals[i] to the waiter of keys[i], for every i, under
// one lock: the apply loop wakes the writers of one entry together. Like
// trigger it never blocks (each channel holds its one answer).
func (w *waitMap[K, V]) triggerEach(keys []K, vals []V) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, key := range keys {
		if ch, ok := w.m[key]; ok {
			delete(w.m, key)
			ch <- vals[i]
		}
	}
}

// proposeWait is the one way an entry is proposed and waited for: it takes
// a fresh request id, registers a waiter under it before anything is
// proposed (so the apply goroutine never answers before someone listens),
// calls propose to hand raft the entry carrying that id, and waits until
// this node has applied it. what names the entry in errors.
//
// propose returns nil once raft has the entry. raft.ErrProposalDropped
// (reported as ErrNotLeader), or an error of propose wrapping ErrNotLeader
// or ErrBusy, means nothing was proposed. Any other error of propose, and
// ctx ending or the node stopping after propose was called, wrap
// ErrUnknownOutcome: the entry may still be committed and applied, so it is
// never reported as success or failure. reqID is returned with every error
// so that a caller can recognise the entry if it is applied later.
func (n *Node) proposeWait(ctx context.Context, what string, propose func(reqID uint64) error) (reqID uint64, r applyResult, err error) {
	reqID = n.reqSeq.Add(1)
	wait := n.waits.register(reqID)
	if err := propose(reqID); err != nil {
		n.waits.cancel(reqID)
		switch {
		case errors.Is(err, raft.ErrProposalDropped):
			return reqID, r, ErrNotLeader
		case errors.Is(err, ErrNotLeader), errors.Is(err, ErrBusy):
			return reqID, r, err
		}
		return reqID, r, fmt.Errorf("%w: propose %s: %w", ErrUnknownOutcome, what, err)
	}
	select {
	case r = <-wait:
		return reqID, r, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-n.stopc:
		err = ErrStopped
	}
	n.waits.cancel(reqID)
	return reqID, r, fmt.Errorf("%w: %s: %w", ErrUnknownOutcome, what, err)
}

// indexNotifier publishes a monotonically growing index (the applied index)
// and lets goroutines wait until it reaches a value.
type indexNotifier struct {
	mu      sync.Mutex
	index   uint64
	changed chan struct{} // closed and replaced on every advance
}

func newIndexNotifier(start uint64) *indexNotifier {
	return &indexNotifier{index: start, changed: make(chan struct{})}
}

func (n *indexNotifier) get() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.index
}

func (n *indexNotifier) set(i uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if i <= n.index {
		return
	}
	n.index = i
	close(n.changed)
	n.changed = make(chan struct{})
}

// watch returns the current index and a channel closed when it advances.
func (n *indexNotifier) watch() (uint64, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.index, n.changed
}

// wait blocks until the index reaches want, ctx ends or stop is closed.
func (n *indexNotifier) wait(ctx context.Context, want uint64, stop <-chan struct{}) error {
	for {
		cur, ch := n.watch()
		if cur >= want {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return ErrStopped
		}
	}
}
