package kvstore

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// In standalone mode embedraft keeps no log: the service owns durability.
// The demo store keeps an append-only file of the writes it committed while
// standalone, each record fsynced before the write is acknowledged:
//
//	uint32 length | uint32 crc32 (Castagnoli) of data | data (an Op as JSON)
//
// Once the node is a cluster the file is no longer written: the switchover's
// init entry carries the whole state into raft's WAL, and a cluster restart
// replaces whatever the file loaded (ResetSnap from the init entry or a
// snapshot).

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// standaloneLog is the open file; Commit appends to it while active says so.
type standaloneLog struct {
	f      *os.File
	active func() bool
}

// OpenStandaloneLog loads the writes recorded at path into the store and
// keeps the file open to record further writes for as long as active
// returns true (the node is standalone). A torn last record, a crash in the
// middle of an append, is cut off: that write was never acknowledged.
func (s *Store) OpenStandaloneLog(path string, active func() bool) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open standalone log: %w", err)
	}
	good, err := s.replay(f)
	if err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return fmt.Errorf("truncate standalone log: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("seek standalone log: %w", err)
	}
	s.mu.Lock()
	s.slog = &standaloneLog{f: f, active: active}
	s.mu.Unlock()
	return nil
}

// replay applies every intact record and returns the offset after the last.
func (s *Store) replay(f *os.File) (int64, error) {
	r := bufio.NewReader(f)
	var off int64
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return off, nil // end, or a torn header
		}
		n, sum := binary.BigEndian.Uint32(hdr[:4]), binary.BigEndian.Uint32(hdr[4:])
		if n == 0 || n > 64<<20 {
			// Commit never writes an empty record: zeros are a file
			// extended but never written (a crash), the end of the log.
			return off, nil
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil || crc32.Checksum(data, crcTable) != sum {
			return off, nil // torn or corrupt tail
		}
		if err := s.apply(data); err != nil {
			return 0, fmt.Errorf("replay standalone log at %d: %w", off, err)
		}
		off += 8 + int64(n)
	}
}

// append records data durably. Called with s.mu held.
func (l *standaloneLog) append(data []byte) error {
	buf := make([]byte, 8+len(data))
	binary.BigEndian.PutUint32(buf[:4], uint32(len(data)))
	binary.BigEndian.PutUint32(buf[4:8], crc32.Checksum(data, crcTable))
	copy(buf[8:], data)
	if _, err := l.f.Write(buf); err != nil {
		return fmt.Errorf("append standalone log: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("sync standalone log: %w", err)
	}
	return nil
}

// CloseStandaloneLog closes the file, if open.
func (s *Store) CloseStandaloneLog() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slog == nil {
		return nil
	}
	err := s.slog.f.Close()
	s.slog = nil
	return err
}
