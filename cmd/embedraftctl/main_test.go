package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/testcluster"
)

const testToken = "s3cret"

// ctl runs the command line and returns its exit code and outputs.
func ctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// statusJSON runs status -o json against eps and decodes it.
func statusJSON(t *testing.T, eps string) (int, clusterStatus) {
	t.Helper()
	code, out, errOut := ctl(t, "-endpoints", eps, "-o", "json", "status")
	var st clusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: exit %d, %v; stdout %q, stderr %q", code, err, out, errOut)
	}
	return code, st
}

// unusedURL is the URL of a loopback port nothing listens on.
func unusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

func TestCluster(t *testing.T) {
	t.Setenv("EMBEDRAFT_ENDPOINTS", "")
	t.Setenv("EMBEDRAFT_TOKEN", "")
	c := testcluster.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.Token = testToken })
	eps := c.Members[0].URL + "," + c.Members[1].URL
	healthy := func(t *testing.T, wantMembers int, wantLeader uint64) clusterStatus {
		t.Helper()
		var st clusterStatus
		testcluster.Eventually(t, 10*time.Second, func() error {
			var code int
			code, st = statusJSON(t, eps)
			switch {
			case code != exitOK || !st.Healthy:
				return fmt.Errorf("status exit %d, problems %q", code, st.Problems)
			case len(st.Members) != wantMembers:
				return fmt.Errorf("%d members, want %d", len(st.Members), wantMembers)
			case wantLeader != 0 && st.Leader != wantLeader:
				return fmt.Errorf("leader %d, want %d", st.Leader, wantLeader)
			}
			return nil
		})
		return st
	}

	t.Run("Status", func(t *testing.T) {
		st := healthy(t, 3, 0)
		leaders := 0
		for _, m := range st.Members {
			if !m.Reachable || m.Status == nil || m.Lag == nil {
				t.Errorf("member %+v: want reachable with a status and a lag", m)
			}
			if m.IsLeader {
				leaders++
				if m.ID != st.Leader || m.Status.State != "leader" {
					t.Errorf("leader row %+v, cluster leader %d", m, st.Leader)
				}
			}
		}
		if leaders != 1 {
			t.Errorf("%d leaders in %+v", leaders, st.Members)
		}

		code, out, errOut := ctl(t, "-endpoints", eps, "status")
		if code != exitOK || errOut != "" {
			t.Fatalf("status: exit %d, stderr %q", code, errOut)
		}
		t.Logf("status:\n%s", out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 5 || !strings.Contains(lines[0], "healthy") || !strings.HasPrefix(lines[1], "ID") {
			t.Fatalf("table:\n%s", out)
		}
		stars := 0
		for _, l := range lines[2:] {
			if !strings.HasSuffix(l, "yes") {
				t.Errorf("row not reachable: %q", l)
			}
			if strings.Contains(l, " * ") {
				stars++
			}
		}
		if stars != 1 {
			t.Errorf("%d rows marked leader:\n%s", stars, out)
		}
	})

	t.Run("StatusFromEnvSkipsDeadEndpoint", func(t *testing.T) {
		t.Setenv("EMBEDRAFT_ENDPOINTS", unusedURL(t)+","+c.Members[2].URL)
		code, out, errOut := ctl(t, "status")
		if code != exitOK {
			t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("AddRemove", func(t *testing.T) {
		addr := unusedURL(t)
		code, out, errOut := ctl(t, "-endpoints", eps, "-token", testToken, "-o", "json", "add", addr)
		if code != exitOK {
			t.Fatalf("add: exit %d, stderr %q", code, errOut)
		}
		var added struct {
			ID        uint64 `json:"id"`
			ClusterID string `json:"cluster_id"`
		}
		if err := json.Unmarshal([]byte(out), &added); err != nil || added.ID == 0 || added.ClusterID == "" {
			t.Fatalf("add output %q: %v", out, err)
		}
		// The new member never starts: status reports it unreachable.
		code, st := statusJSON(t, eps)
		if code != exitUnhealthy || st.Healthy || len(st.Members) != 4 {
			t.Fatalf("status with a member down: exit %d, %+v", code, st)
		}
		for _, m := range st.Members {
			if m.ID == added.ID && (m.Reachable || m.Role != "learner" || m.Addr != addr) {
				t.Errorf("added member row %+v", m)
			}
		}
		code, out, errOut = ctl(t, "-endpoints", eps, "-token", testToken, "remove", fmt.Sprint(added.ID))
		if code != exitOK || !strings.Contains(out, fmt.Sprintf("removed member %d", added.ID)) {
			t.Fatalf("remove: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		healthy(t, 3, 0)

		code, _, errOut = ctl(t, "-endpoints", eps, "-token", testToken, "remove", fmt.Sprint(added.ID))
		if code != exitFailed || !strings.Contains(errOut, "404") {
			t.Errorf("remove again: exit %d, stderr %q", code, errOut)
		}
	})

	t.Run("Transfer", func(t *testing.T) {
		st := healthy(t, 3, 0)
		var to uint64
		for _, m := range st.Members {
			if !m.IsLeader {
				to = m.ID
				break
			}
		}
		// Sent through a follower's endpoint: the CLI finds the leader.
		code, out, errOut := ctl(t, "-endpoints", c.Member(to).URL, "-token", testToken, "transfer", fmt.Sprint(to))
		if code != exitOK || !strings.Contains(out, fmt.Sprintf("to member %d", to)) {
			t.Fatalf("transfer: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		healthy(t, 3, to)
		code, out, _ = ctl(t, "-endpoints", eps, "-token", testToken, "transfer", fmt.Sprint(to))
		if code != exitOK || !strings.Contains(out, "already the leader") {
			t.Errorf("transfer to the leader: exit %d, stdout %q", code, out)
		}
	})

	t.Run("ErrWrongToken", func(t *testing.T) {
		st := healthy(t, 3, 0)
		follower := fmt.Sprint(st.Leader%3 + 1)
		for _, args := range [][]string{
			{"-token", "wrong", "add", unusedURL(t)},
			{"remove", follower}, // no token at all
			{"-token", "wrong", "transfer", follower},
		} {
			code, _, errOut := ctl(t, append([]string{"-endpoints", eps}, args...)...)
			if code != exitFailed || !strings.Contains(errOut, "HTTP 401") || !strings.Contains(errOut, "token") {
				t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
			}
		}
		healthy(t, 3, 0)
	})

	t.Run("Backup", func(t *testing.T) {
		c.MustSet(c.Members[0], "backed", "up")
		file := filepath.Join(t.TempDir(), "cluster.backup")
		code, out, errOut := ctl(t, "-endpoints", eps, "-token", testToken, "backup", file)
		if code != exitOK || !strings.Contains(out, "wrote ") || errOut != "" {
			t.Fatalf("backup: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		info, err := embedraft.VerifyBackup(f)
		if err != nil || info.Mode != embedraft.ModeCluster || info.Index == 0 {
			t.Fatalf("backup file: %+v %v", info, err)
		}
		if entries, _ := os.ReadDir(filepath.Dir(file)); len(entries) != 1 {
			t.Errorf("backup left files behind: %v", entries)
		}
		code, _, errOut = ctl(t, "-endpoints", eps, "backup", file+"2") // no token
		if code != exitFailed || !strings.Contains(errOut, "HTTP 401") {
			t.Errorf("backup without token: exit %d, stderr %q", code, errOut)
		}
	})

	t.Run("WatchJSON", func(t *testing.T) {
		code, out, errOut := ctl(t, "-endpoints", eps, "watch", "-interval", "20ms", "-count", "2", "-o", "json")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != exitOK || len(lines) != 2 {
			t.Fatalf("watch: exit %d, %d lines, stderr %q", code, len(lines), errOut)
		}
		for _, l := range lines {
			var st clusterStatus
			if err := json.Unmarshal([]byte(l), &st); err != nil || len(st.Members) != 3 {
				t.Errorf("watch line %q: %v", l, err)
			}
		}
		code, out, _ = ctl(t, "-endpoints", eps, "watch", "-interval", "20ms", "-count", "1")
		if code != exitOK || !strings.HasPrefix(out, "\x1b[H\x1b[2J") || !strings.Contains(out, "ADDRESS") {
			t.Errorf("watch table: exit %d, %q", code, out)
		}
	})

	t.Run("MemberDown", func(t *testing.T) {
		down := c.Followers()[0]
		down.Stop()
		code, out, errOut := ctl(t, "-endpoints", eps, "status")
		t.Logf("status:\n%s%s", out, errOut)
		if code != exitUnhealthy || !strings.Contains(out, "no: ") || !strings.Contains(errOut, "unreachable") {
			t.Fatalf("status with member %d stopped: exit %d\n%s%s", down.ID, code, out, errOut)
		}
	})
}

func TestUnreachable(t *testing.T) {
	code, out, errOut := ctl(t, "-endpoints", unusedURL(t), "status")
	if code != exitUnhealthy || out != "" || !strings.Contains(errOut, "connection refused") {
		t.Errorf("status: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = ctl(t, "-endpoints", unusedURL(t), "remove", "2")
	if code != exitFailed || !strings.Contains(errOut, "no endpoint reachable") {
		t.Errorf("remove: exit %d, stderr %q", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"remove"},
		{"remove", "abc"},
		{"remove", "0"},
		{"transfer", "1", "2"},
		{"add"},
		{"add", "127.0.0.1:9000"},
		{"status", "extra"},
		{"-o", "yaml", "status"},
		{"-nosuchflag", "status"},
		{"status", "-nosuchflag"},
		{"-endpoints", "ftp://x", "status"},
		{"-endpoints", ",", "status"},
		{"-cert", "c.pem", "status"},
		{"-timeout", "0s", "status"},
		{"watch", "-interval", "0s"},
		{"backup"},
	} {
		code, out, errOut := ctl(t, args...)
		if code != exitUsage || out != "" || errOut == "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	if code, _, errOut := ctl(t, "-h"); code != exitOK || !strings.Contains(errOut, "Exit codes") {
		t.Errorf("-h: exit %d, %q", code, errOut)
	}
}

func TestParseInterleaved(t *testing.T) {
	var o options
	var id uint64
	for _, tc := range []struct {
		args    []string
		wantPos []string
		wantID  uint64
	}{
		{[]string{"http://a", "-id", "4"}, []string{"http://a"}, 4},
		{[]string{"-id", "5", "http://a"}, []string{"http://a"}, 5},
		{[]string{"-id", "6", "--", "-x"}, []string{"-x"}, 6},
	} {
		fs := newTestFlagSet(&o, &id)
		pos, err := parseInterleaved(fs, tc.args)
		if err != nil || fmt.Sprint(pos) != fmt.Sprint(tc.wantPos) || id != tc.wantID {
			t.Errorf("%q: pos %q id %d err %v", tc.args, pos, id, err)
		}
	}
}

func TestBackup(t *testing.T) {
	payload := bytes.Repeat([]byte("embedraft"), 100000)
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		if r.URL.Path != "/raft/api/backup" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(payload)
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "b")
	t.Run("OK", func(t *testing.T) {
		code, out, errOut := ctl(t, "-endpoints", unusedURL(t)+","+srv.URL, "-token", "tk", "backup", file)
		if code != exitOK || !strings.Contains(out, fmt.Sprintf("wrote %d bytes", len(payload))) {
			t.Fatalf("backup: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		got, err := os.ReadFile(file)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("backup file: %d bytes, %v", len(got), err)
		}
		if gotAuth != "Bearer tk" {
			t.Errorf("Authorization %q", gotAuth)
		}
		if _, err := os.Stat(file + ".tmp"); !os.IsNotExist(err) {
			t.Errorf("temporary file left: %v", err)
		}
	})
	t.Run("ErrTruncated", func(t *testing.T) {
		cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "1000")
			_, _ = w.Write([]byte("short"))
		}))
		defer cut.Close()
		code, _, errOut := ctl(t, "-endpoints", cut.URL, "backup", file)
		if code != exitFailed || !strings.Contains(errOut, "after 5 bytes") {
			t.Fatalf("backup: exit %d, stderr %q", code, errOut)
		}
		got, _ := os.ReadFile(file)
		if !bytes.Equal(got, payload) {
			t.Errorf("a failed backup changed the previous file")
		}
		if _, err := os.Stat(file + ".tmp"); !os.IsNotExist(err) {
			t.Errorf("temporary file left: %v", err)
		}
	})
}

func newTestFlagSet(o *options, id *uint64) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.Uint64Var(id, "id", 0, "")
	o.register(fs)
	return fs
}

func TestTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("backup bytes"))
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemCert, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "b")
	t.Run("CACert", func(t *testing.T) {
		if code, _, errOut := ctl(t, "-endpoints", srv.URL, "-cacert", ca, "backup", file); code != exitOK {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("InsecureSkipVerify", func(t *testing.T) {
		if code, _, errOut := ctl(t, "-endpoints", srv.URL, "-insecure-skip-verify", "backup", file); code != exitOK {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("ErrUnknownAuthority", func(t *testing.T) {
		code, _, errOut := ctl(t, "-endpoints", srv.URL, "backup", file)
		if code != exitFailed || !strings.Contains(errOut, "certificate") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("ErrBadCACert", func(t *testing.T) {
		code, _, errOut := ctl(t, "-endpoints", srv.URL, "-cacert", file, "backup", file)
		if code != exitFailed || !strings.Contains(errOut, "no PEM certificate") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
}

func TestErrTimeout(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select { // never answers
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	defer srv.Close()
	defer close(stop) // before Close, which waits for the handlers
	code, _, errOut := ctl(t, "-endpoints", srv.URL, "-timeout", "100ms", "remove", "2")
	if code != exitFailed || !strings.Contains(errOut, "may still take effect") {
		t.Errorf("remove: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = ctl(t, "-endpoints", srv.URL, "-timeout", "100ms", "status")
	if code != exitUnhealthy || !strings.Contains(errOut, "no answer within -timeout") {
		t.Errorf("status: exit %d, stderr %q", code, errOut)
	}
}
