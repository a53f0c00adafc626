package embedraft_test

// Tests across all routes: the table of bad requests, the token check, and
// the fuzz targets for a standalone node and for any method and path.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	pathpkg "path"
	"strings"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// standaloneRoutes are the routes FuzzStandaloneRoutes sends to, with the
// method a client or peer uses.
var standaloneRoutes = []struct{ path, method string }{
	{"/raft/api/set", http.MethodPost},
	{"/raft/node/propose", http.MethodPost},
	{"/raft/node/join", http.MethodPost},
	{"/raft/api/addNode", http.MethodPost},
	{"/raft/api/deleteNode", http.MethodPost},
	{"/raft/api/transferLeader", http.MethodPost},
	{"/raft", http.MethodPost},
	{"/raft/snapshot", http.MethodPost},
	{"/raft/stream/message/2", http.MethodGet},
	{"/raft/probing", http.MethodGet},
}

// FuzzStandaloneRoutes sends any body to every route of a standalone node.
// A rejected request must leave it standalone with its state; a join or
// addNode that succeeds turns it into a cluster, so each input gets a fresh
// node (a standalone node has no raft and no WAL: it starts in
// milliseconds).
func FuzzStandaloneRoutes(f *testing.F) {
	for i, b := range append(seedBodies(), seedJoins()...) {
		f.Add(uint8(i), uint8(i/3), b)
	}
	f.Add(uint8(3), uint8(1), []byte(`{"addr":"http://127.0.0.1:1","id":1}`))
	f.Add(uint8(4), uint8(0), []byte(`{"id":1}`))
	f.Add(uint8(5), uint8(0), []byte(`{"to":1}`))
	f.Add(uint8(2), uint8(2), []byte(`{"addr":"http://127.0.0.1:1"}`))
	client := &http.Client{Timeout: 20 * time.Second}
	f.Cleanup(client.CloseIdleConnections)
	f.Fuzz(func(t *testing.T, route, hdrSel uint8, body []byte) {
		r := standaloneRoutes[int(route)%len(standaloneRoutes)]
		var req embedraft.JoinRequest
		if lenientDecode(body, &req) && !loopbackAddr(req.Addr) {
			t.Skip("would dial a remote host")
		}
		logs := &ringLog{}
		c := tc.NewSingle(t, fuzzOptions(logs)...)
		h := &fuzzCluster{c: c, logs: logs, client: client}
		defer h.done(t)
		m := c.Members[0]
		c.MustSet(m, "seed", "1")
		hdr := http.Header{}
		if r.path == "/raft" || strings.HasPrefix(r.path, "/raft/s") {
			hdr.Set("X-Server-Version", peerVersion)
		}
		switch hdrSel % 3 {
		case 1:
			hdr.Set("X-Embedraft-Cluster-Id", "0")
			hdr.Set("X-Etcd-Cluster-ID", "0")
		case 2:
			hdr.Set("X-Embedraft-Cluster-Id", "abc")
			hdr.Set("X-Etcd-Cluster-ID", "abc")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		code, resp, err := h.do(ctx, m, r.method, r.path, body, hdr)
		what := fmt.Sprintf("%s %s %q to a standalone node", r.method, r.path, body)
		envelope := r.path != "/raft/probing"
		checkAnswer(t, what, code, resp, err, envelope)
		if err := m.Node.Err(); err != nil {
			t.Fatalf("%s: node stopped: %v", what, err)
		}
		if r.path == "/raft/api/set" {
			if want, _ := wantWriteStatus(body); code != want {
				t.Fatalf("%s: status %d, want %d: %s", what, code, want, resp)
			}
		}
		if code/100 != 2 {
			if mode := m.Node.Mode(); mode != embedraft.ModeStandalone {
				t.Fatalf("%s: refused with %d, but the node is now %s", what, code, mode)
			}
			if got := fmt.Sprint(m.Store.Snapshot()); got != "map[seed:1]" {
				t.Fatalf("%s: refused with %d, but the state is %s", what, code, got)
			}
		}
		c.MustSet(m, "after", "1")
	})
}

// TestRouteBadInput is the table of bad requests to every route: each gets
// its 4xx and a message saying what is wrong, and together they change
// nothing (state, log, membership, leader).
func TestRouteBadInput(t *testing.T) {
	logs := &ringLog{}
	c := tc.NewStatic(t, 3, fuzzOptions(logs)...)
	h := &fuzzCluster{c: c, logs: logs, client: &http.Client{Timeout: 20 * time.Second}}
	defer h.client.CloseIdleConnections()
	defer h.done(t)
	before := h.before(t)
	lead := h.leader(t)
	var follower *tc.Member
	for _, m := range c.Running() {
		if m != lead {
			follower = m
			break
		}
	}
	cid := lead.Node.Status().ClusterID
	big := bytes.Repeat([]byte("x"), fuzzMaxBody+1)
	bigJSON := []byte(`{"addr":"http://127.0.0.1:1","pad":"` + strings.Repeat("x", fuzzMaxBody) + `"}`)
	peer := func(kv ...string) http.Header {
		h := http.Header{}
		h.Set("X-Server-Version", peerVersion)
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	withCluster := http.Header{"X-Embedraft-Cluster-Id": {cid}}
	cases := []struct {
		name, method, path string
		hdr                http.Header
		body               []byte
		status             int
		msg                string
	}{
		{"set/empty", "POST", "/raft/api/set", nil, nil, 400, "empty body"},
		{"set/not JSON", "POST", "/raft/api/set", nil, []byte("\xff"), 400, "invalid JSON"},
		{"set/two objects", "POST", "/raft/api/set", nil, []byte(`{"key":"a"}{"key":"b"}`), 400, "trailing data"},
		{"set/too large", "POST", "/raft/api/set", nil, big, 413, "too large"},
		{"set/GET", "GET", "/raft/api/set", nil, nil, 405, "not allowed"},
		{"propose/no cluster id", "POST", "/raft/node/propose", nil, []byte(`{"key":"a"}`), 403, "cluster"},
		{"propose/wrong cluster id", "POST", "/raft/node/propose", http.Header{"X-Embedraft-Cluster-Id": {"1"}}, []byte(`{"key":"a"}`), 403, "cluster"},
		{"propose/empty", "POST", "/raft/node/propose", withCluster, nil, 400, "empty body"},
		{"propose/too large", "POST", "/raft/node/propose", withCluster, big, 413, "too large"},
		{"propose/bad body", "POST", "/raft/node/propose", withCluster, []byte(`{"key":1}`), 400, "invalid JSON"},
		{"join/not JSON", "POST", "/raft/node/join", nil, []byte(`{"addr"`), 400, "invalid JSON"},
		{"join/no addr", "POST", "/raft/node/join", nil, []byte(`{}`), 400, "empty URL"},
		{"join/wrong cluster header", "POST", "/raft/node/join", http.Header{"X-Embedraft-Cluster-Id": {"1"}}, []byte(`{"addr":"http://127.0.0.1:1"}`), 403, "cluster"},
		{"join/wrong cluster body", "POST", "/raft/node/join", nil, []byte(`{"addr":"http://127.0.0.1:1","cluster_id":"1"}`), 403, "cluster"},
		{"join/too large", "POST", "/raft/node/join", nil, bigJSON, 413, "too large"},
		{"addNode/negative id", "POST", "/raft/api/addNode", nil, []byte(`{"addr":"http://127.0.0.1:1","id":-1}`), 400, "invalid JSON"},
		{"addNode/id used", "POST", "/raft/api/addNode", nil, []byte(`{"addr":"http://127.0.0.1:1","id":2}`), 409, "in use"},
		{"addNode/query in addr", "POST", "/raft/api/addNode", nil, []byte(`{"addr":"http://127.0.0.1:1?x=1"}`), 400, "addr"},
		{"addNode/too large", "POST", "/raft/api/addNode", nil, bigJSON, 413, "too large"},
		{"deleteNode/unknown", "POST", "/raft/api/deleteNode", nil, []byte(`{"id":99}`), 404, "no member 99"},
		{"deleteNode/zero", "POST", "/raft/api/deleteNode", nil, []byte(`{}`), 400, "positive"},
		{"deleteNode/string id", "POST", "/raft/api/deleteNode", nil, []byte(`{"id":"2"}`), 400, "invalid JSON"},
		{"deleteNode/too large", "POST", "/raft/api/deleteNode", nil, big, 413, "too large"},
		{"transferLeader/unknown", "POST", "/raft/api/transferLeader", nil, []byte(`{"to":99}`), 404, "member 99"},
		{"transferLeader/float", "POST", "/raft/api/transferLeader", nil, []byte(`{"to":1.5}`), 400, "invalid JSON"},
		{"transferLeader/unknown field", "POST", "/raft/api/transferLeader", nil, []byte(`{"to":2,"now":true}`), 400, "unknown field"},
		{"transferLeader/too large", "POST", "/raft/api/transferLeader", nil, big, 413, "too large"},
		{"raft/no version", "POST", "/raft", nil, []byte("x"), 412, "version"},
		{"raft/old version", "POST", "/raft", peer("X-Server-Version", "2.3.0", "X-Etcd-Cluster-ID", cid), []byte("x"), 412, "version"},
		{"raft/wrong cluster", "POST", "/raft", peer("X-Etcd-Cluster-ID", "1"), []byte("x"), 412, "cluster ID mismatch"},
		{"raft/garbage", "POST", "/raft", peer("X-Etcd-Cluster-ID", cid), []byte{0xff, 0xff}, 400, "unmarshal"},
		{"raft/GET", "GET", "/raft", peer("X-Etcd-Cluster-ID", cid), nil, 405, "Method Not Allowed"},
		{"snapshot/huge message", "POST", "/raft/snapshot", peer("X-Etcd-Cluster-ID", cid), binary.BigEndian.AppendUint64(nil, 1<<40), 413, "message of"},
		{"snapshot/GET", "GET", "/raft/snapshot", peer("X-Etcd-Cluster-ID", cid), nil, 405, "Method Not Allowed"},
		{"snapshot/wrong cluster", "POST", "/raft/snapshot", peer("X-Etcd-Cluster-ID", "1"), nil, 412, "cluster ID mismatch"},
		{"stream/bad id", "GET", "/raft/stream/message/zz", peer("X-Etcd-Cluster-ID", cid), nil, 404, "invalid from"},
		{"stream/unknown member", "GET", "/raft/stream/message/99", peer("X-Etcd-Cluster-ID", cid), nil, 404, "sender not found"},
		{"stream/unknown type", "GET", "/raft/stream/other/2", peer("X-Etcd-Cluster-ID", cid), nil, 404, "invalid path"},
		{"stream/wrong to", "GET", "/raft/stream/msgapp/2", peer("X-Etcd-Cluster-ID", cid, "X-Raft-To", "99"), nil, 412, "mismatch"},
		{"stream/POST", "POST", "/raft/stream/message/2", peer("X-Etcd-Cluster-ID", cid), nil, 405, "Method Not Allowed"},
		{"unknown route", "GET", "/raft/api/nope", nil, nil, 404, "no route"},
		{"status/POST", "POST", "/raft/api/status", nil, []byte("{}"), 405, "not allowed"},
	}
	for _, m := range []*tc.Member{lead, follower} {
		for _, tt := range cases {
			if strings.HasPrefix(tt.path, "/raft/stream/") && m.ID == 2 {
				tt.path = strings.Replace(tt.path, "/2", "/1", 1)
			}
			if m != lead && tt.path == "/raft/node/propose" && tt.status == 400 && len(tt.body) > 0 {
				// Only the leader runs PreProcessData.
				tt.status, tt.msg = 503, "not leader"
			}
			t.Run(fmt.Sprintf("%s/member%d", tt.name, m.ID), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				code, body, err := h.do(ctx, m, tt.method, tt.path, tt.body, tt.hdr)
				if err != nil || code != tt.status || !strings.Contains(string(body), tt.msg) {
					t.Fatalf("%s %s: %d %v %q, want %d with %q", tt.method, tt.path, code, err, body, tt.status, tt.msg)
				}
			})
		}
	}
	h.after(t, lead, outcomeRejected, "the bad requests")
	if h.prev.leader != before.leader && h.prev.term == before.term {
		t.Fatalf("bad requests moved the leader from %d to %d", before.leader, h.prev.leader)
	}
}

// TestRoutesRequireToken: with a token, every admin and peer route refuses
// a request without it, or with a wrong one, and nothing changes.
func TestRoutesRequireToken(t *testing.T) {
	logs := &ringLog{}
	c := tc.NewStatic(t, 3, fuzzOptions(logs, func(cfg *embedraft.Config) { cfg.Token = "s3cret" })...)
	h := &fuzzCluster{c: c, logs: logs, client: &http.Client{Timeout: 20 * time.Second}}
	defer h.client.CloseIdleConnections()
	defer h.done(t)
	h.before(t)
	lead := h.leader(t)
	cid := lead.Node.Status().ClusterID
	routes := []struct{ method, path, body string }{
		{"POST", "/raft/api/addNode", `{"addr":"http://127.0.0.1:1"}`},
		{"POST", "/raft/node/join", `{"addr":"http://127.0.0.1:1"}`},
		{"POST", "/raft/api/deleteNode", `{"id":2}`},
		{"POST", "/raft/api/transferLeader", `{"to":2}`},
		{"POST", "/raft/node/propose", `{"key":"a","value":"1"}`},
		{"POST", "/raft", "\x08\x02"}, // an empty MsgProp
		{"POST", "/raft/snapshot", "\x00\x00\x00\x00\x00\x00\x00\x02\x08\x07"},
		{"GET", "/raft/stream/message/2", ""},
		{"GET", "/raft/stream/msgapp/2", ""},
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cre", "Bearer  s3cret", "Basic s3cret", "Bearer s3cret2"} {
		for _, r := range routes {
			t.Run(fmt.Sprintf("%s%s/%q", r.method, r.path, auth), func(t *testing.T) {
				hdr := peerHeaders(cid)
				hdr.Set("X-Embedraft-Cluster-Id", cid)
				hdr.Set("X-Raft-To", "1")
				if auth != "" {
					hdr.Set("Authorization", auth)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				code, body, err := h.do(ctx, lead, r.method, r.path, []byte(r.body), hdr)
				if err != nil || code != 401 {
					t.Fatalf("%d %v %q, want 401", code, err, body)
				}
			})
		}
	}
	h.after(t, lead, outcomeRejected, "requests without the token")
}

// FuzzAnyRoute sends any method and path to a member: the router answers
// every request, never with a 5xx other than 503 and 504, and nothing but a
// write route changes the state. Routes with a target of their own that
// can legitimately change membership or leadership, or that take raft
// messages, are left to those targets.
func FuzzAnyRoute(f *testing.F) {
	for _, s := range []struct{ method, path string }{
		{"GET", "/raft/api/status"}, {"GET", "/raft/api/getPeerList"}, {"GET", "/healthz"}, {"GET", "/readyz"},
		{"GET", "/metrics"}, {"GET", "/kv"}, {"GET", "/kv/a?consistency=local"}, {"GET", "/kv/a?consistency=x"},
		{"POST", "/raft/api/set"}, {"PUT", "/raft/api/set"}, {"DELETE", "/raft/api/status"}, {"GET", "/raft/api/"},
		{"GET", "/raft/node/"}, {"POST", "/raft/node/propose"}, {"GET", "/raft//api/status"}, {"GET", "/raft/api/se%74"},
		{"OPTIONS", "*"}, {"GET", "/../../etc/passwd"}, {"HEAD", "/raft/api/status"}, {"PATCH", "/raft/node/join/"},
	} {
		f.Add(uint8(len(s.path)), s.method, s.path, []byte(`{"key":"a","value":"1"}`))
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, method, path string, body []byte) {
		defer h.done(t)
		m := h.pick(t, sel)
		req, err := http.NewRequest(method, m.URL+"/"+strings.TrimPrefix(path, "/"), nil)
		if err != nil || req.URL.Host != strings.TrimPrefix(m.URL, "http://") {
			t.Skip("not a request")
		}
		clean := pathpkg.Clean("/" + req.URL.Path)
		switch {
		case clean == "/raft" || strings.HasPrefix(clean, "/raft/snapshot") || strings.HasPrefix(clean, "/raft/stream"),
			clean == "/raft/node/join" || clean == "/raft/api/addNode" || clean == "/raft/api/deleteNode" || clean == "/raft/api/transferLeader":
			t.Skip("a route with a target of its own")
		}
		h.before(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		code, resp, err := h.do(ctx, m, method, req.URL.RequestURI(), body, nil)
		what := fmt.Sprintf("%s %s %q to member %d", method, req.URL.RequestURI(), body, m.ID)
		checkAnswer(t, what, code, resp, err, false)
		o := outcomeRejected // nothing may change...
		if clean == "/raft/api/set" || clean == "/raft/node/propose" {
			o = outcomeOf(code) // ...but a write
		}
		h.after(t, m, o, what)
	})
}
