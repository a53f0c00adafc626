package transport

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/embedraft/embedraft/internal/certgen"
)

func mustCA(t *testing.T, name string) *certgen.CA {
	t.Helper()
	ca, err := certgen.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustLeaf(t *testing.T, ca *certgen.CA) *certgen.Leaf {
	t.Helper()
	l, err := ca.Leaf("node", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func serialOf(t *testing.T, tl *TLS) string {
	t.Helper()
	c, err := tl.ClientConfig().GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	oldCA, newCA := mustCA(t, "old"), mustCA(t, "new")
	caFile := filepath.Join(dir, "ca.pem")
	if err := certgen.WriteFile(caFile, oldCA.CertPEM); err != nil {
		t.Fatal(err)
	}
	first := mustLeaf(t, oldCA)
	certFile, keyFile, err := first.Write(dir, "node")
	if err != nil {
		t.Fatal(err)
	}
	var reloadErrs []error
	tl, err := NewTLS(TLSFiles{certFile, keyFile, caFile}, func(err error) { reloadErrs = append(reloadErrs, err) })
	if err != nil {
		t.Fatal(err)
	}

	t.Run("LeafRotation", func(t *testing.T) {
		next := mustLeaf(t, oldCA)
		if _, _, err := next.Write(dir, "node"); err != nil {
			t.Fatal(err)
		}
		if got := serialOf(t, tl); got != next.Cert.SerialNumber.String() {
			t.Fatalf("client certificate serial %s after rotation, want %s", got, next.Cert.SerialNumber)
		}
	})

	t.Run("HalfDoneRotationKeepsPrevious", func(t *testing.T) {
		before := serialOf(t, tl)
		// A new certificate without its key: the pair does not load.
		if err := certgen.WriteFile(certFile, mustLeaf(t, oldCA).CertPEM); err != nil {
			t.Fatal(err)
		}
		if got := serialOf(t, tl); got != before {
			t.Fatalf("serial %s after a half-done rotation, want the previous %s", got, before)
		}
		if len(reloadErrs) == 0 {
			t.Fatal("a failed reload was not reported")
		}
		// Finishing it: a complete pair loads.
		next := mustLeaf(t, oldCA)
		if _, _, err := next.Write(dir, "node"); err != nil {
			t.Fatal(err)
		}
		if got := serialOf(t, tl); got != next.Cert.SerialNumber.String() {
			t.Fatalf("serial %s after completing the rotation, want %s", got, next.Cert.SerialNumber)
		}
	})

	t.Run("CARotation", func(t *testing.T) {
		oldLeaf, newLeaf := mustLeaf(t, oldCA), mustLeaf(t, newCA)
		if err := tl.VerifyClient([]*x509.Certificate{oldLeaf.Cert}); err != nil {
			t.Fatalf("old CA's leaf: %v", err)
		}
		if err := tl.VerifyClient([]*x509.Certificate{newLeaf.Cert}); !errors.Is(err, ErrClientCert) {
			t.Fatalf("new CA's leaf before the new CA is trusted: %v", err)
		}
		// Step 1: both CAs in the bundle.
		both := append(append([]byte{}, oldCA.CertPEM...), newCA.CertPEM...)
		if err := certgen.WriteFile(caFile, both); err != nil {
			t.Fatal(err)
		}
		for _, l := range []*certgen.Leaf{oldLeaf, newLeaf} {
			if err := tl.VerifyClient([]*x509.Certificate{l.Cert}); err != nil {
				t.Fatalf("with both CAs: %v", err)
			}
		}
		// Step 3: the old CA removed (the cached success is dropped too).
		if err := certgen.WriteFile(caFile, newCA.CertPEM); err != nil {
			t.Fatal(err)
		}
		if err := tl.VerifyClient([]*x509.Certificate{oldLeaf.Cert}); !errors.Is(err, ErrClientCert) {
			t.Fatalf("old CA's leaf after the old CA was removed: %v", err)
		}
		if err := tl.VerifyClient([]*x509.Certificate{newLeaf.Cert}); err != nil {
			t.Fatalf("new CA's leaf: %v", err)
		}
	})

	t.Run("ErrBadFiles", func(t *testing.T) {
		if _, err := NewTLS(TLSFiles{CertFile: filepath.Join(dir, "none"), KeyFile: keyFile}, nil); err == nil {
			t.Fatal("NewTLS with a missing certificate succeeded")
		}
		empty := filepath.Join(dir, "empty.pem")
		if err := os.WriteFile(empty, []byte("no pem"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewTLS(TLSFiles{certFile, keyFile, empty}, nil); err == nil {
			t.Fatal("NewTLS with a CA bundle without certificates succeeded")
		}
	})
}
