package embedraft

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// readRegistry matches raft's ReadStates to the ReadIndex calls that asked
// for them, by request context.
type readRegistry struct {
	mu sync.Mutex
	m  map[string]chan uint64
}

func newReadRegistry() *readRegistry { return &readRegistry{m: map[string]chan uint64{}} }

func (r *readRegistry) register(key string) <-chan uint64 {
	ch := make(chan uint64, 1)
	r.mu.Lock()
	r.m[key] = ch
	r.mu.Unlock()
	return ch
}

func (r *readRegistry) cancel(key string) {
	r.mu.Lock()
	delete(r.m, key)
	r.mu.Unlock()
}

func (r *readRegistry) trigger(key []byte, index uint64) {
	r.mu.Lock()
	ch, ok := r.m[string(key)]
	delete(r.m, string(key))
	r.mu.Unlock()
	if ok {
		ch <- index
	}
}

// readRetryInterval is how often an unanswered ReadIndex is asked again:
// raft drops it silently when there is no leader.
const readRetryInterval = 500 * time.Millisecond

// LinearizableRead returns once this node has applied every write that was
// acknowledged before the call, using raft's ReadIndex (confirmed by a
// quorum of heartbeats), so a read of local state right after it is
// linearizable. On a standalone node it returns at once. It waits at most
// until ctx ends.
func (n *Node) LinearizableRead(ctx context.Context) error {
	if err := n.stopped(); err != nil {
		return err
	}
	switch n.Mode() {
	case ModeStandalone:
		return nil
	case ModeRemoved:
		return ErrRemoved
	}
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], n.reqSeq.Add(1))
	got := n.reads.register(string(key[:]))
	defer n.reads.cancel(string(key[:]))
	retry := time.NewTicker(readRetryInterval)
	defer retry.Stop()
	deadline := time.NewTimer(n.cfg.LeaderWait + n.cfg.ForwardTimeout)
	defer deadline.Stop()
	for {
		if err := n.rn.ReadIndex(ctx, key[:]); err != nil {
			return fmt.Errorf("%w: read index: %w", ErrNoLeader, err)
		}
		select {
		case index := <-got:
			if err := n.applied.wait(ctx, index, n.stopc); err != nil {
				return fmt.Errorf("%w: wait for apply: %w", ErrNoLeader, err)
			}
			return nil
		case <-retry.C:
		case <-deadline.C:
			return fmt.Errorf("%w: read index not confirmed", ErrNoLeader)
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-n.stopc:
			return ErrStopped
		}
	}
}
