package embedraft

import (
	"strconv"

	"go.etcd.io/etcd/raft/v3"
)

// Status is a point-in-time view of the node, served on GET /raft/api/status.
type Status struct {
	ID        uint64 `json:"id"`
	ClusterID string `json:"cluster_id"`
	Mode      string `json:"mode"`
	State     string `json:"state"`
	Leader    uint64 `json:"leader"`
	Term      uint64 `json:"term"`
	Commit    uint64 `json:"commit"`
	Applied   uint64 `json:"applied"`
}

// Status returns the node's current status.
func (n *Node) Status() Status {
	s := Status{
		ID:        n.id,
		ClusterID: strconv.FormatUint(n.clusterID.Load(), 16),
		Mode:      n.Mode(),
		Leader:    n.leader.Load(),
		Term:      n.currentView().term,
		Commit:    n.currentView().commit,
		Applied:   n.applied.get(),
	}
	switch s.Mode {
	case ModeStandalone:
		s.State, s.Leader = "leader", n.id
	case ModeRemoved:
		s.State, s.Leader = "removed", 0
	default:
		switch raft.StateType(n.raftState.Load()) {
		case raft.StateLeader:
			s.State = "leader"
		case raft.StateCandidate, raft.StatePreCandidate:
			s.State = "candidate"
		default:
			s.State = "follower"
			if m, ok := n.reg.member(n.id); ok && m.Role == RoleLearner {
				s.State = "learner"
			}
		}
	}
	return s
}

// PeerList is served on GET /raft/api/getPeerList.
type PeerList struct {
	Leader uint64              `json:"leader"`
	Peers  map[string]NodeInfo `json:"peers"`
}

// Peers returns the current membership.
func (n *Node) Peers() PeerList {
	pl := PeerList{Leader: n.Status().Leader, Peers: map[string]NodeInfo{}}
	if n.Mode() == ModeStandalone {
		pl.Peers[strconv.FormatUint(n.id, 10)] = NodeInfo{ID: n.id, Addr: n.cfg.AdvertiseURL, Role: RoleVoter}
		return pl
	}
	for id, m := range n.reg.members() {
		pl.Peers[strconv.FormatUint(id, 10)] = m
	}
	return pl
}
