// Package embedraft turns a Go service that keeps its state in memory into a
// replicated, fault-tolerant cluster. The service implements IService; the
// library runs etcd's raft underneath and does the rest: standalone mode,
// static and one-member cluster bootstrap, forwarding writes from followers
// to the leader, the write-ahead log, snapshots, restart and recovery.
//
// # Usage
//
//	svc := myservice.New()                  // implements embedraft.IService
//	node, err := embedraft.New(embedraft.Config{
//		ID:           1,
//		AdvertiseURL: "http://10.0.0.1:8080", // where peers reach Handler
//		DataDir:      "/var/lib/mysvc",
//		Peers: map[uint64]string{
//			1: "http://10.0.0.1:8080",
//			2: "http://10.0.0.2:8080",
//			3: "http://10.0.0.3:8080",
//		},
//	}, svc)
//	if err != nil { ... }
//	mux.Handle("/", node.Handler())          // it serves /raft/..., /healthz, /readyz, /metrics
//	...
//	data, err := node.Send(ctx, body)         // or POST /raft/api/set; data is its JSON answer
//	...
//	node.Close(ctx)                           // before shutting the http.Server down
//
// # Writes
//
// A write (Send, or POST /raft/api/set on any node) runs the service's
// PreProcessData once, on the leader, which turns the request into the data
// of a raft entry. The entry is proposed with a request id; the caller is
// answered only after the entry is committed by a majority and applied (the
// service's Commit) on the node that answers. A follower forwards the raw
// body to the leader over HTTP and, once the leader answers, waits until it
// has applied the same index itself, so a client reads its own write from
// the node it wrote to. A write whose outcome cannot be known (the leader
// was lost after proposing) is answered with ErrUnknownOutcome (HTTP 504),
// never with success and never as a definite failure.
//
// # Reads
//
// The service reads its own state. LinearizableRead waits until this node
// has applied everything acknowledged before the call (a read index from
// raft's ReadIndex or, with at most three voters, confirmed by the leader
// and one follower over the forwarding stream), so a read after it is
// linearizable.
//
// # Modes
//
// A node with no Peers, no Join, no Cluster and no WAL starts standalone:
// writes call PreProcessData then Commit directly and the service owns
// durability. With Peers (every member given the same id -> URL map) it
// bootstraps a static cluster whose id is derived from that map; with
// Cluster it starts a one-member cluster with a random id. A node whose
// DataDir holds a WAL always restarts in cluster mode with the identity
// stored there.
//
// # Durability
//
// Entries and raft's hard state are written to the WAL under DataDir/wal
// with one fsync per batch before they count as persisted; every
// SnapshotCount applied entries, or once the entries applied since the last
// snapshot hold SnapshotBytes and more than its state file, the apply
// goroutine captures the service's state (StreamSnapshotter's
// CaptureSnapshot, else GetSnapshot) and a snapshot goroutine writes it
// with the membership to a checksummed file under DataDir/snap/state while
// commits go on; then the in-memory log is compacted, keeping
// CatchUpEntries (at most CatchUpBytes) for slow followers. A follower
// further behind receives the snapshot through rafthttp and loads it with
// RestoreSnapshot or ResetSnap.
//
// # Security
//
// Config.Token protects the peer and admin routes with a shared secret.
// Config.CertFile and KeyFile make the node an https node: the application
// serves Handler with ServerTLSConfig on its own http.Server, and the node
// dials its peers over https presenting that certificate. With
// Config.CAFile the peer and admin routes also require a client certificate
// signed by that CA (401 without one, 403 with another CA's); client routes
// stay open. The files are re-read when they change.
package embedraft
