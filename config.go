package embedraft

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxMemberID is the largest member id: ids are assigned by counting up,
// and the bound keeps that from ever wrapping to 0.
const MaxMemberID = 1 << 62

// Defaults used for zero Config fields.
const (
	DefaultSnapshotCount   = 10000
	DefaultCatchUpEntries  = 5000
	DefaultCatchUpBytes    = 64 << 20
	DefaultSnapshotBytes   = 8 << 20
	DefaultTickInterval    = 100 * time.Millisecond
	DefaultElectionTicks   = 10
	DefaultHeartbeatTicks  = 1
	DefaultMaxRequestBytes = 1536 * 1024
	// MaxMaxRequestBytes is MaxRequestBytes' ceiling: the forwarding
	// stream's frames carry a body's length in 31 bits.
	MaxMaxRequestBytes      = 1 << 30
	DefaultLeaderWait       = 3 * time.Second
	DefaultForwardTimeout   = 10 * time.Second
	DefaultMaxSnapFiles     = 5
	DefaultMaxWALFiles      = 5
	DefaultJoinTimeout      = 60 * time.Second
	DefaultMaxSnapshotBytes = 512 << 20
)

// Config configures a Node. It is a value: zero fields mean the documented
// defaults, and New works on a copy.
type Config struct {
	// ID is this node's member id. Required with Peers; defaults to 1 for a
	// one-member cluster. Ignored (and checked) when the data directory
	// already holds a WAL: the stored identity wins, a different ID is an
	// error.
	ID uint64

	// AdvertiseURL is the base URL other nodes use to reach this node's
	// Handler, e.g. "http://10.0.0.5:8080". Required. A new static member
	// (Peers) must advertise Peers[ID]. A member restarted on its data
	// directory with another AdvertiseURL keeps its id: it announces the new
	// address to the cluster through the log (Peers may still name the old
	// one).
	AdvertiseURL string

	// DataDir holds the WAL (DataDir/wal) and snapshots (DataDir/snap).
	// Required.
	DataDir string

	// Peers bootstraps a static cluster: every member is started with the
	// same id -> URL map. Empty means standalone (or a one-member cluster
	// with Cluster set).
	Peers map[uint64]string

	// Join is the URL of a member (or standalone node) of the cluster a new
	// node joins. Ignored when the data directory already holds a WAL
	// (other than to check that the target is in the same cluster).
	Join string

	// JoinTimeout bounds joining in New. Default 60s.
	JoinTimeout time.Duration

	// Cluster starts a new node as a one-member cluster instead of
	// standalone. Ignored when Peers is set or a WAL exists.
	Cluster bool

	// ForceNewCluster restarts a member from its data directory as a
	// one-member cluster after its cluster lost quorum for good: it keeps
	// its id, the cluster id and every entry of its log, and drops the other
	// members through the log; new members then join it. One-shot: the
	// first run leaves DataDir/FORCED_NEW_CLUSTER and later runs with the
	// flag do nothing (delete the file to force again). Requires a WAL.
	ForceNewCluster bool

	// Restore is the path of a backup file (GET /raft/api/backup,
	// Node.Backup) to start a new cluster from, with a new cluster id, as
	// `etcdutl snapshot restore` does. New checks the file (a truncated or
	// corrupted one is refused) and writes the backup's state into the
	// empty data directory as a snapshot, so it survives restarts. The old
	// membership is not restored; the backup's Idempotency-Key table is.
	//
	// With Cluster the node starts as a one-member cluster (a new random
	// cluster id) and others join it. With Peers every member is started
	// with the same file and the same Peers: the cluster id is derived from
	// both, so the members agree without talking, and a member given
	// another file is in another cluster, which they never talk to.
	//
	// A restore is done once: on a data directory that holds a WAL, the
	// same file is a plain restart (the WAL records the backup's checksum;
	// a file deleted since restarts too), another file, or a WAL that was
	// not restored, is refused. Restore
	// with Join, with ForceNewCluster, or without Cluster or Peers is
	// refused.
	Restore string

	// Token, when set, must be presented by peers and admins (header
	// "Authorization: Bearer <token>") on the /raft/node/ routes and the
	// admin routes; on rafthttp's routes peers prove it through the cluster
	// id they send (derived from the token). Without a token, anyone who can
	// reach the peer routes is trusted as a member: set one outside a trusted
	// network.
	Token string

	// CertFile and KeyFile are the node's PEM certificate (chain) and
	// private key (demo -cert, -key). With them the node serves https (the
	// application puts ServerTLSConfig on its server; AdvertiseURL must be
	// https) and dials peers over https, presenting this certificate. Both
	// are re-read when they change, so a rotation needs no restart.
	CertFile string
	KeyFile  string

	// CAFile is a PEM CA bundle (demo -ca). With it, every peer route and
	// every admin route requires a client certificate that chains to it
	// (HTTP 401 without one, 403 with one that does not), and peers' server
	// certificates are verified with it instead of the system roots. Client
	// routes stay open. Re-read when it changes. Requires CertFile.
	CAFile string

	// SnapshotCount is the most applied entries between automatic
	// snapshots (SnapshotBytes may make one due sooner). Default
	// DefaultSnapshotCount (10000).
	SnapshotCount uint64

	// SnapshotBytes also makes a snapshot due once the entries applied
	// since the last one hold this many bytes of data and more than the
	// last snapshot's state file. The in-memory log then stays within
	// about the larger of SnapshotBytes and the state's size (plus
	// CatchUpBytes) however many writes an entry batches, and a large
	// state is not rewritten more often than the log grows by its size.
	// Default DefaultSnapshotBytes (8 MiB).
	SnapshotBytes uint64

	// CatchUpEntries is how many entries before a snapshot are kept in memory
	// after compaction, so a slightly lagging follower catches up from the
	// log instead of a snapshot. Default: half of SnapshotCount, at most
	// DefaultCatchUpEntries (5000).
	CatchUpEntries uint64

	// CatchUpBytes bounds the same entries by size: compaction keeps at most
	// CatchUpEntries entries and at most CatchUpBytes bytes of them, so large
	// writes cannot make the in-memory log grow past it between snapshots'
	// compactions. Default: half of SnapshotBytes, at most
	// DefaultCatchUpBytes (64 MiB).
	CatchUpBytes uint64

	// TickInterval is raft's logical clock. Default 100ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks. Default 1.
	HeartbeatTicks int

	// MaxRequestBytes bounds a write's body. Default 1.5 MiB, at most
	// MaxMaxRequestBytes (1 GiB).
	MaxRequestBytes int64

	// MaxSnapshotBytes bounds what a peer may send this node at once: a
	// snapshot (the service's whole state and the membership, streamed to
	// a state file, never held in memory) or an append carrying a
	// switchover's init entry. Larger state cannot be replicated to a new
	// or lagging member. Other peer messages are bounded at 64 KiB.
	// Default 512 MiB.
	MaxSnapshotBytes int64

	// LeaderWait bounds how long a write waits for a leader to be known
	// before it fails with ErrNoLeader. Default 3s.
	LeaderWait time.Duration

	// ForwardTimeout bounds one forwarded request to the leader. A quarter
	// of it bounds a read-index exchange over the forwarding stream, and
	// half of it how long committed writes may wait for the service before
	// new writes are refused (ErrBusy). Default 10s.
	ForwardTimeout time.Duration

	// DialOverride maps a member's advertised URL to the URL this node
	// dials to reach it, for every peer connection (rafthttp, forwarding,
	// joining). It exists for fault-injection tests, which route each pair
	// of nodes through a proxy; production deployments leave it empty.
	DialOverride map[string]string

	// Logger receives the node's logs. Default: discard.
	Logger *slog.Logger

	// Registerer receives the node's Prometheus collectors (the embedraft_
	// series listed in the README). Nil means a registry of the node's
	// own, served by Handler on GET /metrics with Go and process collectors
	// and etcd's own series (which etcd registers on the default registry).
	// Otherwise GET /metrics serves Registerer itself when it is also a
	// prometheus.Gatherer (prometheus.DefaultRegisterer: the default
	// registry, as promhttp.Handler does) and answers 404 when it is not.
	// A series that cannot be registered (AlreadyRegistered: another node
	// uses the same Registerer without MetricsNodeLabel) is logged and left
	// out; New does not fail for it. Close unregisters what was registered.
	Registerer prometheus.Registerer

	// MetricsNodeLabel adds the constant label node="<member id>" to every
	// series the node registers, so that several nodes of one process can
	// share a Registerer.
	MetricsNodeLabel bool

	// IdempotencyWindow is how long an Idempotency-Key is remembered
	// (idempotency.go): a key is forgotten once an entry stamped this much
	// later than the key's first write is applied. Time is the leader's
	// clock stamped into the entries, never the applier's, so every member
	// forgets a key at the same log index. Every member must use the same
	// value. Default DefaultIdempotencyWindow (10 minutes).
	IdempotencyWindow time.Duration

	// IdempotencyKeys bounds the keys remembered; past it the oldest are
	// forgotten first. Every member must use the same value. Default
	// DefaultIdempotencyKeys (100,000).
	IdempotencyKeys int
}

// withDefaults returns a copy with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.SnapshotCount == 0 {
		c.SnapshotCount = DefaultSnapshotCount
	}
	if c.CatchUpEntries == 0 {
		c.CatchUpEntries = min(DefaultCatchUpEntries, max(1, c.SnapshotCount/2))
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = DefaultSnapshotBytes
	}
	if c.CatchUpBytes == 0 {
		c.CatchUpBytes = min(DefaultCatchUpBytes, max(1, c.SnapshotBytes/2))
	}
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = DefaultHeartbeatTicks
	}
	if c.IdempotencyWindow == 0 {
		c.IdempotencyWindow = DefaultIdempotencyWindow
	}
	if c.IdempotencyKeys == 0 {
		c.IdempotencyKeys = DefaultIdempotencyKeys
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.MaxSnapshotBytes == 0 {
		c.MaxSnapshotBytes = DefaultMaxSnapshotBytes
	}
	if c.LeaderWait == 0 {
		c.LeaderWait = DefaultLeaderWait
	}
	if c.ForwardTimeout == 0 {
		c.ForwardTimeout = DefaultForwardTimeout
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ID == 0 && len(c.Peers) == 0 && c.Join == "" {
		c.ID = 1
	}
	if c.DataDir != "" {
		c.DataDir = filepath.Clean(c.DataDir)
	}
	return c
}

// Validate reports every problem with the configuration, each wrapped in
// ErrInvalidConfig, or nil.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if c.DataDir == "" {
		bad("DataDir is required")
	}
	if err := checkURL(c.AdvertiseURL); err != nil {
		bad("AdvertiseURL: %v", err)
	}
	if c.Join != "" {
		if err := checkURL(c.Join); err != nil {
			bad("Join: %v", err)
		}
		if len(c.Peers) > 0 {
			bad("Join and Peers are exclusive")
		}
	}
	if len(c.Peers) > 0 {
		if c.ID == 0 {
			bad("ID is required with Peers")
		} else if _, ok := c.Peers[c.ID]; !ok {
			bad("ID %d is not in Peers", c.ID)
		}
		seen := map[string]uint64{}
		for id, u := range c.Peers {
			if id == 0 || id > MaxMemberID {
				bad("peer id %d is not from 1 to %d", id, uint64(MaxMemberID))
			}
			if err := checkURL(u); err != nil {
				bad("peer %d: %v", id, err)
			}
			if other, dup := seen[u]; dup {
				bad("peers %d and %d share the URL %q", other, id, u)
			}
			seen[u] = id
		}
	}
	if c.ID > MaxMemberID {
		bad("ID %d is above %d", c.ID, uint64(MaxMemberID))
	}
	if c.Restore != "" {
		switch {
		case c.Join != "":
			bad("Restore and Join are exclusive: a restored node starts a new cluster")
		case c.ForceNewCluster:
			bad("Restore and ForceNewCluster are exclusive")
		case !c.Cluster && len(c.Peers) == 0:
			bad("Restore needs Cluster (a one-member cluster others join) or Peers (every member restored from the same file)")
		}
	}
	if c.ElectionTicks <= c.HeartbeatTicks {
		bad("ElectionTicks (%d) must exceed HeartbeatTicks (%d)", c.ElectionTicks, c.HeartbeatTicks)
	}
	if c.HeartbeatTicks < 0 || c.ElectionTicks < 0 {
		bad("tick counts must be positive")
	}
	if c.TickInterval < time.Millisecond {
		bad("TickInterval %v is below 1ms", c.TickInterval)
	}
	if c.MaxRequestBytes < 0 || c.MaxRequestBytes > MaxMaxRequestBytes {
		bad("MaxRequestBytes must be positive and at most %d (1 GiB)", MaxMaxRequestBytes)
	}
	if c.MaxSnapshotBytes < 0 || (c.MaxSnapshotBytes > 0 && c.MaxSnapshotBytes < 2*c.MaxRequestBytes) {
		bad("MaxSnapshotBytes (%d) must be at least twice MaxRequestBytes (%d)", c.MaxSnapshotBytes, c.MaxRequestBytes)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		bad("CertFile and KeyFile go together")
	}
	if c.CAFile != "" && c.CertFile == "" {
		bad("CAFile needs CertFile and KeyFile: client certificates are checked on https only")
	}
	if c.CertFile != "" && !strings.HasPrefix(c.AdvertiseURL, "https://") {
		bad("AdvertiseURL %q must be https with CertFile", c.AdvertiseURL)
	}
	if c.LeaderWait < 0 || c.ForwardTimeout < 0 {
		bad("LeaderWait and ForwardTimeout must be positive")
	}
	if c.IdempotencyWindow < 0 || c.IdempotencyKeys < 0 {
		bad("IdempotencyWindow and IdempotencyKeys must be positive")
	}
	return errors.Join(errs...)
}

// checkURL accepts an absolute http or https URL with a host, an explicit
// port and no path, query or fragment beyond "/".
func checkURL(s string) error {
	if s == "" {
		return errors.New("empty URL")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("invalid URL %q: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("URL %q: scheme must be http or https", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("URL %q has no host", s)
	}
	if strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("URL %q has an empty port", s)
	}
	// An explicit port: rafthttp (and so every member applying the
	// membership change) refuses peer URLs without one.
	if p := u.Port(); p == "" {
		return fmt.Errorf("URL %q has no port", s)
	} else if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("URL %q: port must be 1-65535", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("URL %q must be scheme://host:port only", s)
	}
	return nil
}

// ParsePeers parses a static member list "1=http://a:1,2=http://b:2".
func ParsePeers(s string) (map[uint64]string, error) {
	peers := map[uint64]string{}
	if strings.TrimSpace(s) == "" {
		return peers, nil
	}
	for _, part := range strings.Split(s, ",") {
		idStr, u, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%w: peer %q is not id=URL", ErrInvalidConfig, part)
		}
		id, err := strconv.ParseUint(strings.TrimSpace(idStr), 10, 64)
		if err != nil || id == 0 || id > MaxMemberID {
			return nil, fmt.Errorf("%w: peer %q: id must be an integer from 1 to %d", ErrInvalidConfig, part, uint64(MaxMemberID))
		}
		if _, dup := peers[id]; dup {
			return nil, fmt.Errorf("%w: peer id %d given twice", ErrInvalidConfig, id)
		}
		u = strings.TrimSuffix(strings.TrimSpace(u), "/")
		if err := checkURL(u); err != nil {
			return nil, fmt.Errorf("%w: peer %d: %v", ErrInvalidConfig, id, err)
		}
		peers[id] = u
	}
	return peers, nil
}

// sortedIDs returns the keys of m in ascending order.
func sortedIDs[V any](m map[uint64]V) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}
