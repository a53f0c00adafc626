package embedraft

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/raft/v3"
)

// Buckets of the duration histograms: 0.5ms to about 16s, doubling.
var durationBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

// nodeMetrics holds the node's Prometheus series. Gauges are computed at
// scrape time from the node's atomics (stateCollector), so the raft and
// apply loops do nothing for them; counters and histograms are updated at a
// few hook points. Every method is safe on a nil *nodeMetrics.
type nodeMetrics struct {
	n *Node
	// reg is where the collectors were registered: the caller's
	// Registerer (possibly wrapped with the node label) or the node's own
	// registry. owned is true for the latter (nothing to unregister).
	reg        prometheus.Registerer
	owned      bool
	mu         sync.Mutex // guards registered: Close may run twice at once
	registered []prometheus.Collector
	handler    http.Handler

	leaderChanges   prometheus.Counter
	writes          *prometheus.CounterVec
	writeDuration   prometheus.Histogram
	forwarded       prometheus.Counter
	snapshots       prometheus.Counter
	snapDuration    prometheus.Histogram
	proposalsFailed prometheus.Counter
	peerRefused     prometheus.Counter
	eventsDropped   prometheus.Counter
	readRounds      *prometheus.CounterVec
	readsByRaft     prometheus.Counter // readRounds' children, looked up once
	readsByStream   prometheus.Counter
}

// initMetrics creates the node's series and registers them on
// Config.Registerer, or on a registry of the node's own when it is nil. It
// runs in New once the node's id is known, before any loop starts. A series
// that cannot be registered (most often AlreadyRegistered: another node
// registered the same names on the same Registerer without
// MetricsNodeLabel) is logged and left out; New does not fail for it.
func (n *Node) initMetrics() {
	m := &nodeMetrics{n: n}
	m.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "embedraft_leader_changes_total",
		Help: "Leader changes seen by this node (to a known leader).",
	})
	m.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "embedraft_writes_total",
		Help: "Writes (POST /raft/api/set and Node.Send) answered by this node, forwarded ones included, by result.",
	}, []string{"result"})
	m.writes.WithLabelValues("ok")
	m.writes.WithLabelValues("error")
	m.writeDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "embedraft_write_duration_seconds",
		Help:    "Time from a write's request to its answer, on the node that answered the client.",
		Buckets: durationBuckets,
	})
	m.forwarded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "embedraft_forwarded_writes_total",
		Help: "Writes this node sent to the leader (a write retried against a new leader counts once per attempt).",
	})
	m.snapshots = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "embedraft_snapshots_total",
		Help: "Snapshots taken and saved by this node.",
	})
	m.snapDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "embedraft_snapshot_duration_seconds",
		Help:    "Time to take a snapshot: the service's GetSnapshot through the fsync of the snapshot file.",
		Buckets: durationBuckets,
	})
	m.proposalsFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "embedraft_proposals_failed_total",
		Help: "Proposals raft refused, and writes refused or abandoned before reaching it (busy, leadership moved, context ended).",
	})
	m.peerRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "embedraft_peer_messages_refused_total",
		Help: "Raft messages from peers refused as malformed or not from a member.",
	})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "embedraft_events_dropped_total",
		Help: "Events not delivered to a subscriber whose buffer was full (leader changes coalesced instead).",
	})
	m.readRounds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "embedraft_read_rounds_total",
		Help: "Linearizable read rounds confirmed here (each serves every read that joined it), by how: " +
			"raft's ReadIndex, or a leader-follower pair over the forwarding stream.",
	}, []string{"via"})
	m.readsByRaft = m.readRounds.WithLabelValues("raft")
	m.readsByStream = m.readRounds.WithLabelValues("stream")
	cs := []prometheus.Collector{
		stateCollector{n}, m.leaderChanges, m.writes, m.writeDuration, m.forwarded,
		m.snapshots, m.snapDuration, m.proposalsFailed, m.peerRefused, m.eventsDropped, m.readRounds,
	}

	m.reg = n.cfg.Registerer
	var gatherer prometheus.Gatherer
	if m.reg == nil {
		own := prometheus.NewRegistry()
		own.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m.reg, m.owned = own, true
		// etcd's own collectors (rafthttp, WAL, snapshotter) register on
		// the default registry when its packages load: served too.
		gatherer = prometheus.Gatherers{own, etcdGatherer{}}
	} else if g, ok := n.cfg.Registerer.(prometheus.Gatherer); ok {
		gatherer = g
	}
	if n.cfg.MetricsNodeLabel {
		m.reg = prometheus.WrapRegistererWith(prometheus.Labels{"node": strconv.FormatUint(n.id, 10)}, m.reg)
	}
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			n.log.Warn("metrics: series not registered", "err", err)
			continue
		}
		m.registered = append(m.registered, c)
	}

	switch {
	case n.cfg.Registerer == prometheus.DefaultRegisterer:
		m.handler = promhttp.Handler() // as served before Config.Registerer existed
	case gatherer != nil:
		m.handler = promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{})
	default:
		m.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, nil, fmt.Errorf("%w: Config.Registerer is not a prometheus.Gatherer: "+
				"the application serves its metrics", ErrNotFound))
		})
	}
	n.metrics = m
}

// metricsHandler serves GET /metrics: see Config.Registerer.
func (n *Node) metricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.metrics == nil {
			http.NotFound(w, r)
			return
		}
		n.metrics.handler.ServeHTTP(w, r)
	})
}

// unregisterMetrics removes the node's collectors from the caller's
// Registerer (Close, and New when it fails). The node's own registry, if it
// has one, keeps serving its last values.
func (n *Node) unregisterMetrics() {
	m := n.metrics
	if m == nil || m.owned {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.registered {
		m.reg.Unregister(c)
	}
	m.registered = nil
}

// observeWrite records a write answered by this node.
func (m *nodeMetrics) observeWrite(start time.Time, err *error) {
	if m == nil {
		return
	}
	result := "ok"
	if *err != nil {
		result = "error"
	}
	m.writes.WithLabelValues(result).Inc()
	m.writeDuration.Observe(time.Since(start).Seconds())
}

// forwardedWrite records a write sent to the leader.
func (m *nodeMetrics) forwardedWrite() {
	if m != nil {
		m.forwarded.Inc()
	}
}

// readRound records a linearizable read round confirmed by raft's
// ReadIndex, or over the forwarding stream (byStream).
func (m *nodeMetrics) readRound(byStream bool) {
	switch {
	case m == nil:
	case byStream:
		m.readsByStream.Inc()
	default:
		m.readsByRaft.Inc()
	}
}

// snapshotSaved records a snapshot whose taking began at start.
func (m *nodeMetrics) snapshotSaved(start time.Time) {
	if m != nil {
		m.snapshots.Inc()
		if !start.IsZero() {
			m.snapDuration.Observe(time.Since(start).Seconds())
		}
	}
}

// proposalFailed records a proposal raft did not take.
func (m *nodeMetrics) proposalFailed() {
	if m != nil {
		m.proposalsFailed.Inc()
	}
}

// peerMessageRefused records a peer message transport.CheckSender or
// checkPeerContent refused.
func (m *nodeMetrics) peerMessageRefused() {
	if m != nil {
		m.peerRefused.Inc()
	}
}

func (m *nodeMetrics) leaderChanged(lead uint64) {
	if m != nil && lead != 0 {
		m.leaderChanges.Inc()
	}
}

func (m *nodeMetrics) eventDropped() {
	if m != nil {
		m.eventsDropped.Inc()
	}
}

// stateCollector computes the gauges at scrape time from what the raft and
// apply loops already publish in atomics.
type stateCollector struct{ n *Node }

var (
	descIsLeader = prometheus.NewDesc("embedraft_is_leader",
		"1 if this node is the leader (a standalone node is its own leader), else 0.", nil, nil)
	descHasLeader = prometheus.NewDesc("embedraft_has_leader",
		"1 if this node knows a leader, else 0.", nil, nil)
	descTerm    = prometheus.NewDesc("embedraft_term", "Current raft term.", nil, nil)
	descCommit  = prometheus.NewDesc("embedraft_commit_index", "Raft commit index known to this node.", nil, nil)
	descApplied = prometheus.NewDesc("embedraft_applied_index", "Last index applied to the service on this node.",
		nil, nil)
	descMembers = prometheus.NewDesc("embedraft_members", "Members of the cluster by role.", []string{"role"}, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descIsLeader, descHasLeader, descTerm, descCommit, descApplied, descMembers} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	mode := n.Mode()
	isLeader, hasLeader := 0.0, 0.0
	voters, learners := 0, 0
	switch mode {
	case ModeStandalone:
		isLeader, hasLeader, voters = 1, 1, 1
	case ModeCluster:
		if raft.StateType(n.raftState.Load()) == raft.StateLeader {
			isLeader = 1
		}
		if n.leader.Load() != 0 {
			hasLeader = 1
		}
		for _, m := range n.reg.members() {
			if m.Role == RoleLearner {
				learners++
			} else {
				voters++
			}
		}
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descIsLeader, isLeader)
	gauge(descHasLeader, hasLeader)
	view := n.currentView()
	gauge(descTerm, float64(view.term))
	gauge(descCommit, float64(view.commit))
	gauge(descApplied, float64(n.applied.get()))
	gauge(descMembers, float64(voters), RoleVoter)
	gauge(descMembers, float64(learners), RoleLearner)
}

// etcdGatherer serves the etcd_ families of the default registry, where
// etcd's packages register their collectors.
type etcdGatherer struct{}

func (etcdGatherer) Gather() ([]*dto.MetricFamily, error) {
	// A broken collector of the application's is not this node's to
	// report: its error is left out, the etcd families kept.
	mfs, _ := prometheus.DefaultGatherer.Gather()
	out := mfs[:0]
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "etcd_") {
			out = append(out, mf)
		}
	}
	return out, nil
}
