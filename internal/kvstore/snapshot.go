package kvstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/embedraft/embedraft"
)

// The store implements embedraft.StreamSnapshotter: a snapshot is captured
// as a shallow copy of the map's entries (the strings are shared, not
// copied) and streamed as records:
//
//	4 bytes    magic "KVS" + version
//	uvarint    number of records
//	records    uvarint len(key), key, uvarint len(value), value
//
// TODO(issue 9): a persistent (copy-on-write) map would make the capture
// O(1) instead of one pass over the map under the read lock.
var snapMagic = [4]byte{'K', 'V', 'S', 1}

// maxRecordBytes bounds a key or value read back from a snapshot, so a
// damaged stream cannot make Restore allocate without limit.
const maxRecordBytes = 1 << 30

var _ embedraft.StreamSnapshotter = (*Store)(nil)

type kvPair struct{ key, value string }

type view struct {
	pairs []kvPair
	hook  func() // see SetSnapshotWriteHook
}

// SetSnapshotWriteHook makes every later view's WriteTo call f first; tests
// use it to hold a snapshot while writes go on. nil removes it.
func (s *Store) SetSnapshotWriteHook(f func()) {
	if f == nil {
		s.writeHook.Store(nil)
		return
	}
	s.writeHook.Store(&f)
}

// CaptureSnapshot copies the map's entries (not their bytes) under the
// read lock.
func (s *Store) CaptureSnapshot() (embedraft.SnapshotView, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	pairs := make([]kvPair, 0, len(s.data))
	for k, v := range s.data {
		pairs = append(pairs, kvPair{k, v})
	}
	v := &view{pairs: pairs}
	if f := s.writeHook.Load(); f != nil {
		v.hook = *f
	}
	return v, nil
}

// WriteTo streams the records.
func (v *view) WriteTo(w io.Writer) (int64, error) {
	if v.hook != nil {
		v.hook()
	}
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	var num [binary.MaxVarintLen64]byte
	put := func(s string) {
		bw.Write(num[:binary.PutUvarint(num[:], uint64(len(s)))])
		bw.WriteString(s)
	}
	bw.Write(snapMagic[:])
	bw.Write(num[:binary.PutUvarint(num[:], uint64(len(v.pairs)))])
	for _, p := range v.pairs {
		put(p.key)
		put(p.value)
	}
	err := bw.Flush() // bufio keeps the first write error
	return cw.n, err
}

// Release drops the copy.
func (v *view) Release() { v.pairs = nil }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// RestoreSnapshot replaces the map with a streamed snapshot, or with the
// JSON of GetSnapshot (a snapshot made before the store streamed).
func (s *Store) RestoreSnapshot(r io.Reader) error {
	br := bufio.NewReaderSize(r, 256<<10)
	head, err := br.Peek(len(snapMagic))
	if err != nil || !bytes.Equal(head, snapMagic[:]) {
		data, err := io.ReadAll(br)
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		return s.ResetSnap(data)
	}
	br.Discard(len(snapMagic))
	count, err := binary.ReadUvarint(br)
	if err != nil {
		return fmt.Errorf("decode snapshot: count: %w", err)
	}
	m := make(map[string]string, min(count, 1<<20))
	read := func() (string, error) {
		l, err := binary.ReadUvarint(br)
		if err != nil {
			return "", err
		}
		if l > maxRecordBytes {
			return "", errors.New("record too large")
		}
		b := make([]byte, l)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", err
		}
		return string(b), nil
	}
	for i := uint64(0); i < count; i++ {
		k, err := read()
		if err != nil {
			return fmt.Errorf("decode snapshot: record %d: %w", i, err)
		}
		v, err := read()
		if err != nil {
			return fmt.Errorf("decode snapshot: record %d: %w", i, err)
		}
		m[k] = v
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return errors.New("decode snapshot: trailing data")
	}
	s.mu.Lock()
	s.data = m
	s.mu.Unlock()
	s.resets.Add(1)
	return nil
}
