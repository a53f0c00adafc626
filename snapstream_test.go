package embedraft_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
	"go.etcd.io/etcd/raft/v3/raftpb"
)

// stateFiles returns a member's snapshot state files, oldest first.
func stateFiles(t *testing.T, m *tc.Member) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(m.Dir, "snap", "state", "*.state"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// With few, large entries, snapshots follow the bytes applied rather than
// the entry count (TestInMemoryLogBoundedByBytes checks the log's size).
func TestSnapshotDueByBytes(t *testing.T) {
	const snapBytes = 32 << 10
	c := tc.NewSingle(t, func(cfg *embedraft.Config) {
		cfg.Cluster = true
		cfg.SnapshotCount = 1_000_000
		cfg.SnapshotBytes = snapBytes
	})
	m := c.Members[0]
	value := strings.Repeat("v", 4<<10)
	for range 3 * snapBytes / len(value) { // one key: the state stays small
		c.MustSet(m, "k", value)
	}
	tc.Eventually(t, 10*time.Second, func() error {
		if n := mustValue(t, scrape(t, c, m), "embedraft_snapshots_total", nil); n < 2 {
			return fmt.Errorf("%v snapshots after %d KiB written, want at least 2", n, 3*snapBytes>>10)
		}
		return nil
	})
}

// A service with a streamed snapshot (the demo's store) and a state of more
// than 100 times MaxRequestBytes catches a new member up by a snapshot, and
// that member restarts from the state file it received.
func TestSnapshotLargeStateCatchesUpNewMember(t *testing.T) {
	const reqBytes = 4096
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.MaxRequestBytes = reqBytes
		cfg.SnapshotCount = 20
		cfg.CatchUpEntries = 5
	})
	leader := c.WaitLeader(5 * time.Second)
	value := strings.Repeat("v", reqBytes-200)
	const keys = 110 // 110 x 3896 bytes > 100 x MaxRequestBytes
	for i := range keys {
		c.MustSet(leader, fmt.Sprintf("k%03d", i), value)
	}
	if len(stateFiles(t, leader)) == 0 {
		t.Fatalf("the leader wrote no state file")
	}
	joiner := c.Join(leader)
	state := c.WaitConverged(20 * time.Second)
	if len(state) != keys {
		t.Fatalf("state has %d keys, want %d", len(state), keys)
	}
	if joiner.Store.ResetCount() == 0 {
		t.Fatalf("the new member caught up without installing a snapshot")
	}
	files := stateFiles(t, joiner)
	if len(files) == 0 {
		t.Fatalf("the new member kept no state file")
	}
	if st, err := os.Stat(files[len(files)-1]); err != nil || st.Size() < 100*reqBytes {
		t.Fatalf("state file %v: %v", st, err)
	}
	// A streamed snapshot is received into <term>-<index>-<crc>.state; one
	// sent whole on /raft would be written as <term>-<index>.state.
	if parts := strings.Split(filepath.Base(files[len(files)-1]), "-"); len(parts) != 3 {
		t.Fatalf("state file %s was not received as a stream", files[len(files)-1])
	}

	t.Run("OK restart restores from the state file", func(t *testing.T) {
		joiner.Stop()
		joiner.Restart()
		if joiner.Store.ResetCount() != 1 {
			t.Fatalf("restart restored %d times, want once", joiner.Store.ResetCount())
		}
		if got := joiner.Store.Len(); got != keys {
			t.Fatalf("restarted with %d keys, want %d", got, keys)
		}
		c.MustSet(leader, "after", "1")
		c.WaitConverged(10 * time.Second)
	})
}

// A state file damaged on disk is detected by its checksum at restart: the
// node falls back to the previous snapshot (the WAL still reaches back to
// it) and comes back with the full state, never with the damaged one.
func TestSnapshotDamagedStateFile(t *testing.T) {
	for _, tt := range []struct {
		name   string
		damage func(path string) error
	}{
		{"corrupt", func(path string) error {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 0xff
			return os.WriteFile(path, b, 0o640)
		}},
		{"truncated", func(path string) error {
			st, err := os.Stat(path)
			if err != nil {
				return err
			}
			return os.Truncate(path, st.Size()/2)
		}},
		{"missing", os.Remove},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
				cfg.SnapshotCount = 10
				cfg.CatchUpEntries = 5
			})
			leader := c.WaitLeader(5 * time.Second)
			f := c.Followers()[0]
			for i := range 45 {
				c.MustSet(leader, fmt.Sprintf("k%d", i), "v")
			}
			c.WaitConverged(10 * time.Second)
			tc.Eventually(t, 10*time.Second, func() error {
				if n := len(stateFiles(t, f)); n < 2 {
					return fmt.Errorf("follower has %d state files", n)
				}
				return nil
			})
			f.Stop()
			files := stateFiles(t, f)
			if err := tt.damage(files[len(files)-1]); err != nil {
				t.Fatal(err)
			}
			// The WAL (one 64 MiB segment) still reaches back to the
			// previous snapshot, so the node falls back to it.
			if err := f.TryRestart(); err != nil {
				t.Fatalf("restart with a damaged newest snapshot: %v", err)
			}
			if got := f.Store.Len(); got != 45 {
				t.Fatalf("restarted with %d keys, want 45", got)
			}
			c.MustSet(leader, "after", "1")
			c.WaitConverged(10 * time.Second)
		})
	}
}

// A snapshot being written does not hold up the cluster: with the leader's
// WriteTo held, writes are still acknowledged and applied, and the leader
// stays leader in the same term (its heartbeats go on).
func TestSnapshotWriteRunsConcurrentlyWithCommits(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.SnapshotCount = 10
		cfg.CatchUpEntries = 5
	})
	leader := c.WaitLeader(5 * time.Second)
	entered := make(chan struct{}, 16)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // Close waits for the snapshot goroutine
	leader.Store.SetSnapshotWriteHook(func() error {
		entered <- struct{}{}
		<-release
		return nil
	})
	term := leader.Node.Status().Term
	for i := 0; ; i++ {
		c.MustSet(leader, fmt.Sprintf("before%d", i), "v")
		if len(entered) > 0 {
			break
		}
		if i > 50 {
			t.Fatalf("no snapshot started after %d writes", i)
		}
	}
	applied := leader.Node.Status().Applied
	held := time.Now()
	for i := 0; i < 40 || time.Since(held) < 3*time.Second; i++ {
		c.MustSet(leader, fmt.Sprintf("during%d", i), "v")
	}
	st := leader.Node.Status()
	if st.State != "leader" || st.Term != term {
		t.Fatalf("while a snapshot was held the leader became %s in term %d (was leader in %d)", st.State, st.Term, term)
	}
	if st.Applied < applied+40 {
		t.Fatalf("applied %d while the snapshot was held, want at least %d", st.Applied, applied+40)
	}
	if len(entered) != 1 {
		t.Fatalf("%d snapshots were written at once, want 1", len(entered))
	}
	before := len(stateFiles(t, leader))
	unblock()
	leader.Store.SetSnapshotWriteHook(nil)
	tc.Eventually(t, 10*time.Second, func() error {
		if n := len(stateFiles(t, leader)); n <= before {
			return fmt.Errorf("no new state file after the release (%d)", n)
		}
		return nil
	})
	c.WaitConverged(10 * time.Second)
}

// A streamed snapshot is checked before anything is written (sender,
// addressee, size, index) and while it is copied (length and checksum): a
// forged or damaged stream is refused and leaves no file, and the member
// goes on serving.
func TestSnapshotStreamForgedOrDamaged(t *testing.T) {
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.MaxRequestBytes, cfg.MaxSnapshotBytes = 4096, 1<<20
	})
	leader := c.WaitLeader(5 * time.Second)
	m := c.Followers()[0]
	st := m.Node.Status()
	envelope := bytes.Repeat([]byte("state"), 1000)
	sum := crc32.Checksum(envelope, crc32.MakeTable(crc32.Castagnoli))
	stream := func(from, index uint64, size int64, crc uint32, body []byte) []byte {
		ref, _ := json.Marshal(map[string]any{"file": "x.state", "size": size, "crc32c": crc})
		msg := raftpb.Message{Type: raftpb.MsgSnap, To: m.ID, From: from, Term: st.Term, Snapshot: raftpb.Snapshot{
			Data:     append([]byte("ERF\x01"), ref...),
			Metadata: raftpb.SnapshotMetadata{Index: index, Term: st.Term, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}},
		}}
		head, err := msg.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return append(append(binary.BigEndian.AppendUint64(nil, uint64(len(head))), head...), body...)
	}
	withSum := func(b []byte, crc uint32) []byte { return binary.BigEndian.AppendUint32(slices.Clone(b), crc) }
	size, future := int64(len(envelope)), st.Commit+1000
	for _, tt := range []struct {
		name   string
		body   []byte
		status int
		msg    string
	}{
		{"not a peer", stream(99, future, size, sum, withSum(envelope, sum)), 400, "not a peer"},
		{"not past commit", stream(leader.ID, 1, size, sum, withSum(envelope, sum)), 400, "not past"},
		{"beyond MaxSnapshotBytes", stream(leader.ID, future, 2<<20, sum, nil), 413, "MaxSnapshotBytes"},
		{"checksum", stream(leader.ID, future, size, sum+1, withSum(envelope, sum+1)), 400, "corrupt"},
		{"damaged", stream(leader.ID, future, size, sum, withSum(append(envelope[:size-1:size-1], 'x'), sum)), 400, "corrupt"},
		{"truncated", stream(leader.ID, future, size, sum, envelope[:size/2]), 400, "ended after"},
		{"too long", stream(leader.ID, future, size, sum, append(withSum(envelope, sum), "more"...)), 400, "longer"},
		{"not a reference", stream(leader.ID, future, size, sum, nil)[:0], 400, "length"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, m.URL+"/raft/snapshot", bytes.NewReader(tt.body))
			req.Header = peerHeaders(st.ClusterID)
			resp, err := c.Client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg := readAll(resp)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(msg, tt.msg) {
				t.Fatalf("%d %q, want %d containing %q", resp.StatusCode, msg, tt.status, tt.msg)
			}
			if left, _ := filepath.Glob(filepath.Join(m.Dir, "snap", "state", "*")); len(left) > 0 {
				t.Fatalf("left files: %v", left)
			}
		})
	}
	c.MustSet(m, "after", "1")
	c.WaitConverged(10 * time.Second)
}

// A follower that was down while more than CatchUpBytes of entries were
// written comes back through a snapshot, even though the entry counts are
// far from CatchUpEntries and SnapshotCount: the log is compacted by
// bytes, and every acknowledged write reaches the follower.
func TestFollowerBehindCatchUpBytesGetsSnapshot(t *testing.T) {
	const snapBytes = 64 << 10 // CatchUpBytes defaults to half of it
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.SnapshotBytes = snapBytes
	})
	leader := c.WaitLeader(5 * time.Second)
	f := c.Followers()[0]
	c.MustSet(leader, "before", "1")
	c.WaitConverged(10 * time.Second)
	f.Stop()

	value := strings.Repeat("v", 4<<10)
	const writes = 4 * snapBytes / (4 << 10)
	for i := range writes {
		c.MustSet(leader, fmt.Sprintf("k%d", i%8), fmt.Sprintf("%d-%s", i, value))
	}
	if len(stateFiles(t, leader)) == 0 {
		t.Fatalf("the leader took no snapshot after %d KiB written", writes*4)
	}

	f.Restart()
	restoredLocally := f.Store.ResetCount()
	state := c.WaitConverged(20 * time.Second)
	if len(state) != 9 {
		t.Fatalf("converged on %d keys, want 9", len(state))
	}
	for i := writes - 8; i < writes; i++ {
		if want := fmt.Sprintf("%d-%s", i, value); state[fmt.Sprintf("k%d", i%8)] != want {
			t.Fatalf("k%d is not the last value written to it", i%8)
		}
	}
	if f.Store.ResetCount() == restoredLocally {
		t.Fatalf("the follower caught up from the log: nothing was compacted past it")
	}
}

// compactedCluster starts 3 members and writes 50 keys, past a snapshot
// and a compaction: a member that joins now needs a snapshot.
func compactedCluster(t *testing.T) (*tc.Cluster, *tc.Member) {
	t.Helper()
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.SnapshotCount = 40
		cfg.CatchUpEntries = 5
	})
	leader := c.WaitLeader(5 * time.Second)
	for i := range 50 {
		c.MustSet(leader, fmt.Sprintf("k%02d", i), "v")
	}
	if len(stateFiles(t, leader)) == 0 {
		t.Fatalf("the leader wrote no state file: the log is not compacted")
	}
	return c, leader
}

// A member that joins while the log is compacted costs the leader one
// fresh snapshot. Raft resends the old one about once a heartbeat while the
// fresh one is written; none of those resends may ask for another, which
// would be a second full snapshot right after the first.
func TestJoinTakesOneFreshSnapshot(t *testing.T) {
	c, leader := compactedCluster(t)
	var written atomic.Int32
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // Close waits for the snapshot goroutine
	leader.Store.SetSnapshotWriteHook(func() error {
		written.Add(1)
		<-release
		return nil
	})
	joiner := c.Join(leader)
	tc.Eventually(t, 10*time.Second, func() error {
		if written.Load() == 0 {
			return fmt.Errorf("the leader started no fresh snapshot for member %d", joiner.ID)
		}
		return nil
	})
	// Hold the write for 50 heartbeats (the test clusters tick every
	// 20 ms), while raft resends the old snapshot.
	hold := time.NewTimer(time.Second)
	<-hold.C
	unblock()
	c.WaitConverged(20 * time.Second)
	if joiner.Store.ResetCount() == 0 {
		t.Fatalf("the new member caught up without installing a snapshot")
	}
	// Entries applied after the fresh snapshot (promotion, the new
	// member's record, these writes) would start a second one if asked.
	for i := range 3 {
		c.MustSet(leader, fmt.Sprintf("after%d", i), "v")
	}
	c.WaitConverged(10 * time.Second)
	if n := written.Load(); n != 1 {
		t.Fatalf("the leader wrote %d snapshots after the join, want 1", n)
	}
}

// A fresh snapshot for a new member that fails is made again, even when no
// write comes to wake the apply loop: raft's resends of the old snapshot
// do it.
func TestJoinSnapshotRetriedAfterFailure(t *testing.T) {
	c, leader := compactedCluster(t)
	var written atomic.Int32
	leader.Store.SetSnapshotWriteHook(func() error {
		if written.Add(1) == 1 {
			return errors.New("injected snapshot failure")
		}
		return nil
	})
	joiner := c.Join(leader)
	// No write from here on: the cluster is idle.
	tc.Eventually(t, 10*time.Second, func() error {
		if joiner.Store.Len() != 50 {
			return fmt.Errorf("the new member has %d keys of 50 (%d snapshots written)", joiner.Store.Len(), written.Load())
		}
		return nil
	})
	if n := written.Load(); n != 2 {
		t.Fatalf("the leader wrote %d snapshots for the join, want 2 (one failed)", n)
	}
}
