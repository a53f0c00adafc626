package embedraft_test

// Fuzz target for rafthttp's peer routes (/raft, /raft/snapshot, the
// streams and /raft/probing), and what a well-behaved peer sends.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// peerRoutes are rafthttp's routes, with the method a peer uses.
var peerRoutes = []struct{ path, method string }{
	{"/raft", http.MethodPost},
	{"/raft/snapshot", http.MethodPost},
	{"/raft/stream/message/", http.MethodGet},
	{"/raft/stream/msgapp/", http.MethodGet}, // rafthttp's msgappv2 stream
	{"/raft/probing", http.MethodGet},
}

// peerVersion is the etcd version a peer announces (rafthttp refuses peers
// below 3.0 before it looks at anything else).
const peerVersion = "3.5.0"

// raftMessage decodes the raft message a peer request carries, as rafthttp
// does: the whole body on /raft, a length-prefixed message on
// /raft/snapshot. ok is false when rafthttp would refuse the body.
func raftMessage(path string, body []byte) (m raftpb.Message, ok bool) {
	switch path {
	case "/raft":
		return m, len(body) <= 64<<10 && m.Unmarshal(body) == nil
	case "/raft/snapshot":
		if len(body) < 8 {
			return m, false
		}
		l := binary.BigEndian.Uint64(body)
		if l > 1<<30 {
			return m, false // refused with 413 before rafthttp reads it
		}
		if l > 1<<20 {
			// rafthttp allocates l bytes up front: not worth a fuzz
			// worker's memory, so count it as a forged message.
			return raftpb.Message{Type: raftpb.MsgSnap}, true
		}
		ok = l <= uint64(len(body)-8) && m.Unmarshal(body[8:8+l]) == nil && m.Type == raftpb.MsgSnap
		return m, ok
	}
	return m, false
}

// versionAccepted reports whether rafthttp accepts a peer announcing
// version ver (it refuses peers below 3.0).
func versionAccepted(ver string) bool {
	major, _, _ := strings.Cut(ver, ".")
	ma, _ := strconv.ParseUint(major, 10, 64)
	return ma >= 3
}

// FuzzPeerRoutes sends random requests to rafthttp's routes, with no, a
// wrong or the right cluster id (X-Etcd-Cluster-ID, the status route's
// cluster_id).
func FuzzPeerRoutes(f *testing.F) {
	msg := func(m raftpb.Message) []byte { b, _ := m.Marshal(); return b }
	framed := func(l uint64, rest []byte) []byte { return append(binary.BigEndian.AppendUint64(nil, l), rest...) }
	seeds := []struct {
		route, method, hdr uint8
		cid, ver, from     string
		raftTo             bool
		body               []byte
	}{
		{0, 0, 0, "", "", "", false, []byte("garbage")},
		{0, 0, 1, "", "", "", false, []byte("\x00\x01garbage")},
		{0, 0, 1, "", "", "", false, []byte{0xff, 0xff, 0xff}},
		{0, 0, 2, "1234", "", "", false, msg(raftpb.Message{Type: raftpb.MsgProp})},
		{0, 1, 1, "", "", "", false, nil},
		{0, 0, 1, "", "2.0.0", "", false, nil},
		{0, 0, 1, "", "99.0.0", "", false, []byte{0x08}},
		{1, 0, 1, "", "", "", false, framed(5, []byte("ab"))},
		{1, 0, 1, "", "", "", false, framed(1<<40, nil)},
		{1, 0, 1, "", "", "", false, framed(2, []byte{0x08, 0x01})},
		{1, 0, 1, "", "", "", false, []byte{0, 1}},
		{1, 2, 2, "x", "", "", false, framed(0, nil)},
		{2, 0, 1, "", "", "2", false, nil},
		{2, 0, 1, "", "", "zz", true, nil},
		{2, 0, 1, "", "", "ffffffff", true, nil},
		{2, 1, 1, "", "", "2", true, []byte("x")},
		{3, 0, 1, "", "", "3", true, nil},
		{3, 0, 0, "", "", "", false, nil},
		{4, 0, 0, "", "", "", false, nil},
		{4, 3, 1, "", "", "", false, []byte("x")},
	}
	for _, s := range seeds {
		f.Add(uint8(len(s.body)), s.route, s.method, s.hdr, s.cid, s.ver, s.from, s.raftTo, s.body)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel, route, method, hdrSel uint8, cid, ver, from string, raftTo bool, body []byte) {
		defer h.done(t)
		if !validHeaderValue(cid) || !validHeaderValue(ver) {
			t.Skip("not a header value")
		}
		if ver == "" {
			ver = peerVersion
		}
		r := peerRoutes[int(route)%len(peerRoutes)]
		m := h.pick(t, sel)
		h.before(t)
		clusterID := m.Node.Status().ClusterID
		hdr := http.Header{}
		hdr.Set("X-Server-Version", ver)
		cid = pickClusterID(hdrSel, clusterID, cid)
		if cid != "" {
			hdr.Set("X-Etcd-Cluster-ID", cid)
		}
		if raftTo {
			hdr.Set("X-Raft-To", strconv.FormatUint(m.ID, 16))
		}
		path := r.path
		stream := strings.HasPrefix(path, "/raft/stream/")
		if stream {
			path += url.PathEscape(from)
		}
		verb := r.method
		switch method % 4 {
		case 1:
			verb = map[string]string{http.MethodGet: http.MethodPost, http.MethodPost: http.MethodGet}[verb]
		case 2:
			verb = http.MethodPut
		case 3:
			verb = http.MethodDelete
		}
		// A request that hands raft a message (the right cluster id, an
		// accepted version, a body rafthttp decodes) is a forged peer
		// message. Without a cluster token a well-formed one is trusted by
		// design (the peer routes authenticate peers only with a token), so
		// such inputs are skipped unless EMBEDRAFT_FUZZ_FORGED is set; the
		// malformed ones raft would crash on are refused
		// (TestRegressionForgedPeerMessage).
		right := strings.Trim(cid, " \t") == clusterID
		msg, decoded := raftMessage(r.path, body)
		stepped := right && verb == http.MethodPost && versionAccepted(ver) && decoded
		if stepped && !raft.IsLocalMsg(msg.Type) && os.Getenv("EMBEDRAFT_FUZZ_FORGED") == "" {
			t.Skip("a forged raft message without a token")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if stream {
			// An accepted stream stays open: a real peer's handshake.
			cancel()
			ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		}
		code, resp, err := h.do(ctx, m, verb, path, body, hdr)
		cancel()
		what := fmt.Sprintf("%s %s (cluster %q, version %q, to %v) %q to member %d", verb, path, cid, ver, raftTo, body, m.ID)
		if stream && code == 200 && errors.Is(err, context.DeadlineExceeded) {
			err = nil
		}
		checkAnswer(t, what, code, resp, err, false)
		if code/100 == 2 && !right && r.path != "/raft/probing" {
			t.Fatalf("%s: accepted without the cluster id: %d", what, code)
		}
		if code/100 == 2 && !stepped && (r.path == "/raft" || r.path == "/raft/snapshot") {
			t.Fatalf("%s: status %d for a body that is no raft message", what, code)
		}
		h.after(t, m, outcomeOf(code), what)
	})
}

// peerHeaders are the headers of a well-behaved rafthttp peer of cluster
// clusterID (hex, as the status route shows it).
func peerHeaders(clusterID string) http.Header {
	h := http.Header{}
	h.Set("X-Server-Version", peerVersion)
	h.Set("X-Etcd-Cluster-ID", clusterID)
	h.Set("Content-Type", "application/protobuf")
	return h
}
