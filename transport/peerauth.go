package transport

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// The cluster token travels as "Authorization: Bearer <token>" on the
// node-to-node routes and the admin routes; rafthttp's routes prove it
// through the cluster id instead (CheckPeerRequest).

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
