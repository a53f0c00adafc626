package embedraft

import (
	"context"
	"io"
)

// IService is implemented by the application whose state is replicated.
//
// Concurrency: the library never calls two of Commit, ResetSnap, GetSnapshot
// and GetInit at the same time. In cluster mode they are called from the
// node's apply goroutine; in standalone mode Commit is called from the
// goroutine of the write, serialized by the library. PreProcessData may be
// called concurrently from request goroutines and must be safe for that. The
// service's own read paths (its HTTP handlers) run concurrently with all of
// them, so the service guards its state with its own lock.
type IService interface {
	// Commit applies the data of one committed entry. It is called on every
	// node, in log order, from one goroutine (the apply goroutine); it must
	// be deterministic. An error is returned to the client that made the
	// write (wrapped in ErrCommit) and must leave the state unchanged: every
	// node sees the same error for the same entry, so the replicas stay
	// equal. It is not retried.
	Commit(data []byte) error

	// PreProcessData runs on the leader only, once per client request, from
	// the request's goroutine, before the proposal: it turns a request body
	// into the entry data (resolving anything non-deterministic: time, ids)
	// and an object returned to the client once the entry is committed and
	// applied. An error rejects the request (ErrBadRequest, HTTP 400) and
	// nothing is proposed.
	PreProcessData(body []byte) (object interface{}, data []byte, err error)

	// GetInit packs the service's current state when a standalone node turns
	// into a cluster. Called once, with writes held. An error aborts the
	// switch and the node stays standalone.
	GetInit() (data []byte, err error)

	// ResetSnap replaces the whole state with data produced by GetSnapshot or
	// GetInit (snapshot install, restart, switchover entry). Called from the
	// apply goroutine, or from New before any other call. An error stops the
	// node (it cannot continue with a state it failed to load).
	ResetSnap(data []byte) error

	// GetSnapshot serializes the whole state for a snapshot. Called from the
	// apply goroutine when a snapshot is due (Config.SnapshotCount,
	// Config.SnapshotBytes), so the state is exactly that of the last
	// applied entry. An error skips this snapshot (logged); the next one is
	// tried after further entries. It is also called for a backup
	// (Node.Backup): on the apply goroutine in cluster mode, and on the
	// request's goroutine with writes held in standalone mode. A service
	// implementing StreamSnapshotter is asked for a view instead, except
	// for a standalone backup.
	GetSnapshot() (data []byte, err error)

	// SetRaft hands the service the sender it may use from its own handlers.
	// Called once by New before the node starts.
	SetRaft(raft IRaftSender)
}

// IRaftSender is what a service uses to write through the cluster.
type IRaftSender interface {
	// Send proposes a request body as a client write would (forwarded to the
	// leader when needed) and returns, after commit and apply on this node,
	// the JSON encoding of PreProcessData's object (or of ResultCommitter's
	// result): the "data" of POST /raft/api/set's answer, nil when the
	// object is nil. It is the same on the leader, on a follower and on a
	// standalone node. It must not be called from Commit, ResetSnap,
	// GetSnapshot or GetInit: they hold the apply path that Send waits for.
	//
	// A ctx made by WithIdempotencyKey gives the write an Idempotency-Key:
	// retried with the same key after ErrUnknownOutcome (on any member), it
	// is applied at most once and every retry returns the first outcome:
	// the same bytes for the first call and every retry.
	//
	// The result is always a json.RawMessage (or nil), typed interface{}
	// as the reference API it descends from is.
	Send(ctx context.Context, body []byte) (interface{}, error)
}

// StreamSnapshotter is an optional extension of IService for a service
// whose state is large (hashicorp/raft's FSMSnapshot shape). When the
// service implements it, found by type assertion, the library never asks it
// for its whole state as one []byte in cluster mode: GetSnapshot and
// ResetSnap are then used only for the switchover and backups.
//
// Concurrency: CaptureSnapshot and RestoreSnapshot are called from the apply
// goroutine, never at the same time as Commit, ResetSnap or each other.
// The view's WriteTo runs on the node's snapshot goroutine while the apply
// goroutine goes on committing entries; at most one view is being written
// at a time.
type StreamSnapshotter interface {
	// CaptureSnapshot captures a point-in-time view of the state at the last
	// applied entry, quickly (copy-on-write, an immutable tree, a read
	// transaction): commits wait while it runs. An error skips this snapshot
	// (logged); it is tried again after the next applied entries.
	CaptureSnapshot() (SnapshotView, error)

	// RestoreSnapshot replaces the whole state with what a view's WriteTo
	// wrote (snapshot install, restart). r ends where the view's bytes end;
	// the library has checked their checksum before the call. It must
	// also accept what GetSnapshot wrote, if the service ever ran without
	// this extension (or a member of its cluster still does). An error stops
	// the node.
	RestoreSnapshot(r io.Reader) error
}

// SnapshotView is a point-in-time view captured by CaptureSnapshot.
type SnapshotView interface {
	// WriteTo writes the view to w (io.WriterTo) and returns the bytes it
	// wrote. It runs on the snapshot goroutine, concurrently with Commit. An
	// error (or one returned by w, for example ErrStopped when the node
	// stops) abandons this snapshot; the previous one stays.
	WriteTo(w io.Writer) (n int64, err error)
	// Release frees the view. It is called exactly once, after WriteTo
	// (or instead of it when the snapshot is abandoned), from the snapshot
	// goroutine.
	Release()
}

// Position is where a write sits in the log: the index of its raft entry
// and its offset among the writes of that entry (a batch entry holds
// several). Positions of successive commits strictly increase.
type Position struct {
	Index  uint64
	Offset int
}

// After reports whether p comes after q in the log.
func (p Position) After(q Position) bool {
	return p.Index > q.Index || (p.Index == q.Index && p.Offset > q.Offset)
}

// IndexedCommitter is an optional extension of IService for a service that
// persists its own state (dragonboat's on-disk state machine): in cluster
// mode the apply goroutine calls CommitIndexed instead of Commit, with the
// write's log position. A service that stores the position of the last
// write it holds may return nil without applying a write at or before it
// (after a restart, the log is replayed from the last snapshot). Its
// semantics are otherwise Commit's; standalone writes, having no log,
// still go through Commit (or CommitResult). A service that implements
// ResultCommitter too gets CommitResult, without the position; one that
// needs both implements IndexedResultCommitter.
type IndexedCommitter interface {
	CommitIndexed(at Position, data []byte) error
}

// ResultCommitter is an optional extension of IService for a service whose
// writes compute their answer from the state (a counter, a compare-and-set).
// The library detects it with a type assertion; when the service implements
// it, CommitResult is called instead of Commit, and the client gets result
// (JSON-encoded as the answer's "data"; Send returns it as is on the node
// that proposed the write) instead of PreProcessData's object.
//
// CommitResult is called exactly where Commit would be: on every node, in
// log order, from the apply goroutine (in standalone mode from the write's
// goroutine, serialized by the library), never at the same time as
// ResetSnap, GetSnapshot or GetInit. It must be deterministic, and so must
// result: every member computes it, and with an Idempotency-Key the JSON of
// result is recorded in the replicated key table as the answer any retry
// gets. An error is returned to the client (ErrCommit, HTTP 400) and must
// leave the state unchanged, as Commit's.
//
// Commit is still required by IService (and may simply call CommitResult
// and drop the result); the library does not call it on a ResultCommitter.
type ResultCommitter interface {
	CommitResult(data []byte) (result interface{}, err error)
}

// IndexedResultCommitter joins IndexedCommitter and ResultCommitter for a
// service that persists its own state and computes its writes' answers: in
// cluster mode the apply goroutine calls CommitIndexedResult, with the
// write's log position, instead of CommitResult. A write at or before the
// position the service already holds (a replay after a restart) must
// return the result it returned the first time, or nil: the library
// answers no client for a replayed write. Standalone writes have no log
// position: they go through CommitResult, so such a service implements
// ResultCommitter too (else they get Commit, and no result).
type IndexedResultCommitter interface {
	CommitIndexedResult(at Position, data []byte) (result interface{}, err error)
}
