package embedraft

import (
	"fmt"
	"sync"
	"time"
)

// The raft loop hands committed entries to the apply loop through an
// applyQueue and never waits for the apply loop: a slow Commit must not hold
// back the raft loop, which sends the heartbeats and the appends. (Before,
// the hand-off was a channel of 16 batches: a Commit slower than the writes
// filled it, the leader's raft loop blocked, its heartbeats stopped and the
// followers elected another leader, again and again.) etcd's server queues
// its applies the same way.
//
// What bounds the queue is an admission check on the write paths
// (busyApplying), on the node a write reaches and on the leader: a write is
// refused with ErrBusy, before anything is proposed, while the oldest batch
// not yet applied has waited longer than half of ForwardTimeout, or while
// commit is more than maxApplyLagEntries ahead of the applied index (etcd
// refuses at the same gap). Writes are thus refused early rather than left
// to time out behind an ever longer queue.

// maxApplyLagEntries is the gap between the commit and applied indexes past
// which a node refuses writes (etcd's maxGapBetweenApplyAndCommitIndex).
const maxApplyLagEntries = 5000

// applyQueue is the raft loop's hand-off to the apply loop: push never
// blocks, and the apply loop is woken through ready.
type applyQueue struct {
	mu      sync.Mutex
	batches []queuedBatch
	// oldest is when the oldest batch not yet applied was queued (zero when
	// every queued batch is applied): the one the apply loop is applying
	// counts until it is done.
	oldest time.Time
	ready  chan struct{} // capacity 1: at most one pending wake-up
}

type queuedBatch struct {
	applyBatch
	queued time.Time
}

func newApplyQueue() *applyQueue {
	return &applyQueue{ready: make(chan struct{}, 1)}
}

// push queues b and wakes the apply loop.
func (q *applyQueue) push(b applyBatch) {
	now := time.Now()
	q.mu.Lock()
	if len(q.batches) == 0 && q.oldest.IsZero() {
		q.oldest = now
	}
	q.batches = append(q.batches, queuedBatch{applyBatch: b, queued: now})
	q.mu.Unlock()
	q.wake()
}

// pushIfIdle queues b only when nothing is queued or being applied: a
// busy apply loop looks again soon anyway.
func (q *applyQueue) pushIfIdle(b applyBatch) {
	q.mu.Lock()
	idle := len(q.batches) == 0 && q.oldest.IsZero()
	q.mu.Unlock()
	if idle {
		q.push(b)
	}
}

func (q *applyQueue) wake() {
	select {
	case q.ready <- struct{}{}:
	default: // a wake-up is pending: the apply loop will see the batch
	}
}

// pop takes the oldest queued batch; the apply loop calls done once it is
// applied. When more are queued, it leaves a wake-up for them, so the apply
// loop serves its other requests between batches.
func (q *applyQueue) pop() (applyBatch, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.batches) == 0 {
		return applyBatch{}, false
	}
	b := q.batches[0]
	q.batches[0] = queuedBatch{} // let the entries go once applied
	q.batches = q.batches[1:]
	if len(q.batches) > 0 {
		q.wake()
	}
	return b.applyBatch, true
}

// done records that the batch last popped is applied.
func (q *applyQueue) done() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.batches) == 0 {
		q.oldest = time.Time{}
		return
	}
	q.oldest = q.batches[0].queued
}

// waited is how long the oldest batch not yet applied has waited (zero
// when there is none).
func (q *applyQueue) waited(now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.oldest.IsZero() {
		return 0
	}
	return now.Sub(q.oldest)
}

// maxApplyWait is how long the oldest batch may have waited before the
// node refuses writes.
func (n *Node) maxApplyWait() time.Duration { return n.cfg.ForwardTimeout / 2 }

// busyApplying returns an error wrapping ErrBusy when this node's apply
// loop is too far behind to take a new write (see above); nothing has been
// proposed then.
func (n *Node) busyApplying() error {
	err := n.applyBacklog(time.Now())
	if err != nil {
		n.metrics.proposalFailed()
	}
	return err
}

func (n *Node) applyBacklog(now time.Time) error {
	if n.applyq == nil { // set before cluster mode; checked so that no path can panic
		return nil
	}
	if w := n.applyq.waited(now); w > n.maxApplyWait() {
		return fmt.Errorf("%w: the service is still applying writes committed %v ago", ErrBusy, w.Round(time.Millisecond))
	}
	if commit, applied := n.currentView().commit, n.applied.get(); commit > applied+maxApplyLagEntries {
		return fmt.Errorf("%w: %d committed entries are not applied yet", ErrBusy, commit-applied)
	}
	return nil
}
