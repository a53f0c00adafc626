package embedraft

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-semver/semver"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/etcd/raft/v3"

	"github.com/embedraft/embedraft/transport"
)

// envelope is every JSON answer of the library's routes.
type envelope struct {
	Code  string      `json:"code"`
	Msg   string      `json:"msg"`
	Data  interface{} `json:"data,omitempty"`
	Error string      `json:"error,omitempty"`
}

// writeJSON answers with data on success or err mapped by StatusOf.
func writeJSON(w http.ResponseWriter, data interface{}, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(StatusOf(err))
		_ = json.NewEncoder(w).Encode(envelope{Code: codeOf(err), Msg: "error", Error: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(envelope{Code: codeOK, Msg: "ok", Data: data})
}

// routes builds the node's handler. rafthttp's routes are served by the
// peer transport once the node is in cluster mode (503 before).
func (n *Node) routes() http.Handler {
	r := chi.NewRouter()
	r.Route("/raft/api", func(r chi.Router) {
		r.Post("/set", n.handleSet)
		r.Get("/status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, n.Status(), nil) })
		r.Get("/getPeerList", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, n.Peers(), nil) })
		r.With(n.requireToken).Post("/transferLeader", n.handleTransferLeader)
		r.With(n.requireToken).Post("/addNode", n.handleAddNode)
		r.With(n.requireToken).Post("/deleteNode", n.handleDeleteNode)
	})
	r.With(n.requireToken, n.requireCluster).Post(transport.ProposePath, n.handlePropose)
	r.With(n.requireToken).Post(transport.JoinPath, n.handleAddNode)
	n.mountUI(r) // GET /raft/ui and /raft/ui/cluster (admin): ui.go
	peer := http.HandlerFunc(n.servePeer)
	r.Handle("/raft", peer)
	r.Handle("/raft/stream/*", peer)
	r.Handle("/raft/snapshot", peer)
	r.Handle("/raft/probing", peer)
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, "ok", n.Err()) })
	r.Get("/readyz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, n.Status(), n.ready()) })
	r.Handle("/metrics", promhttp.Handler())
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, nil, fmt.Errorf("%w: no route %s %s", ErrNotFound, r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_ = json.NewEncoder(w).Encode(envelope{Code: "method_not_allowed", Msg: "error",
			Error: fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)})
	})
	return r
}

// readBody reads a request body of at most MaxRequestBytes.
func (n *Node) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, n.cfg.MaxRequestBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("%w: body over %d bytes", ErrTooLarge, n.cfg.MaxRequestBytes)
		}
		return nil, fmt.Errorf("%w: read body: %v", ErrBadRequest, err)
	}
	return b, nil
}

// writeTimeout bounds a write served over HTTP: long enough to find a
// leader and forward, short enough that a client is never left hanging.
func (n *Node) writeTimeout() time.Duration { return n.cfg.LeaderWait + n.cfg.ForwardTimeout }

// handleSet is POST /raft/api/set: a client write, answered after commit and
// apply on this node.
func (n *Node) handleSet(w http.ResponseWriter, r *http.Request) {
	body, err := n.readBody(w, r)
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	defer cancel()
	res, err := n.write(ctx, body)
	if res.forwarded != nil && (err == nil || res.forwarded.Status/100 != 2) {
		// The leader's answer, status and body unchanged.
		w.Header().Set("Content-Type", "application/json")
		if res.index > 0 {
			w.Header().Set(transport.HeaderIndex, strconv.FormatUint(res.index, 10))
		}
		w.WriteHeader(res.forwarded.Status)
		_, _ = w.Write(res.forwarded.Body)
		return
	}
	if err == nil && res.index > 0 {
		w.Header().Set(transport.HeaderIndex, strconv.FormatUint(res.index, 10))
	}
	writeJSON(w, res.object, err)
}

// handlePropose is POST /raft/node/propose: a follower forwarding a client
// body. Only the leader accepts it; it never forwards again.
func (n *Node) handlePropose(w http.ResponseWriter, r *http.Request) {
	body, err := n.readBody(w, r)
	if err == nil {
		err = n.checkBody(body)
	}
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.ForwardTimeout)
	defer cancel()
	res, err := n.proposeLocal(ctx, body)
	if err == nil {
		w.Header().Set(transport.HeaderIndex, strconv.FormatUint(res.index, 10))
	}
	writeJSON(w, res.object, err)
}

// handleTransferLeader is POST /raft/api/transferLeader {"to":N}.
func (n *Node) handleTransferLeader(w http.ResponseWriter, r *http.Request) {
	var req struct {
		To uint64 `json:"to"`
	}
	if err := n.decodeJSON(w, r, &req); err != nil {
		writeJSON(w, nil, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	defer cancel()
	writeJSON(w, map[string]uint64{"leader": req.To}, n.TransferLeader(ctx, req.To))
}

// handleAddNode serves POST /raft/api/addNode and POST /raft/node/join.
func (n *Node) handleAddNode(w http.ResponseWriter, r *http.Request) {
	var req JoinRequest
	if err := n.decodeJSON(w, r, &req); err != nil {
		writeJSON(w, nil, err)
		return
	}
	if got := r.Header.Get(transport.HeaderClusterID); got != "" && req.ClusterID == "" {
		req.ClusterID = got
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	defer cancel()
	resp, err := n.AddMember(ctx, req)
	writeJSON(w, resp, err)
}

// handleDeleteNode serves POST /raft/api/deleteNode {"id":N}.
func (n *Node) handleDeleteNode(w http.ResponseWriter, r *http.Request) {
	var req RemoveRequest
	if err := n.decodeJSON(w, r, &req); err != nil {
		writeJSON(w, nil, err)
		return
	}
	if req.ID == 0 {
		writeJSON(w, nil, fmt.Errorf("%w: \"id\" must be a positive member id", ErrBadRequest))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	defer cancel()
	writeJSON(w, map[string]uint64{"removed": req.ID}, n.RemoveMember(ctx, req.ID))
}

// decodeJSON decodes a small JSON request body strictly into v.
func (n *Node) decodeJSON(w http.ResponseWriter, r *http.Request, v interface{}) error {
	body, err := n.readBody(w, r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: invalid JSON: %v", ErrBadRequest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after JSON object", ErrBadRequest)
	}
	return nil
}

// maxPeerMessageBytes bounds one message on rafthttp's pipeline route (a
// snapshot travels there as one message, so this is also the largest state
// that can be replicated by snapshot). embedraft never uses rafthttp's
// streaming /raft/snapshot route, whose length prefix rafthttp allocates
// before reading, so that route gets a small bound.
const (
	maxPeerMessageBytes    = 1 << 30
	maxSnapshotRouteHeader = 1 << 20
)

// servePeer hands rafthttp's routes to the peer transport, with limits
// rafthttp lacks: a bounded body, and a snapshot length checked before
// rafthttp allocates it.
func (n *Node) servePeer(w http.ResponseWriter, r *http.Request) {
	tr := n.peerTr.Load()
	if tr == nil || n.Mode() != ModeCluster {
		writeJSON(w, nil, fmt.Errorf("%w: peer transport not running", ErrNotCluster))
		return
	}
	// With a token, peers prove they hold it through the cluster id rafthttp
	// sends on every request: see peerClusterID.
	if n.cfg.Token != "" && r.URL.Path != "/raft/probing" &&
		r.Header.Get("X-Etcd-Cluster-ID") != typesID(n.peerClusterID()).String() {
		writeJSON(w, nil, fmt.Errorf("%w: peer request without the cluster token", ErrUnauthorized))
		return
	}
	// Members are added from the replicated membership only, never from a
	// request's claim of its own URLs.
	r.Header.Del("X-PeerURLs")
	// rafthttp parses these with semver.Must: a bad value panics its handler.
	for _, h := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
		if v := r.Header.Get(h); v != "" {
			if _, err := semver.NewVersion(v); err != nil {
				writeJSON(w, nil, fmt.Errorf("%w: %s: %v", ErrBadRequest, h, err))
				return
			}
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxPeerMessageBytes+8)
	if r.URL.Path == "/raft/snapshot" {
		var hdr [8]byte
		if _, err := io.ReadFull(r.Body, hdr[:]); err != nil {
			writeJSON(w, nil, fmt.Errorf("%w: snapshot message: %v", ErrBadRequest, err))
			return
		}
		if l := binary.BigEndian.Uint64(hdr[:]); l > maxSnapshotRouteHeader {
			writeJSON(w, nil, fmt.Errorf("%w: snapshot message of %d bytes", ErrTooLarge, l))
			return
		}
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(hdr[:]), r.Body), r.Body}
	}
	tr.Handler().ServeHTTP(w, r)
}

// requireToken checks the cluster token ("Authorization: Bearer <token>")
// on the library's own peer and admin routes.
func (n *Node) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.cfg.Token != "" {
			got, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !bearer || subtle.ConstantTimeCompare([]byte(got), []byte(n.cfg.Token)) != 1 {
				writeJSON(w, nil, fmt.Errorf("%w: missing or wrong cluster token", ErrUnauthorized))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// requireCluster rejects peer requests from another cluster.
func (n *Node) requireCluster(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Mode() != ModeCluster {
			writeJSON(w, nil, fmt.Errorf("%w: this node is %s", ErrNotCluster, n.Mode()))
			return
		}
		got := r.Header.Get(transport.HeaderClusterID)
		if want := strconv.FormatUint(n.clusterID.Load(), 16); got != want {
			writeJSON(w, nil, fmt.Errorf("%w: cluster id %q, this node is in cluster %s", ErrWrongCluster, got, want))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ready reports whether the node can serve writes: standalone, or in a
// cluster with a known leader and applied up to the commit it knows of.
func (n *Node) ready() error {
	if err := n.Err(); err != nil {
		return err
	}
	s := n.Status()
	switch {
	case s.Mode == ModeRemoved:
		return ErrRemoved
	case s.Mode == ModeStandalone:
		return nil
	case s.Leader == 0:
		return ErrNoLeader
	case s.Applied < s.Commit:
		return fmt.Errorf("%w: applied %d of %d committed", ErrNoLeader, s.Applied, s.Commit)
	}
	return nil
}

// TransferLeader asks the leader to hand leadership to member to and waits
// until it has (or ctx ends).
func (n *Node) TransferLeader(ctx context.Context, to uint64) error {
	if n.Mode() != ModeCluster {
		return ErrNotCluster
	}
	m, ok := n.reg.member(to)
	if !ok {
		return fmt.Errorf("%w: member %d", ErrNotFound, to)
	}
	if m.Role != RoleVoter {
		return fmt.Errorf("%w: member %d is a %s", ErrConflict, to, m.Role)
	}
	if raft.StateType(n.raftState.Load()) != raft.StateLeader {
		return fmt.Errorf("%w: ask the leader (%d)", ErrNotLeader, n.leader.Load())
	}
	n.rn.TransferLeadership(ctx, n.id, to)
	_, err := n.waitLeaderWhere(ctx, func(lead uint64) bool { return lead == to })
	return err
}
