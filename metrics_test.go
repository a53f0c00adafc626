package embedraft_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// scrape fetches GET /metrics from m's handler and parses it.
func scrape(t *testing.T, c *tc.Cluster, m *tc.Member) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Client.Get(m.URL + "/metrics")
	if err != nil {
		t.Fatalf("scrape member %d: %v", m.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape member %d: %s %s", m.ID, resp.Status, b)
	}
	var p expfmt.TextParser
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics of member %d: %v", m.ID, err)
	}
	return mfs
}

// metricValue returns the value of the series of family name whose labels
// include want, and whether there is one.
func metricValue(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func mustValue(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := metricValue(mfs, name, labels)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

// GET /metrics serves the node's own registry by default: the leader gauge
// is 1 on exactly one member, writes are counted where they were answered,
// and the Go collectors are there.
func TestMetricsOwnRegistry(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(10 * time.Second)
	term := leader.Node.Status().Term
	follower := c.Followers()[0]
	before := map[uint64]float64{}
	for _, m := range c.Members {
		before[m.ID] = mustValue(t, scrape(t, c, m), "embedraft_writes_total", map[string]string{"result": "ok"})
	}
	const viaLeader, viaFollower = 5, 7
	for i := range viaLeader {
		c.MustSet(leader, fmt.Sprintf("l%d", i), "x")
	}
	for i := range viaFollower {
		c.MustSet(follower, fmt.Sprintf("f%d", i), "x")
	}
	if code, _, err := c.Post(follower, "/raft/api/set", []byte("not json")); err != nil || code == 200 {
		t.Fatalf("bad write answered %d, %v", code, err)
	}
	if leader.Node.Status().Term != term {
		t.Skip("leadership changed during the test; counts are not comparable")
	}
	leaders := 0
	for _, m := range c.Members {
		mfs := scrape(t, c, m)
		leaders += int(mustValue(t, mfs, "embedraft_is_leader", nil))
		if v := mustValue(t, mfs, "embedraft_members", map[string]string{"role": "voter"}); v != 3 {
			t.Errorf("member %d: embedraft_members{role=voter} = %v, want 3", m.ID, v)
		}
		if v := mustValue(t, mfs, "embedraft_members", map[string]string{"role": "learner"}); v != 0 {
			t.Errorf("member %d: embedraft_members{role=learner} = %v, want 0", m.ID, v)
		}
		if v := mustValue(t, mfs, "embedraft_term", nil); v != float64(term) {
			t.Errorf("member %d: embedraft_term = %v, want %d", m.ID, v, term)
		}
		if v := mustValue(t, mfs, "embedraft_has_leader", nil); v != 1 {
			t.Errorf("member %d: embedraft_has_leader = %v", m.ID, v)
		}
		if mustValue(t, mfs, "embedraft_applied_index", nil) == 0 || mustValue(t, mfs, "embedraft_commit_index", nil) == 0 {
			t.Errorf("member %d: zero commit or applied index", m.ID)
		}
		if _, ok := mfs["go_goroutines"]; !ok {
			t.Errorf("member %d: no Go collector", m.ID)
		}
		ok := mustValue(t, mfs, "embedraft_writes_total", map[string]string{"result": "ok"}) - before[m.ID]
		failed := mustValue(t, mfs, "embedraft_writes_total", map[string]string{"result": "error"})
		forwarded := mustValue(t, mfs, "embedraft_forwarded_writes_total", nil)
		durations := mustValue(t, mfs, "embedraft_write_duration_seconds", nil)
		switch m {
		case leader:
			if ok != viaLeader || failed != 0 || forwarded != 0 {
				t.Errorf("leader %d: ok %v error %v forwarded %v, want %d 0 0", m.ID, ok, failed, forwarded, viaLeader)
			}
		case follower:
			if ok != viaFollower || failed != 1 || forwarded < viaFollower {
				t.Errorf("follower %d: ok %v error %v forwarded %v, want %d 1 >=%d",
					m.ID, ok, failed, forwarded, viaFollower, viaFollower)
			}
			if durations < viaFollower+1 {
				t.Errorf("follower %d: %v write durations observed, want at least %d", m.ID, durations, viaFollower+1)
			}
		default:
			if ok != 0 || failed != 0 {
				t.Errorf("member %d answered no write but counts ok %v error %v", m.ID, ok, failed)
			}
		}
	}
	if leaders != 1 {
		t.Errorf("embedraft_is_leader is 1 on %d members, want 1", leaders)
	}
}

// Snapshots taken are counted and timed.
func TestMetricsSnapshots(t *testing.T) {
	c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true; cfg.SnapshotCount = 5 })
	m := c.Members[0]
	for i := range 12 {
		c.MustSet(m, "k"+strconv.Itoa(i), "v")
	}
	tc.Eventually(t, 10*time.Second, func() error {
		mfs := scrape(t, c, m)
		if n := mustValue(t, mfs, "embedraft_snapshots_total", nil); n < 2 {
			return fmt.Errorf("%v snapshots counted, want at least 2", n)
		}
		if n := mustValue(t, mfs, "embedraft_snapshot_duration_seconds", nil); n < 2 {
			return fmt.Errorf("%v snapshot durations observed, want at least 2", n)
		}
		return nil
	})
}

// A Registerer passed in receives the series (and is served, being a
// Gatherer); Close unregisters them. With MetricsNodeLabel several nodes
// share one Registerer.
func TestMetricsRegisterer(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true; cfg.Registerer = reg })
		m := c.Members[0]
		c.MustSet(m, "k", "v")
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*dto.MetricFamily{}
		for _, mf := range mfs {
			byName[mf.GetName()] = mf
		}
		if v := mustValue(t, byName, "embedraft_is_leader", nil); v != 1 {
			t.Errorf("embedraft_is_leader = %v, want 1", v)
		}
		if v := mustValue(t, byName, "embedraft_writes_total", map[string]string{"result": "ok"}); v != 1 {
			t.Errorf("embedraft_writes_total{result=ok} = %v, want 1", v)
		}
		if _, ok := scrape(t, c, m)["embedraft_term"]; !ok {
			t.Errorf("GET /metrics does not serve the Registerer passed in")
		}
		m.Stop()
		mfs, err = reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "embedraft_") {
				t.Errorf("%s still registered after Close", mf.GetName())
			}
		}
	})
	t.Run("NodeLabel", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.Registerer = reg; cfg.MetricsNodeLabel = true })
		leader := c.WaitLeader(10 * time.Second)
		tc.Eventually(t, 10*time.Second, func() error {
			mfs, err := reg.Gather()
			if err != nil {
				return err
			}
			for _, mf := range mfs {
				if mf.GetName() != "embedraft_is_leader" {
					continue
				}
				if len(mf.GetMetric()) != 3 {
					return fmt.Errorf("%d is_leader series, want 3", len(mf.GetMetric()))
				}
				for _, s := range mf.GetMetric() {
					id := s.GetLabel()[0].GetValue()
					if want := id == strconv.FormatUint(leader.ID, 10); want != (s.GetGauge().GetValue() == 1) {
						return fmt.Errorf("node %s: is_leader %v (leader is %d)", id, s.GetGauge().GetValue(), leader.ID)
					}
				}
				return nil
			}
			return fmt.Errorf("no embedraft_is_leader")
		})
	})
	t.Run("Collision", func(t *testing.T) {
		// Without the label the second and third nodes' series collide:
		// they start anyway, without them.
		reg := prometheus.NewRegistry()
		c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.Registerer = reg })
		c.MustSet(c.WaitLeader(10*time.Second), "k", "v")
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	})
}
