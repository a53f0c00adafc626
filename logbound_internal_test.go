package embedraft

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"
)

// Under writes of a few KiB, a single-member cluster's in-memory log stays
// within SnapshotBytes + CatchUpBytes (and one entry) whatever SnapshotCount
// says: snapshots come by bytes and compaction keeps CatchUpBytes.
func TestInMemoryLogBoundedByBytes(t *testing.T) {
	const snapBytes = 64 << 10
	n, err := New(Config{
		Cluster:       true,
		DataDir:       t.TempDir(),
		AdvertiseURL:  "http://127.0.0.1:1",
		SnapshotCount: 1_000_000,
		SnapshotBytes: snapBytes,
		Logger:        slog.New(slog.DiscardHandler),
	}, nopService{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	value := bytes.Repeat([]byte("v"), 4<<10)
	var most uint64
	for range 20 * snapBytes / len(value) {
		if _, err := n.Send(ctx, value); err != nil {
			t.Fatal(err)
		}
		if size := n.inMemoryLogBytes(t); size > most {
			most = size
		}
	}
	// The bound is checked between writes; a snapshot being written lets
	// the log grow by one more SnapshotBytes meanwhile.
	t.Logf("in-memory log peaked at %d bytes", most)
	if limit := uint64(2*snapBytes + snapBytes/2 + 2*len(value)); most > limit {
		t.Fatalf("in-memory log reached %d bytes, bound %d", most, limit)
	}
	if first, _ := n.storage.FirstIndex(); first < 2 {
		t.Fatalf("the log was never compacted (first index %d)", first)
	}
}

// inMemoryLogBytes sums the entries MemoryStorage holds.
func (n *Node) inMemoryLogBytes(t *testing.T) uint64 {
	t.Helper()
	first, err := n.storage.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err := n.storage.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if last < first {
		return 0
	}
	ents, err := n.storage.Entries(first, last+1, ^uint64(0))
	if err != nil {
		return 0 // compacted meanwhile: the next call sees the new log
	}
	var size uint64
	for _, e := range ents {
		size += uint64(e.Size())
	}
	return size
}
