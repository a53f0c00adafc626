package embedraft

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"go.etcd.io/etcd/raft/v3/raftpb"
)

// Recovery after quorum loss (Config.ForceNewCluster, the demo's
// -force-new-cluster), as etcd's --force-new-cluster: a member whose peers
// are gone for good restarts from its own data as a one-member cluster. It
// keeps its id, the cluster id and its whole log, and drops every other
// member through the log: membership changes removing them are appended
// to its WAL and committed with everything before them, then applied like
// any other change. New members then join it.
//
// Unlike etcd, entries past this member's commit index are kept and
// committed too: they were replicated to it by a leader, so their clients
// were answered success or "unknown outcome", never failure, and one of them
// may have been acknowledged by the members that are lost.
//
// The flag is one-shot: a successful run leaves DataDir/FORCED_NEW_CLUSTER,
// and a later restart with the flag still given ignores it (it would drop
// the members that joined since). Delete that file to force again after
// another quorum loss.
const forcedMarker = "FORCED_NEW_CLUSTER"

// forceNewCluster rewrites what openDisk recovered so that this member is the
// only one, as described above, and returns the new recovered state.
func (n *Node) forceNewCluster(disk *diskStorage, rec recovered) (_ recovered, forced bool, _ error) {
	if _, err := os.Stat(filepath.Join(n.cfg.DataDir, forcedMarker)); err == nil {
		n.log.Warn("ForceNewCluster ignored: this data directory was already forced into a new cluster " +
			"(delete " + forcedMarker + " to force again)")
		return rec, false, nil
	}
	reg := newRegistry()
	if len(rec.snapshot.Data) > 0 {
		members, err := membersOfSnapshot(n.cfg.DataDir, rec.snapshot.Data)
		if err == nil {
			err = reg.restore(members)
		}
		if err != nil {
			return rec, false, fmt.Errorf("%w: force new cluster: snapshot %d: %v", ErrStorage, rec.snapshot.Metadata.Index, err)
		}
	}
	for _, e := range rec.entries {
		var cc raftpb.ConfChangeV2
		switch e.Type {
		case raftpb.EntryConfChange:
			var v1 raftpb.ConfChange
			if err := v1.Unmarshal(e.Data); err != nil {
				return rec, false, fmt.Errorf("%w: force new cluster: entry %d: %v", ErrStorage, e.Index, err)
			}
			cc = v1.AsV2()
		case raftpb.EntryConfChangeV2:
			if err := cc.Unmarshal(e.Data); err != nil {
				return rec, false, fmt.Errorf("%w: force new cluster: entry %d: %v", ErrStorage, e.Index, err)
			}
		default:
			continue
		}
		if err := reg.applyConfChange(cc); err != nil {
			return rec, false, fmt.Errorf("%w: force new cluster: entry %d: %v", ErrStorage, e.Index, err)
		}
	}
	if reg.isRemoved(n.id) {
		return rec, false, fmt.Errorf("%w: force new cluster: member %d was removed from its cluster", ErrRemoved, n.id)
	}
	last := rec.snapshot.Metadata.Index
	if l := len(rec.entries); l > 0 {
		last = rec.entries[l-1].Index
	}
	term := rec.hardState.Term
	var add []raftpb.Entry
	next := func(cc raftpb.ConfChange) {
		last++
		data, _ := cc.Marshal() // a ConfChange always encodes
		add = append(add, raftpb.Entry{Type: raftpb.EntryConfChange, Term: term, Index: last, Data: data})
	}
	members := reg.members()
	if _, ok := members[n.id]; !ok || members[n.id].Role != RoleVoter {
		next(raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: n.id,
			Context: confContext{ID: n.id, Addr: n.cfg.AdvertiseURL}.marshal()})
	}
	var dropped []uint64
	for _, id := range sortedIDs(members) {
		if id != n.id {
			next(raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id,
				Context: confContext{ID: id, Addr: members[id].Addr}.marshal()})
			dropped = append(dropped, id)
		}
	}
	rec.hardState.Commit = last
	if err := disk.save(rec.hardState, add); err != nil {
		return rec, false, err
	}
	rec.entries = append(rec.entries, add...)
	if err := writeDurableFile(n.cfg.DataDir, forcedMarker,
		[]byte("forced a new cluster at index "+strconv.FormatUint(last, 10)+"\n")); err != nil {
		return rec, false, fmt.Errorf("%w: force new cluster: %v", ErrStorage, err)
	}
	n.log.Warn("forced a new one-member cluster: dropping the other members through the log",
		"dropped", dropped, "commit", last)
	return rec, true, nil
}
