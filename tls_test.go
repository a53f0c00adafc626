package embedraft_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/certgen"
	"github.com/embedraft/embedraft/internal/testcluster"
)

// testPKI is a cluster CA and a foreign one, with their bundles on disk.
type testPKI struct {
	t         *testing.T
	ca        *certgen.CA
	foreign   *certgen.CA
	caFile    string // the cluster CA
	bothFile  string // cluster CA + foreign CA
	pool      *x509.CertPool
	mu        sync.Mutex
	files     map[uint64][2]string // member id -> cert, key files
	lastLeafs map[uint64]*certgen.Leaf
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := certgen.NewCA("embedraft test CA")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := certgen.NewCA("foreign CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := &testPKI{t: t, ca: ca, foreign: foreign, pool: x509.NewCertPool(),
		caFile: filepath.Join(dir, "ca.pem"), bothFile: filepath.Join(dir, "both.pem"),
		files: map[uint64][2]string{}, lastLeafs: map[uint64]*certgen.Leaf{}}
	p.pool.AddCert(ca.Cert)
	if err := os.WriteFile(p.caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.bothFile, append(append([]byte{}, ca.CertPEM...), foreign.CertPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPKI) leaf(ca *certgen.CA) *certgen.Leaf {
	p.t.Helper()
	l, err := ca.Leaf("member", "127.0.0.1")
	if err != nil {
		p.t.Fatal(err)
	}
	return l
}

// member is the option of a cluster member: its own leaf from the cluster
// CA in its own directory, and the cluster CA.
func (p *testPKI) member() testcluster.Option {
	return func(cfg *embedraft.Config) {
		l := p.leaf(p.ca)
		cert, key, err := l.Write(p.t.TempDir(), "node")
		if err != nil {
			p.t.Fatal(err)
		}
		cfg.CertFile, cfg.KeyFile, cfg.CAFile = cert, key, p.caFile
		if cfg.ID != 0 {
			p.mu.Lock()
			p.files[cfg.ID] = [2]string{cert, key}
			p.lastLeafs[cfg.ID] = l
			p.mu.Unlock()
		}
	}
}

// intruder is the option of a node whose certificate comes from the foreign
// CA; it trusts both CAs, so that it reaches the cluster's routes.
func (p *testPKI) intruder() testcluster.Option {
	return func(cfg *embedraft.Config) {
		cert, key, err := p.leaf(p.foreign).Write(p.t.TempDir(), "node")
		if err != nil {
			p.t.Fatal(err)
		}
		cfg.CertFile, cfg.KeyFile, cfg.CAFile = cert, key, p.bothFile
		cfg.JoinTimeout = 5 * time.Second
	}
}

// client trusts the cluster CA and presents a leaf of ca (none when nil).
func (p *testPKI) client(ca *certgen.CA) *http.Client {
	cfg := &tls.Config{RootCAs: p.pool}
	if ca != nil {
		l := p.leaf(ca)
		cert, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
		if err != nil {
			p.t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	p.t.Cleanup(c.CloseIdleConnections)
	return c
}

func do(t *testing.T, c *http.Client, method, url, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	_ = readAll(resp)
	return resp.StatusCode
}

// servedSerial is the serial of the certificate a fresh handshake with
// addr gets.
func servedSerial(pool *x509.CertPool, addr string) (string, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// peerAndAdmin are requests on the peer and admin routes (bodies that would
// be accepted or refused for their content once authorized).
var peerAndAdmin = []struct{ method, path, body string }{
	{"POST", "/raft/node/join", `{"addr":"https://127.0.0.1:1"}`},
	{"POST", "/raft/node/propose", `{}`},
	{"GET", "/raft/node/membership", ""},
	{"POST", "/raft/node/address", `{}`},
	{"GET", "/raft/probing", ""},
	{"GET", "/raft/stream/message/1", ""},
	{"POST", "/raft", ""},
	{"POST", "/raft/snapshot", ""},
	{"POST", "/raft/api/addNode", `{"addr":"https://127.0.0.1:1"}`},
	{"POST", "/raft/api/deleteNode", `{"id":99}`},
	{"POST", "/raft/api/transferLeader", `{"to":99}`},
	{"GET", "/raft/api/backup", ""},
	{"GET", "/raft/ui", ""},
	{"GET", "/raft/ui/cluster", ""},
}

func TestMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	c := testcluster.NewStatic(t, 3, pki.member())
	leader := c.WaitLeader(10 * time.Second)
	follower := c.Followers()[0]
	if !strings.HasPrefix(leader.URL, "https://") {
		t.Fatalf("member URL %s is not https", leader.URL)
	}

	t.Run("WriteThroughFollower", func(t *testing.T) {
		// The cluster's client presents no certificate: set is a client route.
		for i := range 20 {
			c.MustSet(follower, fmt.Sprintf("k%d", i), "v")
		}
		if got := c.WaitConverged(10 * time.Second); got["k19"] != "v" {
			t.Fatalf("k19 = %q after converging", got["k19"])
		}
	})

	t.Run("ClientRoutesWithoutCert", func(t *testing.T) {
		anon := pki.client(nil)
		for _, path := range []string{"/raft/api/status", "/raft/api/getPeerList", "/kv/k1", "/kv", "/healthz", "/readyz", "/metrics"} {
			if code := do(t, anon, "GET", follower.URL+path, ""); code != http.StatusOK {
				t.Errorf("GET %s without a client certificate: %d, want 200", path, code)
			}
		}
	})

	t.Run("ErrNoCert", func(t *testing.T) {
		anon := pki.client(nil)
		for _, r := range peerAndAdmin {
			if code := do(t, anon, r.method, leader.URL+r.path, r.body); code != http.StatusUnauthorized {
				t.Errorf("%s %s without a client certificate: %d, want 401", r.method, r.path, code)
			}
		}
	})

	t.Run("ErrForeignCert", func(t *testing.T) {
		foreign := pki.client(pki.foreign)
		for _, r := range peerAndAdmin {
			if code := do(t, foreign, r.method, leader.URL+r.path, r.body); code != http.StatusForbidden {
				t.Errorf("%s %s with a foreign client certificate: %d, want 403", r.method, r.path, code)
			}
		}
	})

	t.Run("AdminWithCert", func(t *testing.T) {
		admin := pki.client(pki.ca)
		resp, err := admin.Get(follower.URL + "/raft/ui/cluster")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var env struct {
			Data embedraft.ClusterView `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&env); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /raft/ui/cluster with a client certificate: %d, %v", resp.StatusCode, err)
		}
		// The page's status client dials the other members over mTLS.
		for _, m := range env.Data.Members {
			if !m.Reachable {
				t.Errorf("cluster view: member %d unreachable over TLS", m.ID)
			}
		}
		if code := do(t, admin, "GET", leader.URL+"/raft/node/membership", ""); code != http.StatusOK {
			t.Errorf("GET /raft/node/membership with a client certificate: %d", code)
		}
	})

	t.Run("ErrForeignPeerJoin", func(t *testing.T) {
		_, err := c.TryJoin(leader.URL, pki.intruder())
		if !errors.Is(err, embedraft.ErrForbidden) {
			t.Fatalf("join with a certificate from another CA: %v, want ErrForbidden", err)
		}
		if n := len(leader.Node.Membership().Members); n != 3 {
			t.Fatalf("membership has %d members after a refused join", n)
		}
	})

	t.Run("JoinWithCert", func(t *testing.T) {
		// Joins through a follower (forwarded to the leader), then restarts:
		// the identity check asks the join target's status over TLS.
		m := c.Join(follower, pki.member())
		testcluster.Eventually(t, 10*time.Second, func() error {
			if r := leader.Node.Membership().Members[strconv.FormatUint(m.ID, 10)].Role; r != embedraft.RoleVoter {
				return fmt.Errorf("member %d is %s", m.ID, r)
			}
			return nil
		})
		c.MustSet(m, "joined", "v")
		m.Stop()
		m.Restart()
		c.MustSet(m, "restarted", "v")
		c.WaitConverged(10 * time.Second)
		if err := leader.Node.RemoveMember(t.Context(), m.ID); err != nil {
			t.Fatalf("remove member %d: %v", m.ID, err)
		}
		m.Stop()
	})

	t.Run("Rotation", func(t *testing.T) {
		m := follower
		pki.mu.Lock()
		files, old := pki.files[m.ID], pki.lastLeafs[m.ID]
		pki.mu.Unlock()
		addr := strings.TrimPrefix(m.URL, "https://")
		if s, err := servedSerial(pki.pool, addr); err != nil || s != old.Cert.SerialNumber.String() {
			t.Fatalf("before rotation: serial %s, %v; want %s", s, err, old.Cert.SerialNumber)
		}
		// A writer keeps going through the rotated member and another one.
		stop := make(chan struct{})
		var writes, failed atomic.Int64
		var wg sync.WaitGroup
		wg.Add(1)
		defer func() {
			select {
			case <-stop:
			default:
				close(stop) // a failed check stops the writer too
			}
			wg.Wait()
		}()
		go func() { // ends when stop is closed
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				running := c.Running()
				target := running[i%len(running)]
				code, body, err := c.Set(target, fmt.Sprintf("r%d", i), "v")
				writes.Add(1)
				if err != nil || code != http.StatusOK {
					failed.Add(1)
					t.Errorf("write during rotation via member %d: %d %v %s", target.ID, code, err, body)
				}
			}
		}()
		next := pki.leaf(pki.ca)
		if err := certgen.WriteFile(files[1], next.KeyPEM); err != nil {
			t.Fatal(err)
		}
		if err := certgen.WriteFile(files[0], next.CertPEM); err != nil {
			t.Fatal(err)
		}
		testcluster.Eventually(t, 5*time.Second, func() error {
			s, err := servedSerial(pki.pool, addr)
			if err != nil {
				return err
			}
			if s != next.Cert.SerialNumber.String() {
				return fmt.Errorf("member %d serves serial %s, want the rotated %s", m.ID, s, next.Cert.SerialNumber)
			}
			return nil
		})
		// Peers' new connections to the rotated member verify its new
		// certificate: the admin page dials every member afresh.
		admin := pki.client(pki.ca)
		for _, other := range c.Running() {
			if code := do(t, admin, "GET", other.URL+"/raft/ui/cluster", ""); code != http.StatusOK {
				t.Errorf("cluster view on member %d after rotation: %d", other.ID, code)
			}
		}
		testcluster.Eventually(t, 10*time.Second, func() error {
			if writes.Load() < 50 {
				return fmt.Errorf("%d writes so far", writes.Load())
			}
			return nil
		})
		close(stop)
		wg.Wait()
		t.Logf("rotation: %d writes, %d failed", writes.Load(), failed.Load())
		c.MustSet(m, "after-rotation", "v")
		c.WaitConverged(10 * time.Second)
	})
}

func TestMutualTLSWithToken(t *testing.T) {
	pki := newTestPKI(t)
	const token = "s3cret"
	c := testcluster.NewSingle(t, pki.member(), func(cfg *embedraft.Config) { cfg.Cluster, cfg.Token = true, token })
	url := c.Members[0].URL + "/raft/ui/cluster"
	get := func(client *http.Client, bearer string) int {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	withCert, foreign, anon := pki.client(pki.ca), pki.client(pki.foreign), pki.client(nil)
	for _, tc := range []struct {
		name   string
		client *http.Client
		bearer string
		want   int
	}{
		{"OK", withCert, token, http.StatusOK},
		{"ErrCertWithoutToken", withCert, "", http.StatusUnauthorized},
		{"ErrTokenWithoutCert", anon, token, http.StatusUnauthorized},
		{"ErrTokenWithForeignCert", foreign, token, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(tc.client, tc.bearer); got != tc.want {
				t.Fatalf("GET /raft/ui/cluster: %d, want %d", got, tc.want)
			}
		})
	}
}

func TestTLSConfigValidate(t *testing.T) {
	base := embedraft.Config{AdvertiseURL: "https://127.0.0.1:1", DataDir: "d", CertFile: "c", KeyFile: "k"}
	for _, tc := range []struct {
		name string
		edit func(*embedraft.Config)
		ok   bool
	}{
		{"OK", func(*embedraft.Config) {}, true},
		{"OKWithCA", func(c *embedraft.Config) { c.CAFile = "ca" }, true},
		{"ErrCertWithoutKey", func(c *embedraft.Config) { c.KeyFile = "" }, false},
		{"ErrKeyWithoutCert", func(c *embedraft.Config) { c.CertFile = "" }, false},
		{"ErrCAWithoutCert", func(c *embedraft.Config) { c.CertFile, c.KeyFile, c.CAFile = "", "", "ca" }, false},
		{"ErrHTTPAdvertise", func(c *embedraft.Config) { c.AdvertiseURL = "http://127.0.0.1:1" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.edit(&cfg)
			err := cfg.Validate()
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, embedraft.ErrInvalidConfig)) {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestTLSBadFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := embedraft.New(embedraft.Config{AdvertiseURL: "https://127.0.0.1:1", DataDir: dir,
		CertFile: filepath.Join(dir, "missing.crt"), KeyFile: filepath.Join(dir, "missing.key")}, nopService{})
	if !errors.Is(err, embedraft.ErrInvalidConfig) {
		t.Fatalf("New with missing certificate files: %v, want ErrInvalidConfig", err)
	}
}
