package embedraft

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/wal"
	"go.etcd.io/etcd/server/v3/wal/walpb"
	"go.uber.org/zap"
)

// walMetadata is stored in the WAL's metadata record: a restart reads the
// node's identity from there, never from flags.
type walMetadata struct {
	NodeID    uint64 `json:"node_id"`
	ClusterID uint64 `json:"cluster_id"`
	// Peers is the member list a joining node was given, so that after a
	// crash before it caught up it can still reach the cluster.
	Peers map[uint64]string `json:"peers,omitempty"`
	// Restore is the checksum (SHA-256, hex) of the backup this data
	// directory was restored from (restore.go), empty otherwise.
	Restore string `json:"restore,omitempty"`
}

// diskStorage is the durable half of a cluster node: the WAL and the
// snapshot files. It is owned by the raft loop goroutine.
type diskStorage struct {
	lg          *zap.Logger
	walDir      string
	snapDir     string
	stateDir    string // state files (snapstream.go)
	wal         *wal.WAL
	snapshotter *snap.Snapshotter
}

// recovered is what openDisk read back from the data directory.
type recovered struct {
	meta      walMetadata
	snapshot  raftpb.Snapshot // empty when there is none
	hardState raftpb.HardState
	entries   []raftpb.Entry
	// serviceLoaded says the service already holds the snapshot's state
	// (a restore or switchover wrote the snapshot from it): restartRaft
	// then restores only the membership.
	serviceLoaded bool
}

func walDir(dataDir string) string  { return filepath.Join(dataDir, "wal") }
func snapDir(dataDir string) string { return filepath.Join(dataDir, "snap") }

// hasWAL reports whether dataDir holds a cluster node's WAL.
func hasWAL(dataDir string) bool { return wal.Exist(walDir(dataDir)) }

// createDisk creates a fresh WAL recording the node's identity.
func createDisk(lg *zap.Logger, dataDir string, meta walMetadata) (*diskStorage, error) {
	d := &diskStorage{lg: lg, walDir: walDir(dataDir), snapDir: snapDir(dataDir), stateDir: stateDir(dataDir)}
	if err := os.MkdirAll(d.snapDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: create snapshot dir: %v", ErrStorage, err)
	}
	mb, _ := json.Marshal(meta) // two integers always encode
	w, err := wal.Create(lg, d.walDir, mb)
	if err != nil {
		return nil, fmt.Errorf("%w: create wal: %v", ErrStorage, err)
	}
	d.wal = w
	d.snapshotter = snap.New(lg, d.snapDir)
	return d, nil
}

// openDisk opens an existing data directory: the newest snapshot that the
// WAL knows of and that is intact on disk, then the WAL from that point. A
// torn last WAL record (a crash mid-write) is repaired once, as etcd does.
func openDisk(lg *zap.Logger, dataDir string) (*diskStorage, recovered, error) {
	var rec recovered
	d := &diskStorage{lg: lg, walDir: walDir(dataDir), snapDir: snapDir(dataDir), stateDir: stateDir(dataDir)}
	if err := os.MkdirAll(d.snapDir, 0o750); err != nil {
		return nil, rec, fmt.Errorf("%w: snapshot dir: %v", ErrStorage, err)
	}
	d.snapshotter = snap.New(lg, d.snapDir)
	walSnaps, err := wal.ValidSnapshotEntries(lg, d.walDir)
	if err != nil {
		return nil, rec, fmt.Errorf("%w: read wal snapshot records: %v", ErrStorage, err)
	}
	s, skipped, err := d.loadNewestIntact(dataDir, walSnaps)
	if err != nil {
		return nil, rec, err
	}
	walSnap := walpb.Snapshot{}
	if s != nil {
		rec.snapshot = *s
		walSnap.Index, walSnap.Term = s.Metadata.Index, s.Metadata.Term
		walSnap.ConfState = &s.Metadata.ConfState
	}
	for repaired := false; ; repaired = true {
		w, err := wal.Open(lg, d.walDir, walSnap)
		if err != nil && skipped != nil {
			return nil, rec, fmt.Errorf("%w: the newest snapshot is unusable (%v) and the log no longer "+
				"reaches back to an older one (%v): restore this member from a backup, or remove it and "+
				"join it again with an empty data directory", ErrStorage, skipped, err)
		}
		if err != nil {
			return nil, rec, fmt.Errorf("%w: open wal: %v", ErrStorage, err)
		}
		md, hs, ents, err := w.ReadAll()
		if err == nil {
			d.wal = w
			rec.hardState, rec.entries = hs, ents
			if err := json.Unmarshal(md, &rec.meta); err != nil || rec.meta.NodeID == 0 {
				w.Close()
				return nil, rec, fmt.Errorf("%w: wal metadata is not embedraft's (%q)", ErrStorage, md)
			}
			return d, rec, nil
		}
		w.Close()
		if repaired || !errors.Is(err, io.ErrUnexpectedEOF) || !wal.Repair(lg, d.walDir) {
			return nil, rec, fmt.Errorf("%w: read wal: %v", ErrStorage, err)
		}
		lg.Warn("repaired torn wal tail", zap.String("dir", d.walDir))
	}
}

// loadNewestIntact returns the newest snapshot the WAL records whose .snap
// file and, for a reference, state file are intact (checksums checked), or
// nil if there is none. skipped describes the newest one passed over.
func (d *diskStorage) loadNewestIntact(dataDir string, walSnaps []walpb.Snapshot) (_ *raftpb.Snapshot, skipped, _ error) {
	removeStaleStateTemps(stateDir(dataDir))
	for {
		s, err := d.snapshotter.LoadNewestAvailable(walSnaps)
		if errors.Is(err, snap.ErrNoSnapshot) {
			return nil, skipped, nil
		}
		if err != nil {
			return nil, skipped, fmt.Errorf("%w: load snapshot: %v", ErrStorage, err)
		}
		ref, isRef, err := parseSnapRef(s.Data)
		if err == nil && isRef {
			err = checkStateFile(stateDir(dataDir), ref)
		}
		if err == nil {
			return s, skipped, nil
		}
		if skipped == nil {
			skipped = fmt.Errorf("snapshot %d: %v", s.Metadata.Index, err)
		}
		d.lg.Warn("snapshot unusable; trying an older one", zap.Uint64("index", s.Metadata.Index), zap.Error(err))
		kept := walSnaps[:0:0]
		for _, ws := range walSnaps {
			if ws.Index != s.Metadata.Index || ws.Term != s.Metadata.Term {
				kept = append(kept, ws)
			}
		}
		walSnaps = kept
	}
}

// saveSnapshot makes a snapshot durable: the snap file first, then the WAL
// record that points at it (so a WAL snapshot record always has its file).
// The WAL record is fsynced with everything written before it.
func (d *diskStorage) saveSnapshot(s raftpb.Snapshot) error {
	if err := d.snapshotter.SaveSnap(s); err != nil {
		return fmt.Errorf("%w: save snapshot: %v", ErrStorage, err)
	}
	ws := walpb.Snapshot{Index: s.Metadata.Index, Term: s.Metadata.Term, ConfState: &s.Metadata.ConfState}
	if err := d.wal.SaveSnapshot(ws); err != nil {
		return fmt.Errorf("%w: save wal snapshot record: %v", ErrStorage, err)
	}
	return nil
}

// release lets the purger delete WAL files wholly before index. Call it
// only once a hard state with commit >= index is durable.
func (d *diskStorage) release(index uint64) error {
	if err := d.wal.ReleaseLockTo(index); err != nil {
		return fmt.Errorf("%w: release wal: %v", ErrStorage, err)
	}
	return nil
}

func (d *diskStorage) sync() error {
	if err := d.wal.Sync(); err != nil {
		return fmt.Errorf("%w: sync wal: %v", ErrStorage, err)
	}
	return nil
}

// save appends entries and the hard state with one fsync (when raft says the
// Ready must be synced).
func (d *diskStorage) save(hs raftpb.HardState, ents []raftpb.Entry) error {
	if raft.IsEmptyHardState(hs) && len(ents) == 0 {
		return nil
	}
	if err := d.wal.Save(hs, ents); err != nil {
		return fmt.Errorf("%w: save wal: %v", ErrStorage, err)
	}
	return nil
}

// startPurge deletes all but the newest max snap and WAL files (WAL files
// only once released by saveSnapshot), until stop is closed. The returned
// channel is closed when both purge goroutines have exited.
func (d *diskStorage) startPurge(stop <-chan struct{}, maxSnap, maxWAL uint) <-chan struct{} {
	const interval = 30 * time.Second
	snapDone, _ := fileutil.PurgeFileWithDoneNotify(d.lg, d.snapDir, "snap", maxSnap, interval, stop)
	walDone, _ := fileutil.PurgeFileWithDoneNotify(d.lg, d.walDir, "wal", maxWAL, interval, stop)
	stateDone := closedChan()
	if err := os.MkdirAll(d.stateDir, 0o750); err == nil {
		stateDone, _ = fileutil.PurgeFileWithDoneNotify(d.lg, d.stateDir, "state", maxSnap, interval, stop)
	}
	done := make(chan struct{})
	go func() { // exits when the purgers have seen stop
		<-snapDone
		<-walDone
		<-stateDone
		close(done)
	}()
	return done
}

func (d *diskStorage) close() error {
	if d.wal == nil {
		return nil
	}
	return d.wal.Close()
}

// newMemoryStorage loads what openDisk recovered into raft's MemoryStorage.
func newMemoryStorage(rec recovered) (*raft.MemoryStorage, error) {
	ms := raft.NewMemoryStorage()
	if !raft.IsEmptySnap(rec.snapshot) {
		if err := ms.ApplySnapshot(rec.snapshot); err != nil {
			return nil, fmt.Errorf("%w: apply snapshot to memory: %v", ErrStorage, err)
		}
	}
	if err := ms.SetHardState(rec.hardState); err != nil {
		return nil, fmt.Errorf("%w: set hard state: %v", ErrStorage, err)
	}
	if err := ms.Append(rec.entries); err != nil {
		return nil, fmt.Errorf("%w: append wal entries: %v", ErrStorage, err)
	}
	return ms, nil
}

func closedChan() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
