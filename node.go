package embedraft

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.uber.org/zap"

	"github.com/embedraft/embedraft/transport"
)

// Modes reported by Status.
const (
	ModeStandalone = "standalone"
	ModeCluster    = "cluster"
	ModeRemoved    = "removed"
)

// removedMarker is the file a removed node leaves in its data directory so
// that it never comes back under the same id.
const removedMarker = "REMOVED"

// Node is one member of an embedraft cluster (or a standalone node). Create
// it with New, mount Handler on your router, write with Send, stop with
// Close.
//
// Goroutines (cluster mode): the raft loop (run) owns the Ready/Advance
// cycle, ticks, the WAL, the snapshot files, MemoryStorage writes and the
// transport's sends; the apply loop (applyLoop) is the only caller of the
// service's Commit, ResetSnap and GetSnapshot; the read loop (readLoop)
// issues the ReadIndex that concurrent linearizable reads share. They exit
// when stopc is closed (Close, a fatal storage error, or removal).
// raft.Node's own methods (Propose, ReadIndex, ProposeConfChange, Step) are
// goroutine-safe channel calls into raft's goroutine and are used directly
// from request goroutines.
type Node struct {
	cfg Config
	svc IService
	log *slog.Logger
	zl  *zap.Logger

	id        uint64
	clusterID atomic.Uint64
	mode      atomic.Value // string

	reg     *registry
	waits   *waitMap[uint64, applyResult]
	reads   *readBatcher
	applied *indexNotifier
	reqSeq  atomic.Uint64
	fwd     *transport.Forwarder
	handler http.Handler
	// certs is the node's TLS identity (tls.go), nil without CertFile;
	// uiClient fetches members' status for the cluster page over it.
	certs    *transport.TLS
	uiClient *http.Client

	// standalone mode: writes hold gate for reading; commitMu keeps the
	// service's Commit single-threaded as in cluster mode.
	gate     sync.RWMutex
	commitMu sync.Mutex

	// idem is the replicated Idempotency-Key table (idempotency.go).
	idem *idemTable

	// cluster mode, set once by startRaft before the loops start.
	rn      raft.Node
	storage *raft.MemoryStorage
	disk    *diskStorage
	peerTr  atomic.Pointer[rafthttp.Transport]
	applyq  *applyQueue
	propc   chan proposal // writes waiting for proposeLoop
	// persisting is set while the raft loop writes a Ready's entries;
	// persisted (capacity 1) wakes the proposer when it is done (batch.go).
	persisting atomic.Bool
	persisted  chan struct{}
	snapReqc   chan snapshotRequest
	backupc    chan backupRequest // backup.go: captures served by the apply loop
	purgeDone  <-chan struct{}

	// published by the raft loop for Status and the write path.
	leader    atomic.Uint64
	raftState atomic.Uint32
	leaderSig *indexNotifier // bumped on every leader change
	// view is raft's state (term, leader, commit) as the raft loop last saw
	// it, published before it sends any message of the same Ready; voters
	// is the configuration the apply loop last gave raft (readindex.go).
	view   atomic.Pointer[raftView]
	voters atomic.Pointer[raftpb.ConfState]
	// streamReadsAfter (unix ns): until then, read rounds skip asking the
	// leader over the forwarding stream (it refused or did not answer).
	streamReadsAfter atomic.Int64
	probes           *probeHub // the leader's probes of followers (readprobe.go)

	metrics *nodeMetrics // metrics.go
	events  eventHub     // events.go

	// membership changes: at most one in flight (on the leader); switchMu
	// serializes the standalone-to-cluster switch, and release takes it so
	// that it never reads the cluster-mode fields while a switch sets them.
	conf     confGate
	switchMu sync.Mutex

	// voteGate is set on a member that bootstrapped a static cluster with
	// an empty data directory without any peer confirming it is new: until
	// it has applied an entry past bootstrapIndex it votes only for
	// candidates with a fresh log, because it may be a member whose data
	// was wiped (it would otherwise vote for a stale candidate).
	voteGate       atomic.Bool
	bootstrapIndex uint64
	lostLog        lostLogEvidence // heartbeats beyond the log, while gated
	// standaloneMarked is set once DataDir records that this node has
	// applied writes in standalone mode (see markStandaloneWrite).
	standaloneMarked atomic.Bool
	// snapWanted asks the apply loop for a snapshot now (send, for a member).
	snapWanted atomic.Bool
	// snapConf is the configuration of the newest snapshot the apply loop
	// started that has not failed; send asks no other for its members.
	snapConf atomic.Pointer[raftpb.ConfState]
	// starter is the leader's record of its last kindStarted proposal.
	starter startedProposer
	// heard is when each peer's last raft message arrived.
	heard heardTracker

	stopc     chan struct{} // closed to stop every goroutine
	stopCtx   context.Context
	stopCause context.CancelFunc // cancels stopCtx; called with stopc's close
	closed    atomic.Bool        // Close was called: every route and method refuses
	inflight  atomic.Int64       // writes under way here (Close lets them finish)
	stopOnce  sync.Once
	loops     sync.WaitGroup
	done      chan struct{} // closed when everything is released
	closeOnce sync.Once
	failErr   atomic.Pointer[error] // the first error that stopped the node (lifecycle.go)
}

// New creates a node from cfg and starts it: standalone, as a static or
// one-member cluster (from the backup cfg.Restore, if set), joined to the
// cluster at cfg.Join, or, when
// cfg.DataDir holds a WAL, restarted with the identity, cluster id and peers
// stored there. Joining waits at most cfg.JoinTimeout; use JoinCluster to
// bound it with a context instead.
func New(cfg Config, svc IService) (*Node, error) {
	timeout := cfg.withDefaults().JoinTimeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return newNode(ctx, cfg, svc)
}

// JoinCluster starts a node that joins the cluster of target, the URL of any
// member (leader or follower) or of a standalone node, which then becomes a
// cluster. The leader assigns the node's id; with cfg.ID set (an id that
// POST /raft/api/addNode returned) the node joins as that pre-registered
// member. A node whose DataDir already holds a WAL restarts as the member it
// was, so calling JoinCluster again with the same settings is safe.
func JoinCluster(ctx context.Context, target string, cfg Config, svc IService) (*Node, error) {
	cfg.Join = target
	return newNode(ctx, cfg, svc)
}

func newNode(ctx context.Context, cfg Config, svc IService) (*Node, error) {
	if svc == nil {
		return nil, fmt.Errorf("%w: nil service", ErrInvalidConfig)
	}
	idGiven := cfg.ID != 0
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.AdvertiseURL = strings.TrimSuffix(cfg.AdvertiseURL, "/")
	cfg.Join = strings.TrimSuffix(cfg.Join, "/")
	if cfg.Join != "" && !idGiven {
		cfg.ID = 0 // the leader assigns it
	}
	n := &Node{
		cfg:       cfg,
		svc:       svc,
		id:        cfg.ID,
		reg:       newRegistry(),
		waits:     newWaitMap[uint64, applyResult](),
		idem:      newIdemTable(cfg.IdempotencyWindow, cfg.IdempotencyKeys),
		reads:     newReadBatcher(),
		probes:    newProbeHub(),
		applied:   newIndexNotifier(0),
		leaderSig: newIndexNotifier(0),
		stopc:     make(chan struct{}),
		done:      make(chan struct{}),
		backupc:   make(chan backupRequest),
	}
	n.stopCtx, n.stopCause = context.WithCancel(context.Background())
	// Request ids start at a random point, not the clock: ids of entries
	// proposed before a restart are still in the log, and a clock stepped
	// back would repeat them (waking the wrong waiter).
	n.reqSeq.Store(randomUint64() >> 1)
	n.mode.Store(ModeStandalone)
	n.setLogger()
	var err error
	if n.certs, err = loadTLS(cfg); err != nil {
		return nil, err
	}
	n.uiClient = statusClient
	if n.certs != nil {
		n.uiClient = n.peerHTTPClient(uiMemberTimeout)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: create data dir: %v", ErrStorage, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, removedMarker)); err == nil {
		n.mode.Store(ModeRemoved)
	}
	n.standaloneMarked.Store(hasStandaloneWrites(cfg.DataDir))
	var rec recovered
	var disk *diskStorage
	var joined *JoinResponse
	var forced bool // this start forced (or restored) a one-member cluster: it elects itself
	if cfg.ForceNewCluster && !hasWAL(cfg.DataDir) {
		return nil, fmt.Errorf("%w: ForceNewCluster needs a data directory that holds a WAL; %s has none",
			ErrInvalidConfig, cfg.DataDir)
	}
	switch {
	case hasWAL(cfg.DataDir):
		var err error
		disk, rec, err = openDisk(n.zl, cfg.DataDir)
		if err != nil {
			return nil, err
		}
		if err := checkIdentity(ctx, cfg, idGiven, rec.meta, n.clientTLS()); err != nil {
			disk.close()
			return nil, err
		}
		if cfg.Restore != "" {
			n.log.Info("restore already done: restarting from the WAL", "file", cfg.Restore, "sha256", rec.meta.Restore)
		}
		n.id = rec.meta.NodeID
		n.clusterID.Store(rec.meta.ClusterID)
		if cfg.ForceNewCluster && n.Mode() != ModeRemoved {
			n.setLogger()
			if rec, forced, err = n.forceNewCluster(disk, rec); err != nil {
				disk.close()
				return nil, err
			}
		}
	case cfg.Restore != "":
		var err error
		if disk, rec, forced, err = n.restoreNew(ctx); err != nil { // restore.go
			return nil, err
		}
	case cfg.Join != "" && n.Mode() != ModeRemoved:
		if n.standaloneMarked.Load() {
			return nil, fmt.Errorf("%w: data dir %s holds writes made in standalone mode; joining another cluster "+
				"would discard them: let the other nodes join this one instead, or use an empty data dir",
				ErrInvalidConfig, cfg.DataDir)
		}
		var err error
		if joined, err = n.requestJoin(ctx); err != nil {
			return nil, err
		}
	case len(cfg.Peers) > 0 && n.Mode() != ModeRemoved:
		if n.standaloneMarked.Load() {
			return nil, fmt.Errorf("%w: data dir %s holds writes made in standalone mode; a static bootstrap "+
				"would start the cluster without them: start this node alone with Cluster (-cluster) or let the "+
				"others join it, or use an empty data dir", ErrInvalidConfig, cfg.DataDir)
		}
		confirmed, err := n.checkStaticMember(ctx, staticClusterID(cfg.Peers))
		if err != nil {
			return nil, err
		}
		n.voteGate.Store(!confirmed)
	}
	n.setLogger()
	n.fwd = transport.NewForwarder(n.id, cfg.Token, cfg.ForwardTimeout, n.clientTLS())
	n.answerProbes(n.fwd)
	n.initMetrics()
	n.handler = n.routes()
	svc.SetRaft(n)

	switch {
	case n.Mode() == ModeRemoved:
		if disk != nil {
			disk.close()
		}
		n.log.Warn("node was removed from its cluster; serving status only")
		n.stop(nil)
	case disk != nil:
		if err = n.restartRaft(disk, rec); err == nil && forced {
			if err = n.campaignAlone(ctx); err == nil {
				_, err = n.waitLeaderWhere(ctx, func(lead uint64) bool { return lead != 0 })
			}
		}
	case joined != nil:
		err = n.startJoined(joined)
	case len(cfg.Peers) > 0:
		if u := strings.TrimSuffix(cfg.Peers[n.id], "/"); u != cfg.AdvertiseURL {
			err = fmt.Errorf("%w: AdvertiseURL %q differs from Peers[%d] %q", ErrInvalidConfig, cfg.AdvertiseURL, n.id, u)
			break
		}
		n.bootstrapIndex = uint64(len(cfg.Peers))
		err = n.bootstrapRaft(cfg.Peers, staticClusterID(cfg.Peers))
	case cfg.Cluster && n.standaloneMarked.Load():
		// Standalone writes live in the service: carry them into the
		// cluster exactly as a switchover does.
		err = n.switchToCluster()
	case cfg.Cluster:
		if err = n.bootstrapRaft(map[uint64]string{n.id: cfg.AdvertiseURL}, randomClusterID()); err == nil {
			err = n.campaignAlone(ctx)
		}
	default:
		n.log.Info("started standalone")
		n.events.publish(LeaderChanged{Leader: n.id, IsLeader: true}) // its own leader, in no term
	}
	if err != nil {
		n.stop(err)
		n.release()
		n.unregisterMetrics()
		return nil, err
	}
	if n.rn != nil {
		n.enterClusterMode()
		if cfg.Token == "" {
			n.log.Warn("no cluster token: anyone who can reach this node's peer routes is trusted as a member")
		}
	}
	return n, nil
}

func (n *Node) setLogger() {
	n.log = n.cfg.Logger.With("node", n.id, "cluster", strconv.FormatUint(n.clusterID.Load(), 16))
	n.zl = newZapLogger(n.log)
}

// staticClusterID derives a cluster id from the member list, as etcd does,
// so every member of a static bootstrap agrees without talking.
func staticClusterID(peers map[uint64]string) uint64 {
	return hashClusterID("", peers)
}

// hashClusterID hashes prefix and the member list into a non-zero id.
func hashClusterID(prefix string, peers map[uint64]string) uint64 {
	h := sha1.New()
	h.Write([]byte(prefix))
	for _, id := range sortedIDs(peers) {
		fmt.Fprintf(h, "%d=%s\n", id, strings.TrimSuffix(peers[id], "/"))
	}
	id := binary.BigEndian.Uint64(h.Sum(nil)[:8])
	if id == 0 {
		id = 1
	}
	return id
}

func randomClusterID() uint64 {
	for {
		if id := randomUint64(); id != 0 {
			return id
		}
	}
}

func randomUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return binary.BigEndian.Uint64(b[:])
}

func (n *Node) raftConfig(storage *raft.MemoryStorage) *raft.Config {
	return &raft.Config{
		ID:                        n.id,
		ElectionTick:              n.cfg.ElectionTicks,
		HeartbeatTick:             n.cfg.HeartbeatTicks,
		Storage:                   storage,
		MaxSizePerMsg:             1 << 20,
		MaxCommittedSizePerReady:  64 << 20,
		MaxInflightMsgs:           512,
		MaxUncommittedEntriesSize: 1 << 30,
		CheckQuorum:               true,
		PreVote:                   true,
		DisableProposalForwarding: true,
		Logger:                    raftLogger{n.log},
	}
}

// bootstrapRaft creates the WAL and starts raft for a brand-new cluster
// whose members are peers.
func (n *Node) bootstrapRaft(peers map[uint64]string, clusterID uint64) error {
	n.clusterID.Store(clusterID)
	n.setLogger()
	disk, err := createDisk(n.zl, n.cfg.DataDir, walMetadata{NodeID: n.id, ClusterID: clusterID})
	if err != nil {
		return err
	}
	storage := raft.NewMemoryStorage()
	rpeers := make([]raft.Peer, 0, len(peers))
	for _, id := range sortedIDs(peers) {
		rpeers = append(rpeers, raft.Peer{ID: id, Context: confContext{ID: id, Addr: peers[id]}.marshal()})
	}
	n.rn = raft.StartNode(n.raftConfig(storage), rpeers)
	if err := n.startLoops(disk, storage, peers); err != nil {
		return err
	}
	n.launch(raftpb.Snapshot{})
	n.log.Info("bootstrapped cluster", "members", len(peers))
	return nil
}

// restartRaft restarts a node from its snapshot and WAL.
func (n *Node) restartRaft(disk *diskStorage, rec recovered) error {
	storage, err := newMemoryStorage(rec)
	if err != nil {
		disk.close()
		return err
	}
	if !raft.IsEmptySnap(rec.snapshot) {
		restore := n.restoreSnapshot
		if rec.serviceLoaded {
			restore = n.restoreSnapshotMembers
		}
		if err := restore(rec.snapshot); err != nil {
			disk.close()
			return err
		}
	}
	peers := map[uint64]string{}
	for id, u := range rec.meta.Peers {
		if !n.reg.isRemoved(id) {
			peers[id] = u
		}
	}
	for id, m := range n.reg.members() {
		peers[id] = m.Addr
	}
	n.rn = raft.RestartNode(n.raftConfig(storage))
	if err := n.startLoops(disk, storage, peers); err != nil {
		return err
	}
	n.launch(rec.snapshot)
	// Replay what the WAL knows to be committed before New returns, so the
	// service comes back with its state.
	if err := n.applied.wait(context.Background(), rec.hardState.Commit, n.stopc); err != nil {
		if ferr := n.Err(); ferr != nil {
			return ferr
		}
		if n.Mode() == ModeRemoved {
			// The log holds this node's own removal (its REMOVED marker was
			// lost): it starts in removed mode, as with the marker.
			n.log.Warn("replayed this node's removal; serving status only")
			return nil
		}
		return err
	}
	n.log.Info("restarted from disk", "snapshot_index", rec.snapshot.Metadata.Index, "wal_entries", len(rec.entries),
		"commit", rec.hardState.Commit)
	if m, ok := n.reg.member(n.id); ok && m.Addr != n.cfg.AdvertiseURL && n.Mode() != ModeRemoved {
		n.log.Info("restarted with a new address; announcing it to the cluster", "old", m.Addr, "new", n.cfg.AdvertiseURL)
		n.loops.Add(1)
		go n.announceAddress() // exits once the new address is applied, or on stop
	}
	return nil
}

// startLoops wires storage and the transport (n.rn must be set: rafthttp
// may deliver a message at once); launch then starts the goroutines. On
// error, release frees what was set up.
func (n *Node) startLoops(disk *diskStorage, storage *raft.MemoryStorage, peers map[uint64]string) error {
	n.disk, n.storage = disk, storage
	n.applyq = newApplyQueue()
	n.propc = make(chan proposal, proposalQueue)
	n.persisted = make(chan struct{}, 1)
	n.snapReqc = make(chan snapshotRequest, 1)
	pc := transport.PeerConfig{
		ID: n.id, ClusterID: n.peerClusterID(), URL: n.cfg.AdvertiseURL,
		Raft: peerRaft{n}, Snapshotter: disk.snapshotter, Logger: n.zl,
	}
	if n.certs != nil {
		pc.TLSInfo = n.certs.EtcdTLSInfo()
	}
	tr, err := transport.NewPeerTransport(pc)
	if err != nil {
		return fmt.Errorf("start peer transport: %w", err)
	}
	for id, u := range peers {
		if id != n.id && u != "" {
			n.addPeer(tr, id, u)
		}
	}
	n.peerTr.Store(tr)
	n.purgeDone = disk.startPurge(n.stopc, DefaultMaxSnapFiles, DefaultMaxWALFiles)
	return nil
}

// enterClusterMode publishes cluster mode once raft is running (and, for a
// switchover, once the init entry is applied). A node that found itself
// removed while replaying its log stays removed.
func (n *Node) enterClusterMode() {
	n.mode.CompareAndSwap(ModeStandalone, ModeCluster)
}

// campaignAlone makes a single-voter cluster elect itself at once rather
// than after an election timeout. raft refuses to campaign while a committed
// membership entry is not applied by raft itself (Advance), so that is
// waited for first.
func (n *Node) campaignAlone(ctx context.Context) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		st := n.rn.Status()
		if st.RaftState == raft.StateLeader {
			return nil
		}
		if st.Commit >= 1 && st.Applied >= st.Commit {
			return n.rn.Campaign(ctx)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stopc:
			return ErrStopped
		}
	}
}

// addPeer adds a member to rafthttp, which panics (through its logger) on a
// URL it cannot parse: such a member is logged and left unreachable rather
// than taking the node down.
func (n *Node) addPeer(tr *rafthttp.Transport, id uint64, addr string) {
	u := n.dialURL(addr)
	if _, err := types.NewURLs([]string{u}); err != nil {
		n.log.Error("member has an unusable address; not dialing it", "member", id, "addr", addr, "err", err)
		return
	}
	tr.AddPeer(typesID(id), []string{u})
}

// dialURL is the URL this node dials to reach the member advertised at addr:
// addr itself, unless Config.DialOverride (a test hook) says otherwise.
func (n *Node) dialURL(addr string) string {
	if u, ok := n.cfg.DialOverride[addr]; ok {
		return u
	}
	return addr
}

// peerClusterID is the cluster id rafthttp sends and checks on every peer
// request (transport.PeerClusterID: derived from the token, if any).
func (n *Node) peerClusterID() uint64 {
	return transport.PeerClusterID(n.clusterID.Load(), n.cfg.Token)
}

// launch starts the loops from snap, the snapshot on disk (empty for none).
func (n *Node) launch(snap raftpb.Snapshot) {
	n.applied.set(snap.Metadata.Index)
	n.loops.Add(5)
	go n.proposeLoop()
	go n.run()
	go n.applyLoop(snap)
	go n.promoteLoop()
	go n.readLoop()
}

// ID returns this node's member id.
func (n *Node) ID() uint64 { return n.id }

// Mode returns ModeStandalone, ModeCluster or ModeRemoved.
func (n *Node) Mode() string { return n.mode.Load().(string) }

// Handler returns the node's HTTP handler: client, admin, peer and rafthttp
// routes. Mount it at the root of the router that AdvertiseURL reaches.
func (n *Node) Handler() http.Handler { return n.handler }
