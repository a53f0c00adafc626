package embedraft

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
)

// Snapshot state files. A snapshot's state lives in its own file,
// DataDir/snap/state/<term>-<index>.state, written as a stream:
//
//	...        the snapshot envelope (codec.go: magic, membership, then the
//	           service's bytes, as a view's WriteTo or GetSnapshot wrote them)
//	4 bytes    CRC32C (Castagnoli) of the envelope, big endian
//
// It is written to a temporary name, fsynced, renamed and the directory
// fsynced. The raft snapshot (MemoryStorage, the .snap file, the WAL
// record) holds only a small reference to it: snapRef. So the whole state
// is never one []byte on the node that makes the snapshot.
//
// A follower is sent the file as a stream (snaptransfer.go) and receives
// it into a state file of its own. A snapshot sent whole as one message on
// /raft (bounded by MaxSnapshotBytes) is still accepted: its envelope is
// written to a state file before it is recorded (storeReceivedSnapshot).

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// refMagic starts a snapshot's Data when it is a reference to a state file
// rather than the envelope itself (snapMagic).
var refMagic = [4]byte{'E', 'R', 'F', 1}

// snapRef is what a raft snapshot's Data holds: the file and what it must
// contain.
type snapRef struct {
	File string `json:"file"` // base name in the state directory
	Size int64  `json:"size"` // envelope bytes, without the checksum
	CRC  uint32 `json:"crc32c"`
}

func (r snapRef) marshal() []byte {
	b, _ := json.Marshal(r) // strings and integers always encode
	return append(refMagic[:len(refMagic):len(refMagic)], b...)
}

// parseSnapRef returns the reference held in a snapshot's Data, if it is
// one. A reference in a peer's message is only believed for a streamed
// snapshot, once the stream is in a state file of this node's own
// (receiveSnapshot).
func parseSnapRef(data []byte) (snapRef, bool, error) {
	var r snapRef
	if len(data) < 4 || [4]byte(data[:4]) != refMagic {
		return r, false, nil
	}
	if err := json.Unmarshal(data[4:], &r); err != nil {
		return r, true, fmt.Errorf("bad snapshot reference: %v", err)
	}
	if r.File == "" || r.File != filepath.Base(r.File) || strings.HasPrefix(r.File, ".") || r.Size < 5 {
		return r, true, fmt.Errorf("bad snapshot reference %q", data[4:])
	}
	return r, true, nil
}

func stateDir(dataDir string) string { return filepath.Join(snapDir(dataDir), "state") }

func stateFileName(term, index uint64) string { return fmt.Sprintf("%016x-%016x.state", term, index) }

// bytesView is the view of a service without the extension: its
// GetSnapshot bytes.
type bytesView []byte

func (b bytesView) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(b)
	return int64(n), err
}

func (bytesView) Release() {}

// countingWriter counts and checksums what goes through it, and refuses to
// go on once stop is closed (so a view's WriteTo ends when the node stops).
type countingWriter struct {
	w    io.Writer
	crc  hash.Hash32
	n    int64
	stop <-chan struct{}
}

func (c *countingWriter) Write(p []byte) (int, error) {
	select {
	case <-c.stop:
		return 0, ErrStopped
	default:
	}
	n, err := c.w.Write(p)
	c.crc.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// stateSyncBytes is how much of a state file is written between two
// fdatasyncs. A snapshot of a large state would otherwise leave hundreds of
// MiB dirty in the page cache, and the WAL's fdatasync on the same disk
// (ext4 commits them together) would wait for all of it: syncing in steps
// keeps the backlog, and so the WAL's stall, small.
const stateSyncBytes = 8 << 20

// syncingWriter writes to a state file, syncing it every stateSyncBytes.
type syncingWriter struct {
	f       *os.File
	pending int
}

func (w *syncingWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.pending += n
	if err == nil && w.pending >= stateSyncBytes {
		w.pending = 0
		err = fileutil.Fdatasync(w.f)
	}
	return n, err
}

// writeStateFile writes a state file from the membership and the view, and
// returns the reference to it. It does not release the view.
func writeStateFile(dir, name string, members []byte, view SnapshotView, stop <-chan struct{}) (snapRef, error) {
	w, err := createStateFile(dir, name)
	if err != nil {
		return snapRef{}, err
	}
	defer w.abort()
	cw := &countingWriter{w: w.bw, crc: crc32.New(crcTable), stop: stop}
	head := append(snapMagic[:len(snapMagic):len(snapMagic)], binary.AppendUvarint(nil, uint64(len(members)))...)
	if _, err := cw.Write(append(head, members...)); err != nil {
		return snapRef{}, fmt.Errorf("%w: write state file: %v", ErrStorage, err)
	}
	if _, err := view.WriteTo(cw); err != nil {
		return snapRef{}, fmt.Errorf("snapshot view: %w", err)
	}
	ref := snapRef{File: name, Size: cw.n, CRC: cw.crc.Sum32()}
	if err := w.commit(ref.CRC); err != nil {
		return snapRef{}, err
	}
	return ref, nil
}

// stateFileWriter writes a state file under a temporary name, synced in
// steps (syncingWriter), until commit puts it in place or abort removes it.
type stateFileWriter struct {
	dir, name string
	f         *os.File
	bw        *bufio.Writer
	placed    bool // renamed to name: abort leaves it
}

func createStateFile(dir, name string) (*stateFileWriter, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: create state dir: %v", ErrStorage, err)
	}
	f, err := os.CreateTemp(dir, name+".*.tmp")
	if err != nil {
		return nil, fmt.Errorf("%w: create state file: %v", ErrStorage, err)
	}
	return &stateFileWriter{dir: dir, name: name, f: f, bw: bufio.NewWriterSize(&syncingWriter{f: f}, 1<<20)}, nil
}

// commit appends the checksum, makes the file durable, renames it to its
// name and makes the rename durable.
func (w *stateFileWriter) commit(crc uint32) error {
	if err := binary.Write(w.bw, binary.BigEndian, crc); err != nil {
		return fmt.Errorf("%w: write state file: %v", ErrStorage, err)
	}
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("%w: write state file: %v", ErrStorage, err)
	}
	if err := fileutil.Fsync(w.f); err != nil {
		return fmt.Errorf("%w: sync state file: %v", ErrStorage, err)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("%w: close state file: %v", ErrStorage, err)
	}
	if err := os.Rename(w.f.Name(), filepath.Join(w.dir, w.name)); err != nil {
		return fmt.Errorf("%w: rename state file: %v", ErrStorage, err)
	}
	w.placed = true
	if err := fsyncDir(w.dir); err != nil {
		return fmt.Errorf("%w: sync state dir: %v", ErrStorage, err)
	}
	return nil
}

// abort removes the temporary file unless commit renamed it.
func (w *stateFileWriter) abort() {
	if !w.placed {
		w.f.Close()
		os.Remove(w.f.Name())
	}
}

func fsyncDir(dir string) error {
	d, err := fileutil.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return fileutil.Fsync(d)
}

// stateReader reads a state file's envelope and checks it against the
// reference and the trailing checksum: Read returns an error instead of
// io.EOF when they do not match.
type stateReader struct {
	f   *os.File
	r   io.Reader // the envelope, limited to ref.Size
	br  *bufio.Reader
	crc hash.Hash32
	ref snapRef
	end error // io.EOF or the checksum's error, once reached
}

func openState(dir string, ref snapRef) (*stateReader, error) {
	f, err := os.Open(filepath.Join(dir, ref.File))
	if err != nil {
		return nil, fmt.Errorf("open state file: %v", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat state file: %v", err)
	}
	if st.Size() != ref.Size+4 {
		f.Close()
		return nil, fmt.Errorf("state file %s has %d bytes, want %d (truncated or replaced)", ref.File, st.Size(), ref.Size+4)
	}
	s := &stateReader{f: f, br: bufio.NewReaderSize(f, 1<<20), crc: crc32.New(crcTable), ref: ref}
	s.r = io.TeeReader(io.LimitReader(s.br, ref.Size), s.crc)
	return s, nil
}

func (s *stateReader) Read(p []byte) (int, error) {
	if s.end != nil {
		return 0, s.end
	}
	n, err := s.r.Read(p)
	if err == io.EOF {
		var trailer uint32
		if terr := binary.Read(s.br, binary.BigEndian, &trailer); terr != nil {
			err = fmt.Errorf("state file %s: checksum: %v", s.ref.File, terr)
		} else if sum := s.crc.Sum32(); sum != trailer || sum != s.ref.CRC {
			err = fmt.Errorf("state file %s is corrupt: checksum %08x, file says %08x, snapshot says %08x",
				s.ref.File, sum, trailer, s.ref.CRC)
		}
		s.end = err // the checksum is read once; later reads repeat the outcome
	}
	return n, err
}

func (s *stateReader) Close() error { return s.f.Close() }

// checkStateFile reads a whole state file and checks its checksum.
func checkStateFile(dir string, ref snapRef) error {
	s, err := openState(dir, ref)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = io.Copy(io.Discard, s)
	return err
}

// readEnvelopeHead reads the magic and membership at the start of an
// envelope stream, leaving r at the service's bytes.
func readEnvelopeHead(r *bufio.Reader) (members []byte, err error) {
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil || magic != snapMagic {
		return nil, errors.New("bad snapshot envelope: magic")
	}
	l, err := binary.ReadUvarint(r)
	if err != nil || l > 1<<30 {
		return nil, errors.New("bad snapshot envelope: membership length")
	}
	members = make([]byte, l)
	if _, err := io.ReadFull(r, members); err != nil {
		return nil, errors.New("bad snapshot envelope: membership length")
	}
	return members, nil
}

// membersOfSnapshot returns the membership a snapshot's Data holds, reading
// only the head of its state file when it is a reference.
func membersOfSnapshot(dataDir string, data []byte) ([]byte, error) {
	ref, isRef, err := parseSnapRef(data)
	if err != nil {
		return nil, err
	}
	if !isRef {
		members, _, err := unmarshalSnapshot(data)
		return members, err
	}
	s, err := openState(stateDir(dataDir), ref)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return readEnvelopeHead(bufio.NewReader(s))
}

// restoreFromReader loads an envelope stream: membership first, then the
// service's state, through RestoreSnapshot when the service streams, else
// read into one buffer for ResetSnap.
func (n *Node) restoreFromReader(index uint64, r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	members, err := readEnvelopeHead(br)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, index, err)
	}
	if err := n.restoreMembership(index, members); err != nil {
		return err
	}
	if ss, ok := n.svc.(StreamSnapshotter); ok {
		if err := ss.RestoreSnapshot(br); err != nil {
			return fmt.Errorf("service restore from snapshot %d: %w", index, err)
		}
		// Read what the service left, so that the checksum is checked.
		if _, err := io.Copy(io.Discard, br); err != nil {
			return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, index, err)
		}
		return nil
	}
	// The checksum is checked at the end of the stream, before ResetSnap.
	data, err := io.ReadAll(br)
	if err != nil {
		return fmt.Errorf("%w: snapshot %d: %v", ErrStorage, index, err)
	}
	if err := n.svc.ResetSnap(data); err != nil {
		return fmt.Errorf("service reset from snapshot %d: %w", index, err)
	}
	return nil
}

// removeStaleStateTemps deletes temporary state files a crash left behind.
func removeStaleStateTemps(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
	for _, name := range names {
		os.Remove(name)
	}
}
