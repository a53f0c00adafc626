package transport

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	etcdtransport "go.etcd.io/etcd/client/pkg/v3/transport"
)

// TLSFiles names the PEM files of a node's TLS identity.
type TLSFiles struct {
	CertFile string // the node's certificate (chain), served and presented to peers
	KeyFile  string // its private key
	CAFile   string // CA bundle peers' and admins' certificates must chain to; empty: none required, system roots verify servers
}

// ErrClientCert is wrapped by TLS.VerifyClient when a client certificate
// does not chain to the CA bundle.
var ErrClientCert = errors.New("client certificate not signed by the cluster CA")

// TLS holds a node's certificate and CA pool and re-reads them when their
// files change: every handshake (served or dialed) first compares the
// files (identity, modification time and size) with those last loaded, as
// etcd reloads per handshake. Replace files by renaming a new file over
// them: a file rewritten in place within the file system's timestamp
// granularity without changing size would go unnoticed. A file that fails to load (a rotation half done:
// new certificate, old key) leaves the previous certificate or pool in use
// and is tried again when the files change again. Safe for concurrent use.
type TLS struct {
	files   TLSFiles
	onError func(error)

	mu        sync.Mutex
	cert      *tls.Certificate
	pool      *x509.CertPool
	gen       uint64 // bumped when the pool is reloaded
	certStamp [2]fileStamp
	caStamp   fileStamp
	// verified caches client certificates that verified against pool
	// generation gen, by the SHA-256 of the leaf, with when.
	verified map[[32]byte]verifiedAt
}

// fileStamp identifies a version of a file: a file replaced by rename is
// another file (os.SameFile), one rewritten in place has another
// modification time or size.
type fileStamp struct {
	fi os.FileInfo // nil when the file could not be read
}

func (a fileStamp) same(b fileStamp) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil
	}
	return os.SameFile(a.fi, b.fi) && a.fi.ModTime().Equal(b.fi.ModTime()) && a.fi.Size() == b.fi.Size()
}

type verifiedAt struct {
	gen uint64
	at  time.Time
}

// verifiedTTL bounds how long a verified client certificate is trusted
// without verifying it again (its expiry is checked then).
const verifiedTTL = time.Minute

// maxVerified bounds the cache of verified certificates.
const maxVerified = 1024

// NewTLS loads the files (each must load) and returns the reloading
// holder. onError, if set, is told of each failed reload.
func NewTLS(files TLSFiles, onError func(error)) (*TLS, error) {
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, errors.New("tls: a certificate and a key are required")
	}
	if onError == nil {
		onError = func(error) {}
	}
	t := &TLS{files: files, onError: onError, verified: map[[32]byte]verifiedAt{}}
	if err := t.loadCert(); err != nil {
		return nil, err
	}
	if files.CAFile != "" {
		if err := t.loadCA(); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func stamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi}
}

// loadCert reads the key pair; t.mu is held (or t is not shared yet).
// The stamps are taken before reading, so a write racing the read is
// seen as a change on the next handshake.
func (t *TLS) loadCert() error {
	st := [2]fileStamp{stamp(t.files.CertFile), stamp(t.files.KeyFile)}
	t.certStamp = st // a failed load is not retried until the files change
	cert, err := tls.LoadX509KeyPair(t.files.CertFile, t.files.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: load %s and %s: %w", t.files.CertFile, t.files.KeyFile, err)
	}
	t.cert = &cert
	return nil
}

// loadCA reads the CA bundle; t.mu is held (or t is not shared yet).
func (t *TLS) loadCA() error {
	t.caStamp = stamp(t.files.CAFile)
	b, err := os.ReadFile(t.files.CAFile)
	if err != nil {
		return fmt.Errorf("tls: read CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("tls: %s holds no PEM certificate", t.files.CAFile)
	}
	t.pool = pool
	t.gen++
	clear(t.verified)
	return nil
}

// current reloads what changed and returns the certificate and pool in
// use (pool is nil without a CA file).
func (t *TLS) current() (*tls.Certificate, *x509.CertPool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !stamp(t.files.CertFile).same(t.certStamp[0]) || !stamp(t.files.KeyFile).same(t.certStamp[1]) {
		if err := t.loadCert(); err != nil {
			t.onError(err)
		}
	}
	if t.files.CAFile != "" && !stamp(t.files.CAFile).same(t.caStamp) {
		if err := t.loadCA(); err != nil {
			t.onError(err)
		}
	}
	return t.cert, t.pool
}

// HasCA reports whether a CA file is configured: peers and admins must then
// present a certificate that chains to it.
func (t *TLS) HasCA() bool { return t.files.CAFile != "" }

// Certificate returns the certificate in use, reloaded if its files changed.
func (t *TLS) Certificate() *tls.Certificate {
	c, _ := t.current()
	return c
}

// ServerConfig returns the tls.Config to serve the node's handler with: the
// current certificate on every handshake and, with a CA, a request for the
// client's certificate. The handshake accepts any client certificate (or
// none) so that client routes stay open and peer and admin routes can answer
// 401 or 403 in HTTP (VerifyClient) rather than with a TLS alert. Only
// HTTP/1.1 is offered: peers use it, and rafthttp's streams need it.
func (t *TLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := t.current()
			c := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				NextProtos:   []string{"http/1.1"},
				Certificates: []tls.Certificate{*cert},
			}
			if pool != nil {
				// ClientCAs stays empty: a client (Go's among them) sends its
				// certificate only if it matches the CAs a request names, and
				// one from another CA must get 403, not pass as "no
				// certificate" (401).
				c.ClientAuth = tls.RequestClientCert
			}
			return c, nil
		},
	}
}

// ClientConfig returns the tls.Config for every call this node makes to a
// peer: it presents the current certificate and verifies the server's with
// the current CA pool (the system roots without a CA file).
func (t *TLS) ClientConfig() *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return t.Certificate(), nil
		},
	}
	if t.HasCA() {
		// The pool can change between handshakes, so verification is done
		// here instead of through RootCAs (crypto/tls's documented pattern
		// for custom verification).
		c.InsecureSkipVerify = true
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: server sent no certificate")
			}
			_, pool := t.current()
			opts := x509.VerifyOptions{
				Roots:         pool,
				DNSName:       cs.ServerName,
				Intermediates: x509.NewCertPool(),
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	}
	return c
}

// VerifyClient checks a client's certificate chain (tls.ConnectionState's
// PeerCertificates) against the current CA pool for client authentication.
// Successes are cached for a minute per certificate and CA generation.
func (t *TLS) VerifyClient(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return ErrNoClientCert
	}
	_, pool := t.current()
	if pool == nil {
		return fmt.Errorf("%w: no CA configured", ErrClientCert)
	}
	sum := sha256.Sum256(chain[0].Raw)
	now := time.Now()
	t.mu.Lock()
	v, ok := t.verified[sum]
	gen := t.gen
	t.mu.Unlock()
	if ok && v.gen == gen && now.Sub(v.at) < verifiedTTL {
		return nil
	}
	opts := x509.VerifyOptions{
		Roots:         pool,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CurrentTime:   now,
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return fmt.Errorf("%w: %v", ErrClientCert, err)
	}
	t.mu.Lock()
	if len(t.verified) >= maxVerified {
		clear(t.verified)
	}
	if t.gen == gen {
		t.verified[sum] = verifiedAt{gen, now}
	}
	t.mu.Unlock()
	return nil
}

// EtcdTLSInfo is the TLSInfo for rafthttp's transport. rafthttp reads the
// certificate and key files on every handshake it dials, but loads the CA
// bundle once, when the transport starts (etcd's behaviour): see the
// README on rotating a CA.
func (t *TLS) EtcdTLSInfo() etcdtransport.TLSInfo {
	return etcdtransport.TLSInfo{
		CertFile:      t.files.CertFile,
		KeyFile:       t.files.KeyFile,
		TrustedCAFile: t.files.CAFile,
	}
}
