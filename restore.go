package embedraft

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/wal"
	"go.etcd.io/etcd/server/v3/wal/walpb"
	"go.uber.org/zap"
)

// Restoring a backup (Config.Restore, the demo's -restore) works as
// `etcdutl snapshot restore` does: a new member's data directory is written
// as if the member had just installed a snapshot holding the backup's state,
// then the member starts from its disk exactly as a restart does.
//
//   - The state file and raft snapshot sit at index len(members), term 1,
//     with the members as voters; a hard state commits it. The membership
//     envelope lists the members with their addresses (the old membership is
//     not restored) and carries the backup's Idempotency-Key table.
//   - With Peers, every member is started with the same file and the same
//     member list: the cluster id is derived from both (restoredClusterID),
//     so they agree without talking, and it differs from the backed-up
//     cluster's and from a plain static bootstrap's with the same peers. The
//     first start runs checkStaticMember and the vote gate as a static
//     bootstrap does: restored members have the same log shape (index
//     len(members), term 1) as bootstrapped ones.
//   - With Cluster, the member is the only voter, under a new random cluster
//     id, and elects itself; others join it.
//   - The WAL metadata records the backup's checksum (walMetadata.Restore):
//     a restart with the same file is a plain restart, a different file is
//     refused, and checkIdentity accepts the derived cluster id.
//
// The WAL is written under a temporary name and renamed into place last, so
// a crash midway leaves no WAL and the next start restores again.

// restoreWALTemp is where the WAL of a restore is written before it is
// renamed to DataDir/wal.
const restoreWALTemp = "wal.restore"

// restoredClusterID derives the cluster id of a static cluster restored
// from the backup whose checksum is sum.
func restoredClusterID(peers map[uint64]string, sum string) uint64 {
	return hashClusterID("restore "+sum+"\n", peers)
}

// backupFileSum returns the checksum that ends a backup file, in hex: it
// identifies the backup. Only the file's head and tail are read.
func backupFileSum(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var magic [len(backupMagic)]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || magic != backupMagic {
		return "", fmt.Errorf("%s is not an embedraft backup (bad magic)", file)
	}
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Size() < backupHeaderBytes+backupSumBytes {
		return "", fmt.Errorf("%s is truncated (%d bytes)", file, st.Size())
	}
	sum := make([]byte, backupSumBytes)
	if _, err := f.ReadAt(sum, st.Size()-backupSumBytes); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum), nil
}

// checkRestoreOnWAL runs when Restore is set and DataDir already holds a
// WAL: the same backup (recorded in the WAL metadata) means the restore was
// done, and the node just restarts; anything else is refused. A restored
// directory whose file no longer exists restarts too (the file is not
// needed any more, and a start command kept as it was must not fail once
// the backup is cleaned up).
func checkRestoreOnWAL(cfg Config, meta walMetadata) error {
	sum, err := backupFileSum(cfg.Restore)
	if errors.Is(err, fs.ErrNotExist) && meta.Restore != "" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: Restore: %v", ErrInvalidConfig, err)
	}
	switch {
	case meta.Restore == sum:
		return nil
	case meta.Restore == "":
		return fmt.Errorf("%w: Restore: data dir %s already holds a WAL that was not restored from %s "+
			"(a restore is done once, into an empty data dir): drop the restore setting (-restore) to restart "+
			"this node as it is, or use an empty data dir", ErrInvalidConfig, cfg.DataDir, cfg.Restore)
	default:
		return fmt.Errorf("%w: Restore: data dir %s already holds a WAL restored from another backup "+
			"(sha256 %.12s, %s is %.12s): give the file it was restored from, or drop the restore setting "+
			"(-restore) to restart this node as it is, or use an empty data dir",
			ErrInvalidConfig, cfg.DataDir, meta.Restore, cfg.Restore, sum)
	}
}

// restoreNew writes a new member's data directory from the backup at
// cfg.Restore (see above) and opens it for restartRaft. Nothing is written
// until the file, the service and (with Peers) the other members have
// accepted the restore. campaign is true for a one-member cluster, which
// elects itself once started.
func (n *Node) restoreNew(ctx context.Context) (disk *diskStorage, rec recovered, campaign bool, err error) {
	cfg := n.cfg
	dir, file := cfg.DataDir, cfg.Restore
	switch {
	case n.Mode() == ModeRemoved:
		return nil, rec, false, fmt.Errorf("%w: Restore: data dir %s belongs to a removed member: use an empty data dir",
			ErrInvalidConfig, dir)
	case n.standaloneMarked.Load():
		return nil, rec, false, fmt.Errorf("%w: Restore: data dir %s holds writes made in standalone mode, which "+
			"the restore would discard: use an empty data dir", ErrInvalidConfig, dir)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, rec, false, fmt.Errorf("%w: Restore: %v", ErrInvalidConfig, err)
	}
	info, service, err := decodeBackup(b)
	if err != nil {
		return nil, rec, false, fmt.Errorf("restore %s: %w", file, err)
	}
	sum := hex.EncodeToString(b[len(b)-backupSumBytes:])
	ss, streams := n.svc.(StreamSnapshotter)
	if info.Streamed && !streams {
		return nil, rec, false, fmt.Errorf("%w: Restore %s: the backup was streamed by a StreamSnapshotter service, "+
			"and this service does not implement it", ErrInvalidConfig, file)
	}
	peers, clusterID := map[uint64]string{n.id: cfg.AdvertiseURL}, randomClusterID()
	if len(cfg.Peers) > 0 {
		if u := strings.TrimSuffix(cfg.Peers[n.id], "/"); u != cfg.AdvertiseURL {
			return nil, rec, false, fmt.Errorf("%w: AdvertiseURL %q differs from Peers[%d] %q",
				ErrInvalidConfig, cfg.AdvertiseURL, n.id, u)
		}
		peers, clusterID = cfg.Peers, restoredClusterID(cfg.Peers, sum)
	}
	index := uint64(len(peers))
	members, err := restoredMembers(peers, info.Membership, index)
	if err != nil {
		return nil, rec, false, fmt.Errorf("%w: Restore %s: %v", ErrInvalidConfig, file, err)
	}
	if len(cfg.Peers) > 0 { // a wiped member is refused as a static bootstrap refuses it
		n.clusterID.Store(clusterID)
		n.setLogger()
		confirmed, err := n.checkStaticMember(ctx, clusterID)
		if err != nil {
			return nil, rec, false, err
		}
		n.voteGate.Store(!confirmed)
		n.bootstrapIndex = index
	}
	// The service loads the state first, so a state it refuses is refused
	// before anything is written; a streaming service then writes the
	// state file from its view, in the format its RestoreSnapshot reads.
	if info.Streamed {
		err = ss.RestoreSnapshot(bytes.NewReader(service))
	} else {
		err = n.svc.ResetSnap(service)
	}
	if err != nil {
		return nil, rec, false, fmt.Errorf("%w: Restore %s: the service refused the state: %v", ErrInvalidConfig, file, err)
	}
	// A streamed backup's bytes are already what RestoreSnapshot reads.
	var view SnapshotView = bytesView(service)
	if streams && !info.Streamed {
		if view, err = ss.CaptureSnapshot(); err != nil {
			return nil, rec, false, fmt.Errorf("restore %s: service snapshot: %w", file, err)
		}
	}
	meta := walMetadata{NodeID: n.id, ClusterID: clusterID, Restore: sum}
	disk, rec, err = seedDataDir(n.zl, dir, meta, peers, members, view)
	view.Release()
	if err != nil {
		return nil, rec, false, fmt.Errorf("restore %s: %w", file, err)
	}
	if len(cfg.Peers) == 0 { // with Peers, set before the member check
		n.clusterID.Store(clusterID)
		n.setLogger()
	}
	n.log.Info("restored backup into a new cluster", "file", file, "members", len(peers),
		"from_cluster", info.ClusterID, "from_node", info.NodeID, "from_index", info.Index,
		"created", info.Created, "service_bytes", info.ServiceBytes, "sha256", sum)
	return disk, rec, len(cfg.Peers) == 0, nil
}

// restoredMembers is the membership envelope of a restored cluster: peers
// as voters, and the backup's Idempotency-Key table with every outcome
// placed at index (where the restored state is applied: a duplicate's
// writer then waits for that index, not for one of the old cluster's).
func restoredMembers(peers map[uint64]string, old json.RawMessage, index uint64) ([]byte, error) {
	reg := newRegistry()
	for id, u := range peers {
		reg.st.Members[id] = NodeInfo{ID: id, Addr: strings.TrimSuffix(u, "/"), Role: RoleVoter}
		reg.st.MaxID = max(reg.st.MaxID, id)
	}
	var oldObj map[string]json.RawMessage
	if len(old) > 0 {
		if err := json.Unmarshal(old, &oldObj); err != nil {
			return nil, fmt.Errorf("backup membership: %v", err)
		}
	}
	raw := oldObj[idemField]
	if len(raw) == 0 || string(raw) == "null" {
		return reg.marshal(), nil
	}
	var st idemState
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("backup idempotency keys: %v", err)
	}
	for i := range st.Keys {
		st.Keys[i].Index = index
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("backup idempotency keys: %v", err)
	}
	return withIdempotency(reg.marshal(), b), nil
}

// seedDataDir writes a new member's data directory whose log starts with
// a snapshot (term 1, index len(peers), the peers as voters) holding
// members and the view's state, and opens it for restartRaft: a restore,
// and a switchover of a StreamSnapshotter service. It does not release
// the view.
func seedDataDir(lg *zap.Logger, dir string, meta walMetadata, peers map[uint64]string, members []byte,
	view SnapshotView) (*diskStorage, recovered, error) {
	index := uint64(len(peers))
	ref, err := writeStateFile(stateDir(dir), stateFileName(1, index), members, view, nil)
	if err != nil {
		return nil, recovered{}, err
	}
	s := raftpb.Snapshot{Data: ref.marshal(), Metadata: raftpb.SnapshotMetadata{
		ConfState: raftpb.ConfState{Voters: sortedIDs(peers)}, Index: index, Term: 1,
	}}
	if err := writeRestoredWAL(lg, dir, meta, s); err != nil {
		return nil, recovered{}, err
	}
	disk, rec, err := openDisk(lg, dir)
	rec.serviceLoaded = true // the caller's service holds the state it wrote
	return disk, rec, err
}

// writeRestoredWAL writes the snap file for s, then a WAL holding meta,
// the snapshot record and a hard state committing it, under a temporary
// name renamed to DataDir/wal once complete.
func writeRestoredWAL(lg *zap.Logger, dataDir string, meta walMetadata, s raftpb.Snapshot) error {
	if err := os.MkdirAll(snapDir(dataDir), 0o750); err != nil {
		return fmt.Errorf("%w: create snapshot dir: %v", ErrStorage, err)
	}
	if err := snap.New(lg, snapDir(dataDir)).SaveSnap(s); err != nil {
		return fmt.Errorf("%w: save snapshot: %v", ErrStorage, err)
	}
	tmp := filepath.Join(dataDir, restoreWALTemp)
	if err := os.RemoveAll(tmp); err != nil { // left by a crash
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	mb, _ := json.Marshal(meta) // integers and strings always encode
	w, err := wal.Create(lg, tmp, mb)
	if err != nil {
		return fmt.Errorf("%w: create wal: %v", ErrStorage, err)
	}
	md := s.Metadata
	err = w.SaveSnapshot(walpb.Snapshot{Index: md.Index, Term: md.Term, ConfState: &md.ConfState})
	if err == nil {
		err = w.Save(raftpb.HardState{Term: md.Term, Commit: md.Index}, nil)
	}
	if cerr := w.Close(); err == nil { // Close syncs
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: write wal: %v", ErrStorage, err)
	}
	if err := os.Rename(tmp, walDir(dataDir)); err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	if err := fsyncDir(dataDir); err != nil {
		return fmt.Errorf("%w: sync data dir: %v", ErrStorage, err)
	}
	return nil
}

// switchBySnapshot is the switchover of a StreamSnapshotter service (writes
// are held): the standalone state becomes the new one-member cluster's
// first snapshot, written from the service's view as any snapshot is,
// instead of an init entry holding it in one buffer. Joining members get
// it as a streamed snapshot. Until the WAL exists nothing has changed and
// the node is still standalone; after, it finishes the switch or stops.
func (n *Node) switchBySnapshot(ss StreamSnapshotter) error {
	view, err := ss.CaptureSnapshot()
	if err != nil {
		return fmt.Errorf("switch to cluster: service snapshot: %w", err)
	}
	peers := map[uint64]string{n.id: n.cfg.AdvertiseURL}
	members, err := restoredMembers(peers, nil, 1)
	if err != nil {
		view.Release()
		return fmt.Errorf("switch to cluster: %w", err)
	}
	clusterID := randomClusterID()
	n.clusterID.Store(clusterID)
	n.setLogger()
	disk, rec, err := seedDataDir(n.zl, n.cfg.DataDir, walMetadata{NodeID: n.id, ClusterID: clusterID}, peers, members, view)
	view.Release()
	if err != nil {
		err = fmt.Errorf("switch to cluster: %w", err)
		if hasWAL(n.cfg.DataDir) {
			n.stop(err)
		} else {
			n.clusterID.Store(0)
			n.setLogger()
		}
		return err
	}
	if err = n.restartRaft(disk, rec); err == nil {
		ctx, cancel := context.WithTimeout(n.stopCtx, n.cfg.JoinTimeout)
		defer cancel()
		if err = n.campaignAlone(ctx); err == nil {
			_, err = n.waitLeaderWhere(ctx, func(lead uint64) bool { return lead == n.id })
		}
	}
	if err != nil {
		err = fmt.Errorf("switch to cluster: %w", err)
		n.stop(err)
	}
	return err
}
