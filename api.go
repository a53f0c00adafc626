package embedraft

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
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

// envelopeOf is the JSON answer writeJSON would write, and its status.
func envelopeOf(data interface{}, err error) (int, []byte) {
	env := envelope{Code: codeOK, Msg: "ok", Data: data}
	if err != nil {
		env = envelope{Code: codeOf(err), Msg: "error", Error: err.Error()}
	}
	b, merr := json.Marshal(env)
	if merr != nil {
		env = envelope{Code: "internal", Msg: "error", Error: "encode answer: " + merr.Error()}
		b, _ = json.Marshal(env) // strings always encode
		return http.StatusInternalServerError, append(b, '\n')
	}
	return StatusOf(err), append(b, '\n')
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
	r.Use(n.refuseWhenClosed)
	r.Route("/raft/api", func(r chi.Router) {
		r.Post("/set", n.handleSet)
		r.Get("/status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, n.Status(), nil) })
		r.Get("/getPeerList", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, n.Peers(), nil) })
		r.With(n.requireAuth).Post("/transferLeader", n.handleTransferLeader)
		r.With(n.requireAuth).Post("/addNode", n.handleAddNode)
		r.With(n.requireAuth).Post("/deleteNode", n.handleDeleteNode)
		r.With(n.requireAuth).Get("/backup", n.handleBackup) // backup.go
	})
	r.With(n.requireAuth, n.requireCluster).Post(transport.ProposePath, n.handlePropose)
	r.With(closeAfterReply, n.requireAuth, n.requireCluster).Post(transport.ForwardPath, n.handleForwardStream)
	r.With(n.requireAuth).Post(transport.JoinPath, n.handleAddNode)
	r.With(n.requireAuth, n.requireCluster).Post(transport.AddressPath, n.handleAddress)
	r.With(n.requireAuth).Get(transport.MembershipPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, n.Membership(), nil)
	})
	n.mountUI(r) // GET /raft/ui and /raft/ui/cluster (admin): ui.go
	// rafthttp's routes: the client certificate here, the token in servePeer.
	peer := n.requireClientCert(http.HandlerFunc(n.servePeer))
	r.Handle(transport.RaftPath, peer)
	r.Handle(transport.RaftStreamPrefix+"*", peer)
	r.Handle(transport.ProbingPath, peer)
	r.Handle(transport.SnapshotPath, peer)
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, "ok", n.stopped()) })
	r.Get("/readyz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, n.Status(), n.ready(r.URL.Query().Has("noleader")))
	})
	r.Handle("/metrics", n.metricsHandler())
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
	key := r.Header.Get(HeaderIdempotencyKey)
	if key != "" {
		if err := CheckIdempotencyKey(key); err != nil {
			writeJSON(w, nil, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	defer cancel()
	res, err := n.write(ctx, key, body)
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
	var key string
	if err == nil {
		key, body, err = unwrapForward(body) // idempotency.go
	}
	if err == nil {
		err = n.checkBody(body)
	}
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.ForwardTimeout)
	defer cancel()
	res, err := n.proposeLocal(ctx, key, body)
	if err == nil {
		w.Header().Set(transport.HeaderIndex, strconv.FormatUint(res.index, 10))
	}
	writeJSON(w, res.object, err)
}

// closeAfterReply makes the server close the connection after answering:
// a forwarding stream's body never ends, and net/http otherwise reads the
// rest of an unread body before it writes a refusal.
func closeAfterReply(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		next.ServeHTTP(w, r)
	})
}

// handleForwardStream is POST /raft/node/forward: a follower's forwarding
// stream (transport.ServeForward). Each write on it is handled as on
// /raft/node/propose; the stream is refused unless this node leads.
func (n *Node) handleForwardStream(w http.ResponseWriter, r *http.Request) {
	if raft.StateType(n.raftState.Load()) != raft.StateLeader {
		writeJSON(w, nil, ErrNotLeader)
		return
	}
	// A keyed write comes with its key in front of the body (wrapForward).
	from, _ := strconv.ParseUint(r.Header.Get(transport.HeaderFrom), 10, 64)
	transport.ServeForward(w, r, n.stopc, n.cfg.MaxRequestBytes+maxForwardPrefix, transport.StreamHandlers{
		Write: func(ctx context.Context, body []byte) transport.StreamAnswer {
			ctx, cancel := context.WithTimeout(ctx, n.cfg.ForwardTimeout)
			defer cancel()
			var res writeResult
			key, body, err := unwrapForward(body)
			if err == nil {
				err = n.checkBody(body)
			}
			if err == nil {
				res, err = n.proposeLocal(ctx, key, body)
			}
			status, b := envelopeOf(res.object, err)
			return transport.StreamAnswer{Status: status, Index: res.index, Body: b}
		},
		Busy: func() transport.StreamAnswer {
			status, b := envelopeOf(nil, fmt.Errorf("%w: leader's forwarding queue is full", ErrBusy))
			return transport.StreamAnswer{Status: status, Body: b}
		},
		Probes: func(probe func(seq uint64) bool) func() {
			return n.probes.attach(from, probe)
		},
		ProbeAck: func(seq, term, lead uint64) {
			n.probeAck(from, seq, term, lead)
		},
		ReadIndex: func(term uint64) transport.StreamAnswer {
			index, err := n.readIndexFor(from, term)
			if err != nil {
				return transport.StreamAnswer{Status: http.StatusConflict, Body: []byte(err.Error())}
			}
			return transport.StreamAnswer{Status: http.StatusOK, Index: index}
		},
	})
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

// refuseWhenClosed answers every route but the read-only ones with
// ErrStopped once Close was called: closed means closed.
func (n *Node) refuseWhenClosed(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.closed.Load() && !strings.HasPrefix(r.URL.Path, transport.RaftStreamPrefix) {
			switch r.URL.Path {
			case transport.StatusPath, "/raft/api/getPeerList", "/metrics", "/healthz", "/readyz",
				// rafthttp's routes serve raft until the transport stops (a
				// closing leader hands leadership over first).
				transport.RaftPath, transport.ProbingPath:
			default:
				writeJSON(w, nil, fmt.Errorf("%w: node closed", ErrStopped))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// servePeer hands rafthttp's routes to the peer transport, with limits
// rafthttp lacks: the token checked before anything is read, and a body
// bounded by the largest message of its type that a member sends.
func (n *Node) servePeer(w http.ResponseWriter, r *http.Request) {
	tr := n.peerTr.Load()
	if tr == nil || n.Mode() != ModeCluster {
		writeJSON(w, nil, fmt.Errorf("%w: peer transport not running", ErrNotCluster))
		return
	}
	// With a token, peers prove they hold it through the cluster id rafthttp
	// sends on every request: see peerClusterID.
	var tokenID uint64
	if n.cfg.Token != "" {
		tokenID = n.peerClusterID()
	}
	if err := transport.CheckPeerRequest(r, tokenID); err != nil {
		writeJSON(w, nil, peerCheckError(err))
		return
	}
	switch {
	case r.URL.Path == transport.SnapshotPath:
		// rafthttp's own handler writes the body to a file before it looks
		// at the message: snapshots are received by receiveSnapshot.
		n.receiveSnapshot(w, r)
		return
	case r.URL.Path == transport.RaftPath && r.Method == http.MethodPost:
		transport.BoundPipelineBody(w, r, n.cfg.MaxSnapshotBytes)
	}
	tr.Handler().ServeHTTP(w, r)
}

// requireToken checks the cluster token ("Authorization: Bearer <token>")
// on the library's own peer and admin routes.
func (n *Node) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !transport.HasToken(r, n.cfg.Token) {
			writeJSON(w, nil, fmt.Errorf("%w: missing or wrong cluster token", ErrUnauthorized))
			return
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
		if got, ok := transport.FromCluster(r, n.clusterID.Load()); !ok {
			writeJSON(w, nil, fmt.Errorf("%w: cluster id %q, this node is in cluster %x", ErrWrongCluster, got, n.clusterID.Load()))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ready reports whether the node can serve writes: standalone, or in a
// cluster with a known leader and applied up to the commit it knows of.
// With noleader (GET /readyz?noleader) a leader is not required: an
// orchestrator that starts members one by one, or all at once, can mark
// each ready once it has caught up with what it knows.
func (n *Node) ready(noleader bool) error {
	if err := n.stopped(); err != nil {
		return err
	}
	s := n.Status()
	switch {
	case s.Mode == ModeRemoved:
		return ErrRemoved
	case s.Mode == ModeStandalone:
		return nil
	case s.Leader == 0 && !noleader:
		return ErrNoLeader
	case s.Applied < s.Commit:
		return fmt.Errorf("%w: applied %d of %d committed", ErrNoLeader, s.Applied, s.Commit)
	}
	return nil
}

// TransferLeader asks the leader to hand leadership to member to and waits
// until it has (or ctx ends).
func (n *Node) TransferLeader(ctx context.Context, to uint64) error {
	if err := n.stopped(); err != nil {
		return err
	}
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
