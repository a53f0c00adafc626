package embedraft

import (
	"context"
	"sync"

	"go.etcd.io/etcd/raft/v3"
)

// Event is what Subscribe delivers: LeaderChanged, MembershipChanged,
// Removed or Stopped.
type Event interface{ isEvent() }

// LeaderChanged reports that the leader this node knows of changed.
type LeaderChanged struct {
	// Leader is the new leader's member id; 0 means no leader is known
	// (an election is under way, or the leader lost its quorum).
	Leader uint64
	// Term is the raft term of the change. A leader is leader for one term
	// only, so the term is a fencing token: work a leader started in term T
	// must be refused by whoever sees a higher term.
	Term uint64
	// IsLeader is true when this node is the leader.
	IsLeader bool
}

// MembershipChanged reports an applied membership change (or an installed
// snapshot, whose membership may differ from the previous one).
type MembershipChanged struct {
	// Index is the log index of the change (of the snapshot).
	Index uint64
	// Members is the membership after the change. The map is shared by
	// every subscriber: read it, do not modify it.
	Members map[uint64]NodeInfo
}

// Removed reports that this node was removed from the cluster; the node
// stops (and the channel closes) right after.
type Removed struct{}

// Stopped is the last event before the channel closes because the node
// stopped: Err is why (nil after Close or a removal). It is delivered only
// if the subscriber's buffer has room; the channel closes either way.
type Stopped struct{ Err error }

func (LeaderChanged) isEvent()     {}
func (MembershipChanged) isEvent() {}
func (Removed) isEvent()           {}
func (Stopped) isEvent()           {}

// Subscribe returns a channel of the node's events and a function that
// unsubscribes and closes the channel (it may be called more than once).
//
// Events are published by the raft loop (LeaderChanged, Removed) and the
// apply loop (MembershipChanged), which never wait for a subscriber. The
// channel holds up to buffer events (at least 1). When it is full:
//
//   - a MembershipChanged or Removed event is dropped, and counted in
//     embedraft_events_dropped_total;
//   - a LeaderChanged event is kept aside, replacing any earlier one kept
//     aside (the replaced one is counted as dropped), and delivered as soon
//     as the channel has room. So a subscriber that falls behind may miss
//     intermediate leaders, but the last LeaderChanged it receives is
//     always the node's current leader and term. A coalesced LeaderChanged
//     may arrive after MembershipChanged events published after it;
//     LeaderChanged events are never reordered among themselves.
//
// Once a leader is known, the first event is the current leader state. A
// standalone node is its own leader: its first event is
// LeaderChanged{Leader: its id, Term: 0, IsLeader: true}, and raft's terms
// follow when it becomes a cluster (its leadership then starts again, in
// term 1 or later).
//
// The channel closes when cancel is called or the node stops (Close, a
// fatal error, removal), after a Stopped event if there is room for it. The
// goroutine that delivers kept-aside events exits then too.
func (n *Node) Subscribe(buffer int) (<-chan Event, func()) {
	s := n.events.subscribe(n, max(buffer, 1), false)
	return s.ch, s.cancel
}

// OnLeader runs fn in a goroutine of its own each time this node becomes
// leader, with the term it leads in. fn's ctx is cancelled when the node
// stops being leader (or leads again in a higher term, having missed its
// step-down), when the node stops, or when stop is called. fn should return
// soon after ctx is cancelled: runs never overlap, the next run starts only
// once the previous one has returned, and stop waits for the current run to
// return. Do not call stop from fn.
//
// Leadership is learned through the same events as Subscribe, so a run
// starts a moment after the node became leader, and its ctx is cancelled a
// moment after it stopped being leader: use the term as a fencing token for
// work that must not overlap with the next leader's.
//
// A standalone node runs fn with term 0; when it becomes a cluster, that run
// is cancelled and the next starts in the cluster's first term.
//
// The registration's goroutine exits when stop is called or the node stops,
// after the current run has returned.
func (n *Node) OnLeader(fn func(ctx context.Context, term uint64)) (stop func()) {
	s := n.events.subscribe(n, 1, true)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() { // exits when stop is called or the subscription closes (node stopped)
		defer close(done)
		var (
			runCancel context.CancelFunc
			runDone   chan struct{}
			runTerm   uint64
		)
		endRun := func() {
			if runCancel != nil {
				runCancel()
				<-runDone
				runCancel = nil
			}
		}
		defer endRun()
		for {
			select {
			case ev, ok := <-s.ch:
				if !ok {
					return
				}
				lc, isLeader := ev.(LeaderChanged)
				if !isLeader || (lc.IsLeader && runCancel != nil && runTerm == lc.Term) {
					continue
				}
				endRun()
				if lc.IsLeader {
					ctx, cancel := context.WithCancel(context.Background())
					runCancel, runDone, runTerm = cancel, make(chan struct{}), lc.Term
					go func(done chan struct{}) { // exits when fn returns
						defer close(done)
						fn(ctx, lc.Term)
					}(runDone)
				}
			case <-quit:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			s.cancel()
		})
		<-done
	}
}

// leaderChanged is called by the raft loop when rd changed the leader.
func (n *Node) leaderChanged(rd raft.Ready) {
	lead := rd.SoftState.Lead
	n.metrics.leaderChanged(lead)
	n.events.publish(LeaderChanged{Leader: lead, Term: n.currentView().term, IsLeader: rd.SoftState.RaftState == raft.StateLeader})
}

// membershipChanged is called by the apply loop once the membership change
// (or snapshot) at index is applied.
func (n *Node) membershipChanged(index uint64) {
	n.events.publish(MembershipChanged{Index: index, Members: n.reg.members()})
}

// eventHub fans events out to subscribers. Its zero value is ready.
type eventHub struct {
	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	leader *LeaderChanged // the last one published
}

// publish offers ev to every subscriber without blocking.
func (h *eventHub) publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if lc, ok := ev.(LeaderChanged); ok {
		h.leader = &lc
	}
	for s := range h.subs {
		s.offer(ev)
	}
}

func (h *eventHub) subscribe(n *Node, buffer int, leaderOnly bool) *subscriber {
	s := &subscriber{
		n: n, h: h, leaderOnly: leaderOnly,
		ch:      make(chan Event, buffer),
		kick:    make(chan struct{}, 1),
		cancelc: make(chan struct{}),
		done:    make(chan struct{}),
	}
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[*subscriber]struct{}{}
	}
	h.subs[s] = struct{}{}
	if h.leader != nil {
		s.offer(*h.leader)
	}
	h.mu.Unlock()
	go s.run()
	return s
}

func (h *eventHub) remove(s *subscriber) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// subscriber is one Subscribe (or OnLeader) channel. The hub offers events
// under mu without blocking; run, its own goroutine, delivers the
// LeaderChanged kept aside when the channel was full, and is the only one
// to close ch.
type subscriber struct {
	n          *Node
	h          *eventHub
	ch         chan Event
	leaderOnly bool

	mu       sync.Mutex
	closed   bool
	pending  *LeaderChanged // kept aside for run to deliver
	inflight bool           // run is delivering a kept-aside event

	kick       chan struct{} // 1-buffered: pending was set
	cancelc    chan struct{}
	cancelOnce sync.Once
	done       chan struct{} // closed when run has exited
}

// offer hands ev to the subscriber without blocking (see Subscribe).
func (s *subscriber) offer(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lc, isLeader := ev.(LeaderChanged)
	if s.closed || (s.leaderOnly && !isLeader) {
		return
	}
	if isLeader && (s.pending != nil || s.inflight) {
		// An earlier leader change is waiting: this one must come after it.
		s.keep(lc)
		return
	}
	select {
	case s.ch <- ev:
		return
	default:
	}
	if isLeader {
		s.keep(lc)
		return
	}
	s.n.metrics.eventDropped()
}

// keep sets lc aside for run to deliver. s.mu is held.
func (s *subscriber) keep(lc LeaderChanged) {
	if s.pending != nil {
		s.n.metrics.eventDropped()
	}
	s.pending = &lc
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run delivers kept-aside leader changes until the subscription is
// cancelled or the node stops, then closes ch.
func (s *subscriber) run() {
	defer close(s.done)
	defer s.h.remove(s)
	for {
		select {
		case <-s.kick:
		case <-s.cancelc:
			s.close(false)
			return
		case <-s.n.stopc:
			s.close(true)
			return
		}
		for {
			s.mu.Lock()
			ev := s.pending
			s.pending, s.inflight = nil, ev != nil
			s.mu.Unlock()
			if ev == nil {
				break
			}
			select {
			case s.ch <- *ev:
			case <-s.cancelc:
				s.close(false)
				return
			case <-s.n.stopc:
				s.mu.Lock()
				if s.pending == nil {
					s.pending = ev
				}
				s.mu.Unlock()
				s.close(true)
				return
			}
		}
	}
}

// close ends the subscription. When the node stopped, the last leader
// change kept aside and a Stopped event are delivered if there is room.
func (s *subscriber) close(stopped bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if stopped {
		if s.pending != nil {
			select {
			case s.ch <- *s.pending:
			default:
			}
		}
		if !s.leaderOnly {
			select {
			case s.ch <- Stopped{Err: s.n.Err()}:
			default:
			}
		}
	}
	s.pending = nil
	close(s.ch)
}

// cancel unsubscribes and waits until ch is closed.
func (s *subscriber) cancel() {
	s.cancelOnce.Do(func() { close(s.cancelc) })
	<-s.done
}
