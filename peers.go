package embedraft

import (
	"encoding/json"
	"fmt"
	"sync"

	"go.etcd.io/etcd/raft/v3/raftpb"
)

// Member roles.
const (
	RoleVoter   = "voter"
	RoleLearner = "learner"
)

// NodeInfo describes one member of the cluster.
type NodeInfo struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	Role string `json:"role"`
}

// membershipState is the replicated membership: changed only when a conf
// change is applied (or restored from a snapshot), so every node agrees.
type membershipState struct {
	Members map[uint64]NodeInfo `json:"members"`
	Removed []uint64            `json:"removed,omitempty"`
	// MaxID is the highest member id ever used; new ids come after it.
	MaxID uint64 `json:"max_id"`
	// Started lists the members known to have a log (they acknowledged
	// entries): such a member that comes back with an empty data directory
	// has lost data that may be needed for a quorum, and is refused.
	Started []uint64 `json:"started,omitempty"`
}

// registry guards the membership state. The apply goroutine writes it;
// HTTP handlers and rafthttp read it.
type registry struct {
	mu sync.RWMutex
	st membershipState
}

func newRegistry() *registry {
	return &registry{st: membershipState{Members: map[uint64]NodeInfo{}}}
}

// applyConfChange records the effect of an applied conf change.
func (r *registry) applyConfChange(cc raftpb.ConfChangeV2) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ch := range cc.Changes {
		id := ch.NodeID
		switch ch.Type {
		case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
			info := r.st.Members[id]
			info.ID = id
			if len(cc.Context) > 0 {
				var ctx confContext
				if err := json.Unmarshal(cc.Context, &ctx); err != nil {
					return fmt.Errorf("conf change context: %w", err)
				}
				if ctx.ID == id && ctx.Addr != "" {
					info.Addr = ctx.Addr
				}
			}
			info.Role = RoleVoter
			if ch.Type == raftpb.ConfChangeAddLearnerNode {
				info.Role = RoleLearner
			}
			r.st.Members[id] = info
		case raftpb.ConfChangeUpdateNode:
			// A member moved: only its address changes.
			info, ok := r.st.Members[id]
			var ctx confContext
			if ok && json.Unmarshal(cc.Context, &ctx) == nil && ctx.ID == id && ctx.Addr != "" {
				info.Addr = ctx.Addr
				r.st.Members[id] = info
			}
		case raftpb.ConfChangeRemoveNode:
			delete(r.st.Members, id)
			r.st.Started = removeID(r.st.Started, id)
			if !containsID(r.st.Removed, id) {
				r.st.Removed = append(r.st.Removed, id)
			}
		}
		if id > r.st.MaxID {
			r.st.MaxID = id
		}
	}
	return nil
}

// marshal encodes the state for a snapshot envelope.
func (r *registry) marshal() []byte {
	r.mu.RLock()
	defer r.mu.RUnlock()
	b, _ := json.Marshal(r.st) // maps of plain structs always encode
	return b
}

// restore replaces the state with one decoded from a snapshot envelope.
func (r *registry) restore(b []byte) error {
	var st membershipState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	if st.Members == nil {
		st.Members = map[uint64]NodeInfo{}
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	return nil
}

func (r *registry) members() map[uint64]NodeInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[uint64]NodeInfo, len(r.st.Members))
	for id, m := range r.st.Members {
		out[id] = m
	}
	return out
}

func (r *registry) member(id uint64) (NodeInfo, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m, ok := r.st.Members[id]
	return m, ok
}

func (r *registry) isRemoved(id uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return containsID(r.st.Removed, id)
}

func containsID(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func (r *registry) removedIDs() []uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]uint64(nil), r.st.Removed...)
}

func (r *registry) maxID() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.st.MaxID
}

// markStarted records that the given members have a log. Ids that are not
// members (any more) are ignored, so every node records the same set.
func (r *registry) markStarted(ids []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if _, ok := r.st.Members[id]; ok && !containsID(r.st.Started, id) {
			r.st.Started = append(r.st.Started, id)
		}
	}
}

func (r *registry) isStarted(id uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return containsID(r.st.Started, id)
}

// state returns a copy of the membership state.
func (r *registry) state() membershipState {
	r.mu.RLock()
	defer r.mu.RUnlock()
	st := membershipState{
		Members: make(map[uint64]NodeInfo, len(r.st.Members)),
		Removed: append([]uint64(nil), r.st.Removed...),
		MaxID:   r.st.MaxID,
		Started: append([]uint64(nil), r.st.Started...),
	}
	for id, m := range r.st.Members {
		st.Members[id] = m
	}
	return st
}

func removeID(ids []uint64, id uint64) []uint64 {
	out := ids[:0]
	for _, x := range ids {
		if x != id {
			out = append(out, x)
		}
	}
	return out
}
