package embedraft

import (
	"context"
	"errors"
	"testing"
	"time"
)

func newLeaderTestNode(lead uint64) *Node {
	n := &Node{id: 1, cfg: Config{LeaderWait: 200 * time.Millisecond, TickInterval: 5 * time.Millisecond},
		stopc: make(chan struct{}), leaderSig: newIndexNotifier(0)}
	n.mode.Store(ModeCluster)
	n.leader.Store(lead)
	return n
}

func TestViaLeader(t *testing.T) {
	local := func(calls *int, retries int, err error) func() (int, bool, error) {
		return func() (int, bool, error) {
			*calls++
			if *calls <= retries {
				return 0, true, ErrNotLeader
			}
			return 7, false, err
		}
	}
	remote := func(calls *int, retries int, err error) func(uint64) (int, bool, error) {
		return func(uint64) (int, bool, error) {
			*calls++
			if *calls <= retries {
				return 0, true, nil
			}
			return 8, false, err
		}
	}
	t.Run("OK/Local", func(t *testing.T) {
		var l, r int
		got, err := viaLeader(context.Background(), newLeaderTestNode(1), local(&l, 0, nil), remote(&r, 0, nil))
		if got != 7 || err != nil || l != 1 || r != 0 {
			t.Fatalf("%d %v, local %d remote %d", got, err, l, r)
		}
	})
	t.Run("OK/RemoteAfterRetries", func(t *testing.T) {
		var l, r int
		got, err := viaLeader(context.Background(), newLeaderTestNode(2), local(&l, 0, nil), remote(&r, 2, nil))
		if got != 8 || err != nil || l != 0 || r != 3 {
			t.Fatalf("%d %v, local %d remote %d", got, err, l, r)
		}
	})
	t.Run("ErrNotRetried", func(t *testing.T) {
		var l, r int
		_, err := viaLeader(context.Background(), newLeaderTestNode(2), local(&l, 0, nil), remote(&r, 0, ErrUnknownOutcome))
		if !errors.Is(err, ErrUnknownOutcome) || r != 1 {
			t.Fatalf("%v after %d calls", err, r)
		}
	})
	t.Run("ErrNoLeader/RefusedForLeaderWait", func(t *testing.T) {
		var l, r int
		start := time.Now()
		_, err := viaLeader(context.Background(), newLeaderTestNode(1), local(&l, 1<<30, nil), remote(&r, 0, nil))
		if !errors.Is(err, ErrNoLeader) || l < 2 || time.Since(start) < 200*time.Millisecond {
			t.Fatalf("%v after %d calls in %v", err, l, time.Since(start))
		}
	})
	t.Run("ErrNoLeader/Ctx", func(t *testing.T) {
		var l, r int
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := viaLeader(ctx, newLeaderTestNode(0), local(&l, 0, nil), remote(&r, 0, nil))
		if !errors.Is(err, ErrNoLeader) || !errors.Is(err, context.Canceled) || l+r != 0 {
			t.Fatalf("%v after %d calls", err, l+r)
		}
	})
	t.Run("ErrStopped/Closing", func(t *testing.T) {
		var l, r int
		n := newLeaderTestNode(1)
		n.closed.Store(true)
		_, err := viaLeader(context.Background(), n, local(&l, 0, nil), remote(&r, 0, nil))
		if !errors.Is(err, ErrStopped) || l+r != 0 {
			t.Fatalf("%v after %d calls", err, l+r)
		}
	})
	t.Run("ErrRemoved", func(t *testing.T) {
		var l, r int
		n := newLeaderTestNode(1)
		n.mode.Store(ModeRemoved)
		_, err := viaLeader(context.Background(), n, local(&l, 0, nil), remote(&r, 0, nil))
		if !errors.Is(err, ErrRemoved) || l+r != 0 {
			t.Fatalf("%v after %d calls", err, l+r)
		}
	})
}
