package embedraft

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"

	"github.com/embedraft/embedraft/transport"
)

// A member whose address changed (a new IP, a new port) restarts on its data
// directory with the new AdvertiseURL. It keeps its id and tells the cluster
// through the log: a ConfChangeUpdateNode whose context carries the new
// address, applied on every member like any membership change. Until it is
// applied the others cannot dial it, but it dials them: rafthttp's streams
// it opens carry raft both ways, and it reaches the leader to ask.

// AddressRequest is the body of POST /raft/node/address.
type AddressRequest struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
}

// announceAddress asks the leader, until it is applied here, to record this
// member's new AdvertiseURL. It runs in its own goroutine (counted in
// n.loops) and exits once the address is applied or the node stops.
func (n *Node) announceAddress() {
	defer n.loops.Done()
	req := AddressRequest{ID: n.id, Addr: n.cfg.AdvertiseURL}
	body, _ := json.Marshal(req) // plain struct
	for backoff := 200 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		if m, ok := n.reg.member(n.id); !ok || m.Addr == req.Addr || n.Mode() != ModeCluster {
			return
		}
		ctx, cancel := context.WithTimeout(n.stopCtx, n.writeTimeout())
		err := n.leaderCall(ctx, transport.AddressPath, body, nil, func() error { return n.updateAddressLocal(ctx, req) })
		cancel()
		if err == nil {
			n.log.Info("the cluster recorded this member's new address", "addr", req.Addr)
			return
		}
		n.log.Info("announcing the new address; retrying", "err", err)
		select {
		case <-time.After(backoff):
		case <-n.stopc:
			return
		}
	}
}

// handleAddress is POST /raft/node/address: a member (only the member
// itself) tells the leader its new address.
func (n *Node) handleAddress(w http.ResponseWriter, r *http.Request) {
	var req AddressRequest
	if err := n.decodeJSON(w, r, &req); err != nil {
		writeJSON(w, nil, err)
		return
	}
	if from := r.Header.Get(transport.HeaderFrom); from != strconv.FormatUint(req.ID, 10) {
		writeJSON(w, nil, fmt.Errorf("%w: member %s cannot change the address of member %d", ErrBadRequest, from, req.ID))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	defer cancel()
	writeJSON(w, req, n.updateAddressLocal(ctx, req))
}

// updateAddressLocal records a member's new address on the leader.
func (n *Node) updateAddressLocal(ctx context.Context, req AddressRequest) error {
	req.Addr = strings.TrimSuffix(req.Addr, "/")
	if err := checkURL(req.Addr); err != nil {
		return fmt.Errorf("%w: addr: %v", ErrBadRequest, err)
	}
	return n.changeMembership(ctx, func() (raftpb.ConfChange, string, error) {
		m, ok := n.reg.member(req.ID)
		if !ok {
			return raftpb.ConfChange{}, "", fmt.Errorf("%w: no member %d", ErrNotFound, req.ID)
		}
		if m.Addr == req.Addr {
			return raftpb.ConfChange{}, "", nil // already recorded
		}
		for id, other := range n.reg.members() {
			if id != req.ID && other.Addr == req.Addr {
				return raftpb.ConfChange{}, "", fmt.Errorf("%w: %s is member %d's address", ErrConflict, req.Addr, id)
			}
		}
		return raftpb.ConfChange{Type: raftpb.ConfChangeUpdateNode, NodeID: req.ID}, req.Addr, nil
	})
}

// updatePeer points rafthttp at a member's new address.
func (n *Node) updatePeer(tr *rafthttp.Transport, id uint64, addr string) {
	u := n.dialURL(addr)
	if _, err := types.NewURLs([]string{u}); err != nil {
		n.log.Error("member has an unusable address; not dialing it", "member", id, "addr", addr, "err", err)
		return
	}
	if tr.Get(typesID(id)) == nil {
		tr.AddPeer(typesID(id), []string{u})
		return
	}
	tr.UpdatePeer(typesID(id), []string{u})
	n.log.Info("member moved", "member", id, "addr", addr)
}
