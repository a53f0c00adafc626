package embedraft

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"

	"github.com/embedraft/embedraft/transport"
)

// JoinRequest asks for membership (POST /raft/node/join and
// POST /raft/api/addNode).
type JoinRequest struct {
	// Addr is the new member's URL (its AdvertiseURL). Required.
	Addr string `json:"addr"`
	// ID, when set, is the id the member wants: one POST /raft/api/addNode
	// returned for this address, or a never-used id. Zero lets the leader
	// assign the next never-used id.
	ID uint64 `json:"id,omitempty"`
	// ClusterID, when set, must be the cluster's id (hex).
	ClusterID string `json:"cluster_id,omitempty"`
}

// JoinResponse tells a new member who it is and who its peers are.
type JoinResponse struct {
	ID        uint64              `json:"id"`
	ClusterID string              `json:"cluster_id"`
	Peers     map[string]NodeInfo `json:"peers"`
}

// RemoveRequest is the body of POST /raft/api/deleteNode.
type RemoveRequest struct {
	ID uint64 `json:"id"`
}

// AddMember adds the node at req.Addr to the cluster as a learner (it is
// promoted to voter by the leader once it has caught up) and returns its id,
// the cluster id and the peers. The call is idempotent: an address that is
// already a member gets its existing id. On a standalone node it first
// switches the node to a one-member cluster. On a follower it is forwarded
// to the leader. At most one membership change is in flight: a second one
// fails with ErrChangeInFlight.
func (n *Node) AddMember(ctx context.Context, req JoinRequest) (JoinResponse, error) {
	var resp JoinResponse
	if err := n.stopped(); err != nil {
		return resp, err
	}
	req.Addr = strings.TrimSuffix(req.Addr, "/")
	if err := checkURL(req.Addr); err != nil {
		return resp, fmt.Errorf("%w: addr: %v", ErrBadRequest, err)
	}
	if req.ID > MaxMemberID {
		return resp, fmt.Errorf("%w: id %d is above %d", ErrBadRequest, req.ID, uint64(MaxMemberID))
	}
	if n.Mode() == ModeStandalone {
		if req.ClusterID != "" {
			return resp, fmt.Errorf("%w: this node is standalone, not in cluster %s", ErrWrongCluster, req.ClusterID)
		}
		// Refuse what would be refused after the switch before switching:
		// a rejected request must leave the node as it was.
		self := map[uint64]NodeInfo{n.id: {ID: n.id, Addr: n.cfg.AdvertiseURL, Role: RoleVoter}}
		if _, _, err := checkNewMember(req, membershipState{Members: self, MaxID: n.id, Started: []uint64{n.id}}); err != nil {
			return resp, err
		}
		if err := n.switchToCluster(); err != nil {
			return resp, err
		}
	}
	body, _ := json.Marshal(req) // plain struct
	err := n.leaderCall(ctx, transport.AddNodePath, body, &resp, func() error {
		var err error
		resp, err = n.addMemberLocal(ctx, req)
		return err
	})
	return resp, err
}

// RemoveMember removes member id from the cluster. Removing the leader makes
// it hand leadership to another voter first. The removed node stops and
// never comes back under that id. Unknown ids fail with ErrNotFound.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	if err := n.stopped(); err != nil {
		return err
	}
	if n.Mode() == ModeStandalone {
		if id == n.id {
			return fmt.Errorf("%w: cannot remove the only node", ErrConflict)
		}
		return fmt.Errorf("%w: no member %d", ErrNotFound, id)
	}
	body, _ := json.Marshal(RemoveRequest{ID: id})
	return n.leaderCall(ctx, transport.DeleteNodePath, body, nil, func() error { return n.removeMemberLocal(ctx, id) })
}

// leaderCall runs local on the leader, or posts body to the leader's path
// and decodes the answer's data into out (viaLeader).
func (n *Node) leaderCall(ctx context.Context, path string, body []byte, out interface{}, local func() error) error {
	if out == nil {
		out = new(json.RawMessage) // the answer is checked all the same
	}
	_, err := viaLeader(ctx, n, func() (struct{}, bool, error) {
		err := local()
		return struct{}{}, errors.Is(err, ErrNotLeader), err
	}, func(lead uint64) (struct{}, bool, error) {
		_, retry, err := n.toLeader(ctx, lead, out, func(base string) (*transport.Response, error) {
			return n.fwd.Post(ctx, base+path, n.clusterID.Load(), body)
		})
		return struct{}{}, retry, err
	})
	return err
}

// addMemberLocal runs AddMember on the leader. The id is decided only once
// every earlier membership change is applied, from the applied membership,
// so two adds never get the same id.
func (n *Node) addMemberLocal(ctx context.Context, req JoinRequest) (JoinResponse, error) {
	if req.ClusterID != "" && req.ClusterID != strconv.FormatUint(n.clusterID.Load(), 16) {
		return JoinResponse{}, fmt.Errorf("%w: cluster %s, this is cluster %x", ErrWrongCluster, req.ClusterID, n.clusterID.Load())
	}
	var id uint64
	err := n.changeMembership(ctx, func() (raftpb.ConfChange, string, error) {
		var existing bool
		var err error
		id, existing, err = checkNewMember(req, n.reg.state())
		if err != nil || existing {
			return raftpb.ConfChange{}, "", err // already a member: joining is idempotent
		}
		return raftpb.ConfChange{Type: raftpb.ConfChangeAddLearnerNode, NodeID: id}, req.Addr, nil
	})
	if err != nil {
		return JoinResponse{}, err
	}
	return n.joinResponse(id), nil
}

// checkNewMember decides a join request against a membership: the id the
// member gets, whether it is already a member (joining is idempotent per
// address, for a member that never had a log), or why it is refused. Ids
// are never reused.
func checkNewMember(req JoinRequest, st membershipState) (uint64, bool, error) {
	members, removed, maxID := st.Members, st.Removed, st.MaxID
	for _, m := range members {
		if m.Addr != req.Addr {
			continue
		}
		if req.ID != 0 && req.ID != m.ID {
			return 0, false, fmt.Errorf("%w: %s is already member %d", ErrConflict, req.Addr, m.ID)
		}
		if containsID(st.Started, m.ID) {
			// The member had a log; a node asking to join has none. Giving
			// it the id back would make a voter that forgot its log.
			return 0, false, fmt.Errorf("%w: %s is member %d, which already has a log in this cluster, and a "+
				"joining node has an empty data directory; remove member %d (POST /raft/api/deleteNode "+
				"{\"id\":%d}) and join again", ErrMemberDataLost, req.Addr, m.ID, m.ID, m.ID)
		}
		return m.ID, true, nil
	}
	switch m, inUse := members[req.ID]; {
	case req.ID == 0:
		if maxID >= MaxMemberID {
			return 0, false, fmt.Errorf("%w: member ids are exhausted", ErrConflict)
		}
		return maxID + 1, false, nil
	case inUse:
		return 0, false, fmt.Errorf("%w: id %d is in use by %s", ErrConflict, req.ID, m.Addr)
	case containsID(removed, req.ID):
		return 0, false, fmt.Errorf("%w: id %d was removed; ids are never reused", ErrConflict, req.ID)
	case req.ID <= maxID:
		return 0, false, fmt.Errorf("%w: id %d was already used; ids are never reused", ErrConflict, req.ID)
	}
	return req.ID, false, nil
}

// removeMemberLocal runs RemoveMember on the leader.
func (n *Node) removeMemberLocal(ctx context.Context, id uint64) error {
	if _, ok := n.reg.member(id); !ok {
		if n.reg.isRemoved(id) {
			return fmt.Errorf("%w: member %d was already removed", ErrNotFound, id)
		}
		return fmt.Errorf("%w: no member %d", ErrNotFound, id)
	}
	since := time.Now()
	if err := n.waitQuorumAfterRemoval(ctx, id, since); err != nil {
		return err
	}
	if id == n.id {
		return n.stepDownFor(ctx, since)
	}
	return n.changeMembership(ctx, func() (raftpb.ConfChange, string, error) {
		m, ok := n.reg.member(id)
		if !ok {
			return raftpb.ConfChange{}, "", fmt.Errorf("%w: no member %d", ErrNotFound, id)
		}
		if err := n.checkQuorumAfterRemoval(id, since); err != nil {
			return raftpb.ConfChange{}, "", err
		}
		return raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: id}, m.Addr, nil
	})
}

func (n *Node) joinResponse(id uint64) JoinResponse {
	return JoinResponse{ID: id, ClusterID: strconv.FormatUint(n.clusterID.Load(), 16), Peers: n.Peers().Peers}
}

// switchToCluster turns a standalone node into a one-member cluster: with
// writes held, it takes the service's state (GetInit), creates the WAL,
// starts raft with a new random cluster id, and commits an init entry
// carrying that state; writes that waited then go through raft. A
// StreamSnapshotter service's state goes in as the first snapshot instead
// (switchBySnapshot).
func (n *Node) switchToCluster() error {
	n.switchMu.Lock()
	defer n.switchMu.Unlock()
	if err := n.stopped(); err != nil {
		return err
	}
	if n.Mode() != ModeStandalone {
		return nil
	}
	start := time.Now()
	n.gate.Lock()
	defer n.gate.Unlock()
	if ss, ok := n.svc.(StreamSnapshotter); ok {
		if err := n.switchBySnapshot(ss); err != nil { // restore.go
			return err
		}
		n.enterClusterMode()
		n.log.Info("switched from standalone to cluster (state as the first snapshot)", "took", time.Since(start))
		return nil
	}
	data, err := n.svc.GetInit()
	if err != nil {
		return fmt.Errorf("switch to cluster: service init: %w", err)
	}
	if err := n.bootstrapRaft(map[uint64]string{n.id: n.cfg.AdvertiseURL}, randomClusterID()); err != nil {
		// The WAL or the transport could not be set up: the node cannot be
		// trusted in either mode.
		err = fmt.Errorf("switch to cluster: %w", err)
		n.stop(err)
		return err
	}
	// From here on the node has a WAL: it must finish the switch or stop,
	// never go back to writing standalone. The switch is bounded by its own
	// deadline, not by the request that triggered it.
	if err := n.commitInit(data); err != nil {
		err = fmt.Errorf("switch to cluster: %w", err)
		n.stop(err)
		return err
	}
	n.enterClusterMode() // writes held at the gate now go through raft
	n.log.Info("switched from standalone to cluster", "init_bytes", len(data), "took", time.Since(start))
	return nil
}

// commitInit elects this single-voter cluster's leader and commits the init
// entry carrying the standalone state, waiting until it is applied.
func (n *Node) commitInit(data []byte) error {
	ctx, cancel := context.WithTimeout(n.stopCtx, n.cfg.JoinTimeout)
	defer cancel()
	if err := n.campaignAlone(ctx); err != nil {
		return err
	}
	if _, err := n.waitLeaderWhere(ctx, func(lead uint64) bool { return lead == n.id }); err != nil {
		return err
	}
	_, _, err := n.proposeWait(ctx, "init entry", func(reqID uint64) error {
		env := entryEnvelope{Kind: kindInit, ReqID: reqID, Origin: n.id, Payload: data}
		return n.rn.Propose(ctx, env.marshal())
	})
	return err
}

// requestJoin asks cfg.Join for membership, retrying while the answer may
// change (no leader yet, another change in flight, unreachable).
func (n *Node) requestJoin(ctx context.Context) (*JoinResponse, error) {
	body, _ := json.Marshal(JoinRequest{Addr: n.cfg.AdvertiseURL, ID: n.cfg.ID})
	fwd := transport.NewForwarder(0, n.cfg.Token, n.cfg.ForwardTimeout, n.clientTLS())
	defer fwd.Close()
	backoff := 100 * time.Millisecond
	for {
		resp, err := fwd.Post(ctx, n.dialURL(n.cfg.Join)+transport.JoinPath, 0, body)
		var jr JoinResponse
		if err == nil {
			err = decodeAnswer(resp, &jr)
			if err == nil {
				if jr.ID == 0 || (n.cfg.ID != 0 && jr.ID != n.cfg.ID) {
					return nil, fmt.Errorf("join %s: answered id %d", n.cfg.Join, jr.ID)
				}
				cid, perr := strconv.ParseUint(jr.ClusterID, 16, 64)
				if perr != nil || cid == 0 {
					return nil, fmt.Errorf("join %s: answered cluster id %q", n.cfg.Join, jr.ClusterID)
				}
				n.id = jr.ID
				n.clusterID.Store(cid)
				return &jr, nil
			}
			if s := StatusOf(err); s/100 == 4 && !errors.Is(err, ErrChangeInFlight) {
				return nil, fmt.Errorf("join %s: %w", n.cfg.Join, err)
			}
		}
		n.log.Info("join not answered yet; retrying", "target", n.cfg.Join, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: join %s: %v (last error: %v)", ErrNoLeader, n.cfg.Join, ctx.Err(), err)
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// startJoined creates the WAL of a node that was just given membership and
// starts raft empty: the leader sends it the log or a snapshot.
func (n *Node) startJoined(jr *JoinResponse) error {
	peers := map[uint64]string{}
	for _, m := range jr.Peers {
		peers[m.ID] = m.Addr
	}
	disk, err := createDisk(n.zl, n.cfg.DataDir, walMetadata{NodeID: n.id, ClusterID: n.clusterID.Load(), Peers: peers})
	if err != nil {
		return err
	}
	storage := raft.NewMemoryStorage()
	n.rn = raft.RestartNode(n.raftConfig(storage))
	if err := n.startLoops(disk, storage, peers); err != nil {
		return err
	}
	n.launch(raftpb.Snapshot{})
	n.log.Info("joined cluster", "via", n.cfg.Join, "peers", len(peers))
	return nil
}

// fetchStatus reads another node's status route.
func fetchStatus(ctx context.Context, base, token string, tlsConfig *tls.Config) (Status, error) {
	var st Status
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+transport.StatusPath, nil)
	if err != nil {
		return st, err
	}
	transport.SetToken(req, token)
	client := http.DefaultClient
	if tlsConfig != nil {
		tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: tlsConfig}
		client = &http.Client{Transport: tr}
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	var env struct {
		Data Status `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return st, err
	}
	return env.Data, nil
}
