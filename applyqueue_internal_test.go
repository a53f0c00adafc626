package embedraft

import (
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3/raftpb"
)

// The queue hands batches over in order, never blocks the pusher, and
// counts the batch being applied as waiting until it is done.
func TestApplyQueue(t *testing.T) {
	q := newApplyQueue()
	later := time.Now().Add(time.Hour)
	if q.waited(later) != 0 {
		t.Fatalf("an empty queue has waited")
	}
	for i := uint64(1); i <= 100; i++ { // far more than the old channel held
		q.push(applyBatch{entries: []raftpb.Entry{{Index: i}}})
	}
	if w := q.waited(later); w < 59*time.Minute {
		t.Fatalf("waited %v an hour after the first push", w)
	}
	q.pushIfIdle(applyBatch{}) // busy: not queued
	for i := uint64(1); i <= 100; i++ {
		select {
		case <-q.ready:
		default:
			t.Fatalf("no wake-up for batch %d", i)
		}
		b, ok := q.pop()
		if !ok || len(b.entries) != 1 || b.entries[0].Index != i {
			t.Fatalf("pop %d: %v %v", i, b.entries, ok)
		}
		if i == 100 && q.waited(later) == 0 {
			t.Fatalf("the batch being applied does not count as waiting")
		}
		q.done()
	}
	if _, ok := q.pop(); ok {
		t.Fatalf("a batch left over: pushIfIdle queued one while busy")
	}
	if q.waited(later) != 0 {
		t.Fatalf("waiting with every batch applied")
	}
	q.pushIfIdle(applyBatch{}) // idle: queued, with a wake-up
	select {
	case <-q.ready:
	default:
		t.Fatalf("no wake-up for the idle push")
	}
	if _, ok := q.pop(); !ok {
		t.Fatalf("the idle push was not queued")
	}
}
