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

// The store implements embedraft.StreamSnapshotter. Capturing a view is
// O(1): the map itself is frozen and handed to the view, and writes go to a
// fresh overlay map until the view is released, when the overlay is merged
// back (O(writes meanwhile), under the write lock, on the snapshot
// goroutine). The view is streamed as records:
//
//	4 bytes    magic "KVS" + version
//	uvarint    number of records
//	records    uvarint len(key), key, uvarint len(value), value
var snapMagic = [4]byte{'K', 'V', 'S', 1}

// maxRecordBytes bounds a key or value read back from a snapshot, so a
// damaged stream cannot make Restore allocate without limit.
const maxRecordBytes = 1 << 30

var _ embedraft.StreamSnapshotter = (*Store)(nil)

type view struct {
	s      *Store
	m      map[string]string // read only while the view lives
	gen    uint64            // the store's gen when m was frozen; 0: m is a copy
	hook   func() error      // see SetSnapshotWriteHook
	closed bool
}

// SetSnapshotWriteHook makes every later view's WriteTo call f first, and
// fail with its error; tests use it to hold or fail a snapshot while
// writes go on. nil removes it.
func (s *Store) SetSnapshotWriteHook(f func() error) { setHook(&s.writeHook, f) }

// CaptureSnapshot freezes the map for the view. If an earlier view still
// holds a frozen map, the view gets a copy of the state instead.
func (s *Store) CaptureSnapshot() (embedraft.SnapshotView, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &view{s: s}
	if f := s.writeHook.Load(); f != nil {
		v.hook = *f
	}
	if s.frozen != nil {
		v.m = s.mergedLocked()
		return v, nil
	}
	s.gen++
	s.frozen, s.data = s.data, map[string]string{}
	v.m, v.gen = s.frozen, s.gen
	return v, nil
}

// WriteTo streams the records.
func (v *view) WriteTo(w io.Writer) (int64, error) {
	if v.hook != nil {
		if err := v.hook(); err != nil {
			return 0, err
		}
	}
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	var num [binary.MaxVarintLen64]byte
	put := func(s string) {
		bw.Write(num[:binary.PutUvarint(num[:], uint64(len(s)))])
		bw.WriteString(s)
	}
	bw.Write(snapMagic[:])
	bw.Write(num[:binary.PutUvarint(num[:], uint64(len(v.m)))])
	for k, val := range v.m {
		put(k)
		put(val)
		if cw.err != nil {
			break
		}
	}
	err := bw.Flush() // bufio keeps the first write error
	return cw.n, err
}

// Release merges the writes made since the capture back into the frozen
// map, unless the state was replaced meanwhile.
func (v *view) Release() {
	if v.closed {
		return
	}
	v.closed = true
	s := v.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.gen != 0 && v.gen == s.gen && s.frozen != nil {
		for k, val := range s.data {
			s.frozen[k] = val
		}
		s.data, s.frozen = s.frozen, nil
		s.gen++
	}
	v.m = nil
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
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
	s.data, s.frozen = m, nil
	s.gen++
	s.mu.Unlock()
	s.resets.Add(1)
	return nil
}
