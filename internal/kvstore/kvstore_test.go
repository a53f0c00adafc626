package kvstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embedraft/embedraft"
)

func TestParseOp(t *testing.T) {
	longKey := strings.Repeat("k", MaxKeyBytes)
	tests := []struct {
		name    string
		body    string
		want    Op
		wantErr string
		fixed   string // the bug this case once demonstrated
	}{
		{"OK", `{"key":"a","value":"1"}`, Op{Key: "a", Value: "1"}, "", ""},
		{"OK without value", `{"key":"a"}`, Op{Key: "a"}, "", ""},
		{"OK null value", `{"key":"a","value":null}`, Op{Key: "a"}, "", ""},
		{"OK fields in any order and spaces", " {\"value\":\"v\" ,\n\"key\":\"a\"}\n\t", Op{Key: "a", Value: "v"}, "", ""},
		{"OK longest key", `{"key":"` + longKey + `"}`, Op{Key: longKey}, "", ""},
		{"OK unicode", `{"key":"ключ","value":"\u00e9\ud83d\ude00"}`, Op{Key: "ключ", Value: "é😀"}, "", ""},
		{"ErrEmpty", ``, Op{}, "invalid JSON", ""},
		{"ErrSpaces", `   `, Op{}, "invalid JSON", ""},
		{"ErrTruncated", `{"key":`, Op{}, "invalid JSON", ""},
		{"ErrNotObject", `"key"`, Op{}, "invalid JSON", ""},
		{"ErrArray", `[{"key":"a"}]`, Op{}, "invalid JSON", ""},
		{"ErrNull", `null`, Op{}, `"key" is required`, ""},
		{"ErrKeyNumber", `{"key":1}`, Op{}, "invalid JSON", ""},
		{"ErrValueNumber", `{"key":"a","value":1}`, Op{}, "invalid JSON", ""},
		{"ErrValueObject", `{"key":"a","value":{}}`, Op{}, "invalid JSON", ""},
		{"ErrUnknownField", `{"key":"a","x":1}`, Op{}, "unknown field", ""},
		{"ErrNoKey", `{"value":"v"}`, Op{}, `"key" is required`, ""},
		{"ErrEmptyKey", `{"key":""}`, Op{}, `"key" is required`, ""},
		{"ErrKeyTooLong", `{"key":"` + longKey + `x"}`, Op{}, "limit", ""},
		{"ErrSecondObject", `{"key":"a"}{"key":"b"}`, Op{}, "trailing data", ""},
		{"ErrTrailingGarbage", `{"key":"a"} x`, Op{}, "trailing data", ""},
		{"ErrTrailingBracket", `{"key":"a"}]`, Op{}, "trailing data", `ParseOp accepts a trailing ']' (Decoder.More is false before ']' and '}')`},
		{"ErrTrailingBrace", `{"key":"a"}}`, Op{}, "trailing data", `ParseOp accepts a trailing '}' (Decoder.More is false before ']' and '}')`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOp([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseOp(%q) = %+v, want an error with %q", tt.body, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseOp(%q): %v, want %q", tt.body, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseOp(%q) = %+v, %v; want %+v", tt.body, got, err, tt.want)
			}
		})
	}
}

func TestStorePreProcessData(t *testing.T) {
	s := New()
	obj, data, err := s.PreProcessData([]byte(" {\"value\":\"v\",\"key\":\"k\"} "))
	if err != nil {
		t.Fatal(err)
	}
	if obj != (Op{Key: "k", Value: "v"}) || string(data) != "\x01\x01kv" {
		t.Fatalf("PreProcessData = %+v %s, want the op and its canonical encoding", obj, data)
	}
	if _, _, err := s.PreProcessData([]byte(`{"key":""}`)); err == nil {
		t.Fatal("PreProcessData accepted an empty key")
	}
	if n := s.PreProcessCount(); n != 2 {
		t.Fatalf("PreProcessCount %d, want 2", n)
	}
	if s.Len() != 0 || s.CommitCount() != 0 {
		t.Fatal("PreProcessData changed the state")
	}
}

func mustCommit(t *testing.T, s *Store, key, value string) {
	t.Helper()
	data, _ := json.Marshal(Op{Key: key, Value: value})
	if err := s.Commit(data); err != nil {
		t.Fatalf("commit %s=%s: %v", key, value, err)
	}
}

func TestStoreCommitSnapshotReset(t *testing.T) {
	s := New()
	mustCommit(t, s, "b", "2")
	mustCommit(t, s, "a", "1")
	mustCommit(t, s, "a", "3")
	if v, ok := s.Get("a"); !ok || v != "3" || s.Len() != 2 || s.CommitCount() != 3 {
		t.Fatalf("after commits: a=%q %v, len %d, commits %d", v, ok, s.Len(), s.CommitCount())
	}
	if fmt.Sprint(s.Keys()) != "[a b]" {
		t.Fatalf("keys %v", s.Keys())
	}
	t.Run("ErrCommitNotJSON", func(t *testing.T) {
		if err := s.Commit([]byte("{")); err == nil {
			t.Fatal("Commit accepted invalid data")
		}
		if s.Len() != 2 || s.CommitCount() != 3 {
			t.Fatal("a refused Commit changed the state")
		}
	})
	snap, err := s.GetSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if init, _ := s.GetInit(); !bytes.Equal(init, snap) {
		t.Fatalf("GetInit %s differs from GetSnapshot %s", init, snap)
	}
	t.Run("OK reset into another store", func(t *testing.T) {
		s2 := New()
		mustCommit(t, s2, "gone", "x")
		if err := s2.ResetSnap(snap); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(s2.Snapshot()) != fmt.Sprint(s.Snapshot()) || s2.ResetCount() != 1 {
			t.Fatalf("reset store %v, want %v", s2.Snapshot(), s.Snapshot())
		}
	})
	t.Run("OK reset from nothing", func(t *testing.T) {
		s2 := New()
		mustCommit(t, s2, "gone", "x")
		if err := s2.ResetSnap(nil); err != nil || s2.Len() != 0 {
			t.Fatalf("ResetSnap(nil): %v, %d keys left", err, s2.Len())
		}
		mustCommit(t, s2, "after", "1")
	})
	for _, bad := range []string{"{", "[]", `{"a":1}`, `"x"`} {
		t.Run("ErrReset "+bad, func(t *testing.T) {
			s2 := New()
			mustCommit(t, s2, "kept", "x")
			if err := s2.ResetSnap([]byte(bad)); err == nil {
				t.Fatalf("ResetSnap(%s) accepted", bad)
			}
			if v, ok := s2.Get("kept"); !ok || v != "x" || s2.Len() != 1 || s2.ResetCount() != 0 {
				t.Fatalf("a refused ResetSnap changed the state: %v", s2.Snapshot())
			}
		})
	}
}

// ResetSnap("null") decodes into a nil map (encoding/json sets a map to nil
// for null), so the next Commit panics with "assignment to entry in nil
// map", on the apply goroutine.
func TestStoreResetSnapNull(t *testing.T) {
	s := New()
	err := s.ResetSnap([]byte("null"))
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Commit after ResetSnap(null) (which returned %v) panicked: %v", err, r)
		}
	}()
	if err == nil {
		mustCommit(t, s, "a", "1")
		if v, _ := s.Get("a"); v != "1" {
			t.Fatal("write after ResetSnap(null) lost")
		}
	}
}

// fakeReader is a Reader whose ReadIndex answers err.
type fakeReader struct{ err error }

func (r fakeReader) LinearizableRead(context.Context) error { return r.err }

func TestStoreServeHTTP(t *testing.T) {
	s := New()
	mustCommit(t, s, "k", "v")
	mustCommit(t, s, "a/b", "slash")
	tests := []struct {
		name   string
		reader Reader
		method string
		target string
		status int
		body   string
	}{
		{"OK key local", nil, "GET", "/kv/k?consistency=local", 200, "v"},
		{"OK key linearizable", fakeReader{}, "GET", "/kv/k", 200, "v"},
		{"OK key with slash", nil, "GET", "/kv/a/b?consistency=local", 200, "slash"},
		{"OK all", nil, "GET", "/kv?consistency=local", 200, `{"a/b":"slash","k":"v"}`},
		{"OK head", nil, "HEAD", "/kv/k?consistency=local", 200, ""},
		{"ErrMissing", nil, "GET", "/kv/nope?consistency=local", 404, "key not found"},
		{"ErrEmptyKey", nil, "GET", "/kv/?consistency=local", 404, "key not found"},
		{"ErrConsistency", nil, "GET", "/kv/k?consistency=eventual", 400, "consistency must be"},
		{"ErrMethod", nil, "POST", "/kv/k", 405, "method not allowed"},
		{"ErrNoLeader", fakeReader{embedraft.ErrNoLeader}, "GET", "/kv/k", 503, "no leader"},
		{"ErrRemoved", fakeReader{embedraft.ErrRemoved}, "GET", "/kv", 503, "removed"},
		{"ErrTimeout", fakeReader{context.DeadlineExceeded}, "GET", "/kv/k?consistency=linearizable", 504, "deadline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetReader(tt.reader)
			w := httptest.NewRecorder()
			s.ServeHTTP(w, httptest.NewRequest(tt.method, tt.target, nil))
			body := strings.TrimSpace(w.Body.String())
			if w.Code != tt.status || !strings.Contains(body, tt.body) {
				t.Fatalf("%s %s: %d %q, want %d with %q", tt.method, tt.target, w.Code, body, tt.status, tt.body)
			}
		})
	}
	if s.Len() != 2 {
		t.Fatal("reads changed the state")
	}
}

// record frames data as the standalone log does.
func record(data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(data, crcTable))
	return append(b, data...)
}

func opData(key, value string) []byte {
	b, _ := json.Marshal(Op{Key: key, Value: value})
	return b
}

// readRecords decodes a standalone log file independently of replay.
func readRecords(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 8 {
			t.Fatalf("torn header of %d bytes in %s", len(b), path)
		}
		n, sum := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
		if uint64(len(b)-8) < uint64(n) || crc32.Checksum(b[8:8+n], crcTable) != sum {
			t.Fatalf("bad record at the end of %s", path)
		}
		out = append(out, b[8:8+n])
		b = b[8+n:]
	}
	return out
}

func openLog(t *testing.T, path string, active func() bool) *Store {
	t.Helper()
	s := New()
	if err := s.OpenStandaloneLog(path, active); err != nil {
		t.Fatalf("open standalone log: %v", err)
	}
	t.Cleanup(func() { _ = s.CloseStandaloneLog() })
	return s
}

func always() bool { return true }

func TestStandaloneLogCommitIsDurableAndReplayed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "standalone.log")
	s := openLog(t, path, always)
	for i := range 3 {
		mustCommit(t, s, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		// Commit returns once the record is written (and fsynced): it is
		// in the file, whole, before the write is acknowledged.
		recs := readRecords(t, path)
		if len(recs) != i+1 || !bytes.Equal(recs[i], opData(fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))) {
			t.Fatalf("after commit %d the file holds %q", i, recs)
		}
	}
	mustCommit(t, s, "k0", "again")
	if err := s.CloseStandaloneLog(); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseStandaloneLog(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	s2 := openLog(t, path, always)
	if fmt.Sprint(s2.Snapshot()) != fmt.Sprint(s.Snapshot()) {
		t.Fatalf("replayed %v, want %v", s2.Snapshot(), s.Snapshot())
	}
	if s2.CommitCount() != 0 {
		t.Fatal("replay counted as commits")
	}
}

func TestStandaloneLogInactive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "standalone.log")
	active := true
	s := openLog(t, path, func() bool { return active })
	mustCommit(t, s, "standalone", "1")
	active = false // the node became a cluster: raft's WAL has it now
	mustCommit(t, s, "cluster", "2")
	if recs := readRecords(t, path); len(recs) != 1 {
		t.Fatalf("%d records, want only the standalone write", len(recs))
	}
	if s.Len() != 2 {
		t.Fatal("inactive log kept a write from the state")
	}
}

func TestStandaloneLogRefusedCommitWritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "standalone.log")
	s := openLog(t, path, always)
	mustCommit(t, s, "a", "1")
	if err := s.Commit([]byte("not json")); err == nil {
		t.Fatal("Commit accepted invalid data")
	}
	if recs := readRecords(t, path); len(recs) != 1 || s.Len() != 1 {
		t.Fatalf("refused Commit wrote: %d records, %d keys", len(recs), s.Len())
	}
}

// A crash in the middle of an append leaves a torn tail: it is cut off at
// open (that write was never acknowledged), and later appends follow the
// last intact record.
func TestStandaloneLogTornTail(t *testing.T) {
	good := append(record(opData("a", "1")), record(opData("b", "2"))...)
	next := record(opData("c", "3"))
	tests := []struct {
		name  string
		tail  []byte
		fixed string // the bug this case once demonstrated
	}{
		{"NoTail", nil, ""},
		{"PartialHeader", []byte{0, 0, 0}, ""},
		{"HeaderOnly", next[:8], ""},
		{"PartialData", next[:len(next)-2], ""},
		{"BadChecksum", append(append([]byte{}, next[:len(next)-1]...), next[len(next)-1]^0xff), ""},
		{"HugeLength", append([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, "junk"...), ""},
		{"LengthOver64MiB", append(binary.BigEndian.AppendUint32(nil, 64<<20+1), 0, 0, 0, 0), ""},
		{"ZeroFilled", make([]byte, 8), "a zero-filled tail (file extended, data never written) reads as an intact empty record; replay fails and the store refuses to open"},
		{"ZeroFilledLong", make([]byte, 64), "a zero-filled tail (file extended, data never written) reads as an intact empty record; replay fails and the store refuses to open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "standalone.log")
			if err := os.WriteFile(path, append(append([]byte{}, good...), tt.tail...), 0o640); err != nil {
				t.Fatal(err)
			}
			s := openLog(t, path, always)
			if fmt.Sprint(s.Snapshot()) != "map[a:1 b:2]" {
				t.Fatalf("replayed %v, want the two intact records", s.Snapshot())
			}
			if fi, err := os.Stat(path); err != nil || fi.Size() != int64(len(good)) {
				t.Fatalf("file not truncated to the intact records: %v %v", fi.Size(), err)
			}
			mustCommit(t, s, "c", "3")
			if err := s.CloseStandaloneLog(); err != nil {
				t.Fatal(err)
			}
			if recs := readRecords(t, path); len(recs) != 3 {
				t.Fatalf("%d records after the append, want 3", len(recs))
			}
			if got := openLog(t, path, always).Snapshot(); fmt.Sprint(got) != "map[a:1 b:2 c:3]" {
				t.Fatalf("reopened %v", got)
			}
		})
	}
}

// An intact record (its checksum matches) that does not decode is not a
// torn tail but corruption: opening fails rather than dropping it and every
// write after it.
func TestStandaloneLogCorruptRecordRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "standalone.log")
	content := append(append(record(opData("a", "1")), record([]byte("not json"))...), record(opData("b", "2"))...)
	if err := os.WriteFile(path, content, 0o640); err != nil {
		t.Fatal(err)
	}
	s := New()
	err := s.OpenStandaloneLog(path, always)
	if err == nil {
		_ = s.CloseStandaloneLog()
		t.Fatal("opened a log with a corrupt record")
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, content) {
		t.Fatal("a refused open changed the file")
	}
}

func TestStandaloneLogOpenErrors(t *testing.T) {
	dir := t.TempDir()
	s := New()
	if err := s.OpenStandaloneLog(dir, always); err == nil {
		t.Fatal("opened a directory as the log")
	}
	if err := s.OpenStandaloneLog(filepath.Join(dir, "missing", "log"), always); err == nil {
		t.Fatal("opened a log in a missing directory")
	}
	if err := s.CloseStandaloneLog(); err != nil {
		t.Fatalf("close without a log: %v", err)
	}
	mustCommit(t, s, "a", "1") // no log: Commit still applies
}

// The store is an embedraft.IService.
var _ embedraft.IService = (*Store)(nil)
