package embedraft

import (
	"errors"
	"testing"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// The view a node publishes follows its Readies: a leader's commit index
// counts as covering the log only once an entry of its own term is
// committed, and a new term or a lost leadership resets that.
func TestViewTrackerOwnTermCommitted(t *testing.T) {
	leader := &raft.SoftState{Lead: 1, RaftState: raft.StateLeader}
	follower := &raft.SoftState{Lead: 2, RaftState: raft.StateFollower}
	ent := func(term, index uint64) raftpb.Entry { return raftpb.Entry{Term: term, Index: index} }
	var tr viewTracker
	for i, step := range []struct {
		rd   raft.Ready
		want raftView
	}{
		// Candidate in term 3, then leader with its empty entry at 11.
		{raft.Ready{HardState: raftpb.HardState{Term: 3, Commit: 10}},
			raftView{term: 3, commit: 10}},
		{raft.Ready{SoftState: leader, Entries: []raftpb.Entry{ent(3, 11)}},
			raftView{term: 3, lead: 1, leader: true, commit: 10}},
		// Entries of earlier terms committed: not yet its own.
		{raft.Ready{HardState: raftpb.HardState{Term: 3, Commit: 10}, Entries: []raftpb.Entry{ent(3, 12)}},
			raftView{term: 3, lead: 1, leader: true, commit: 10}},
		{raft.Ready{HardState: raftpb.HardState{Term: 3, Commit: 11}},
			raftView{term: 3, lead: 1, leader: true, commit: 11, ownTermCommitted: true}},
		{raft.Ready{HardState: raftpb.HardState{Term: 3, Commit: 12}},
			raftView{term: 3, lead: 1, leader: true, commit: 12, ownTermCommitted: true}},
		// Deposed: a follower of 2 in term 4.
		{raft.Ready{SoftState: follower, HardState: raftpb.HardState{Term: 4, Commit: 12}},
			raftView{term: 4, lead: 2, commit: 12}},
		// Leader again in term 6: its first entry is 20, commit 19.
		{raft.Ready{SoftState: leader, HardState: raftpb.HardState{Term: 6, Commit: 19}, Entries: []raftpb.Entry{ent(6, 20)}},
			raftView{term: 6, lead: 1, leader: true, commit: 19}},
		{raft.Ready{HardState: raftpb.HardState{Term: 6, Commit: 20}},
			raftView{term: 6, lead: 1, leader: true, commit: 20, ownTermCommitted: true}},
	} {
		tr.update(&step.rd)
		if tr.cur != step.want {
			t.Fatalf("step %d: view %+v, want %+v", i, tr.cur, step.want)
		}
	}
}

// A leader vouches for a follower's read index only when the two are a
// quorum and nothing could have been committed elsewhere: it leads, in the
// follower's term, with an entry of that term committed, and at most three
// voters of which the follower is one.
func TestReadIndexForRefuses(t *testing.T) {
	ok := raftView{term: 5, lead: 1, leader: true, commit: 42, ownTermCommitted: true}
	three := raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	for _, tt := range []struct {
		name   string
		view   *raftView
		voters *raftpb.ConfState
		from   uint64
		term   uint64
		want   uint64 // 0: refused
		closed bool
		stop   bool
	}{
		{name: "OK three voters", view: &ok, voters: &three, from: 2, term: 5, want: 42},
		{name: "OK two voters", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{1, 2}}, from: 2, term: 5, want: 42},
		{name: "OK with a learner", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}, from: 3, term: 5, want: 42},
		{name: "no view yet", voters: &three, from: 2, term: 5},
		{name: "not leader", view: &raftView{term: 5, lead: 2, commit: 42}, voters: &three, from: 2, term: 5},
		{name: "follower's term older", view: &ok, voters: &three, from: 2, term: 4},
		{name: "follower's term newer", view: &ok, voters: &three, from: 2, term: 6},
		{name: "own term not committed", view: &raftView{term: 5, lead: 1, leader: true, commit: 42}, voters: &three, from: 2, term: 5},
		{name: "four voters", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{1, 2, 3, 4}}, from: 2, term: 5},
		{name: "five voters", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{1, 2, 3, 4, 5}}, from: 2, term: 5},
		{name: "from a learner", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{1, 2}, Learners: []uint64{3}}, from: 3, term: 5},
		{name: "from a stranger", view: &ok, voters: &three, from: 9, term: 5},
		{name: "from itself", view: &ok, voters: &three, from: 1, term: 5},
		{name: "leader not a voter", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{2, 3}}, from: 2, term: 5},
		{name: "joint configuration", view: &ok, voters: &raftpb.ConfState{Voters: []uint64{1, 2}, VotersOutgoing: []uint64{1, 2, 3}}, from: 2, term: 5},
		{name: "no configuration", view: &ok, from: 2, term: 5},
		{name: "closing", view: &ok, voters: &three, from: 2, term: 5, closed: true},
		{name: "stopped", view: &ok, voters: &three, from: 2, term: 5, stop: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{id: 1, stopc: make(chan struct{})}
			n.closed.Store(tt.closed)
			if tt.stop {
				close(n.stopc)
			}
			if tt.view != nil {
				n.view.Store(tt.view)
			}
			if tt.voters != nil {
				n.voters.Store(tt.voters)
			}
			got, err := n.readIndexFor(tt.from, tt.term)
			switch {
			case tt.want != 0 && (err != nil || got != tt.want):
				t.Fatalf("read index %d, %v; want %d", got, err, tt.want)
			case tt.want == 0 && !errors.Is(err, errReadIndexRefused):
				t.Fatalf("read index %d, %v; want a refusal", got, err)
			}
		})
	}
}
