package embedraft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// readRetryInterval is how often an unanswered ReadIndex is asked again:
// raft drops it silently when there is no leader.
const readRetryInterval = 500 * time.Millisecond

// readBatcher lets concurrent linearizable reads share one ReadIndex, as
// etcd server's linearizableReadLoop: a read takes the current round and
// signals the read loop; the loop opens the next round, confirms one
// ReadIndex for the round it closed, waits until it is applied and wakes
// every read of that round at once. Reads that arrive while a ReadIndex is
// in flight join the next round, so a round's index is always asked after
// each of its reads started.
type readBatcher struct {
	signal chan struct{} // capacity 1: at most one pending wake-up
	mu     sync.Mutex
	next   *readRound // the round new reads join

	// states matches raft's ReadStates to the loop's ReadIndex request
	// contexts; the raft loop triggers it and never blocks.
	states *waitMap[string, uint64]
}

// readRound is one batch of reads: done is closed once err is set.
type readRound struct {
	done  chan struct{}
	err   error
	reads int // reads that joined, guarded by readBatcher.mu
}

func newReadBatcher() *readBatcher {
	return &readBatcher{
		signal: make(chan struct{}, 1),
		next:   &readRound{done: make(chan struct{})},
		states: newWaitMap[string, uint64](),
	}
}

// trigger hands a ReadState from the raft loop to the read loop.
func (r *readBatcher) trigger(requestCtx []byte, index uint64) {
	r.states.trigger(string(requestCtx), index)
}

// join returns the round a new read waits for and wakes the read loop.
func (r *readBatcher) join() *readRound {
	r.mu.Lock()
	round := r.next
	round.reads++
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default: // a wake-up is already pending; it will take this round
	}
	return round
}

// rotate closes the round reads have joined so far and opens the next. It
// returns nil when no read joined: a read that joined the round just
// closed can leave a wake-up behind for an empty one.
func (r *readBatcher) rotate() *readRound {
	r.mu.Lock()
	defer r.mu.Unlock()
	round := r.next
	if round.reads == 0 {
		return nil
	}
	r.next = &readRound{done: make(chan struct{})}
	return round
}

// LinearizableRead returns once this node has applied every write that was
// acknowledged before the call, so a read of local state right after it is
// linearizable. The read index comes from raft's ReadIndex (confirmed by a
// quorum of heartbeats) or, on a follower of at most three voters, from the
// leader's commit index when the follower's request completes the quorum
// (readindex.go). Concurrent calls share one read index. On a standalone node
// it returns at once. It waits at most until ctx ends, and at most
// LeaderWait+ForwardTimeout; it returns an error wrapping ErrNoLeader when
// no leader confirmed the read in time, ErrStopped when the node stops, and
// ErrRemoved on a removed node.
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
	round := n.reads.join()
	deadline := time.NewTimer(n.cfg.LeaderWait + n.cfg.ForwardTimeout)
	defer deadline.Stop()
	select {
	case <-round.done:
		return round.err
	case <-deadline.C:
		return fmt.Errorf("%w: read index not confirmed", ErrNoLeader)
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
	case <-n.stopc:
		return ErrStopped
	}
}

// readLoop serves linearizable reads one round at a time (see readBatcher).
// It is started by launch and exits when stopc is closed; reads still
// waiting then return ErrStopped on their own.
func (n *Node) readLoop() {
	defer n.loops.Done()
	for {
		select {
		case <-n.reads.signal:
		case <-n.stopc:
			return
		}
		round := n.reads.rotate()
		if round == nil {
			continue
		}
		round.err = n.confirmRead()
		close(round.done)
		if errors.Is(round.err, ErrStopped) {
			return
		}
	}
}

// confirmRead gets a read index over the forwarding stream when a
// leader-follower pair can vouch for it (a follower asks the leader,
// readindex.go; the leader probes a follower, readprobe.go), else from
// raft's ReadIndex, and waits until this node has applied it. A round
// is bounded as a read is, by LeaderWait+ForwardTimeout.
func (n *Node) confirmRead() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.LeaderWait+n.cfg.ForwardTimeout)
	defer cancel()
	index, ok := n.leaderReadIndex(ctx)
	if !ok {
		index, ok = n.probeReadIndex(ctx)
	}
	if !ok {
		var err error
		if index, err = n.raftReadIndex(ctx); err != nil {
			return err
		}
	}
	if err := n.applied.wait(ctx, index, n.stopc); err != nil {
		if errors.Is(err, ErrStopped) {
			return err
		}
		return fmt.Errorf("%w: wait for apply: %w", ErrNoLeader, err)
	}
	return nil
}

// raftReadIndex asks raft for a read index with a fresh request context,
// again every readRetryInterval while unanswered (raft drops the request
// without a leader, and a retry keeps the context, so any answer counts).
func (n *Node) raftReadIndex(ctx context.Context) (uint64, error) {
	// Request contexts come from reqSeq, which starts at a random point:
	// a ReadState of an earlier incarnation never matches.
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], n.reqSeq.Add(1))
	got := n.reads.states.register(string(key[:]))
	defer n.reads.states.cancel(string(key[:]))
	retry := time.NewTicker(readRetryInterval)
	defer retry.Stop()
	for {
		if err := n.rn.ReadIndex(ctx, key[:]); err != nil {
			return 0, fmt.Errorf("%w: read index: %w", ErrNoLeader, err)
		}
		select {
		case index := <-got:
			n.metrics.readRound(false)
			return index, nil
		case <-retry.C:
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: read index not confirmed", ErrNoLeader)
		case <-n.stopc:
			return 0, ErrStopped
		}
	}
}
