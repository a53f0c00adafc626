package embedraft

import (
	"testing"
	"time"
)

// BenchmarkHotPath measures the checks every write, read or peer message
// makes: stopped on each write and read, heardTracker.touch on each raft
// message from a peer.
func BenchmarkHotPath(b *testing.B) {
	b.Run("stopped", func(b *testing.B) {
		n := &Node{stopc: make(chan struct{})}
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if n.stopped() != nil {
					b.Fatal("stopped")
				}
			}
		})
	})
	b.Run("heard-touch", func(b *testing.B) {
		var h heardTracker
		since := time.Now()
		h.tick()
		h.touch(2)
		h.touch(3)
		b.RunParallel(func(pb *testing.PB) {
			for i := uint64(0); pb.Next(); i++ {
				h.touch(2 + i%2)
			}
		})
		_ = h.after(2, since)
	})
}
