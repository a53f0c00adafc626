package embedraft

import (
	"runtime"
	"testing"
	"time"
)

// The proposer gathers the writes that come while the raft loop writes the
// WAL, until it is done, the batch is full or the node stops; when the raft
// loop is not writing it takes nothing more.
func TestGatherWhilePersisting(t *testing.T) {
	newNode := func() *Node {
		return &Node{propc: make(chan proposal, 1024), persisted: make(chan struct{}, 1), stopc: make(chan struct{})}
	}
	first := []proposal{{reqID: 1, data: []byte("a")}}
	queue := func(n *Node, count int) {
		for i := range count {
			n.propc <- proposal{reqID: uint64(i + 2), data: []byte("b")}
		}
	}

	t.Run("OK not persisting", func(t *testing.T) {
		n := newNode()
		queue(n, 3)
		n.persisted <- struct{}{} // stale: drained, not waited for
		got, stopped := n.gatherWhilePersisting(first, 1)
		if stopped || len(got) != 1 || len(n.propc) != 3 {
			t.Fatalf("got %d writes (stopped %v), %d left; want the first alone and 3 left", len(got), stopped, len(n.propc))
		}
	})
	t.Run("OK gathers until persisted", func(t *testing.T) {
		n := newNode()
		n.persisting.Store(true)
		queue(n, 3)
		done := make(chan []proposal)
		go func() {
			got, _ := n.gatherWhilePersisting(first, 1)
			done <- got
		}()
		// Once the three are taken, the raft loop finishes its write.
		deadline := time.Now().Add(5 * time.Second)
		for len(n.propc) > 0 {
			select {
			case got := <-done:
				t.Fatalf("returned with %d writes before the write finished", len(got))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the queued writes were not taken")
			}
			runtime.Gosched()
		}
		n.persisting.Store(false)
		n.persisted <- struct{}{}
		if got := <-done; len(got) != 4 {
			t.Fatalf("gathered %d writes, want 4", len(got))
		}
	})
	t.Run("OK stops at a full batch", func(t *testing.T) {
		n := newNode()
		n.persisting.Store(true)
		queue(n, maxBatchWrites+10)
		got, stopped := n.gatherWhilePersisting(first, 1)
		if stopped || len(got) != maxBatchWrites {
			t.Fatalf("gathered %d writes (stopped %v), want %d", len(got), stopped, maxBatchWrites)
		}
	})
	t.Run("node stops", func(t *testing.T) {
		n := newNode()
		n.persisting.Store(true)
		close(n.stopc)
		if _, stopped := n.gatherWhilePersisting(first, 1); !stopped {
			t.Fatal("not stopped")
		}
	})
}
