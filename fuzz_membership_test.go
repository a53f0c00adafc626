package embedraft_test

// Fuzz targets for the membership routes: join, addNode, deleteNode and
// transferLeader. An input that changes the membership is undone, so that
// every input starts from the same cluster.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"

	"github.com/embedraft/embedraft"
)

func seedJoins() [][]byte {
	return [][]byte{
		nil,
		[]byte(`{}`),
		[]byte(`{"addr":`),
		[]byte(`{"addr":5}`),
		[]byte(`{"addr":"http://127.0.0.1:1","x":1}`),
		[]byte(`{"addr":"not a url"}`),
		[]byte(`{"addr":"http://127.0.0.1:1/x"}`),
		[]byte(`{"addr":"ftp://127.0.0.1:1"}`),
		[]byte(`{"addr":"http://user@127.0.0.1:1"}`),
		[]byte(`{"addr":"http://127.0.0.1:1","id":1}`),
		[]byte(`{"addr":"http://127.0.0.1:1","id":-1}`),
		[]byte(`{"addr":"http://127.0.0.1:1","id":1.5}`),
		[]byte(`{"addr":"http://127.0.0.1:1","cluster_id":"abc"}`),
		[]byte(`{"addr":"http://127.0.0.1:1"}{}`),
		[]byte(`{"addr":"http://127.0.0.1:1"}`),
		[]byte(`{"addr":"http://127.0.0.1:2/","id":77}`),
		[]byte(`{"addr":"http://[::1]:3"}`),
		bytes.Repeat([]byte(" "), fuzzMaxBody+1),
	}
}

// fuzzJoin fuzzes a membership-adding route (join or addNode). An accepted
// request must have added exactly the learner it answered with (which is
// then removed again) or named an existing member.
func fuzzJoin(f *testing.F, path string) {
	for i, b := range seedJoins() {
		f.Add(uint8(i), uint8(i), "", b)
	}
	f.Add(uint8(1), uint8(2), "ffff", []byte(`{"addr":"http://127.0.0.1:1"}`))
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel, hdrSel uint8, cid string, body []byte) {
		defer h.done(t)
		if !validHeaderValue(cid) {
			t.Skip("not a header value")
		}
		var req embedraft.JoinRequest
		decoded := lenientDecode(body, &req)
		if decoded && !loopbackAddr(req.Addr) {
			t.Skip("would dial a remote host")
		}
		m := h.pick(t, sel)
		before := h.before(t)
		clusterID := m.Node.Status().ClusterID
		hdr := http.Header{}
		if cid = pickClusterID(hdrSel, clusterID, cid); cid != "" {
			hdr.Set("X-Embedraft-Cluster-Id", cid)
		}
		code, resp, err := h.post(m, path, body, hdr)
		what := fmt.Sprintf("%s %q (cluster header %q) via member %d", path, body, hdr.Get("X-Embedraft-Cluster-Id"), m.ID)
		checkAnswer(t, what, code, resp, err, true)
		switch {
		case checkBodyStatus(t, what, code, resp, body, decoded):
		case !goodAddr(req.Addr):
			if code/100 != 4 {
				t.Fatalf("%s: status %d for a bad address, want a 4xx: %s", what, code, resp)
			}
		case req.ID > embedraft.MaxMemberID:
			if code != 400 {
				t.Fatalf("%s: status %d for id %d, want 400: %s", what, code, req.ID, resp)
			}
		}
		if code != 200 {
			h.after(t, m, outcomeOf(code), what)
			return
		}
		var env struct {
			Data embedraft.JoinResponse `json:"data"`
		}
		if err := json.Unmarshal(resp, &env); err != nil {
			t.Fatalf("%s: answer %s: %v", what, resp, err)
		}
		jr := env.Data
		addr := strings.TrimSuffix(req.Addr, "/")
		if jr.ID == 0 || jr.ClusterID != clusterID {
			t.Fatalf("%s: answered id %d cluster %q", what, jr.ID, jr.ClusterID)
		}
		if req.ID != 0 && jr.ID != req.ID {
			t.Fatalf("%s: asked for id %d, answered %d", what, req.ID, jr.ID)
		}
		// A follower answers with the leader's answer, possibly before it
		// has applied the change itself.
		var got embedraft.NodeInfo
		waitFor(t, 10*time.Second, func() error {
			var ok bool
			if got, ok = m.Node.Peers().Peers[strconv.FormatUint(jr.ID, 10)]; !ok || got.Addr != addr {
				return fmt.Errorf("%s: answered id %d but member %d lists %+v", what, jr.ID, m.ID, got)
			}
			return nil
		})
		if strings.Contains(before.peers, fmt.Sprintf("{%d %s ", jr.ID, addr)) {
			h.after(t, m, outcomeRejected, what+" (existing member)") // idempotent: nothing changed
			return
		}
		if got.Role != embedraft.RoleLearner {
			t.Fatalf("%s: new member %d is a %s, want a learner", what, jr.ID, got.Role)
		}
		// Remove the learner again so that the cluster stays as it was.
		lead := h.leader(t)
		del, _ := json.Marshal(embedraft.RemoveRequest{ID: jr.ID})
		waitFor(t, 15*time.Second, func() error {
			code, resp, err := h.post(lead, "/raft/api/deleteNode", del, nil)
			if err != nil || code != 200 {
				return fmt.Errorf("remove added member %d: %d %v %s", jr.ID, code, err, resp)
			}
			return nil
		})
		h.after(t, m, outcomeAccepted, what)
		if h.prev.peers != before.peers {
			t.Fatalf("%s: membership after add and remove:\n%s\nwant\n%s", what, h.prev.peers, before.peers)
		}
	})
}

// goodAddr is an independent check of a member address: http(s), a host
// and a port (1 to 65535), nothing else.
func goodAddr(s string) bool {
	s = strings.TrimSuffix(s, "/")
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return false
	}
	if port, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || port == 0 {
		return false
	}
	if _, err := types.NewURLs([]string{s}); err != nil {
		return false
	}
	return u.Path == "" && u.RawQuery == "" && u.Fragment == "" && u.User == nil && u.Opaque == "" && !u.ForceQuery
}

// FuzzJoinRoute: POST /raft/node/join, the route a joining node calls.
func FuzzJoinRoute(f *testing.F) { fuzzJoin(f, "/raft/node/join") }

// FuzzAddNodeRoute: POST /raft/api/addNode, the admin route.
func FuzzAddNodeRoute(f *testing.F) { fuzzJoin(f, "/raft/api/addNode") }

// FuzzDeleteNodeRoute: POST /raft/api/deleteNode with anything but a
// current member's id (a valid removal is not bad input): always a 4xx.
func FuzzDeleteNodeRoute(f *testing.F) {
	for i, b := range [][]byte{
		nil, []byte(`{}`), []byte(`{"id":0}`), []byte(`{"id":42}`), []byte(`{"id":"1"}`), []byte(`{"id":-1}`),
		[]byte(`{"id":1.0}`), []byte(`{"id":1e3}`), []byte(`{"id":18446744073709551616}`), []byte(`{"id":1}{}`),
		[]byte(`{"id":9,"x":1}`), []byte(`{"ID":99}`), []byte(`null`), []byte(`[1]`), bytes.Repeat([]byte("1"), fuzzMaxBody+1),
	} {
		f.Add(uint8(i), b)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		defer h.done(t)
		var req embedraft.RemoveRequest
		decoded := lenientDecode(body, &req)
		m := h.pick(t, sel)
		h.before(t)
		if _, member := m.Node.Peers().Peers[strconv.FormatUint(req.ID, 10)]; decoded && member {
			t.Skip("a valid removal")
		}
		code, resp, err := h.post(m, "/raft/api/deleteNode", body, nil)
		what := fmt.Sprintf("deleteNode %q via member %d", body, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		want := 0 // any 4xx
		switch {
		case len(body) > fuzzMaxBody:
			want = 413
		case !decoded, req.ID == 0:
			want = 400
		}
		if code/100 != 4 || (want != 0 && code != want) {
			t.Fatalf("%s: status %d, want %v: %s", what, code, map[bool]interface{}{true: want, false: "a 4xx"}[want != 0], resp)
		}
		h.after(t, m, outcomeRejected, what)
	})
}

// FuzzTransferLeaderRoute: POST /raft/api/transferLeader. A transfer to a
// voter may succeed; anything else is a 4xx (or 503 on a follower) and
// changes nothing.
func FuzzTransferLeaderRoute(f *testing.F) {
	for i, b := range [][]byte{
		nil, []byte(`{}`), []byte(`{"to":0}`), []byte(`{"to":42}`), []byte(`{"to":"1"}`), []byte(`{"to":-1}`),
		[]byte(`{"to":2}`), []byte(`{"to":1}{}`), []byte(`{"to":1,"x":1}`), []byte(`{"to":1e300}`),
		bytes.Repeat([]byte("1"), fuzzMaxBody+1),
	} {
		f.Add(uint8(i), b)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		defer h.done(t)
		var req struct {
			To uint64 `json:"to"`
		}
		decoded := lenientDecode(body, &req)
		m := h.pick(t, sel)
		before := h.before(t)
		_, member := m.Node.Peers().Peers[strconv.FormatUint(req.To, 10)]
		code, resp, err := h.post(m, "/raft/api/transferLeader", body, nil)
		what := fmt.Sprintf("transferLeader %q via member %d", body, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		switch {
		case checkBodyStatus(t, what, code, resp, body, decoded):
		case !member:
			if code/100 != 4 {
				t.Fatalf("%s: status %d for a non-member, want a 4xx: %s", what, code, resp)
			}
		}
		h.after(t, m, outcomeOf(code), what)
		if code/100 == 4 && h.prev.term == before.term && h.prev.leader != before.leader {
			t.Fatalf("%s: rejected, but the leader moved from %d to %d", what, before.leader, h.prev.leader)
		}
	})
}
