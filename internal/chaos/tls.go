package chaos

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/embedraft/embedraft/internal/certgen"
)

// clusterTLS is a cluster's throwaway CA: one certificate per node slot
// (server and client authentication for 127.0.0.1), and the harness's
// admin certificate.
type clusterTLS struct {
	pool     *x509.CertPool
	nodeArgs [][]string   // per slot: -cert, -key, -ca
	admin    *http.Client // trusts the CA, presents the admin certificate
}

func newClusterTLS(dir string, slots int) (*clusterTLS, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	ca, err := certgen.NewCA("embedraft chaos CA")
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := certgen.WriteFile(caFile, ca.CertPEM); err != nil {
		return nil, err
	}
	ct := &clusterTLS{pool: x509.NewCertPool()}
	ct.pool.AddCert(ca.Cert)
	for i := 1; i <= slots; i++ {
		name := fmt.Sprintf("node%d", i)
		leaf, err := ca.Leaf(name, "127.0.0.1", "localhost")
		if err != nil {
			return nil, fmt.Errorf("leaf %s: %w", name, err)
		}
		certFile, keyFile, err := leaf.Write(dir, name)
		if err != nil {
			return nil, err
		}
		ct.nodeArgs = append(ct.nodeArgs, []string{"-cert", certFile, "-key", keyFile, "-ca", caFile})
	}
	admin, err := ca.Leaf("chaos admin", "127.0.0.1")
	if err != nil {
		return nil, fmt.Errorf("admin leaf: %w", err)
	}
	pair, err := tls.X509KeyPair(admin.CertPEM, admin.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("admin key pair: %w", err)
	}
	ct.admin = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ct.pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
	}}
	return ct, nil
}

// ClientTLS is the TLS configuration of a client of the cluster's client
// routes (set, /kv): it trusts the cluster's CA and presents no
// certificate. Nil for a cluster without TLS.
func (c *Cluster) ClientTLS() *tls.Config {
	if c.tls == nil {
		return nil
	}
	return &tls.Config{RootCAs: c.tls.pool, MinVersion: tls.VersionTLS12}
}
