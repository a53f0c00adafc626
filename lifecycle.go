package embedraft

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/raft/v3"
)

// Stopping a node: Close (with the leader's hand-off and the drain of the
// writes under way), failures, and the release of everything it started.

// stopped reports whether the node was closed or stopped by an error:
// every method and route then refuses with ErrStopped (a removed node
// keeps answering its status). Every write and read asks, so it is two
// atomic loads.
func (n *Node) stopped() error {
	if n.closed.Load() {
		return ErrStopped
	}
	if err := n.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrStopped, err)
	}
	return nil
}

// Done is closed when the node stops: after Close, a fatal error (see Err),
// or its removal from the cluster (Mode then reports ModeRemoved, and the
// handler still answers status routes).
func (n *Node) Done() <-chan struct{} { return n.stopc }

// Err returns the error that stopped the node, if any.
func (n *Node) Err() error {
	if p := n.failErr.Load(); p != nil {
		return *p
	}
	return nil
}

// stop asks every goroutine to exit; err, when not nil, is why (the first
// such error is the one Err reports).
func (n *Node) stop(err error) {
	if err != nil {
		n.failErr.CompareAndSwap(nil, &err)
		if n.log != nil {
			n.log.Error("node stopping", "err", err)
		}
	}
	n.stopOnce.Do(func() {
		close(n.stopc)
		n.stopCause()
		// Free raft, the transport and the WAL as soon as the loops exit,
		// not only on Close: a removed or failed node must stop talking to
		// its peers at once.
		go n.release()
	})
}

// release waits for the loops and frees everything they used. It runs once.
func (n *Node) release() {
	n.closeOnce.Do(func() {
		// A switchover sets the cluster-mode fields under switchMu; it
		// checks stopc before it starts anything.
		n.switchMu.Lock()
		defer n.switchMu.Unlock()
		n.loops.Wait()
		if n.rn != nil {
			n.rn.Stop()
		}
		if tr := n.peerTr.Load(); tr != nil {
			tr.Stop()
		}
		if n.purgeDone != nil {
			<-n.purgeDone
		}
		// The forwarding streams end before the WAL is unlocked: a next
		// incarnation may vote once it holds the WAL, and this one must
		// not answer a leader's probe by then (readprobe.go).
		if n.fwd != nil {
			n.fwd.Close()
		}
		if n.disk != nil {
			if err := n.disk.close(); err != nil {
				n.log.Warn("close wal", "err", err)
			}
		}
		close(n.done)
	})
}

// Close stops the node and every goroutine it started, waiting at most
// until ctx ends. The data directory is left as it is.
//
// A leader first hands leadership to its most caught-up live voter (waiting
// at most an election timeout), so the cluster does not sit through an
// election timeout without a leader: writes in flight on the way to it are
// refused with a retryable 503 and followers retry them on the new leader.
func (n *Node) Close(ctx context.Context) error {
	n.closed.Store(true)
	n.handOff(ctx)
	n.drain(ctx)
	n.stop(nil)
	n.unregisterMetrics()
	select {
	case <-n.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close: %w", ctx.Err())
	}
}

// drain waits, at most an election timeout, until the writes under way here
// are answered and every entry in this node's log is applied: after a
// hand-off the new leader commits what the old one proposed, and its
// writers get their success instead of an unknown outcome.
func (n *Node) drain(ctx context.Context) {
	if n.Mode() != ModeCluster {
		return
	}
	deadline := time.NewTimer(time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval)
	defer deadline.Stop()
	tick := time.NewTicker(n.cfg.TickInterval / 4)
	defer tick.Stop()
	for {
		last, err := n.storage.LastIndex()
		if n.inflight.Load() == 0 && (err != nil || n.applied.get() >= last) {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			n.log.Warn("closing with writes still under way", "writes", n.inflight.Load(), "applied", n.applied.get(), "last", last)
			return
		case <-ctx.Done():
			return
		case <-n.stopc:
			return
		}
	}
}

// handOff transfers leadership away from a closing leader to the voter with
// the highest match index among those heard from within the last three
// heartbeats, and waits until it has taken over, at most an election
// timeout (raft abandons a transfer after that).
func (n *Node) handOff(ctx context.Context) {
	if n.Mode() != ModeCluster || raft.StateType(n.raftState.Load()) != raft.StateLeader {
		return
	}
	select {
	case <-n.stopc:
		return
	default:
	}
	st := n.rn.Status()
	recent := time.Now().Add(-3 * time.Duration(n.cfg.HeartbeatTicks) * n.cfg.TickInterval)
	var to, best uint64
	for id, pr := range st.Progress {
		if id != n.id && !pr.IsLearner && n.heard.after(id, recent) && (to == 0 || pr.Match > best) {
			to, best = id, pr.Match
		}
	}
	if to == 0 {
		return
	}
	start := time.Now()
	n.rn.TransferLeadership(ctx, n.id, to)
	wctx, cancel := context.WithTimeout(ctx, time.Duration(n.cfg.ElectionTicks)*n.cfg.TickInterval)
	defer cancel()
	if lead, err := n.waitLeaderWhere(wctx, func(lead uint64) bool { return lead != 0 && lead != n.id }); err != nil {
		n.log.Warn("closing leader could not hand leadership over", "to", to, "err", err)
	} else {
		n.log.Info("closing leader handed leadership over", "to", lead, "took", time.Since(start))
	}
}
