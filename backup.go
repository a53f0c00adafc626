package embedraft

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/embedraft/embedraft/transport"
)

// A backup file (GET /raft/api/backup, Node.Backup) holds the whole
// replicated state at one applied index: the service's data and the
// membership. Version 1, all integers big-endian:
//
//	8 bytes    magic "ERBACKUP"
//	4 bytes    version (1)
//	4 bytes    length M of the metadata
//	M bytes    metadata: BackupInfo as JSON (cluster id, node id, mode,
//	           applied index, term, creation time, membership JSON)
//	S bytes    the service's GetSnapshot bytes, up to the checksum
//	32 bytes   SHA-256 of every byte before it
//
// The service's bytes come last and carry no length, so a writer that
// streams them (a StreamSnapshotter view) need not know their size in advance; a reader
// finds their end 32 bytes before the end of the file. A truncated or
// corrupted file fails the checksum.
var backupMagic = [8]byte{'E', 'R', 'B', 'A', 'C', 'K', 'U', 'P'}

const (
	backupVersion     = 1
	backupHeaderBytes = 16 // magic, version, metadata length
	backupSumBytes    = sha256.Size
	maxBackupMetaSize = 64 << 20
)

// BackupInfo describes a backup: it is the metadata stored in the file.
type BackupInfo struct {
	// ClusterID is the cluster's id in hex ("0" for a standalone node).
	ClusterID string `json:"cluster_id"`
	// NodeID is the member that took the backup.
	NodeID uint64 `json:"node_id"`
	// Mode is the node's mode when it took the backup (standalone or
	// cluster).
	Mode string `json:"mode"`
	// Index and Term are those of the last entry applied to the captured
	// state (0 for a standalone node, which keeps no log).
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// Created is when the state was captured.
	Created time.Time `json:"created"`
	// Membership is the replicated membership at Index, as snapshots store
	// it (members, roles, removed ids).
	Membership json.RawMessage `json:"membership"`
	// Streamed is true when the service's part was written by a
	// StreamSnapshotter's view (restored with RestoreSnapshot), false when
	// it is GetSnapshot's bytes (restored with ResetSnap).
	Streamed bool `json:"streamed,omitempty"`
	// Bytes is the size of the whole file, and ServiceBytes that of the
	// service's part; neither is stored in the metadata.
	Bytes        int64 `json:"-"`
	ServiceBytes int64 `json:"-"`
}

// stateCapture is a point-in-time view of the replicated state. It is taken
// quickly where no write can interleave (the apply goroutine, or under the
// standalone gate) and written out later from another goroutine while
// writes go on. For a service that implements StreamSnapshotter the
// service's part is streamed from its point-in-time view (never one buffer;
// the view is shared with the automatic snapshots, one at a time); for
// others it is the bytes of GetSnapshot.
type stateCapture struct {
	mode        string
	clusterID   uint64
	index, term uint64
	members     []byte
	service     []byte
	// view, when the service implements StreamSnapshotter, replaces
	// service: its state is streamed from the view, which release frees.
	view    SnapshotView
	release func()
}

func (c *stateCapture) writeService(w io.Writer) (int64, error) {
	if c.view != nil {
		defer c.release()
		return c.view.WriteTo(w)
	}
	n, err := w.Write(c.service)
	return int64(n), err
}

// errViewBusy: the service's one snapshot view is held (by a snapshot being
// written, or another backup); the capture is asked again shortly.
var errViewBusy = errors.New("snapshot view busy")

// backupRequest asks the apply loop for a capture; reply is buffered so
// that the loop never waits for the caller.
type backupRequest struct {
	reply chan<- captureResult
}

type captureResult struct {
	capture stateCapture
	err     error
}

// captureState runs on the apply goroutine, between batches, so the state
// is exactly that of appliedIndex: the same point the automatic snapshots
// use (maybeSnapshot).
func (a *applier) captureState() captureResult {
	n := a.n
	var data []byte
	var view SnapshotView
	var release func()
	if ss, ok := n.svc.(StreamSnapshotter); ok {
		// The contract promises the service one view at a time.
		if a.snapDone != nil || !a.backupViewFree() {
			return captureResult{err: errViewBusy}
		}
		v, err := ss.CaptureSnapshot()
		if err != nil {
			return captureResult{err: fmt.Errorf("backup: service snapshot: %w", err)}
		}
		done := make(chan struct{})
		var once sync.Once
		view, release = v, func() { once.Do(func() { v.Release(); close(done) }) }
		a.backupView = done
	} else {
		var err error
		if data, err = n.svc.GetSnapshot(); err != nil {
			return captureResult{err: fmt.Errorf("backup: service snapshot: %w", err)}
		}
	}
	// Applied entries are in MemoryStorage (appended before they are
	// handed to us) and compaction keeps at least the applied one.
	term, err := n.storage.Term(a.appliedIndex)
	if err != nil {
		term = 0 // unknown; the index alone places the capture
	}
	return captureResult{capture: stateCapture{
		mode: ModeCluster, clusterID: n.clusterID.Load(), index: a.appliedIndex, term: term,
		members: n.snapshotMembers(), service: data, view: view, release: release,
	}}
}

// backupViewFree reports whether no backup holds the service's view.
func (a *applier) backupViewFree() bool {
	if a.backupView == nil {
		return true
	}
	select {
	case <-a.backupView:
		a.backupView = nil
		return true
	default:
		return false
	}
}

// Backup writes a consistent copy of the whole replicated state (the
// service's data and the membership) to w, in the format described above,
// and returns its metadata. It works on any member, leader or follower, and
// on a standalone node. In cluster mode it first makes sure this node has
// applied every write acknowledged before the call (LinearizableRead), so
// the backup contains all of them; the capture itself holds the apply loop
// only for the service's GetSnapshot, and the bytes are written from the
// caller's goroutine. It waits at most until ctx ends for the capture, and
// as long as w takes for the writing.
func (n *Node) Backup(ctx context.Context, w io.Writer) (BackupInfo, error) {
	b, err := n.prepareBackup(ctx)
	if err != nil {
		return BackupInfo{}, err
	}
	err = b.writeTo(w)
	return b.info, err
}

// preparedBackup is a capture with its encoded header, ready to be written.
type preparedBackup struct {
	info    BackupInfo
	header  []byte
	capture stateCapture
}

func (n *Node) prepareBackup(ctx context.Context) (*preparedBackup, error) {
	if err := n.stopped(); err != nil {
		return nil, err
	}
	c, err := n.captureAny(ctx)
	if err != nil {
		return nil, err
	}
	info := BackupInfo{
		ClusterID:  strconv.FormatUint(c.clusterID, 16),
		NodeID:     n.id,
		Mode:       c.mode,
		Index:      c.index,
		Term:       c.term,
		Created:    time.Now().UTC(),
		Membership: c.members,
		Streamed:   c.view != nil,
	}
	meta, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("backup: encode metadata: %w", err)
	}
	header := make([]byte, 0, backupHeaderBytes+len(meta))
	header = append(header, backupMagic[:]...)
	header = binary.BigEndian.AppendUint32(header, backupVersion)
	header = binary.BigEndian.AppendUint32(header, uint32(len(meta)))
	header = append(header, meta...)
	info.ServiceBytes, info.Bytes = -1, -1 // a streamed view's size is known once written
	if c.view == nil {
		info.ServiceBytes = int64(len(c.service))
		info.Bytes = int64(len(header)) + info.ServiceBytes + backupSumBytes
	}
	return &preparedBackup{info: info, header: header, capture: c}, nil
}

// captureAny captures the state in whatever mode the node is in.
func (n *Node) captureAny(ctx context.Context) (stateCapture, error) {
	for {
		switch n.Mode() {
		case ModeRemoved:
			return stateCapture{}, ErrRemoved
		case ModeStandalone:
			c, ok, err := n.captureStandalone()
			if ok || err != nil {
				return c, err
			}
			// The node switched to cluster mode meanwhile: capture there.
		default:
			return n.captureCluster(ctx)
		}
	}
}

// captureStandalone takes the state of a standalone node with writes held
// (the gate keeps a switchover out, commitMu keeps Commit out). ok is false
// when the node is no longer standalone.
func (n *Node) captureStandalone() (c stateCapture, ok bool, err error) {
	n.gate.RLock()
	defer n.gate.RUnlock()
	if n.Mode() != ModeStandalone {
		return c, false, nil
	}
	n.commitMu.Lock()
	defer n.commitMu.Unlock()
	data, err := n.svc.GetSnapshot()
	if err != nil {
		return c, true, fmt.Errorf("backup: service snapshot: %w", err)
	}
	return stateCapture{mode: ModeStandalone, members: n.reg.marshal(), service: data}, true, nil
}

// captureCluster waits until this node has applied every acknowledged
// write, then has the apply loop capture its state.
func (n *Node) captureCluster(ctx context.Context) (stateCapture, error) {
	if err := n.LinearizableRead(ctx); err != nil {
		return stateCapture{}, fmt.Errorf("backup: %w", err)
	}
	for {
		reply := make(chan captureResult, 1)
		select {
		case n.backupc <- backupRequest{reply: reply}:
		case <-ctx.Done():
			return stateCapture{}, fmt.Errorf("backup: %w", ctx.Err())
		case <-n.stopc:
			return stateCapture{}, ErrStopped
		}
		var r captureResult
		select {
		case r = <-reply:
		case <-ctx.Done():
			return stateCapture{}, fmt.Errorf("backup: %w", ctx.Err())
		case <-n.stopc:
			return stateCapture{}, ErrStopped
		}
		if !errors.Is(r.err, errViewBusy) {
			return r.capture, r.err
		}
		select { // a snapshot or another backup is writing the view
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return stateCapture{}, fmt.Errorf("backup: waiting for the snapshot being written: %w", ctx.Err())
		case <-n.stopc:
			return stateCapture{}, ErrStopped
		}
	}
}

// writeTo writes the file: header, service bytes, checksum.
func (b *preparedBackup) writeTo(w io.Writer) error {
	if b.capture.release != nil {
		defer b.capture.release() // also when the header cannot be written
	}
	h := sha256.New()
	mw := io.MultiWriter(w, h)
	if _, err := mw.Write(b.header); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	if _, err := b.capture.writeService(mw); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	if _, err := w.Write(h.Sum(nil)); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	return nil
}

// handleBackup is GET /raft/api/backup (admin). Errors before the first
// byte get the JSON envelope; once the body started, a failure can only cut
// it short, which Content-Length and the checksum both reveal.
func (n *Node) handleBackup(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), n.writeTimeout())
	b, err := n.prepareBackup(ctx)
	cancel()
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=embedraft-%s-%d.backup", b.info.ClusterID, b.info.Index))
	if b.info.Bytes >= 0 {
		h.Set("Content-Length", strconv.FormatInt(b.info.Bytes, 10))
	}
	h.Set(transport.HeaderIndex, strconv.FormatUint(b.info.Index, 10))
	if err := b.writeTo(w); err != nil {
		n.log.Warn("backup not sent in full", "index", b.info.Index, "err", err)
		return
	}
	n.log.Info("backup sent", "index", b.info.Index, "bytes", b.info.Bytes)
}

// VerifyBackup reads a whole backup from r and checks it: magic, version,
// checksum and metadata. A truncated or corrupted file is an error
// wrapping ErrInvalidConfig.
func VerifyBackup(r io.Reader) (BackupInfo, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("read backup: %w", err)
	}
	info, _, err := decodeBackup(b)
	return info, err
}

// decodeBackup checks a backup file's bytes and returns its metadata and
// the service's part (a slice of b).
func decodeBackup(b []byte) (BackupInfo, []byte, error) {
	bad := func(format string, args ...any) (BackupInfo, []byte, error) {
		return BackupInfo{}, nil, fmt.Errorf("%w: backup file: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if len(b) < len(backupMagic) || !bytes.Equal(b[:len(backupMagic)], backupMagic[:]) {
		return bad("not an embedraft backup (bad magic)")
	}
	if len(b) < backupHeaderBytes+backupSumBytes {
		return bad("truncated (%d bytes)", len(b))
	}
	if v := binary.BigEndian.Uint32(b[8:12]); v != backupVersion {
		return bad("version %d, this build reads version %d", v, backupVersion)
	}
	body, sum := b[:len(b)-backupSumBytes], b[len(b)-backupSumBytes:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return bad("checksum mismatch: the file is truncated or corrupted")
	}
	m := uint64(binary.BigEndian.Uint32(b[12:16]))
	if m > maxBackupMetaSize || m > uint64(len(body)-backupHeaderBytes) {
		return bad("metadata length %d out of range", m)
	}
	var info BackupInfo
	if err := json.Unmarshal(body[backupHeaderBytes:backupHeaderBytes+m], &info); err != nil {
		return bad("metadata: %v", err)
	}
	service := body[backupHeaderBytes+m:]
	info.Bytes, info.ServiceBytes = int64(len(b)), int64(len(service))
	return info, service, nil
}
