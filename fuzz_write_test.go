package embedraft_test

// Fuzz targets for the write routes: POST /raft/api/set (clients) and POST
// /raft/node/propose (followers forwarding to the leader), with an
// independent oracle for what a write body must be answered with.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/embedraft/embedraft/internal/kvstore"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// strictOp is an independent oracle for a write body: exactly one JSON
// object with a string "key" (1..MaxKeyBytes bytes) and an optional string
// "value", nothing else, nothing after it.
func strictOp(body []byte) (kvstore.Op, error) {
	var op kvstore.Op
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&op); err != nil {
		return op, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return op, fmt.Errorf("trailing data (%v)", err)
	}
	if op.Key == "" || len(op.Key) > kvstore.MaxKeyBytes {
		return op, errors.New("bad key")
	}
	return op, nil
}

// wantWriteStatus is what a write route must answer body with, once the
// request reached the body checks: 413 over the limit, 400 when empty or not
// an Op, 200 otherwise.
func wantWriteStatus(body []byte) (status int, op kvstore.Op) {
	switch {
	case len(body) > fuzzMaxBody:
		return 413, op
	case len(body) == 0:
		return 400, op
	}
	op, err := strictOp(body)
	if err != nil {
		return 400, op
	}
	return 200, op
}

func seedBodies() [][]byte {
	return [][]byte{
		nil,
		[]byte(`{"key":"a","value":"1"}`),
		[]byte(`{"key":"b"}`),
		[]byte(`{"key":`),
		[]byte(`{"key":1,"value":"x"}`),
		[]byte(`{"key":"a","value":"x","x":1}`),
		[]byte(`{"value":"x"}`),
		[]byte(`{"key":""}`),
		[]byte(`{"key":"a"}{"key":"b"}`),
		[]byte(`null`),
		[]byte(`[]`),
		[]byte(`"key"`),
		[]byte("\xff\xfe\x00"),
		[]byte(`{"key":"` + strings.Repeat("k", fuzzMaxBody) + `"}`),
		bytes.Repeat([]byte("x"), fuzzMaxBody+1),
		[]byte(`{"key":"é\u0000","value":"\ud800"}`),
	}
}

// FuzzSetRoute: POST /raft/api/set on the leader and on followers.
func FuzzSetRoute(f *testing.F) {
	for i, b := range seedBodies() {
		f.Add(uint8(i), b)
	}
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel uint8, body []byte) {
		defer h.done(t)
		want, op := wantWriteStatus(body)
		m := h.pick(t, sel)
		h.before(t)
		code, resp, err := h.post(m, "/raft/api/set", body, nil)
		what := fmt.Sprintf("set %q via member %d", body, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		h.checkWrite(t, m, what, code, resp, want, op)
	})
}

// FuzzProposeRoute: POST /raft/node/propose, the route followers forward
// writes to, with no, the right or any cluster id header.
func FuzzProposeRoute(f *testing.F) {
	for i, b := range seedBodies() {
		f.Add(uint8(i), uint8(i), "", b)
	}
	f.Add(uint8(0), uint8(2), "1234", []byte(`{"key":"a"}`))
	f.Add(uint8(1), uint8(2), " ", []byte(`{"key":"a"}`))
	h := newFuzzCluster(f)
	f.Fuzz(func(t *testing.T, sel, hdrSel uint8, cid string, body []byte) {
		defer h.done(t)
		if !validHeaderValue(cid) {
			t.Skip("not a header value")
		}
		want, op := wantWriteStatus(body)
		m := h.pick(t, sel)
		h.before(t)
		clusterID := m.Node.Status().ClusterID
		hdr := http.Header{}
		cid = pickClusterID(hdrSel, clusterID, cid)
		if cid != "" {
			hdr.Set("X-Embedraft-Cluster-Id", cid)
		}
		isLeader := m.Node.Status().State == "leader"
		code, resp, err := h.post(m, "/raft/node/propose", body, hdr)
		what := fmt.Sprintf("propose %q (cluster %q) to member %d", body, cid, m.ID)
		checkAnswer(t, what, code, resp, err, true)
		switch {
		case strings.Trim(cid, " \t") != clusterID:
			want = 403
		case !isLeader && len(body) > 0 && len(body) <= fuzzMaxBody:
			// Only the leader runs PreProcessData: a follower refuses
			// any body it cannot check itself.
			want = 503
		}
		h.checkWrite(t, m, what, code, resp, want, op)
	})
}

// checkWrite checks a write route's answer: the status it owed (a write
// that should succeed may also meet 503/504 during an election), that an
// acknowledged write is applied on the node that answered, and the state
// after it.
func (h *fuzzCluster) checkWrite(t *testing.T, m *tc.Member, what string, code int, resp []byte, want int, op kvstore.Op) {
	t.Helper()
	if code != want && !(want == 200 && (code == 503 || code == 504)) {
		t.Fatalf("%s: status %d, want %d: %s", what, code, want, resp)
	}
	if code == 200 {
		if v, found := m.Store.Get(op.Key); !found || v != op.Value {
			t.Fatalf("%s: acknowledged but member %d holds %q=%q (%v)", what, m.ID, op.Key, v, found)
		}
	}
	h.after(t, m, outcomeOf(code), what)
}
