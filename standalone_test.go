package embedraft_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

func TestStandaloneWriteRunsPreProcessThenCommit(t *testing.T) {
	c := tc.NewSingle(t)
	m := c.Members[0]
	if st := m.Node.Status(); st.Mode != embedraft.ModeStandalone || st.State != "leader" || st.Leader != 1 {
		t.Fatalf("status %+v", st)
	}
	code, body, err := c.Set(m, "a", "1")
	if err != nil || code != 200 {
		t.Fatalf("set: %d %v %s", code, err, body)
	}
	var env struct {
		Code string     `json:"code"`
		Data kvstore.Op `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Code != "000000" || env.Data != (kvstore.Op{Key: "a", Value: "1"}) {
		t.Fatalf("answer %s (%v)", body, err)
	}
	if v, _ := m.Store.Get("a"); v != "1" || m.Store.PreProcessCount() != 1 {
		t.Fatalf("store has %q after %d PreProcessData calls", v, m.Store.PreProcessCount())
	}
	obj, err := m.Node.Send(context.Background(), []byte(`{"key":"b","value":"2"}`))
	var op kvstore.Op
	raw, _ := obj.(json.RawMessage)
	if err != nil || json.Unmarshal(raw, &op) != nil || op.Value != "2" {
		t.Fatalf("Send: %s %v", obj, err)
	}
	code, body, _ = c.Post(m, "/raft/api/set", []byte(`{"key":`))
	if code != 400 || !strings.Contains(string(body), "invalid JSON") || m.Store.Len() != 2 {
		t.Fatalf("malformed write: %d %s, %d keys", code, body, m.Store.Len())
	}
	if pl := m.Node.Peers(); len(pl.Peers) != 1 || pl.Peers["1"].Addr != m.URL {
		t.Fatalf("peer list %+v", pl)
	}
}

func TestOneMemberClusterRestarts(t *testing.T) {
	c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
	m := c.Members[0]
	c.WaitLeader(5e9)
	st := m.Node.Status()
	if st.Mode != embedraft.ModeCluster || st.ClusterID == "0" {
		t.Fatalf("status %+v", st)
	}
	c.MustSet(m, "a", "1")
	m.Stop()
	m.Restart()
	c.WaitLeader(5e9)
	if v, _ := m.Store.Get("a"); v != "1" {
		t.Fatalf("write lost across restart")
	}
	if st2 := m.Node.Status(); st2.ClusterID != st.ClusterID {
		t.Fatalf("cluster id changed: %s -> %s", st.ClusterID, st2.ClusterID)
	}
	// A second one-member cluster gets a different id.
	other := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
	if id := other.Members[0].Node.Status().ClusterID; id == st.ClusterID {
		t.Fatalf("two clusters share the id %s", id)
	}
}
