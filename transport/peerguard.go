package transport

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"

	"github.com/coreos/go-semver/semver"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
)

// rafthttp's routes (rafthttp.RaftPrefix and the paths under it), served by
// the Handler of the transport NewPeerTransport builds.
const (
	RaftPath         = "/raft"          // the pipeline: POST of one message
	RaftStreamPrefix = "/raft/stream/"  // long-lived message streams
	ProbingPath      = "/raft/probing"  // rafthttp's reachability probe
	SnapshotPath     = "/raft/snapshot" // a snapshot message and its data
)

// HeaderRaftClusterID is the cluster id rafthttp sends on every request
// and checks on every route but the probe.
const HeaderRaftClusterID = "X-Etcd-Cluster-ID"

// MaxSmallPeerMessageBytes bounds a peer message that carries neither
// entries nor a snapshot (votes, heartbeats and their answers, read index
// requests): a few hundred bytes in practice.
const MaxSmallPeerMessageBytes = 64 << 10

var (
	// ErrPeerToken reports a request to rafthttp's routes that does not
	// prove the cluster token (CheckPeerRequest).
	ErrPeerToken = errors.New("peer request without the cluster token")
	// ErrPeerHeader reports a header rafthttp would panic on.
	ErrPeerHeader = errors.New("bad peer header")
)

// HasRaftClusterID reports whether r carries the cluster id want in
// HeaderRaftClusterID, compared in constant time (with a token the id is
// derived from it, so it must not leak by timing).
func HasRaftClusterID(r *http.Request, want uint64) bool {
	return subtle.ConstantTimeCompare([]byte(r.Header.Get(HeaderRaftClusterID)), []byte(types.ID(want).String())) == 1
}

// CheckPeerRequest adds to a request for rafthttp's routes the checks
// rafthttp lacks. With tokenClusterID set (a cluster token is configured,
// and this is the id derived from it), the request must carry it: rafthttp
// sends it on every request but the probe. It drops X-PeerURLs, so members
// are only ever added from the replicated membership, never from a
// request's claim of its own URLs; and it refuses version headers rafthttp
// parses with semver.Must, which panics on a bad value.
func CheckPeerRequest(r *http.Request, tokenClusterID uint64) error {
	if tokenClusterID != 0 && r.URL.Path != ProbingPath && !HasRaftClusterID(r, tokenClusterID) {
		return ErrPeerToken
	}
	r.Header.Del("X-PeerURLs")
	for _, h := range []string{"X-Server-Version", "X-Min-Cluster-Version"} {
		if v := r.Header.Get(h); v != "" {
			if _, err := semver.NewVersion(v); err != nil {
				return fmt.Errorf("%w: %s: %v", ErrPeerHeader, h, err)
			}
		}
	}
	return nil
}

// BoundPipelineBody limits the body of a POST to RaftPath by the message's
// type, read from its first two bytes (raftpb.Message is encoded with its
// type first: field 1, a varint below 128), before rafthttp reads it into
// memory: appends and snapshots may take maxLarge bytes, anything else
// MaxSmallPeerMessageBytes. rafthttp then checks the headers and decodes the
// message as usual.
func BoundPipelineBody(w http.ResponseWriter, r *http.Request, maxLarge int64) {
	var hdr [2]byte
	got, _ := io.ReadFull(r.Body, hdr[:])
	limit := int64(MaxSmallPeerMessageBytes)
	if t := raftpb.MessageType(hdr[1]); got == 2 && hdr[0] == 0x08 && (t == raftpb.MsgApp || t == raftpb.MsgSnap) {
		limit = maxLarge
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(hdr[:got]), http.MaxBytesReader(w, r.Body, limit-int64(got))), r.Body}
}

// CheckSender checks what every raft message from a peer must satisfy,
// whatever its type: addressed to self, from a member of tr other than
// self, of a type peers send. It returns why not, or "". The checks of a
// message's content need the node's state and are the node's.
func CheckSender(m raftpb.Message, self uint64, tr *rafthttp.Transport) string {
	switch {
	case m.To != self:
		return "addressed to another member"
	case m.From == self || m.From == 0:
		return "bad sender"
	case raft.IsLocalMsg(m.Type) || m.Type == raftpb.MsgProp:
		// Local messages never cross the network, and raft's proposal
		// forwarding is disabled: writes reach the leader through the
		// forwarding stream (ForwardPath) or ProposePath.
		return "message type " + m.Type.String() + " is never sent by a peer"
	case m.Term == math.MaxUint64:
		return "term out of range"
	case m.Term == 0 && m.Type != raftpb.MsgReadIndex:
		return "term 0"
	case m.Type == raftpb.MsgReadIndex && len(m.Entries) != 1:
		return "read index without its context"
	}
	if tr == nil || tr.Get(types.ID(m.From)) == nil {
		return "sender is not a peer"
	}
	return ""
}
