package embedraft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// A follower's read index from the leader's commit, without a heartbeat
// round.
//
// raft's ReadIndex on a follower costs four messages in a row: the request
// to the leader, the leader's heartbeats, their answers, the leader's reply.
// The heartbeats prove that a quorum still followed the leader after the
// read began. In a cluster of two or three voters the follower asking is
// itself half of that quorum: its request, sent after the read began while
// it followed the leader in term T, says it had not voted for anyone in a
// later term by then. So when the leader, on receiving it, still leads in
// term T, has committed an entry of T and counts the follower among at most
// three voters, no leader of a later term can have committed anything
// before the read began (its election needed a vote of one of the two; the
// follower had not given one, and the leader would no longer lead in T),
// and the leader's commit index covers every write acknowledged before the
// read: the leader answers it at once. Each node publishes what it acts on
// (raftView) before it sends any message of the same Ready, so a vote given
// is seen before anyone could count it. Otherwise, or when the leader does
// not answer, the follower uses raft's ReadIndex.

// raftView is what the raft loop last saw of raft's state, published at the
// start of each Ready before any of its messages is sent.
type raftView struct {
	term   uint64
	lead   uint64
	leader bool
	commit uint64
	// ownTermCommitted: the leader has committed an entry of its own term,
	// so its commit index covers every entry committed before it led.
	ownTermCommitted bool
}

// viewTracker is the raft loop's own record behind raftView.
type viewTracker struct {
	cur raftView
	// termStart is the index of the leader's first entry of its term (0
	// while not leader or not yet seen).
	termStart uint64
}

// update folds rd into the view and reports whether it changed.
func (t *viewTracker) update(rd *raft.Ready) bool {
	old := t.cur
	if rd.SoftState != nil {
		t.cur.leader = rd.SoftState.RaftState == raft.StateLeader
		t.cur.lead = rd.SoftState.Lead
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if rd.HardState.Term != t.cur.term {
			t.termStart = 0
		}
		t.cur.term, t.cur.commit = rd.HardState.Term, rd.HardState.Commit
	}
	if !t.cur.leader {
		t.termStart = 0
	} else if t.termStart == 0 {
		for _, e := range rd.Entries {
			if e.Term == t.cur.term {
				t.termStart = e.Index
				break
			}
		}
	}
	t.cur.ownTermCommitted = t.cur.leader && t.termStart != 0 && t.cur.commit >= t.termStart
	return t.cur != old
}

// publishView publishes rd's view of raft; the raft loop calls it before it
// sends rd's messages.
func (n *Node) publishView(t *viewTracker, rd *raft.Ready) {
	if t.update(rd) {
		v := t.cur
		n.view.Store(&v)
	}
}

// currentView returns the published view (zero before the first Ready).
func (n *Node) currentView() raftView {
	if v := n.view.Load(); v != nil {
		return *v
	}
	return raftView{}
}

// halting reports a node that is closing or stopped: its view is frozen at
// what it last saw, so it vouches for no read index and answers no probe.
func (n *Node) halting() bool {
	select {
	case <-n.stopc:
		return true
	default:
		return n.closed.Load()
	}
}

// setVoters publishes the configuration the apply loop just gave raft.
func (n *Node) setVoters(cs raftpb.ConfState) {
	n.voters.Store(&cs)
}

// errReadIndexRefused is a leader that cannot vouch for a follower's read
// index on its own; the follower then asks raft.
var errReadIndexRefused = errors.New("read index refused")

// readIndexFor answers a follower's read-index request: this leader's
// commit index when the follower's request completes a quorum (see above).
func (n *Node) readIndexFor(from, term uint64) (uint64, error) {
	v := n.view.Load()
	switch {
	case n.halting():
		return 0, fmt.Errorf("%w: %w", errReadIndexRefused, ErrStopped)
	case v == nil || !v.leader:
		return 0, fmt.Errorf("%w: %w", errReadIndexRefused, ErrNotLeader)
	case v.term != term:
		return 0, fmt.Errorf("%w: leader's term %d, follower's %d", errReadIndexRefused, v.term, term)
	case !v.ownTermCommitted:
		return 0, fmt.Errorf("%w: nothing of term %d committed yet", errReadIndexRefused, v.term)
	case !pairIsQuorum(n.voters.Load(), n.id, from):
		return 0, fmt.Errorf("%w: member %d and the leader are not a quorum", errReadIndexRefused, from)
	}
	return v.commit, nil
}

// pairIsQuorum reports whether the leader and follower, two distinct
// voters, are a quorum of cs: it has at most three voters and is not a
// joint configuration.
func pairIsQuorum(cs *raftpb.ConfState, leader, follower uint64) bool {
	return cs != nil && leader != follower && len(cs.VotersOutgoing) == 0 && len(cs.Voters) <= 3 &&
		slices.Contains(cs.Voters, leader) && slices.Contains(cs.Voters, follower)
}

// leaderReadIndex asks the leader for a read index over the forwarding
// stream (see above). ok is false when it could not be had that way, and
// the caller asks raft: the configuration does not allow it, the leader
// refused or did not answer within a quarter of ForwardTimeout (after which
// rounds skip asking for streamReadBackoff).
func (n *Node) leaderReadIndex(ctx context.Context) (index uint64, ok bool) {
	v := n.view.Load()
	if v == nil || v.leader || v.lead == 0 || v.term == 0 || !pairIsQuorum(n.voters.Load(), v.lead, n.id) ||
		n.streamReadsPaused() {
		return 0, false
	}
	m, found := n.reg.member(v.lead)
	if !found || m.Addr == "" {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, n.streamReadTimeout())
	defer cancel()
	index, err := n.fwd.ReadIndex(ctx, n.dialURL(m.Addr), n.clusterID.Load(), v.term)
	if err != nil {
		n.log.Debug("read index from the leader's commit refused", "leader", v.lead, "err", err)
		n.pauseStreamReads()
		return 0, false
	}
	n.metrics.readRound(true)
	return index, true
}

// streamReadBackoff is how long read rounds go to raft after a read index
// over the forwarding stream was refused or not answered in time.
const streamReadBackoff = time.Second

// streamReadTimeout bounds one attempt over the stream, leaving most of a
// round's budget to raft's ReadIndex.
func (n *Node) streamReadTimeout() time.Duration { return n.cfg.ForwardTimeout / 4 }

func (n *Node) pauseStreamReads() {
	n.streamReadsAfter.Store(time.Now().Add(streamReadBackoff).UnixNano())
}

func (n *Node) streamReadsPaused() bool {
	return time.Now().UnixNano() < n.streamReadsAfter.Load()
}
