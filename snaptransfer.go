package embedraft

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"

	"github.com/embedraft/embedraft/transport"
)

// Snapshots travel to a follower as a stream, the way etcd sends its
// database: rafthttp's snapshot sender POSTs /raft/snapshot with a merged
// body, the length-prefixed MsgSnap (whose Data is the sender's snapRef)
// followed by the state file as it is on disk (envelope, then CRC32C). The
// receiver checks the message and the sender before it writes anything,
// copies the stream into a state file of its own while checking its size
// and checksum against the reference, and only then steps the message with
// Data pointing at that file. Neither side holds the state in one buffer.

// send sends raft's messages. A MsgSnap holds a reference to a state file:
// it goes to rafthttp's snapshot sender with the file as its body; rafthttp
// closes the file and reports the outcome to raft (ReportSnapshot).
func (n *Node) send(tr *rafthttp.Transport, msgs []raftpb.Message) {
	snaps := 0
	for i := range msgs {
		if msgs[i].Type == raftpb.MsgSnap {
			snaps++
		}
	}
	if snaps == 0 {
		tr.Send(msgs)
		return
	}
	rest := make([]raftpb.Message, 0, len(msgs)-snaps)
	for _, m := range msgs {
		if m.Type != raftpb.MsgSnap {
			rest = append(rest, m)
			continue
		}
		if !inConfState(m.Snapshot.Metadata.ConfState, m.To) {
			// The newest snapshot predates the member (raft would
			// ignore it after the whole transfer): have a fresh one
			// made, unless one that includes the member is being
			// made, and let raft retry (about once a heartbeat) until
			// it is saved. Asking on every retry would make a second
			// full snapshot right after the first.
			if cs := n.snapConf.Load(); cs == nil || !inConfState(*cs, m.To) {
				n.log.Info("snapshot predates the member it is for; making a fresh one", "to", m.To,
					"index", m.Snapshot.Metadata.Index)
				n.snapWanted.Store(true)
			}
			// Wake the apply loop either way: it starts the snapshot,
			// and it learns only when it runs that the one being
			// written failed (and retries it), even with no writes.
			n.applyq.pushIfIdle(applyBatch{})
			n.rn.ReportSnapshot(m.To, raft.SnapshotFailure)
			continue
		}
		if err := n.sendSnapshot(tr, m); err != nil {
			n.log.Error("cannot send snapshot", "to", m.To, "index", m.Snapshot.Metadata.Index, "err", err)
			n.rn.ReportSnapshot(m.To, raft.SnapshotFailure)
		}
	}
	tr.Send(rest)
}

// inConfState reports whether id is a member (voter or learner, in either
// half of a joint configuration) of cs.
func inConfState(cs raftpb.ConfState, id uint64) bool {
	for _, ids := range [][]uint64{cs.Voters, cs.Learners, cs.VotersOutgoing, cs.LearnersNext} {
		if slices.Contains(ids, id) {
			return true
		}
	}
	return false
}

// sendSnapshot hands a MsgSnap and its state file to rafthttp, which sends
// them on a goroutine of its own (one per follower: raft sends the next
// snapshot to a follower only after ReportSnapshot).
func (n *Node) sendSnapshot(tr *rafthttp.Transport, m raftpb.Message) error {
	ref, isRef, err := parseSnapRef(m.Snapshot.Data)
	if err != nil {
		return err
	}
	if !isRef {
		return errors.New("snapshot has no state file")
	}
	f, err := os.Open(filepath.Join(stateDir(n.cfg.DataDir), ref.File))
	if err != nil {
		return fmt.Errorf("open state file: %v", err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != ref.Size+4 {
		f.Close()
		return fmt.Errorf("state file %s is not the size its snapshot records (%d bytes)", ref.File, ref.Size+4)
	}
	tr.SendSnapshot(*snap.NewMessage(m, f, ref.Size+4))
	return nil
}

// receiveSnapshot serves POST /raft/snapshot (servePeer has checked the
// token). It reads the MsgSnap at the head of the body, bounded, and checks
// it like any peer message before writing a byte to disk; then it copies
// the state file (bounded by MaxSnapshotBytes, checked against the
// reference's size and checksum) and steps the message with a reference
// to the copy.
func (n *Node) receiveSnapshot(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	// rafthttp's sender reads a 412 with this text as a cluster mismatch.
	if !transport.HasRaftClusterID(r, n.peerClusterID()) {
		http.Error(w, "cluster ID mismatch", http.StatusPreconditionFailed)
		return
	}
	body := http.MaxBytesReader(w, r.Body, 8+transport.MaxSmallPeerMessageBytes+n.cfg.MaxSnapshotBytes+4)
	br := bufio.NewReaderSize(body, 64<<10)
	m, err := readSnapshotHead(br, n.cfg.MaxSnapshotBytes)
	if err != nil {
		n.metrics.peerMessageRefused()
		status := http.StatusBadRequest
		if errors.Is(err, ErrTooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "refused snapshot: "+err.Error(), status)
		return
	}
	if err := n.admitPeer(m); err != nil {
		writePeerError(w, err)
		return
	}
	if idx, commit := m.Snapshot.Metadata.Index, n.currentView().commit; idx <= commit {
		// raft would ignore it: not worth a file.
		http.Error(w, fmt.Sprintf("refused snapshot: index %d is not past this member's commit %d", idx, commit),
			http.StatusBadRequest)
		return
	}
	ref, _, _ := parseSnapRef(m.Snapshot.Data) // readSnapshotHead checked it
	local, err := receiveStateFile(stateDir(n.cfg.DataDir), m.Snapshot.Metadata, ref, br)
	if err != nil {
		n.log.Warn("snapshot not received", "from", m.From, "index", m.Snapshot.Metadata.Index, "err", err)
		status := http.StatusBadRequest
		if errors.Is(err, ErrStorage) {
			status = http.StatusInternalServerError
		}
		http.Error(w, "snapshot not received: "+err.Error(), status)
		return
	}
	m.Snapshot.Data = local.marshal()
	members, err := membersOfSnapshot(n.cfg.DataDir, m.Snapshot.Data)
	if err != nil {
		http.Error(w, "snapshot not received: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := n.stepPeer(r.Context(), m, members); err != nil {
		writePeerError(w, err)
		return
	}
	n.log.Info("received snapshot", "from", m.From, "index", m.Snapshot.Metadata.Index, "bytes", ref.Size+4)
	w.WriteHeader(http.StatusNoContent)
}

// writePeerError answers with stepPeer's error.
func writePeerError(w http.ResponseWriter, err error) {
	var pe peerError
	if errors.As(err, &pe) {
		pe.WriteTo(w)
		return
	}
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

// readSnapshotHead reads the length-prefixed MsgSnap that starts a
// streamed snapshot (rafthttp's messageEncoder: 8 bytes of length, then
// the message). Its Data must be a reference no larger than max.
func readSnapshotHead(r io.Reader, max int64) (raftpb.Message, error) {
	var m raftpb.Message
	var l uint64
	if err := binary.Read(r, binary.BigEndian, &l); err != nil {
		return m, fmt.Errorf("message length: %v", err)
	}
	if l > transport.MaxSmallPeerMessageBytes {
		return m, fmt.Errorf("%w: message of %d bytes (a streamed snapshot's message is at most %d)",
			ErrTooLarge, l, transport.MaxSmallPeerMessageBytes)
	}
	buf := make([]byte, l)
	if _, err := io.ReadFull(r, buf); err != nil {
		return m, fmt.Errorf("message: %v", err)
	}
	if err := m.Unmarshal(buf); err != nil {
		return m, fmt.Errorf("message: %v", err)
	}
	if m.Type != raftpb.MsgSnap {
		return m, fmt.Errorf("message type %s on the snapshot route", m.Type)
	}
	ref, isRef, err := parseSnapRef(m.Snapshot.Data)
	switch {
	case err != nil:
		return m, err
	case !isRef:
		return m, errors.New("a streamed snapshot's message must reference its stream")
	case ref.Size > max:
		return m, fmt.Errorf("%w: snapshot of %d bytes, beyond MaxSnapshotBytes (%d)", ErrTooLarge, ref.Size, max)
	}
	return m, nil
}

// receivedStateFileName names a received state file. The checksum is part
// of the name: two leaders may have written different files for the same
// entry, and a received file must never replace one a snapshot of this
// node refers to.
func receivedStateFileName(md raftpb.SnapshotMetadata, ref snapRef) string {
	return fmt.Sprintf("%016x-%016x-%08x.state", md.Term, md.Index, ref.CRC)
}

// receiveStateFile copies a streamed state file (ref.Size bytes of
// envelope, then its CRC32C) from r into dir, checking size and checksum
// before it renames the copy into place, and returns the local reference.
// A stream that is short, long or damaged leaves nothing behind.
func receiveStateFile(dir string, md raftpb.SnapshotMetadata, ref snapRef, r io.Reader) (snapRef, error) {
	name := receivedStateFileName(md, ref)
	w, err := createStateFile(dir, name)
	if err != nil {
		return snapRef{}, err
	}
	defer w.abort()
	crc := crc32.New(crcTable)
	got, err := io.Copy(io.MultiWriter(w.bw, crc), io.LimitReader(r, ref.Size))
	if err != nil {
		return snapRef{}, fmt.Errorf("stream: %v", err)
	}
	if got != ref.Size {
		return snapRef{}, fmt.Errorf("stream ended after %d of %d bytes", got, ref.Size)
	}
	var trailer uint32
	if err := binary.Read(r, binary.BigEndian, &trailer); err != nil {
		return snapRef{}, fmt.Errorf("stream checksum: %v", err)
	}
	if sum := crc.Sum32(); sum != trailer || sum != ref.CRC {
		return snapRef{}, fmt.Errorf("stream is corrupt: checksum %08x, stream says %08x, message says %08x",
			sum, trailer, ref.CRC)
	}
	if n, _ := r.Read(make([]byte, 1)); n != 0 {
		return snapRef{}, errors.New("stream is longer than its snapshot")
	}
	if err := w.commit(trailer); err != nil {
		return snapRef{}, err
	}
	return snapRef{File: name, Size: ref.Size, CRC: ref.CRC}, nil
}
