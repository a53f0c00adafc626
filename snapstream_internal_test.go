package embedraft

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/wal"
	"go.uber.org/zap"
)

func TestParseSnapRef(t *testing.T) {
	good := snapRef{File: "0000000000000001-0000000000000010.state", Size: 100, CRC: 7}
	t.Run("OK", func(t *testing.T) {
		r, isRef, err := parseSnapRef(good.marshal())
		if err != nil || !isRef || r != good {
			t.Fatalf("parseSnapRef = %+v %v %v", r, isRef, err)
		}
	})
	t.Run("OK envelope is no reference", func(t *testing.T) {
		if _, isRef, err := parseSnapRef(marshalSnapshot(nil, []byte("x"))); isRef || err != nil {
			t.Fatalf("envelope taken for a reference: %v %v", isRef, err)
		}
	})
	for _, bad := range []snapRef{
		{File: "../../etc/passwd", Size: 100},
		{File: "a/b.state", Size: 100},
		{File: ".hidden", Size: 100},
		{File: "", Size: 100},
		{File: "x.state", Size: 0},
	} {
		t.Run("ErrBad "+bad.File, func(t *testing.T) {
			if _, isRef, err := parseSnapRef(bad.marshal()); !isRef || err == nil {
				t.Fatalf("parseSnapRef(%+v) accepted", bad)
			}
		})
	}
}

func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	members, service := []byte(`{"members":{}}`), bytes.Repeat([]byte("state"), 100000)
	ref, err := writeStateFile(dir, "a.state", members, bytesView(service), nil)
	if err != nil {
		t.Fatal(err)
	}
	envelope := marshalSnapshot(members, service)
	t.Run("OK", func(t *testing.T) {
		if int(ref.Size) != len(envelope) {
			t.Fatalf("size %d, want %d", ref.Size, len(envelope))
		}
		got, err := readStateEnvelope(dir, ref, 1<<30)
		if err != nil || !bytes.Equal(got, envelope) {
			t.Fatalf("readStateEnvelope: %v (equal %v)", err, bytes.Equal(got, envelope))
		}
		if err := checkStateFile(dir, ref); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrTooLarge", func(t *testing.T) {
		if _, err := readStateEnvelope(dir, ref, ref.Size-1); err == nil {
			t.Fatalf("a snapshot beyond MaxSnapshotBytes was read")
		}
	})
	t.Run("ErrCorrupt", func(t *testing.T) {
		b, _ := os.ReadFile(filepath.Join(dir, ref.File))
		b[len(b)/3] ^= 1
		os.WriteFile(filepath.Join(dir, "b.state"), b, 0o600)
		bad := ref
		bad.File = "b.state"
		s, err := openState(dir, bad)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := io.Copy(io.Discard, s); err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("corrupt state file read: %v", err)
		}
		if _, err := s.Read(make([]byte, 1)); err == nil || err == io.EOF {
			t.Fatalf("a read after the checksum failed returned %v", err)
		}
	})
	t.Run("ErrTruncated", func(t *testing.T) {
		b, _ := os.ReadFile(filepath.Join(dir, ref.File))
		os.WriteFile(filepath.Join(dir, "c.state"), b[:len(b)-1], 0o600)
		bad := ref
		bad.File = "c.state"
		if err := checkStateFile(dir, bad); err == nil {
			t.Fatalf("truncated state file accepted")
		}
	})
	t.Run("OK no temp file left", func(t *testing.T) {
		if tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmps) != 0 {
			t.Fatalf("temp files left: %v", tmps)
		}
	})
}

// Compaction keeps at most CatchUpEntries entries and CatchUpBytes bytes of
// them: large entries cannot make the in-memory log grow without bound.
func TestCompactIndexBoundsBytes(t *testing.T) {
	ms := raft.NewMemoryStorage()
	var ents []raftpb.Entry
	for i := uint64(1); i <= 100; i++ {
		ents = append(ents, raftpb.Entry{Index: i, Term: 1, Data: make([]byte, 1000)})
	}
	if err := ms.Append(ents); err != nil {
		t.Fatal(err)
	}
	size := uint64(ents[0].Size())
	for _, tt := range []struct {
		name           string
		entries, bytes uint64
		want           uint64
	}{
		{"count bound", 10, 1 << 30, 90},
		{"bytes bound", 50, 5*size + size/2, 95},
		{"one entry too large", 50, size / 2, 100},
		{"nothing to compact", 200, 1 << 30, 0},
		{"bytes bound, fewer entries than the count bound", 200, 5*size + size/2, 95},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{cfg: Config{CatchUpEntries: tt.entries, CatchUpBytes: tt.bytes}, storage: ms}
			if got := n.compactIndex(100); got != tt.want {
				t.Fatalf("compactIndex(100) = %d, want %d", got, tt.want)
			}
		})
	}
}

// A snapshot is due after SnapshotCount entries, or once the log applied
// since the last one holds SnapshotBytes and more bytes than that
// snapshot's state file, or when one is asked for.
func TestSnapshotDue(t *testing.T) {
	const count, bytes = 100, 1000
	for _, tt := range []struct {
		name                 string
		entries              uint64 // applied since the last snapshot
		logBytes, stateBytes uint64
		snapNow              bool
		want                 bool
	}{
		{"nothing yet", 10, 500, 100, false, false},
		{"entry count", count, 500, 100, false, true},
		{"log bytes", 10, bytes, 100, false, true},
		{"log smaller than the state", 10, 5 * bytes, 8 * bytes, false, false},
		{"log as large as the state", 10, 8 * bytes, 8 * bytes, false, true},
		{"asked for", 1, 0, 100, true, true},
		{"asked for, nothing applied", 0, 0, 100, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := applier{
				n:            &Node{cfg: Config{SnapshotCount: count, SnapshotBytes: bytes}},
				snapIndex:    50,
				appliedIndex: 50 + tt.entries,
				logBytes:     tt.logBytes,
				stateBytes:   tt.stateBytes,
				snapNow:      tt.snapNow,
			}
			if got := a.snapshotDue(); got != tt.want {
				t.Fatalf("snapshotDue() = %v, want %v", got, tt.want)
			}
		})
	}
}

// A failed snapshot's bytes count again toward the next one; a saved
// snapshot's size is the bar for the next, unless a snapshot was installed
// meanwhile (the apply loop then set both from that one).
func TestSnapshotOutcomeBookkeeping(t *testing.T) {
	type want struct{ snapIndex, logBytes, stateBytes uint64 }
	for _, tt := range []struct {
		name      string
		installed bool // a received snapshot at 22 (70 bytes) is installed while the job runs
		outcome   snapshotOutcome
		want      want
	}{
		{"saved", false, snapshotOutcome{size: 500}, want{20, 30, 500}},
		{"failed", false, snapshotOutcome{err: errors.New("disk full")}, want{10, 180, 40}},
		{"saved after an install", true, snapshotOutcome{size: 500}, want{22, 0, 70}},
		{"failed after an install", true, snapshotOutcome{err: errors.New("disk full")}, want{22, 0, 70}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{cfg: Config{SnapshotCount: 1000, SnapshotBytes: 1000}, log: slog.New(slog.DiscardHandler)}
			n.mode.Store(ModeStandalone) // bookkeeping only: no new snapshot starts
			// A job started at 20, when 150 bytes had been applied since
			// the snapshot at 10 (of 40 bytes); 30 more bytes since.
			done := make(chan snapshotOutcome, 1)
			a := &applier{n: n, snapDone: done, snapPrev: 10, snapPrevBytes: 150, snapJob: 20,
				snapIndex: 20, appliedIndex: 25, logBytes: 30, stateBytes: 40}
			if tt.installed {
				a.snapIndex, a.appliedIndex, a.logBytes, a.stateBytes = 22, 25, 0, 70
			}
			done <- tt.outcome
			a.maybeSnapshot()
			if a.snapDone != nil {
				t.Fatal("the outcome was not taken")
			}
			if got := (want{a.snapIndex, a.logBytes, a.stateBytes}); got != tt.want {
				t.Fatalf("snapIndex, logBytes, stateBytes = %v, want %v", got, tt.want)
			}
		})
	}
}

// A snapshot's state size: its state file's, or its own data's when it
// holds the state itself.
func TestStateFileBytes(t *testing.T) {
	ref := snapRef{File: "0000000000000001-0000000000000010.state", Size: 1234, CRC: 7}
	for _, tt := range []struct {
		name string
		data []byte
		want uint64
	}{
		{"state file", ref.marshal(), 1234},
		{"inline state", []byte("0123456789"), 10},
		{"none", nil, 0},
		{"bad reference", append(refMagic[:4:4], "{"...), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := stateFileBytes(raftpb.Snapshot{Data: tt.data}); got != tt.want {
				t.Fatalf("stateFileBytes = %d, want %d", got, tt.want)
			}
		})
	}
}

// A damaged newest snapshot whose WAL no longer reaches back to an older
// one makes openDisk refuse with a clear error, never load it.
func TestOpenDiskRefusesDamagedSnapshotWithoutFallback(t *testing.T) {
	defer func(old int64) { wal.SegmentSizeBytes = old }(wal.SegmentSizeBytes)
	wal.SegmentSizeBytes = 16 << 10
	lg := zap.NewNop()
	dir := t.TempDir()
	d, err := createDisk(lg, dir, walMetadata{NodeID: 1, ClusterID: 7})
	if err != nil {
		t.Fatal(err)
	}
	const last = 100
	for i := uint64(1); i <= last; i++ {
		e := raftpb.Entry{Index: i, Term: 1, Data: bytes.Repeat([]byte{'x'}, 1000)}
		if err := d.save(raftpb.HardState{Term: 1, Vote: 1, Commit: i}, []raftpb.Entry{e}); err != nil {
			t.Fatal(err)
		}
	}
	ref, err := writeStateFile(stateDir(dir), stateFileName(1, last), []byte(`{"members":{}}`), bytesView("state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := raftpb.Snapshot{Data: ref.marshal(), Metadata: raftpb.SnapshotMetadata{
		Index: last, Term: 1, ConfState: raftpb.ConfState{Voters: []uint64{1}}}}
	if err := d.saveSnapshot(s); err != nil {
		t.Fatal(err)
	}
	if err := d.sync(); err != nil {
		t.Fatal(err)
	}
	d.close()
	segs, _ := filepath.Glob(filepath.Join(walDir(dir), "*.wal"))
	if len(segs) < 3 {
		t.Fatalf("want several wal segments, have %d", len(segs))
	}
	if err := os.Remove(segs[0]); err != nil { // as the purger does
		t.Fatal(err)
	}

	t.Run("OK intact", func(t *testing.T) {
		d, rec, err := openDisk(lg, dir)
		if err != nil {
			t.Fatal(err)
		}
		d.close()
		if rec.snapshot.Metadata.Index != last {
			t.Fatalf("recovered snapshot %d, want %d", rec.snapshot.Metadata.Index, last)
		}
	})
	t.Run("ErrDamaged", func(t *testing.T) {
		path := filepath.Join(stateDir(dir), ref.File)
		b, _ := os.ReadFile(path)
		b[len(b)-6] ^= 1
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		d, _, err := openDisk(lg, dir)
		if err == nil {
			d.close()
			t.Fatalf("opened a data directory whose only snapshot is corrupt")
		}
		if !errors.Is(err, ErrStorage) || !strings.Contains(err.Error(), "newest snapshot is unusable") {
			t.Fatalf("unclear error: %v", err)
		}
		t.Log(err)
	})
}

// readStateEnvelope returns a state file's envelope as one buffer, checked,
// for a MsgSnap; max bounds it (the receiver's MaxSnapshotBytes).
func readStateEnvelope(dir string, ref snapRef, max int64) ([]byte, error) {
	if ref.Size > max {
		return nil, fmt.Errorf("snapshot is %d bytes, beyond MaxSnapshotBytes (%d)", ref.Size, max)
	}
	s, err := openState(dir, ref)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	buf := bytes.NewBuffer(make([]byte, 0, ref.Size))
	if _, err := io.Copy(buf, s); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
