package embedraft

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/raft/v3/tracker"
)

// Membership changes on the leader: one at a time, decided from the applied
// membership, refused when they would break quorum; learner promotion.

// checkQuorumAfterRemoval refuses (ErrConflict) to remove member id when
// the voters left would not include a quorum of live ones, a live voter
// being one this leader has heard from since the request arrived (its
// heartbeat answers come every tick): the cluster would have no leader
// until a dead voter came back (etcd's StrictReconfigCheck).
func (n *Node) checkQuorumAfterRemoval(id uint64, since time.Time) error {
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		return ErrNotLeader
	}
	voters, live := 0, 0
	for vid, pr := range st.Progress {
		if pr.IsLearner || vid == id {
			continue
		}
		voters++
		if vid == n.id || n.heard.after(vid, since) {
			live++
		}
	}
	if voters == 0 {
		return fmt.Errorf("%w: cannot remove the only voter", ErrConflict)
	}
	if live < voters/2+1 {
		return fmt.Errorf("%w: removing member %d would leave %d voters of which only %d answer, "+
			"fewer than the %d a quorum needs; bring the down members back (or remove them) first",
			ErrConflict, id, voters, live, voters/2+1)
	}
	return nil
}

// waitQuorumAfterRemoval runs checkQuorumAfterRemoval until it passes, for
// at most an election timeout (500ms at least): live voters answer the next
// heartbeat within a tick.
func (n *Node) waitQuorumAfterRemoval(ctx context.Context, id uint64, since time.Time) error {
	deadline := since.Add(max(time.Duration(n.cfg.ElectionTicks)*n.cfg.TickInterval, 500*time.Millisecond))
	t := time.NewTicker(n.cfg.TickInterval / 2)
	defer t.Stop()
	for {
		err := n.checkQuorumAfterRemoval(id, since)
		if err == nil || errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return err
		case <-n.stopc:
			return ErrStopped
		}
	}
}

// stepDownFor hands leadership to the most up-to-date voter heard from
// since the removal was asked for, so that it can remove this node, then
// reports ErrNotLeader so the caller forwards the removal to the new
// leader. A voter that is down is never chosen.
func (n *Node) stepDownFor(ctx context.Context, since time.Time) error {
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		return ErrNotLeader
	}
	var to, best uint64
	for id, pr := range st.Progress {
		if id != n.id && !pr.IsLearner && n.heard.after(id, since) && (to == 0 || pr.Match > best) {
			to, best = id, pr.Match
		}
	}
	if to == 0 {
		return fmt.Errorf("%w: no live voter to hand leadership to before removing this node", ErrConflict)
	}
	n.log.Info("transferring leadership before removing this node", "to", to)
	n.rn.TransferLeadership(ctx, n.id, to)
	// raft gives up a transfer after an election timeout.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Duration(n.cfg.ElectionTicks)*n.cfg.TickInterval)
	defer cancel()
	if _, err := n.waitLeaderWhere(wctx, func(lead uint64) bool { return lead != 0 && lead != n.id }); err != nil {
		return fmt.Errorf("%w: leadership transfer to %d before removal: %v", ErrNoLeader, to, err)
	}
	return ErrNotLeader
}

// changeMembership makes one membership change on the leader: it takes the
// gate (ErrChangeInFlight if another change is in flight), waits until every
// earlier change is applied, then lets decide choose the change from the
// applied membership (a zero change means nothing to do), proposes it, and
// waits until it is applied here.
func (n *Node) changeMembership(ctx context.Context, decide func() (raftpb.ConfChange, string, error)) error {
	term := n.rn.Status().Term
	logApplied := func() bool {
		last, err := n.storage.LastIndex()
		return err == nil && n.rn.Status().Applied >= last
	}
	if !n.conf.acquire(term, logApplied) {
		return ErrChangeInFlight
	}
	var pending uint64
	defer func() { n.conf.release(pending, term) }()
	if err := n.waitConfReady(ctx); err != nil {
		return err
	}
	cc, addr, err := decide()
	if err != nil || (cc.NodeID == 0 && cc.Type == 0) {
		return err
	}
	pending, err = n.proposeConfChange(ctx, cc, addr)
	if err == nil {
		n.log.Info("membership change applied", "change", cc.Type.String(), "id", cc.NodeID, "addr", addr)
	}
	return err
}

// proposeConfChange proposes a membership change with this node's context
// and waits until it is applied here. The caller holds the conf gate and has
// waited for waitConfReady. pending is the change's request id when its
// outcome is unknown (it may still be applied), else 0.
func (n *Node) proposeConfChange(ctx context.Context, cc raftpb.ConfChange, addr string) (pending uint64, err error) {
	reqID, _, err := n.proposeWait(ctx, "membership change", func(reqID uint64) error {
		cc.Context = confContext{ID: cc.NodeID, Addr: addr, Req: reqID, Origin: n.id}.marshal()
		return n.rn.ProposeConfChange(ctx, cc)
	})
	if errors.Is(err, ErrUnknownOutcome) {
		return reqID, err
	}
	return 0, err
}

// waitConfReady waits until raft will accept a conf change from this
// leader: every entry up to the commit index applied and an entry of the
// current term committed. Raft silently turns a conf change proposed before
// that into an empty entry.
func (n *Node) waitConfReady(ctx context.Context) error {
	t := time.NewTicker(n.cfg.TickInterval / 2)
	defer t.Stop()
	for {
		st := n.rn.Status()
		if st.RaftState != raft.StateLeader {
			return ErrNotLeader
		}
		if term, err := n.storage.Term(st.Commit); err == nil && term == st.Term && st.Applied >= st.Commit {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%w: leader not ready for a membership change: %w", ErrNoLeader, ctx.Err())
		case <-n.stopc:
			return ErrStopped
		}
	}
}

// promoteLoop is the leader's learner promoter: a learner that is
// replicating, recently active and whose match index has reached 90% of the
// leader's (etcd's rule) is promoted to voter, one change at a time. It
// exits when stopc is closed.
func (n *Node) promoteLoop() {
	defer n.loops.Done()
	t := time.NewTicker(5 * n.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopc:
			return
		case <-t.C:
			n.proposeStarted()
			n.promoteCaughtUpLearner()
		}
	}
}

func (n *Node) promoteCaughtUpLearner() {
	if raft.StateType(n.raftState.Load()) != raft.StateLeader {
		return
	}
	st := n.rn.Status()
	self, ok := st.Progress[n.id]
	if !ok {
		return
	}
	for id, pr := range st.Progress {
		if !pr.IsLearner || !pr.RecentActive || pr.State != tracker.StateReplicate || pr.Match*10 < self.Match*9 {
			continue
		}
		ctx, cancel := context.WithTimeout(n.stopCtx, n.cfg.ForwardTimeout)
		err := n.changeMembership(ctx, func() (raftpb.ConfChange, string, error) {
			m, ok := n.reg.member(id)
			if !ok || m.Role != RoleLearner {
				return raftpb.ConfChange{}, "", nil // removed or promoted meanwhile
			}
			return raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: id}, m.Addr, nil
		})
		cancel()
		if errors.Is(err, ErrChangeInFlight) {
			return
		}
		if err != nil {
			n.log.Warn("promote learner", "id", id, "err", err)
		} else {
			n.log.Info("promoted learner to voter", "id", id, "match", pr.Match, "leader_match", self.Match)
		}
		return
	}
}
