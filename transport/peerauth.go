package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// The cluster token travels as "Authorization: Bearer <token>" on the
// node-to-node routes and the admin routes; rafthttp's routes prove it
// through the cluster id instead (CheckPeerRequest).

// PeerClusterID is the cluster id rafthttp sends and checks on every peer
// request. Without a token it is clusterID. With one it is derived from
// both (HMAC-SHA256), so only nodes holding the token can talk raft to
// this one: rafthttp cannot carry a header of ours, but it always carries
// this id, and a request with another id is refused before it is read.
func PeerClusterID(clusterID uint64, token string) uint64 {
	if token == "" {
		return clusterID
	}
	mac := hmac.New(sha256.New, []byte(token))
	_ = binary.Write(mac, binary.BigEndian, clusterID) // a hash.Hash never fails to write
	id := binary.BigEndian.Uint64(mac.Sum(nil)[:8])
	if id == 0 {
		id = 1
	}
	return id
}

// FromCluster reports whether r carries clusterID in HeaderClusterID, as
// every node-to-node request of a member does; got is what it carries.
func FromCluster(r *http.Request, clusterID uint64) (got string, ok bool) {
	got = r.Header.Get(HeaderClusterID)
	return got, got == strconv.FormatUint(clusterID, 16)
}

// ErrNoClientCert reports a request without a client certificate to a
// route that requires one.
var ErrNoClientCert = errors.New("this route requires a client certificate")

// SetToken puts the cluster token on a request, if there is one.
func SetToken(req *http.Request, token string) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
}

// HasToken reports whether r carries token (compared in constant time);
// always true when token is empty.
func HasToken(r *http.Request, token string) bool {
	if token == "" {
		return true
	}
	got, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return bearer && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// CheckClientCert requires of r, when t has a CA bundle, a client
// certificate (ErrNoClientCert) that chains to it (ErrClientCert). Without
// a CA, or with a nil t (no TLS), every request passes.
func (t *TLS) CheckClientCert(r *http.Request) error {
	if t == nil || !t.HasCA() {
		return nil
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ErrNoClientCert
	}
	return t.VerifyClient(r.TLS.PeerCertificates)
}
