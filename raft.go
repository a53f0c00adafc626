package embedraft

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/confchange"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/raft/v3/tracker"

	"github.com/embedraft/embedraft/transport"
)

func typesID(id uint64) types.ID { return types.ID(id) }

// applyBatch is one Ready's worth of work for the apply loop.
type applyBatch struct {
	snapshot raftpb.Snapshot
	entries  []raftpb.Entry
}

// run is the raft loop: the only goroutine that calls Tick, Ready and
// Advance, writes the WAL and snapshot files, and writes MemoryStorage. It
// exits when stopc is closed, on a storage error (stopping the node), or
// when rafthttp reports this member removed.
func (n *Node) run() {
	defer n.loops.Done()
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	tr := n.peerTr.Load()
	isLeader := false
	// pendingConf is the last committed membership change handed to the
	// apply loop that this loop has not yet waited for (see below).
	var pendingConf uint64
	var view viewTracker
	for {
		select {
		case <-ticker.C:
			n.heard.tick()
			n.rn.Tick()
		case rd := <-n.rn.Ready():
			n.publishView(&view, &rd)
			if rd.SoftState != nil {
				isLeader = rd.SoftState.RaftState == raft.StateLeader
				n.raftState.Store(uint32(rd.SoftState.RaftState))
				if old := n.leader.Swap(rd.SoftState.Lead); old != rd.SoftState.Lead {
					n.leaderSig.set(n.leaderSig.get() + 1)
					n.leaderChanged(rd)
					n.log.Info("leader changed", "leader", rd.SoftState.Lead, "term", n.currentView().term)
				}
			}
			for _, rs := range rd.ReadStates {
				n.reads.trigger(rs.RequestCtx, rs.Index)
			}
			// The leader sends before its own fsync: followers persist in
			// parallel, and the leader's entry counts toward the quorum only
			// once its Ready is handled (raft thesis 10.2.1, etcd server).
			if isLeader {
				n.send(tr, rd.Messages)
			}
			if !raft.IsEmptySnap(rd.Snapshot) {
				if err := n.storeReceivedSnapshot(&rd.Snapshot); err != nil {
					n.stop(err)
					return
				}
			}
			if len(rd.Entries) > 0 {
				n.persisting.Store(true)
			}
			err := n.persist(rd)
			if n.persisting.Swap(false) {
				select {
				case n.persisted <- struct{}{}:
				default:
				}
			}
			if err != nil {
				n.stop(err)
				return
			}
			if len(rd.CommittedEntries) > 0 || !raft.IsEmptySnap(rd.Snapshot) {
				// Never waits for the apply loop (applyqueue.go).
				n.applyq.push(applyBatch{snapshot: rd.Snapshot, entries: rd.CommittedEntries})
				if last, ok := lastConfChange(rd.CommittedEntries); ok {
					pendingConf = last
				}
			}
			// A node must not vote or campaign under a configuration it
			// has not applied yet: a follower or candidate waits for the
			// committed membership changes before it sends anything
			// (etcd's waitApply). A leader does neither, and waiting there
			// would stop its heartbeats behind a slow service; one that
			// steps down waits in its first Ready as a follower.
			if pendingConf > 0 && !isLeader {
				if err := n.applied.wait(context.Background(), pendingConf, n.stopc); err != nil {
					return
				}
				pendingConf = 0
			}
			if !isLeader {
				n.send(tr, rd.Messages)
			}
			n.rn.Advance()
		case req := <-n.snapReqc:
			if err := n.saveSnapshot(req); err != nil {
				n.stop(err)
				return
			}
		case err := <-tr.ErrorC:
			// rafthttp reports only one critical error: a peer told us
			// this member was removed from the cluster.
			n.log.Warn("peer transport", "err", err)
			n.markRemoved()
			return
		case <-n.stopc:
			return
		}
	}
}

// persist writes one Ready in etcd server's order: snapshot file and record,
// then entries and hard state with one fsync; for a snapshot, an explicit
// fsync of the hard state before older WAL files may be released (etcd
// issue 10219); then MemoryStorage.
func (n *Node) persist(rd raft.Ready) error {
	snap := !raft.IsEmptySnap(rd.Snapshot)
	if snap {
		if err := n.disk.saveSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if err := n.disk.save(rd.HardState, rd.Entries); err != nil {
		return err
	}
	if snap {
		if err := n.disk.sync(); err != nil {
			return err
		}
		if err := n.storage.ApplySnapshot(rd.Snapshot); err != nil && !errors.Is(err, raft.ErrSnapOutOfDate) {
			return err
		}
		if err := n.disk.release(rd.Snapshot.Metadata.Index); err != nil {
			return err
		}
	}
	return n.storage.Append(rd.Entries)
}

// lastConfChange returns the index of the last membership change in ents.
func lastConfChange(ents []raftpb.Entry) (uint64, bool) {
	for i := len(ents) - 1; i >= 0; i-- {
		if ents[i].Type == raftpb.EntryConfChange || ents[i].Type == raftpb.EntryConfChangeV2 {
			return ents[i].Index, true
		}
	}
	return 0, false
}

// markRemoved records that this node left the cluster for good and stops it.
func (n *Node) markRemoved() {
	n.mode.Store(ModeRemoved)
	if err := writeRemovedMarker(n.cfg.DataDir); err != nil {
		n.log.Error("write removed marker", "err", err)
	}
	n.log.Warn("this node was removed from the cluster")
	n.events.publish(Removed{})
	n.stop(nil)
}

// peerRaft is what rafthttp sees of the node.
type peerRaft struct{ n *Node }

// Process steps a message from a peer. Its errors answer the peer's HTTP
// request themselves (rafthttp otherwise panics its handler to drop the
// connection): 403 tells a removed member it was removed, 503 asks the
// sender to retry.
func (p peerRaft) Process(ctx context.Context, m raftpb.Message) error {
	return p.n.stepPeer(ctx, m, nil)
}

// stepPeer checks a peer's message and steps it. members is the membership
// of a streamed snapshot, already read from the state file it was received
// into (snaptransfer.go); nil for a message that carries its data.
func (n *Node) stepPeer(ctx context.Context, m raftpb.Message, members []byte) error {
	if err := n.admitPeer(m); err != nil {
		return err
	}
	// admitPeer checked the sender; now the content, which raft would
	// otherwise trust.
	if reason := n.checkPeerContent(m, members); reason != "" {
		n.metrics.peerMessageRefused()
		return peerError{http.StatusBadRequest, "refused raft message: " + reason}
	}
	n.heard.touch(m.From)
	if err := n.rn.Step(ctx, m); err != nil {
		return peerError{http.StatusServiceUnavailable, err.Error()}
	}
	return nil
}

// admitPeer refuses a message this node cannot take whatever it holds: the
// node is stopping, the sender was removed, or the message is not from a
// peer to this node (transport.CheckSender).
func (n *Node) admitPeer(m raftpb.Message) error {
	select {
	case <-n.stopc:
		return peerError{http.StatusServiceUnavailable, ErrStopped.Error()}
	default:
	}
	if n.reg.isRemoved(m.From) {
		return peerError{http.StatusForbidden, "the member has been permanently removed from the cluster"}
	}
	if reason := transport.CheckSender(m, n.id, n.peerTr.Load()); reason != "" {
		n.metrics.peerMessageRefused()
		return peerError{http.StatusBadRequest, "refused raft message: " + reason}
	}
	return nil
}

func (p peerRaft) IsIDRemoved(id uint64) bool  { return p.n.reg.isRemoved(id) }
func (p peerRaft) ReportUnreachable(id uint64) { p.n.rn.ReportUnreachable(id) }
func (p peerRaft) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	p.n.rn.ReportSnapshot(id, status)
}

// checkPeerContent checks a message's content by its type. With
// transport.CheckSender it refuses messages no embedraft peer sends, which raft
// would otherwise trust (and panic on): raft assumes its transport only
// carries messages from raft. They are no substitute for the cluster token:
// a well-formed message from someone who can reach the peer routes is still
// believed.
func (n *Node) checkPeerContent(m raftpb.Message, streamedMembers []byte) string {
	switch m.Type {
	case raftpb.MsgSnap:
		members, err := streamedMembers, error(nil)
		if members == nil {
			// A snapshot sent whole carries its envelope; a reference
			// only ever comes from this node's own disk.
			members, _, err = unmarshalSnapshot(m.Snapshot.Data)
		}
		if err == nil {
			err = newRegistry().restore(members)
		}
		if err != nil {
			return "snapshot is not embedraft's: " + err.Error()
		}
		// raft panics restoring a configuration it cannot build.
		if _, _, err := confchange.Restore(confchange.Changer{
			Tracker: tracker.MakeProgressTracker(1), LastIndex: m.Snapshot.Metadata.Index,
		}, m.Snapshot.Metadata.ConfState); err != nil {
			return "snapshot configuration: " + err.Error()
		}
	case raftpb.MsgHeartbeat:
		// A leader's heartbeat never commits past what this follower
		// acknowledged; raft panics on one that does. Only a forged message
		// or a member that lost its log gets here.
		last, err := n.storage.LastIndex()
		if err != nil || m.Commit > last {
			// A gated member (bootstrapped empty, unvouched) that keeps
			// hearing this for an election timeout had a log it lost; a
			// single such heartbeat could be a forgery.
			if n.voteGate.Load() && n.lostLog.persists(time.Duration(n.cfg.ElectionTicks)*n.cfg.TickInterval) {
				go n.stop(fmt.Errorf("%w: leader %d (term %d) says this member has the log up to %d, but "+
					"it has %d entries: its data directory was wiped; remove it (POST /raft/api/deleteNode "+
					"{\"id\":%d}) and join again with an empty data directory",
					ErrMemberDataLost, m.From, m.Term, m.Commit, last, n.id))
			}
			return fmt.Sprintf("heartbeat commits %d, beyond this member's log (%d)", m.Commit, last)
		}
		n.lostLog.clear()
	case raftpb.MsgVote, raftpb.MsgPreVote:
		if n.voteGate.Load() && (m.LogTerm > 1 || m.Index > n.bootstrapIndex) {
			return "this member bootstrapped with an empty data directory that no peer vouched for; " +
				"it votes only for candidates of a new cluster until it has caught up"
		}
	case raftpb.MsgApp:
		for _, e := range m.Entries {
			if err := checkEntry(e); err != nil {
				return fmt.Sprintf("entry %d: %v", e.Index, err)
			}
		}
	}
	return ""
}

// peerError is an error that writes its own HTTP answer to rafthttp.
type peerError struct {
	status int
	msg    string
}

func (e peerError) Error() string { return e.msg }

// WriteTo is rafthttp's writerToResponse.
func (e peerError) WriteTo(w http.ResponseWriter) { http.Error(w, e.msg, e.status) }
