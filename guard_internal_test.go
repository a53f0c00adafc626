package embedraft

import (
	"testing"
	"time"
)

func TestHeardTracker(t *testing.T) {
	t.Run("OK/BeforeFirstTick", func(t *testing.T) {
		var h heardTracker
		since := time.Now().Add(-time.Millisecond)
		h.touch(2)
		if !h.after(2, since) || h.after(3, since) {
			t.Fatal("before the first tick, touch records the time of the message")
		}
	})
	t.Run("OK/NextTick", func(t *testing.T) {
		var h heardTracker
		h.tick()
		h.touch(2)
		since := time.Now()
		for !time.Now().After(since) { // the next tick must read a later time
		}
		h.touch(2) // after since, but stamped with the tick before it
		if h.after(2, since) {
			t.Fatal("a message stamped before since counted as heard after it")
		}
		h.tick()
		if h.after(2, since) {
			t.Fatal("a tick alone counted as a message")
		}
		h.touch(2)
		h.touch(3)
		if !h.after(2, since) || !h.after(3, since) || h.after(4, since) {
			t.Fatal("messages after the next tick not counted")
		}
	})
}
