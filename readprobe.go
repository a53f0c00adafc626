package embedraft

import (
	"context"
	"sync"
	"time"

	"github.com/embedraft/embedraft/transport"
)

// The leader's own read index, confirmed by a follower's answer to a probe.
//
// The same argument as for a follower's request (readindex.go), turned
// round: a leader round begins after each of its reads, then sends a probe
// on every follower's forwarding stream; a follower answers with the term
// and leader of its view, loaded after the probe arrived. When the answer
// says it followed this leader in the leader's term, and the two are a
// quorum, the leader's commit index at that moment is a read index for the
// round: the follower had not voted for anyone else after the reads began,
// and the leader, still leading in that term, had not either. A round with
// no follower stream open, or no answer within a quarter of ForwardTimeout,
// uses raft's ReadIndex.

// probeHub is the leader's side: the streams of followers that answer
// probes, and the rounds waiting for an answer.
type probeHub struct {
	mu      sync.Mutex
	streams map[*probeStream]struct{}
	seq     uint64 // guarded by mu
	acks    *waitMap[uint64, uint64]
}

// probeStream is one follower's stream that answers probes.
type probeStream struct {
	from uint64
	send func(seq uint64) bool
}

func newProbeHub() *probeHub {
	// Sequence numbers start at a random point, as request ids do: an
	// answer meant for an earlier incarnation never matches.
	return &probeHub{streams: map[*probeStream]struct{}{}, seq: randomUint64() >> 1, acks: newWaitMap[uint64, uint64]()}
}

// attach records a follower's stream until the returned function is called.
func (h *probeHub) attach(from uint64, send func(seq uint64) bool) (end func()) {
	s := &probeStream{from: from, send: send}
	h.mu.Lock()
	h.streams[s] = struct{}{}
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.streams, s)
		h.mu.Unlock()
	}
}

// probe sends a new probe on the streams of followers for which counts is
// true, and returns its sequence number and how many were sent, with a
// waiter registered for its first confirmed answer.
func (h *probeHub) probe(counts func(from uint64) bool) (seq uint64, got <-chan uint64, sent int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	seq = h.seq
	got = h.acks.register(seq)
	for s := range h.streams {
		if counts(s.from) && s.send(seq) {
			sent++
		}
	}
	return seq, got, sent
}

// probeReadIndex confirms a leader's read round by a probe (see above). ok
// is false when it could not, and the caller asks raft.
func (n *Node) probeReadIndex(ctx context.Context) (index uint64, ok bool) {
	v := n.view.Load()
	if v == nil || !v.leader || !v.ownTermCommitted || n.streamReadsPaused() {
		return 0, false
	}
	voters := n.voters.Load()
	seq, got, sent := n.probes.probe(func(from uint64) bool { return pairIsQuorum(voters, n.id, from) })
	defer n.probes.acks.cancel(seq)
	if sent == 0 {
		return 0, false
	}
	t := time.NewTimer(n.streamReadTimeout())
	defer t.Stop()
	select {
	case index := <-got:
		n.metrics.readRound(true)
		return index, true
	case <-t.C:
		n.pauseStreamReads()
	case <-ctx.Done():
	case <-n.stopc:
	}
	return 0, false
}

// probeAck takes a follower's answer to probe seq: it confirms the round
// when the follower follows this leader in its term and the two are a
// quorum (readIndexFor).
func (n *Node) probeAck(from, seq, term, lead uint64) {
	if lead != n.id {
		return
	}
	if index, err := n.readIndexFor(from, term); err == nil {
		n.probes.acks.trigger(seq, index)
	}
}

// answerProbes makes this node's forwarding streams answer the leader's
// probes with its published view.
func (n *Node) answerProbes(fwd *transport.Forwarder) {
	fwd.AnswerProbes(func() (term, lead uint64, ok bool) {
		v := n.view.Load()
		if v == nil || v.leader || v.lead == 0 || v.term == 0 || n.halting() {
			return 0, 0, false
		}
		return v.term, v.lead, true
	})
}
