// Package transport holds embedraft's node-to-node HTTP plumbing: the
// rafthttp peer transport and the client that forwards client writes from a
// follower to the leader.
package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Header names used between embedraft nodes.
const (
	// HeaderIndex carries the log index of a write the leader applied, so a
	// forwarding follower can wait until it has applied it too.
	HeaderIndex = "X-Embedraft-Index"
	// HeaderClusterID carries the sender's cluster id (hex); a node rejects
	// peer requests from another cluster.
	HeaderClusterID = "X-Embedraft-Cluster-Id"
	// HeaderFrom carries the sender's member id.
	HeaderFrom = "X-Embedraft-From"
)

// Node-to-node routes.
const (
	// ProposePath is the leader route a follower forwards client writes to.
	ProposePath = "/raft/node/propose"
	// JoinPath is where a new node asks for membership.
	JoinPath = "/raft/node/join"
	// AddressPath is where a member that restarted with a new advertised
	// URL asks the leader to record it.
	AddressPath = "/raft/node/address"
	// MembershipPath serves the replicated membership to peers (a member
	// starting with an empty data directory asks whether it already ran).
	MembershipPath = "/raft/node/membership"
)

// Admin routes that nodes call on each other too.
const (
	// AddNodePath and DeleteNodePath add and remove a member; a node that
	// is not the leader sends them on to it.
	AddNodePath    = "/raft/api/addNode"
	DeleteNodePath = "/raft/api/deleteNode"
	// StatusPath is a node's status: a joining node reads its target's,
	// the cluster page every member's.
	StatusPath = "/raft/api/status"
)

// maxResponseBytes bounds a leader's answer read by the forwarder.
const maxResponseBytes = 16 << 20

// ErrNotSent reports that a forwarded request never reached the leader (the
// connection could not be made), so it certainly was not proposed.
var ErrNotSent = errors.New("request not sent")

// Forwarder sends client writes to the leader over pooled keep-alive
// connections. It is safe for concurrent use.
type Forwarder struct {
	client *http.Client
	// streamClient carries the long-lived forwarding streams: no overall
	// timeout, and connections of its own.
	streamClient *http.Client
	streams      streams
	token        string
	from         uint64
	probeView    ProbeView
}

// ProbeView gives a follower's answer to a leader's probe: its raft term
// and the leader it follows; ok false: no answer.
type ProbeView func() (term, lead uint64, ok bool)

// AnswerProbes makes the streams this forwarder opens from now on answer
// the leader's probes with view. Call it before the forwarder is used.
func (f *Forwarder) AnswerProbes(view ProbeView) {
	f.probeView = view
}

// NewForwarder returns a forwarder whose requests each take at most timeout.
// tlsConfig (nil: Go's defaults) is used for https peers: TLS.ClientConfig
// presents the node's certificate.
func NewForwarder(from uint64, token string, timeout time.Duration, tlsConfig *tls.Config) *Forwarder {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: timeout,
		ForceAttemptHTTP2:     false,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   5 * time.Second,
	}
	str := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ResponseHeaderTimeout: 5 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   5 * time.Second,
	}
	return &Forwarder{
		client:       &http.Client{Transport: tr, Timeout: timeout},
		streamClient: &http.Client{Transport: str},
		token:        token,
		from:         from,
	}
}

// Response is the leader's answer, passed to the client unchanged.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	// Index is the log index of the applied write (0 when the leader did
	// not report one, as on errors).
	Index uint64
}

// Propose posts body to leaderURL's propose route. An error means no answer
// was received; it wraps ErrNotSent when the leader was never reached.
func (f *Forwarder) Propose(ctx context.Context, leaderURL string, clusterID uint64, body []byte) (*Response, error) {
	return f.Post(ctx, leaderURL+ProposePath, clusterID, body)
}

// Post sends body to url as this node (its id, cluster id and token), for
// the node-to-node routes. A zero clusterID is not sent (a node that has not
// joined yet has none).
func (f *Forwarder) Post(ctx context.Context, url string, clusterID uint64, body []byte) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotSent, err)
	}
	f.identify(req, clusterID, "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("%w: %v", ErrNotSent, err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("read leader answer: %w", err)
	}
	out := &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	if s := resp.Header.Get(HeaderIndex); s != "" {
		if out.Index, err = strconv.ParseUint(s, 10, 64); err != nil {
			return nil, fmt.Errorf("leader answered a bad %s %q", HeaderIndex, s)
		}
	}
	return out, nil
}

// Close ends the forwarding streams and releases idle connections.
func (f *Forwarder) Close() {
	f.closeStreams()
	f.client.CloseIdleConnections()
	f.streamClient.CloseIdleConnections()
}

// identify sets the headers every node-to-node request carries: this
// node's id, its cluster id (when it has one) and the cluster token.
func (f *Forwarder) identify(req *http.Request, clusterID uint64, contentType string) {
	req.Header.Set("Content-Type", contentType)
	if clusterID != 0 {
		req.Header.Set(HeaderClusterID, strconv.FormatUint(clusterID, 16))
	}
	req.Header.Set(HeaderFrom, strconv.FormatUint(f.from, 10))
	SetToken(req, f.token)
}
