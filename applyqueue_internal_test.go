package embedraft

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3"
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

// While a snapshot received from the leader is installed in storage but
// still queued behind older batches, the apply loop takes no snapshot of
// its own: its index is compacted away, so it could not be saved.
func TestNoSnapshotBehindAnInstalledOne(t *testing.T) {
	storage := raft.NewMemoryStorage()
	if err := storage.ApplySnapshot(raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 100, Term: 2}}); err != nil {
		t.Fatal(err)
	}
	svc := &snapshotCounter{}
	n := &Node{cfg: Config{SnapshotCount: 10, SnapshotBytes: 1 << 20}, svc: svc, storage: storage,
		log: slog.New(slog.DiscardHandler)}
	n.mode.Store(ModeCluster)
	a := &applier{n: n, snapIndex: 20, appliedIndex: 50} // 30 entries since the last: due
	if !a.snapshotDue() {
		t.Fatal("the test's snapshot is not due")
	}
	a.maybeSnapshot()
	if svc.snapshots != 0 || a.snapDone != nil || a.snapIndex != 20 {
		t.Fatalf("a snapshot was started at %d behind the installed one at 100", a.appliedIndex)
	}
}

// snapshotCounter counts GetSnapshot calls and fails them, so that no
// snapshot job starts.
type snapshotCounter struct {
	nopService
	snapshots int
}

func (s *snapshotCounter) GetSnapshot() ([]byte, error) {
	s.snapshots++
	return nil, errors.New("counted")
}
