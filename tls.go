package embedraft

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/embedraft/embedraft/transport"
)

// TLS and mutual TLS (Config.CertFile, KeyFile, CAFile).
//
// The library never owns a server: the application serves Handler on its
// own http.Server with TLSConfig set to ServerTLSConfig. Every call this
// node makes to a peer (rafthttp, the forwarding stream, propose, join,
// address and membership posts, status fetches, the cluster page's status
// client) presents the node's certificate and verifies the peer's with the
// CA bundle (the system roots without one).
//
// With CAFile, every peer route (rafthttp's /raft, /raft/stream/,
// /raft/probing, /raft/snapshot, and /raft/node/) and every admin route
// (addNode, deleteNode, transferLeader, backup, the cluster page) requires a
// client certificate that chains to the bundle: 401 without one, 403 with one
// that does not verify. The handshake itself accepts any client certificate,
// or none, so that the client routes (set, status, getPeerList, the
// application's own, health, metrics) stay open and a refusal is an HTTP
// answer rather than a TLS alert. A token, if set, is checked as well.
//
// The certificate, key and CA bundle are re-read when their files change
// (modification time or size, compared on every handshake): see the README
// for rotating leaf certificates and CAs.

// ErrForbidden is returned by peer and admin routes (HTTP 403) to a client
// certificate that does not chain to Config.CAFile.
var ErrForbidden = errors.New("embedraft: forbidden")

// ServerTLSConfig returns the tls.Config the application's http.Server must
// use to serve Handler over https (srv.TLSConfig = n.ServerTLSConfig(); then
// srv.ServeTLS(ln, "", "") or tls.NewListener), or nil without
// Config.CertFile. Each handshake serves the current certificate, re-read
// when its files change, and with Config.CAFile asks the client for its
// certificate (see requireClientCert). Only HTTP/1.1 is offered.
func (n *Node) ServerTLSConfig() *tls.Config {
	if n.certs == nil {
		return nil
	}
	return n.certs.ServerConfig()
}

// loadTLS reads the certificate files of cfg, if any.
func loadTLS(cfg Config) (*transport.TLS, error) {
	if cfg.CertFile == "" {
		return nil, nil
	}
	log := cfg.Logger
	t, err := transport.NewTLS(transport.TLSFiles{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.CAFile},
		func(err error) { log.Warn("tls: reload failed; still using the previous files' contents", "err", err) })
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return t, nil
}

// clientTLS is the tls.Config of every peer call: nil (Go's defaults: system
// roots, no client certificate) without Config.CertFile.
func (n *Node) clientTLS() *tls.Config {
	if n.certs == nil {
		return nil
	}
	return n.certs.ClientConfig()
}

// peerHTTPClient is a client for one-off peer calls (no keep-alives, so
// nothing outlives the call) whose every request ends within timeout.
func (n *Node) peerHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: timeout}).DialContext,
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: timeout,
			TLSClientConfig:       n.clientTLS(),
		},
	}
}

// requireClientCert guards peer and admin routes when Config.CAFile is set:
// the caller must have presented a certificate (401) that chains to the
// current CA bundle (403).
func (n *Node) requireClientCert(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := n.certs.CheckClientCert(r); err != nil {
			writeJSON(w, nil, peerCheckError(err))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// peerCheckError wraps an error of transport's checks of peer and admin
// requests in the sentinel its HTTP status follows from: no proof of the
// token or no client certificate is 401, a certificate the CA does not
// vouch for 403, anything else (a header rafthttp would panic on) 400.
func peerCheckError(err error) error {
	switch {
	case errors.Is(err, transport.ErrPeerToken), errors.Is(err, transport.ErrNoClientCert):
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	case errors.Is(err, transport.ErrClientCert):
		return fmt.Errorf("%w: %w", ErrForbidden, err)
	default:
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
}

// requireAuth is the guard of peer and admin routes: a verified client
// certificate (with a CA) and the token (when set).
func (n *Node) requireAuth(next http.Handler) http.Handler {
	return n.requireClientCert(n.requireToken(next))
}
