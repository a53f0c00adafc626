package embedraft

import (
	"errors"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// snapshotRequest travels from the apply loop (which has the state at
// index) to the raft loop (which owns storage and the files).
type snapshotRequest struct {
	index     uint64
	confState raftpb.ConfState
	data      []byte // snapshot envelope
	start     time.Time
}

// maybeSnapshot takes a snapshot every SnapshotCount applied entries. The
// service's GetSnapshot runs here, on the apply goroutine, so it sees exactly
// the state at appliedIndex. The request is handed over without blocking:
// the raft loop may itself be waiting to hand us entries.
func (a *applier) maybeSnapshot() {
	n := a.n
	due := a.appliedIndex-a.snapIndex >= n.cfg.SnapshotCount || (a.snapNow && a.appliedIndex > a.snapIndex)
	if !due || n.Mode() != ModeCluster {
		return
	}
	start := time.Now()
	data, err := n.svc.GetSnapshot()
	if err != nil {
		n.log.Error("service snapshot failed; will retry", "index", a.appliedIndex, "err", err)
		return
	}
	req := snapshotRequest{
		index:     a.appliedIndex,
		confState: a.confState,
		data:      marshalSnapshot(n.snapshotMembers(), data),
		start:     start,
	}
	select {
	case n.snapReqc <- req:
		a.snapIndex = a.appliedIndex
		a.snapNow = false
	default: // the previous one is still being written; try again later
	}
}

// saveSnapshot runs on the raft loop: it records the snapshot in
// MemoryStorage (so lagging followers can be sent it), makes it durable,
// and compacts the in-memory log, keeping CatchUpEntries for followers that
// are only a little behind.
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
	if req.index > n.cfg.CatchUpEntries {
		compactTo := req.index - n.cfg.CatchUpEntries
		if err := n.storage.Compact(compactTo); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return err
		}
	}
	n.metrics.snapshotSaved(req.start)
	n.log.Info("snapshot saved", "index", req.index, "bytes", len(req.data))
	return nil
}
