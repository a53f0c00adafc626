package embedraft

// The cluster page: GET /raft/ui serves one static, self-contained HTML page
// (ui/index.html, embedded; inline CSS and JS, no external assets) that polls
// GET /raft/ui/cluster every second. That JSON route is computed by the node
// that serves it: the membership it knows, its own status read directly, and
// every other member's GET /raft/api/status fetched concurrently over HTTP
// with a short timeout.
//
// Authentication. Both routes are admin routes: with Config.Token set they
// need "Authorization: Bearer <token>". A browser cannot add that header to
// a page it navigates to, so GET /raft/ui (and only that route) also accepts
// the token as a query parameter, /raft/ui?token=<token>, compared in
// constant time. The page reads the token from its own URL (the query, or a
// fragment #token=<token>, which never leaves the browser) and sends it as a
// Bearer header on its fetches of /raft/ui/cluster; the JSON route never
// accepts the query parameter. A token in a query string can end up in
// browser history and in the access logs of proxies in between: where that
// matters, put the page behind a proxy that adds the header, and open it
// with no token in the URL. With Config.CAFile both routes also need a
// client certificate signed by that CA (tls.go): the browser must hold one;
// members' statuses are then fetched over mutual TLS. Without a token or a
// CA configured both routes are open, like the other admin routes.

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/embedraft/embedraft/transport"
	"github.com/go-chi/chi/v5"
)

// UI routes.
const (
	// UIPath serves the cluster page.
	UIPath = "/raft/ui"
	// UIClusterPath serves the page's data, a ClusterView.
	UIClusterPath = "/raft/ui/cluster"
)

// uiMemberTimeout bounds the fetch of one member's status.
const uiMemberTimeout = time.Second

// maxStatusBytes bounds a member's status answer.
const maxStatusBytes = 64 << 10

//go:embed ui/index.html
var uiPage []byte

// statusClient fetches members' status for the cluster view (without TLS
// settings; a node with a certificate uses one of its own). Keep-alives
// are off: a view costs one short connection per member, and no connection
// (nor its goroutines) outlives the request that opened it, so there is
// nothing for Close to release. It is shared by every node of the process.
var statusClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: uiMemberTimeout}).DialContext,
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: uiMemberTimeout,
	},
	Timeout: uiMemberTimeout,
}

// ClusterView is the cluster as one node sees it, served on
// GET /raft/ui/cluster.
type ClusterView struct {
	// ID, ClusterID, Mode, Leader and Term are the serving node's own.
	ID          uint64       `json:"id"`
	ClusterID   string       `json:"cluster_id"`
	Mode        string       `json:"mode"`
	Leader      uint64       `json:"leader"`
	Term        uint64       `json:"term"`
	GeneratedAt time.Time    `json:"generated_at"`
	Members     []MemberView `json:"members"` // by id
}

// MemberView is one member in a ClusterView. Addr and Role come from the
// serving node's membership; the rest is the member's own status, zero when
// it could not be reached.
type MemberView struct {
	ID      uint64 `json:"id"`
	Addr    string `json:"addr"`
	Role    string `json:"role"`
	State   string `json:"state"`
	Leader  uint64 `json:"leader"` // the leader this member knows
	Term    uint64 `json:"term"`
	Commit  uint64 `json:"commit"`
	Applied uint64 `json:"applied"`
	// Lag is the leader's commit index minus this member's applied index
	// (the serving node's commit index when the leader was not reached).
	Lag       uint64 `json:"lag"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// ClusterView gathers the status of every member: this node's directly,
// the others' over HTTP, concurrently, each bounded by one second and ctx.
func (n *Node) ClusterView(ctx context.Context) ClusterView {
	self := n.Status()
	v := ClusterView{
		ID: self.ID, ClusterID: self.ClusterID, Mode: self.Mode,
		Leader: self.Leader, Term: self.Term, GeneratedAt: time.Now().UTC(),
	}
	peers := n.Peers().Peers
	v.Members = make([]MemberView, 0, len(peers))
	for _, p := range peers {
		v.Members = append(v.Members, MemberView{ID: p.ID, Addr: p.Addr, Role: p.Role})
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].ID < v.Members[j].ID })

	var wg sync.WaitGroup
	for i := range v.Members {
		m := &v.Members[i]
		if m.ID == self.ID {
			m.fill(self)
			continue
		}
		wg.Add(1)
		go func() { // exits within uiMemberTimeout
			defer wg.Done()
			st, err := n.memberStatus(ctx, m.Addr)
			if err == nil && st.ID != m.ID {
				err = fmt.Errorf("answered as member %d", st.ID)
			}
			if err != nil {
				m.Error = err.Error()
				return
			}
			m.fill(st)
		}()
	}
	wg.Wait()

	ref := self.Commit
	for _, m := range v.Members {
		if m.ID == v.Leader && m.Reachable && m.State == "leader" {
			ref = m.Commit
		}
	}
	for i := range v.Members {
		if m := &v.Members[i]; m.Reachable && ref > m.Applied {
			m.Lag = ref - m.Applied
		}
	}
	return v
}

func (m *MemberView) fill(s Status) {
	m.State, m.Leader, m.Term, m.Commit, m.Applied = s.State, s.Leader, s.Term, s.Commit, s.Applied
	m.Reachable = true
}

// memberStatus fetches GET /raft/api/status from the member at addr.
func (n *Node) memberStatus(ctx context.Context, addr string) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, uiMemberTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.dialURL(addr)+transport.StatusPath, nil)
	if err != nil {
		return Status{}, err
	}
	resp, err := n.uiClient.Do(req)
	if err != nil {
		return Status{}, err
	}
	defer resp.Body.Close()
	var env struct {
		Data  Status `json:"data"`
		Error string `json:"error"`
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes))
	if err != nil {
		return Status{}, fmt.Errorf("read status: %w", err)
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return Status{}, fmt.Errorf("status %d, not a status answer: %v", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Status{}, fmt.Errorf("status %d: %s", resp.StatusCode, env.Error)
	}
	return env.Data, nil
}

// mountUI adds the cluster page's routes to r.
func (n *Node) mountUI(r chi.Router) {
	r.With(n.requireClientCert, n.requireTokenOrQuery).Get(UIPath, func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(len(uiPage)))
		h.Set("Cache-Control", "no-store")
		// The page loads nothing but itself and its data, and the token in
		// its URL is never sent anywhere else.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "+
			"style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "+
			"form-action 'none'; frame-ancestors 'none'")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(uiPage)
	})
	r.With(n.requireAuth).Get(UIClusterPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, n.ClusterView(r.Context()), nil)
	})
}

// requireTokenOrQuery is requireToken that also accepts the token as the
// query parameter "token" (for a browser opening the page; see the top of
// this file).
func (n *Node) requireTokenOrQuery(next http.Handler) http.Handler {
	withHeader := n.requireToken(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query().Get("token"); n.cfg.Token != "" && q != "" &&
			subtle.ConstantTimeCompare([]byte(q), []byte(n.cfg.Token)) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		withHeader.ServeHTTP(w, r)
	})
}
