package embedraft

import (
	"bytes"
	"encoding/json"
	"fmt"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// applyLoop applies committed entries and installed snapshots to the
// service, in log order, and wakes the writers waiting on them. It is the
// only goroutine that calls the service's Commit, ResetSnap and GetSnapshot
// in cluster mode. It exits when stopc is closed, or stops the node when the
// service cannot load a snapshot.
func (n *Node) applyLoop(snap raftpb.Snapshot) {
	defer n.loops.Done()
	a := applier{n: n, confState: snap.Metadata.ConfState, appliedIndex: snap.Metadata.Index,
		snapIndex: snap.Metadata.Index, stateBytes: stateFileBytes(snap)}
	n.setVoters(a.confState)
	for {
		select {
		case <-n.applyq.ready:
			b, ok := n.applyq.pop()
			if !ok {
				continue
			}
			err := a.apply(b)
			n.applyq.done()
			if err != nil {
				n.stop(err)
				return
			}
			if n.Mode() == ModeRemoved {
				return
			}
		case req := <-n.backupc: // backup.go: a capture between batches
			req.reply <- a.captureState()
		case <-n.stopc:
			return
		}
	}
}

// applier is the apply loop's own state.
type applier struct {
	n            *Node
	confState    raftpb.ConfState
	appliedIndex uint64
	snapIndex    uint64 // index of the last snapshot taken or installed
	// logBytes is the size of the entries applied since snapIndex, and
	// stateBytes that of the last snapshot's state file (maybeSnapshot).
	logBytes, stateBytes uint64
	// snapNow asks for a snapshot at the next opportunity: a member was
	// added while the log is compacted, and raft refuses to install a
	// snapshot whose configuration does not include the receiver, so the
	// new member needs one taken after its addition.
	snapNow bool
	// snapDone is set while a snapshot goroutine runs (snapshot.go); it
	// reports the outcome. If the snapshot at snapJob fails, snapPrev,
	// snapPrevNow and snapPrevBytes restore snapIndex, snapNow and logBytes.
	snapDone chan snapshotOutcome
	// backupView is closed when the backup holding the service's snapshot
	// view releases it (backup.go); nil when none holds it.
	backupView    chan struct{}
	snapJob       uint64
	snapPrev      uint64
	snapPrevNow   bool
	snapPrevBytes uint64
	// wakeIDs and wakeResults gather the answers to this node's writes in
	// one entry, reused from entry to entry.
	wakeIDs     []uint64
	wakeResults []applyResult
}

func (a *applier) apply(b applyBatch) error {
	n := a.n
	if !raft.IsEmptySnap(b.snapshot) && b.snapshot.Metadata.Index > a.appliedIndex {
		if err := n.restoreSnapshot(b.snapshot); err != nil {
			return err
		}
		a.confState = b.snapshot.Metadata.ConfState
		n.setVoters(a.confState)
		a.appliedIndex, a.snapIndex = b.snapshot.Metadata.Index, b.snapshot.Metadata.Index
		a.logBytes, a.stateBytes = 0, stateFileBytes(b.snapshot)
		n.syncTransportPeers()
		n.membershipChanged(a.appliedIndex)
		n.log.Info("installed snapshot", "index", a.appliedIndex)
	}
	for i := range b.entries {
		e := &b.entries[i]
		if e.Index <= a.appliedIndex {
			continue
		}
		switch e.Type {
		case raftpb.EntryNormal:
			if err := a.applyNormal(e); err != nil {
				return err
			}
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := cc.Unmarshal(e.Data); err != nil {
				return fmt.Errorf("%w: decode conf change at %d: %v", ErrStorage, e.Index, err)
			}
			a.applyConfChange(e.Index, cc.AsV2())
		case raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeV2
			if err := cc.Unmarshal(e.Data); err != nil {
				return fmt.Errorf("%w: decode conf change at %d: %v", ErrStorage, e.Index, err)
			}
			a.applyConfChange(e.Index, cc)
		}
		a.appliedIndex = e.Index
		a.logBytes += uint64(len(e.Data))
	}
	n.applied.set(a.appliedIndex)
	if a.appliedIndex > n.bootstrapIndex && n.voteGate.Load() {
		// An entry past the bootstrap came from a leader this member
		// accepted while caught up: it is a member with a log again.
		n.voteGate.Store(false)
		n.log.Info("caught up past the bootstrap entries; voting normally")
	}
	a.maybeSnapshot()
	return nil
}

func (a *applier) applyNormal(e *raftpb.Entry) error {
	n := a.n
	if len(e.Data) == 0 {
		return nil // the empty entry a new leader appends
	}
	env, err := unmarshalEntry(e.Data)
	if err != nil {
		// Only embedraft writes entries, so this is corruption; skipping
		// would make this replica differ from the others.
		return fmt.Errorf("%w: entry %d: %v", ErrStorage, e.Index, err)
	}
	switch env.Kind {
	case kindPropose, kindBatch:
		writes, err := env.writes()
		if err != nil {
			return fmt.Errorf("%w: entry %d: %v", ErrStorage, e.Index, err)
		}
		mine := env.Origin == n.id
		a.wakeIDs, a.wakeResults = a.wakeIDs[:0], a.wakeResults[:0]
		for i, w := range writes {
			r := n.applyWriteAt(Position{Index: e.Index, Offset: i}, env.Time, w) // idempotency.go
			if mine {
				a.wakeIDs, a.wakeResults = append(a.wakeIDs, w.reqID), append(a.wakeResults, r)
			}
		}
		n.waits.triggerEach(a.wakeIDs, a.wakeResults)
		clear(a.wakeResults) // holds no answer past its entry
	case kindInit:
		if err := n.svc.ResetSnap(env.Payload); err != nil {
			return fmt.Errorf("service reset from init entry %d: %w", e.Index, err)
		}
		n.idem.reset() // keys of standalone writes are this node's alone
		if env.Origin == n.id {
			n.waits.trigger(env.ReqID, applyResult{index: e.Index})
		}
	case kindNoop:
		if env.Origin == n.id {
			n.waits.trigger(env.ReqID, applyResult{index: e.Index})
		}
	case kindStarted:
		ids, err := unmarshalIDs(env.Payload)
		if err != nil {
			return fmt.Errorf("%w: entry %d: %v", ErrStorage, e.Index, err)
		}
		n.reg.markStarted(ids)
	}
	return nil
}

func (a *applier) applyConfChange(index uint64, cc raftpb.ConfChangeV2) {
	n := a.n
	before := a.confState
	a.confState = *n.rn.ApplyConfChange(cc)
	n.setVoters(a.confState)
	if err := n.reg.applyConfChange(cc); err != nil {
		n.log.Error("conf change context", "err", err)
	}
	var ctx confContext
	if json.Unmarshal(cc.Context, &ctx) == nil && ctx.Origin == n.id && ctx.Req != 0 {
		n.conf.applied(ctx.Req)
		defer n.waits.trigger(ctx.Req, applyResult{index: index})
	}
	n.log.Info("membership changed", "index", index, "change", cc.String(), "voters", a.confState.Voters,
		"learners", a.confState.Learners)
	n.membershipChanged(index)
	tr := n.peerTr.Load()
	for _, ch := range cc.Changes {
		switch ch.Type {
		case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
			if m, ok := n.reg.member(ch.NodeID); ok && ch.NodeID != n.id && m.Addr != "" {
				n.addPeer(tr, ch.NodeID, m.Addr)
			}
			// A new member is sent the newest snapshot if it needs one,
			// and raft ignores one that predates it: the leader makes a
			// fresh one. (A learner's promotion needs none: it is in the
			// last. A follower that becomes leader later makes one when it
			// first has to send it: snaptransfer.go's send.)
			if first, err := n.storage.FirstIndex(); err == nil && first > 1 && !inConfState(before, ch.NodeID) &&
				n.currentView().leader {
				a.snapNow = true
			}
		case raftpb.ConfChangeUpdateNode:
			if m, ok := n.reg.member(ch.NodeID); ok && ch.NodeID != n.id && m.Addr != "" {
				n.updatePeer(tr, ch.NodeID, m.Addr)
			}
		case raftpb.ConfChangeRemoveNode:
			if ch.NodeID == n.id {
				n.markRemoved()
				return
			}
			if tr.Get(typesID(ch.NodeID)) != nil {
				tr.RemovePeer(typesID(ch.NodeID))
			}
		}
	}
}

// restoreSnapshot loads a snapshot: membership first, then the service's
// state. Its Data is a reference to a state file (snapstream.go), read as a
// stream and checked against its checksum, or (a snapshot saved before
// state files) the envelope itself.
func (n *Node) restoreSnapshot(s raftpb.Snapshot) error {
	index := s.Metadata.Index
	ref, isRef, err := parseSnapRef(s.Data)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, index, err)
	}
	if !isRef {
		return n.restoreFromReader(index, bytes.NewReader(s.Data))
	}
	r, err := openState(stateDir(n.cfg.DataDir), ref)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, index, err)
	}
	defer r.Close()
	return n.restoreFromReader(index, r)
}

// restoreSnapshotMembers restores only the membership and Idempotency-Key
// table of a snapshot whose service state the service already holds.
func (n *Node) restoreSnapshotMembers(s raftpb.Snapshot) error {
	members, err := membersOfSnapshot(n.cfg.DataDir, s.Data)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, s.Metadata.Index, err)
	}
	return n.restoreMembership(s.Metadata.Index, members)
}

// restoreMembership loads the membership and the Idempotency-Key table of
// the snapshot at index.
func (n *Node) restoreMembership(index uint64, members []byte) error {
	err := n.reg.restore(members)
	if err == nil {
		err = n.restoreIdempotency(members)
	}
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, index, err)
	}
	return nil
}

// syncTransportPeers makes rafthttp's peer set match the membership.
func (n *Node) syncTransportPeers() {
	tr := n.peerTr.Load()
	if tr == nil {
		return
	}
	members := n.reg.members()
	for id, m := range members {
		if id != n.id && m.Addr != "" && tr.Get(typesID(id)) == nil {
			n.addPeer(tr, id, m.Addr)
		}
	}
	for _, id := range n.reg.removedIDs() {
		if tr.Get(typesID(id)) != nil {
			tr.RemovePeer(typesID(id))
		}
	}
}

// writeRemovedMarker records the removal durably: without it a restart
// would replay its own removal from the log, which restartRaft also
// handles, but the marker keeps a removed node from ever starting raft.
func writeRemovedMarker(dataDir string) error {
	return writeDurableFile(dataDir, removedMarker, []byte("removed\n"))
}
