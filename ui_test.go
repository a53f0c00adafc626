package embedraft_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

const uiToken = "s3cret"

// uiGet sends GET path to m with auth as the Authorization header (none
// when empty) and returns the status and body.
func uiGet(t *testing.T, c *tc.Cluster, m *tc.Member, path, auth string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, m.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	return resp.StatusCode, resp.Header, readAll(resp)
}

// uiView fetches and decodes m's GET /raft/ui/cluster.
func uiView(t *testing.T, c *tc.Cluster, m *tc.Member, auth string) embedraft.ClusterView {
	t.Helper()
	code, _, body := uiGet(t, c, m, embedraft.UIClusterPath, auth)
	if code != http.StatusOK {
		t.Fatalf("GET %s on member %d: %d %s", embedraft.UIClusterPath, m.ID, code, body)
	}
	var env struct {
		Code string                `json:"code"`
		Data embedraft.ClusterView `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil || env.Code != "000000" {
		t.Fatalf("GET %s: %v %s", embedraft.UIClusterPath, err, body)
	}
	return env.Data
}

// checkView checks that v lists want members, every one reachable when
// reachable is set, all agreeing on one leader, the one v names.
func checkView(v embedraft.ClusterView, want int, reachable bool) error {
	if len(v.Members) != want {
		return fmt.Errorf("%d members, want %d: %+v", len(v.Members), want, v.Members)
	}
	leaders := 0
	for i, m := range v.Members {
		if i > 0 && v.Members[i-1].ID >= m.ID {
			return fmt.Errorf("members not sorted by id: %+v", v.Members)
		}
		if reachable && (!m.Reachable || m.Error != "") {
			return fmt.Errorf("member %d unreachable: %s", m.ID, m.Error)
		}
		if !m.Reachable {
			continue
		}
		if m.State == "leader" {
			leaders++
			if m.ID != v.Leader {
				return fmt.Errorf("member %d is leader, the view says %d", m.ID, v.Leader)
			}
		}
		if m.Leader != v.Leader || m.Term != v.Term {
			return fmt.Errorf("member %d sees leader %d term %d, the view %d term %d", m.ID, m.Leader, m.Term, v.Leader, v.Term)
		}
		if m.Role != embedraft.RoleVoter || m.Addr == "" {
			return fmt.Errorf("member %d: role %q addr %q", m.ID, m.Role, m.Addr)
		}
	}
	if leaders != 1 {
		return fmt.Errorf("%d leaders in %+v", leaders, v.Members)
	}
	return nil
}

// TestUICluster: on a 3-node cluster with a token, every member's
// /raft/ui/cluster lists the three members, all reachable, exactly one
// leader; both UI routes refuse a request without the token; the page is
// self-contained.
func TestUICluster(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.Token = uiToken })
	lead := c.WaitLeader(10 * time.Second)
	c.MustSet(lead, "a", "1")
	auth := "Bearer " + uiToken

	t.Run("OK", func(t *testing.T) {
		for _, m := range c.Running() {
			var v embedraft.ClusterView
			tc.Eventually(t, 10*time.Second, func() error {
				v = uiView(t, c, m, auth)
				if err := checkView(v, 3, true); err != nil {
					return fmt.Errorf("member %d: %w", m.ID, err)
				}
				for _, mv := range v.Members {
					if mv.Lag != 0 || mv.Applied < 2 {
						return fmt.Errorf("member %d: member %d applied %d lag %d", m.ID, mv.ID, mv.Applied, mv.Lag)
					}
				}
				return nil
			})
			if v.ID != m.ID || v.Mode != embedraft.ModeCluster || v.ClusterID != lead.Node.Status().ClusterID ||
				v.Leader != lead.ID || time.Since(v.GeneratedAt) > time.Minute {
				t.Fatalf("member %d: view %+v", m.ID, v)
			}
		}
	})

	t.Run("ErrUnauthorized", func(t *testing.T) {
		for _, tt := range []struct{ path, auth string }{
			{embedraft.UIPath, ""},
			{embedraft.UIPath, "Bearer wrong"},
			{embedraft.UIPath + "?token=wrong", ""},
			{embedraft.UIPath + "?token=" + uiToken + "x", ""},
			{embedraft.UIPath + "?token=", ""},
			{embedraft.UIClusterPath, ""},
			{embedraft.UIClusterPath, "Bearer " + uiToken + "x"},
			// The query parameter opens the page only, never the data.
			{embedraft.UIClusterPath + "?token=" + uiToken, ""},
		} {
			code, _, body := uiGet(t, c, lead, tt.path, tt.auth)
			if code != http.StatusUnauthorized || !strings.Contains(body, "token") {
				t.Errorf("GET %s with %q: %d %s, want 401", tt.path, tt.auth, code, body)
			}
		}
	})

	t.Run("Page", func(t *testing.T) {
		for _, tt := range []struct{ path, auth string }{
			{embedraft.UIPath, auth},
			{embedraft.UIPath + "?token=" + uiToken, ""},
		} {
			code, hdr, page := uiGet(t, c, lead, tt.path, tt.auth)
			if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
				t.Fatalf("GET %s: %d %s", tt.path, code, hdr.Get("Content-Type"))
			}
			if !strings.Contains(hdr.Get("Content-Security-Policy"), "default-src 'none'") {
				t.Fatalf("GET %s: CSP %q", tt.path, hdr.Get("Content-Security-Policy"))
			}
			external := regexp.MustCompile(`(?i)https?://|<[a-z][^>]*\s(src|href|action)\s*=|@import|url\(|<link\b`)
			if loc := external.FindStringIndex(page); loc != nil {
				t.Fatalf("page loads something from outside: %q", page[max(0, loc[0]-40):min(len(page), loc[1]+40)])
			}
			for _, want := range []string{"<table", "/cluster", "Authorization", "@media"} {
				if !strings.Contains(page, want) {
					t.Fatalf("page lacks %q", want)
				}
			}
		}
	})

	t.Run("MemberDown", func(t *testing.T) {
		var down *tc.Member
		for _, m := range c.Running() {
			if m != lead {
				down = m
				break
			}
		}
		down.Stop()
		v := uiView(t, c, lead, auth)
		if err := checkView(v, 3, false); err != nil {
			t.Fatal(err)
		}
		for _, m := range v.Members {
			if got, want := m.Reachable, m.ID != down.ID; got != want || (m.Error != "") == want {
				t.Fatalf("member %d (stopped %d): reachable %v, error %q", m.ID, down.ID, got, m.Error)
			}
		}
	})
}

// TestUIStandalone: a standalone node's view is itself, the leader.
func TestUIStandalone(t *testing.T) {
	c := tc.NewSingle(t)
	m := c.Members[0]
	v := uiView(t, c, m, "")
	if err := checkView(v, 1, true); err != nil {
		t.Fatal(err)
	}
	if v.Mode != embedraft.ModeStandalone || v.Leader != m.ID || v.Members[0].Addr != m.URL {
		t.Fatalf("view %+v", v)
	}
	if code, _, _ := uiGet(t, c, m, embedraft.UIPath, ""); code != http.StatusOK {
		t.Fatalf("GET %s without a configured token: %d", embedraft.UIPath, code)
	}
}
