// Package certgen makes throwaway certificate authorities and leaf
// certificates for tests and the benchmark: ECDSA P-256 keys, leaves valid
// for both server and client authentication with IP and DNS SANs.
package certgen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// Leaf is a certificate signed by a CA, with its key.
type Leaf struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA returns a new self-signed CA named name.
func NewCA(name string) (*CA, error) {
	cert, der, key, err := issue(name, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		t.BasicConstraintsValid, t.IsCA = true, true
	}, nil, nil)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}, nil
}

// issue makes a key and a certificate named name, valid from an hour ago
// for a day, shaped by fill, signed by parent (self-signed when nil).
func issue(name string, fill func(*x509.Certificate), parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (
	*x509.Certificate, []byte, *ecdsa.PrivateKey, error) {
	sn, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	fill(tmpl)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, der, key, nil
}

// Leaf issues a certificate for server and client authentication whose
// SANs are hosts (IP addresses or DNS names).
func (ca *CA) Leaf(name string, hosts ...string) (*Leaf, error) {
	cert, der, key, err := issue(name, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				t.IPAddresses = append(t.IPAddresses, ip)
			} else {
				t.DNSNames = append(t.DNSNames, h)
			}
		}
	}, ca.Cert, ca.key)
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Leaf{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}, nil
}

// Write stores the leaf as dir/name.crt and dir/name.key, each replaced
// atomically (written aside, then renamed), and returns the two paths.
func (l *Leaf) Write(dir, name string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := WriteFile(keyFile, l.KeyPEM); err != nil {
		return "", "", err
	}
	if err := WriteFile(certFile, l.CertPEM); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// WriteFile replaces path with b atomically.
func WriteFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return os.Rename(tmp, path)
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n, nil
}
