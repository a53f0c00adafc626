package embedraft

import (
	"context"
	"encoding/json"
	"sync"
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

// waitRegistry wakes the goroutine that proposed an entry when the apply
// goroutine applies it, keyed by request id (as etcd's pkg/wait).
type waitRegistry struct {
	mu sync.Mutex
	m  map[uint64]chan applyResult
}

func newWaitRegistry() *waitRegistry {
	return &waitRegistry{m: map[uint64]chan applyResult{}}
}

// register must be called before the entry is proposed.
func (w *waitRegistry) register(id uint64) <-chan applyResult {
	ch := make(chan applyResult, 1)
	w.mu.Lock()
	w.m[id] = ch
	w.mu.Unlock()
	return ch
}

// cancel forgets a waiter whose caller gave up.
func (w *waitRegistry) cancel(id uint64) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

// trigger delivers r to the waiter of id, if any. It never blocks.
func (w *waitRegistry) trigger(id uint64, r applyResult) {
	w.mu.Lock()
	ch, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	if ok {
		ch <- r
	}
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
