package embedraft

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/raft/v3"

	"github.com/embedraft/embedraft/transport"
)

// This file holds the checks that keep operator mistakes from losing
// acknowledged writes: a member whose data directory was wiped must not come
// back under its id (it forgot its log and its votes), and standalone writes
// must not be left behind by a cluster bootstrap.

// standaloneMarker records in DataDir that the service applied writes while
// the node was standalone, so that a later cluster bootstrap over the same
// directory carries them over (Cluster) or refuses (Peers, Join).
const standaloneMarker = "STANDALONE_WRITES"

func hasStandaloneWrites(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, standaloneMarker))
	return err == nil
}

// markStandaloneWrite makes the standalone marker durable before the first
// standalone write is committed. Called with commitMu held.
func (n *Node) markStandaloneWrite() error {
	if n.standaloneMarked.Load() {
		return nil
	}
	if err := writeDurableFile(n.cfg.DataDir, standaloneMarker, []byte("standalone writes\n")); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	n.standaloneMarked.Store(true)
	return nil
}

// writeDurableFile writes dir/name atomically and durably: a temporary
// file, fsynced, renamed into place, then the directory fsynced.
func writeDurableFile(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("rename %s: %w", name, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir for %s: %w", name, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir for %s: %w", name, err)
	}
	return nil
}

// MembershipView is served to peers on GET /raft/node/membership: the
// replicated membership as this node has applied it.
type MembershipView struct {
	ClusterID string              `json:"cluster_id"`
	Mode      string              `json:"mode"`
	Members   map[string]NodeInfo `json:"members"`
	Removed   []uint64            `json:"removed"`
	Started   []uint64            `json:"started"`
}

// Membership returns the replicated membership as this node has applied
// it, with the members known to have a log (Started) and removed ids.
func (n *Node) Membership() MembershipView {
	st := n.reg.state()
	v := MembershipView{
		ClusterID: strconv.FormatUint(n.clusterID.Load(), 16),
		Mode:      n.Mode(),
		Members:   map[string]NodeInfo{},
		Removed:   st.Removed,
		Started:   st.Started,
	}
	for id, m := range st.Members {
		v.Members[strconv.FormatUint(id, 10)] = m
	}
	return v
}

// checkStaticMember asks the other static members, before this node
// bootstraps with an empty data directory, whether the cluster already runs
// with this member in it (etcd's isMemberBootstrapped). A member that has a
// log there and comes back empty lost data a quorum may depend on: it is
// refused with ErrMemberDataLost. confirmed is true when a running member
// vouched that this one never had a log; when no member answers (a new
// cluster whose nodes are starting), the node starts with its vote gated.
// clusterID is the cluster the member bootstraps: staticClusterID, or
// restoredClusterID for a restore. Members that answer from another
// cluster are ignored (rafthttp keeps the two apart) and logged.
func (n *Node) checkStaticMember(ctx context.Context, clusterID uint64) (confirmed bool, err error) {
	cid := strconv.FormatUint(clusterID, 16)
	timeout := time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		TLSClientConfig: n.clientTLS()}}
	defer client.CloseIdleConnections()
	type answer struct {
		from uint64
		view MembershipView
		err  error
	}
	answers := make(chan answer, len(n.cfg.Peers))
	asked := 0
	for id, addr := range n.cfg.Peers {
		if id == n.id {
			continue
		}
		asked++
		go func() { // ends within timeout: the client's
			v, err := fetchMembership(ctx, client, n.dialURL(addr), n.cfg.Token)
			answers <- answer{id, v, err}
		}()
	}
	for range asked {
		a := <-answers
		if a.err != nil {
			n.log.Info("bootstrap check: member did not answer", "member", a.from, "err", a.err)
			continue
		}
		v := a.view
		if v.Mode != ModeCluster && v.Mode != ModeRemoved {
			continue
		}
		if v.ClusterID != cid {
			n.log.Warn("bootstrap check: member runs another cluster; this node will not talk to it",
				"member", a.from, "its_cluster", v.ClusterID, "this_cluster", cid)
			continue
		}
		self := strconv.FormatUint(n.id, 10)
		switch {
		case slices.Contains(v.Removed, n.id):
			err = fmt.Errorf("%w: member %d was removed from cluster %s (member %d says so); start it with "+
				"an empty data directory and Join (-join) to come back as a new member", ErrRemoved, n.id, cid, a.from)
		case slices.Contains(v.Started, n.id):
			err = fmt.Errorf("%w: member %d already ran in cluster %s (member %d has its log acknowledged) but "+
				"its data directory %s is empty; remove it (POST /raft/api/deleteNode {\"id\":%d}) and join again "+
				"with an empty data directory", ErrMemberDataLost, n.id, cid, a.from, n.cfg.DataDir, n.id)
		default:
			if _, ok := v.Members[self]; ok {
				confirmed = true
			}
		}
	}
	if err != nil {
		return false, err
	}
	if !confirmed {
		n.log.Warn("no member confirmed this node is new; it votes only for fresh candidates until it has caught up")
	}
	return confirmed, nil
}

// fetchMembership reads a peer's GET /raft/node/membership.
func fetchMembership(ctx context.Context, client *http.Client, base, token string) (MembershipView, error) {
	var v MembershipView
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+transport.MembershipPath, nil)
	if err != nil {
		return v, err
	}
	transport.SetToken(req, token)
	resp, err := client.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("status %d", resp.StatusCode)
	}
	var env struct {
		Data MembershipView `json:"data"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 16<<20)).Decode(&env); err != nil {
		return v, err
	}
	return env.Data, nil
}

// startedProposer is the leader's bookkeeping for kindStarted entries; only
// promoteLoop uses it.
type startedProposer struct {
	last   []uint64
	lastAt time.Time
}

// proposeStarted records, through the log, every member that has
// acknowledged entries (its match index is above 0) and is not yet known to
// have a log. Run by the leader's promoteLoop.
func (n *Node) proposeStarted() {
	if raft.StateType(n.raftState.Load()) != raft.StateLeader {
		return
	}
	st := n.rn.Status()
	var ids []uint64
	for id, pr := range st.Progress {
		if pr.Match == 0 || n.reg.isStarted(id) {
			continue
		}
		if _, ok := n.reg.member(id); ok {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return
	}
	slices.Sort(ids)
	p := &n.starter
	if slices.Equal(ids, p.last) && time.Since(p.lastAt) < 2*time.Second {
		return // the previous proposal may still be on its way
	}
	p.last, p.lastAt = ids, time.Now()
	ctx, cancel := context.WithTimeout(n.stopCtx, n.cfg.ForwardTimeout)
	defer cancel()
	env := entryEnvelope{Kind: kindStarted, Origin: n.id, Payload: marshalIDs(ids)}
	if err := n.rn.Propose(ctx, env.marshal()); err != nil && !errors.Is(err, raft.ErrProposalDropped) {
		n.log.Warn("record started members", "ids", ids, "err", err)
	}
}

// confGate allows at most one membership change in flight. A change whose
// outcome is unknown (its wait timed out) keeps the gate shut until it is
// applied, the term changes, or everything in the log has been applied:
// raft may still commit it, and a second change decided before that would
// be decided on stale membership.
type confGate struct {
	mu          sync.Mutex
	busy        bool
	pendingReq  uint64
	pendingTerm uint64
	pendingAt   time.Time
}

// acquire takes the gate for a change on the leader of term. logApplied
// reports whether raft has applied its whole log.
func (g *confGate) acquire(term uint64, logApplied func() bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy {
		return false
	}
	if g.pendingReq != 0 && g.pendingTerm == term && (time.Since(g.pendingAt) < time.Second || !logApplied()) {
		return false
	}
	g.pendingReq = 0
	g.busy = true
	return true
}

// release frees the gate; pendingReq, when not 0, is a proposed change
// whose outcome is unknown.
func (g *confGate) release(pendingReq, term uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.busy = false
	g.pendingReq, g.pendingTerm, g.pendingAt = pendingReq, term, time.Now()
}

// applied tells the gate that the change of request req was applied.
func (g *confGate) applied(req uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pendingReq == req {
		g.pendingReq = 0
	}
}

// heardTracker records when a message last arrived from each peer, so the
// leader knows which voters are alive right now (raft's RecentActive is
// reset every election timeout, and rafthttp keeps a stream to a dead peer
// behind a proxy open).
//
// touch runs for every raft message from a peer, so it reads a coarse
// clock, the time of the raft loop's last tick, instead of time.Now: a
// recorded time is never later than the message's arrival, so after never
// counts a message from before t; one that arrived after t counts from the
// next tick on (at most a tick late, and the callers poll or look back
// several heartbeats).
type heardTracker struct {
	clock atomic.Int64 // unix nanos of the raft loop's last tick; 0 before the first
	mu    sync.Mutex   // serializes adding a peer to at
	// at maps a peer to the unix nanos of its last message. The map is
	// replaced, never changed, when a peer is added (rarely).
	at atomic.Pointer[map[uint64]*atomic.Int64]
}

// tick advances the coarse clock. Called by the raft loop on every tick.
func (h *heardTracker) tick() { h.clock.Store(time.Now().UnixNano()) }

func (h *heardTracker) touch(id uint64) {
	now := h.clock.Load()
	if now == 0 {
		now = time.Now().UnixNano()
	}
	h.last(id).Store(now)
}

// last returns id's record, adding it on its first message.
func (h *heardTracker) last(id uint64) *atomic.Int64 {
	if m := h.at.Load(); m != nil {
		if a := (*m)[id]; a != nil {
			return a
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[uint64]*atomic.Int64{}
	if old := h.at.Load(); old != nil {
		if a := (*old)[id]; a != nil {
			return a
		}
		m = maps.Clone(*old)
	}
	a := new(atomic.Int64)
	m[id] = a
	h.at.Store(&m)
	return a
}

// after reports whether a message from id arrived after t.
func (h *heardTracker) after(id uint64, t time.Time) bool {
	m := h.at.Load()
	if m == nil {
		return false
	}
	a := (*m)[id]
	return a != nil && a.Load() > t.UnixNano()
}

// lostLogEvidence tracks how long heartbeats have committed past this
// member's log without a break.
type lostLogEvidence struct {
	since atomic.Int64 // unix nanos of the first such heartbeat; 0: none
}

// persists records one such heartbeat and reports whether they have come
// for at least d.
func (e *lostLogEvidence) persists(d time.Duration) bool {
	now := time.Now().UnixNano()
	e.since.CompareAndSwap(0, now)
	return now-e.since.Load() >= int64(d)
}

func (e *lostLogEvidence) clear() { e.since.Store(0) }

// checkIdentity refuses to restart from a data directory that contradicts
// the configuration: another node id, another static member list (for a
// restored static cluster, another list or backup), a Restore file other
// than the backup the directory was restored from, or a -join target that is
// in another cluster.
func checkIdentity(ctx context.Context, cfg Config, idGiven bool, meta walMetadata, tlsConfig *tls.Config) error {
	if idGiven && meta.NodeID != cfg.ID {
		return fmt.Errorf("%w: data dir %s belongs to node %d, not %d", ErrInvalidConfig, cfg.DataDir, meta.NodeID, cfg.ID)
	}
	if cfg.Restore != "" {
		if err := checkRestoreOnWAL(cfg, meta); err != nil {
			return err
		}
	}
	if len(cfg.Peers) > 0 {
		want := staticClusterID(cfg.Peers)
		if meta.Restore != "" {
			want = restoredClusterID(cfg.Peers, meta.Restore)
		}
		if want != meta.ClusterID {
			return fmt.Errorf("%w: data dir %s belongs to cluster %x, not the one Peers describes (%x)",
				ErrInvalidConfig, cfg.DataDir, meta.ClusterID, want)
		}
	}
	if cfg.Join != "" {
		// Best effort: a target that cannot be reached must not stop a
		// member from restarting.
		if st, err := fetchStatus(ctx, cfg.Join, cfg.Token, tlsConfig); err == nil && st.Mode == ModeCluster &&
			st.ClusterID != strconv.FormatUint(meta.ClusterID, 16) {
			return fmt.Errorf("%w: data dir %s belongs to cluster %x, but %s is in cluster %s",
				ErrInvalidConfig, cfg.DataDir, meta.ClusterID, cfg.Join, st.ClusterID)
		}
	}
	return nil
}
