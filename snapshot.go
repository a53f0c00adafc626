package embedraft

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// Snapshots stay off the hot path (DESIGN.md):
//
//  1. the apply goroutine captures the state at the applied index
//     (CaptureSnapshot, or GetSnapshot for a service without the
//     extension) and the membership, and starts the snapshot goroutine;
//  2. the snapshot goroutine writes the state file (snapstream.go) while
//     commits, ticks and replication go on, then hands the raft loop a
//     small snapshotRequest;
//  3. the raft loop records it (MemoryStorage, .snap file and WAL record,
//     holding only the reference) and compacts the in-memory log.
//
// At most one snapshot goroutine runs at a time: the apply loop starts the
// next only once the previous one has reported its result.

// snapshotRequest travels from the snapshot goroutine to the raft loop
// (which owns storage and the WAL).
type snapshotRequest struct {
	index     uint64
	confState raftpb.ConfState
	data      []byte // a snapRef
	size      int64  // bytes of the state file's envelope
	start     time.Time
}

// snapshotJob is what the apply loop hands the snapshot goroutine.
type snapshotJob struct {
	index     uint64
	confState raftpb.ConfState
	members   []byte
	view      SnapshotView
	start     time.Time
}

// snapshotOutcome is what a snapshot goroutine reports: the state file's
// size, or why it failed.
type snapshotOutcome struct {
	size uint64
	err  error
}

// stateFileBytes is the size of snap's state: of the state file it refers
// to, or of its data for a snapshot that holds the state itself (written
// before state files).
func stateFileBytes(snap raftpb.Snapshot) uint64 {
	ref, isRef, err := parseSnapRef(snap.Data)
	switch {
	case !isRef:
		return uint64(len(snap.Data))
	case err != nil:
		return 0
	}
	return uint64(ref.Size)
}

// maybeSnapshot starts a snapshot every SnapshotCount applied entries, once
// the entries applied since the last one hold SnapshotBytes and more bytes
// than its state file, or when snapNow asks for one. The capture runs
// here, on the apply goroutine, so it sees exactly the state at
// appliedIndex; nothing else about the snapshot does.
func (a *applier) maybeSnapshot() {
	n := a.n
	if n.snapWanted.Swap(false) {
		a.snapNow = true
	}
	if !a.backupViewFree() {
		return // a backup is streaming the service's one view
	}
	if a.snapDone != nil {
		select {
		case out := <-a.snapDone:
			a.snapDone = nil
			switch {
			case out.err != nil:
				n.log.Error("snapshot failed; will retry", "err", out.err)
				n.snapConf.Store(nil)
				if a.snapIndex == a.snapJob { // no snapshot installed since
					a.snapIndex, a.snapNow = a.snapPrev, a.snapNow || a.snapPrevNow
					a.logBytes += a.snapPrevBytes
				}
			case a.snapIndex == a.snapJob:
				a.stateBytes = out.size
			}
		default:
			return // the previous one is still being written
		}
	}
	if !a.snapshotDue() || n.Mode() != ModeCluster {
		return
	}
	if first, err := n.storage.FirstIndex(); err == nil && first > a.appliedIndex+1 {
		// A snapshot received from the leader is in storage but still
		// queued behind older batches: one taken now could not be saved
		// (its index is compacted), so wait until that one is applied.
		return
	}
	start := time.Now()
	var view SnapshotView
	if ss, ok := n.svc.(StreamSnapshotter); ok {
		v, err := ss.CaptureSnapshot()
		if err != nil {
			n.log.Error("service snapshot capture failed; will retry", "index", a.appliedIndex, "err", err)
			return
		}
		view = v
	} else {
		data, err := n.svc.GetSnapshot()
		if err != nil {
			n.log.Error("service snapshot failed; will retry", "index", a.appliedIndex, "err", err)
			return
		}
		view = bytesView(data)
	}
	job := snapshotJob{
		index:     a.appliedIndex,
		confState: a.confState,
		members:   n.snapshotMembers(), // membership and idempotency table
		view:      view,
		start:     start,
	}
	n.snapConf.Store(&job.confState)
	a.snapPrev, a.snapPrevNow, a.snapPrevBytes, a.snapJob = a.snapIndex, a.snapNow, a.logBytes, a.appliedIndex
	a.snapIndex, a.snapNow, a.logBytes = a.appliedIndex, false, 0
	done := make(chan snapshotOutcome, 1)
	a.snapDone = done
	n.loops.Add(1)
	go n.writeSnapshot(job, done)
}

// snapshotDue is maybeSnapshot's rule. Measured in bytes, the log must
// outgrow the last state file too, so that rewriting a large state costs
// no more than the log it lets go of.
func (a *applier) snapshotDue() bool {
	cfg := &a.n.cfg
	return a.appliedIndex-a.snapIndex >= cfg.SnapshotCount ||
		a.logBytes >= max(cfg.SnapshotBytes, a.stateBytes) ||
		(a.snapNow && a.appliedIndex > a.snapIndex)
}

// writeSnapshot is the snapshot goroutine: it writes the state file, hands
// the raft loop the request and reports the outcome on done (buffered). It
// exits once the raft loop has taken the request, on an error, or when the
// node stops (the view's writes then fail with ErrStopped).
func (n *Node) writeSnapshot(job snapshotJob, done chan<- snapshotOutcome) {
	defer n.loops.Done()
	size, err := n.writeSnapshotFile(job)
	done <- snapshotOutcome{size: uint64(size), err: err}
}

func (n *Node) writeSnapshotFile(job snapshotJob) (int64, error) {
	defer job.view.Release()
	term, err := n.storage.Term(job.index)
	if err != nil {
		return 0, fmt.Errorf("snapshot at %d: term: %w", job.index, err)
	}
	ref, err := writeStateFile(stateDir(n.cfg.DataDir), stateFileName(term, job.index), job.members, job.view, n.stopc)
	if err != nil {
		return 0, fmt.Errorf("snapshot at %d: %w", job.index, err)
	}
	req := snapshotRequest{index: job.index, confState: job.confState, data: ref.marshal(), size: ref.Size, start: job.start}
	select {
	case n.snapReqc <- req:
		return ref.Size, nil
	case <-n.stopc:
		return 0, ErrStopped
	}
}

// saveSnapshot runs on the raft loop: it records the snapshot in
// MemoryStorage (so lagging followers can be sent it), makes the record
// durable, and compacts the in-memory log, keeping at most CatchUpEntries
// entries and CatchUpBytes bytes of them for followers that are only a
// little behind.
func (n *Node) saveSnapshot(req snapshotRequest) error {
	snap, err := n.storage.CreateSnapshot(req.index, &req.confState, req.data)
	if errors.Is(err, raft.ErrSnapOutOfDate) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := n.disk.saveSnapshot(snap); err != nil {
		return err
	}
	// The snapshot record's fsync made the hard state that committed
	// req.index durable too (it was written in an earlier Ready).
	if err := n.disk.release(req.index); err != nil {
		return err
	}
	if compactTo := n.compactIndex(req.index); compactTo > 0 {
		if err := n.storage.Compact(compactTo); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return err
		}
	}
	n.metrics.snapshotSaved(req.start)
	n.log.Info("snapshot saved", "index", req.index, "bytes", req.size)
	return nil
}

// compactIndex is where to compact after a snapshot at index: the entries
// kept after it are at most CatchUpEntries and at most CatchUpBytes (the
// newest entry is dropped too if it alone is larger). 0 means none.
func (n *Node) compactIndex(index uint64) uint64 {
	var compactTo uint64 // the count bound (a young log keeps all its entries)
	if index > n.cfg.CatchUpEntries {
		compactTo = index - n.cfg.CatchUpEntries
	}
	first, err := n.storage.FirstIndex()
	if err != nil || first > index {
		return compactTo
	}
	lo := max(first, compactTo+1)
	ents, err := n.storage.Entries(lo, index+1, ^uint64(0))
	if err != nil {
		return compactTo
	}
	var size uint64
	for i := len(ents) - 1; i >= 0; i-- {
		size += uint64(ents[i].Size())
		if size > n.cfg.CatchUpBytes {
			return ents[i].Index
		}
	}
	return compactTo
}

// storeReceivedSnapshot runs on the raft loop for a snapshot a leader sent
// (its Data is the envelope): it writes the envelope to a state file and
// replaces Data with the reference, so that the .snap file, the WAL record,
// MemoryStorage and the apply loop all see the reference.
func (n *Node) storeReceivedSnapshot(s *raftpb.Snapshot) error {
	if _, isRef, _ := parseSnapRef(s.Data); isRef {
		return nil
	}
	members, service, err := unmarshalSnapshot(s.Data)
	if err != nil {
		return fmt.Errorf("%w: received snapshot %d: %v", ErrStorage, s.Metadata.Index, err)
	}
	ref, err := writeStateFile(stateDir(n.cfg.DataDir), stateFileName(s.Metadata.Term, s.Metadata.Index),
		members, bytesView(service), nil)
	if err != nil {
		return err
	}
	s.Data = ref.marshal()
	return nil
}
