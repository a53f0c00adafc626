package kvstore

import (
	"bytes"
	"fmt"
	"testing"
)

func TestStoreStreamSnapshot(t *testing.T) {
	s := New()
	for i := range 1000 {
		mustCommit(t, s, fmt.Sprintf("k%d", i), fmt.Sprintf("value %d", i))
	}
	v, err := s.CaptureSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, "after-capture", "x") // not in the view
	mustCommit(t, s, "k1", "changed")      // neither is this
	if got, _ := s.Get("k1"); got != "changed" || s.Len() != 1001 {
		t.Fatalf("while a view is held: k1=%q, %d keys", got, s.Len())
	}
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() { // commits go on while the view is written
		defer close(done)
		for i := range 200 {
			mustCommit(t, s, fmt.Sprintf("during%d", i), "x")
		}
	}()
	n, err := v.WriteTo(&buf)
	<-done
	v.Release()
	v.Release() // a second Release does nothing
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo: %d, %v (buffer %d)", n, err, buf.Len())
	}
	if got, _ := s.Get("k1"); got != "changed" || s.Len() != 1201 || len(s.Snapshot()) != 1201 {
		t.Fatalf("after Release: k1=%q, %d keys", got, s.Len())
	}
	t.Run("OK", func(t *testing.T) {
		s2 := New()
		mustCommit(t, s2, "gone", "x")
		if err := s2.RestoreSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
			t.Fatal(err)
		}
		if s2.Len() != 1000 || s2.ResetCount() != 1 {
			t.Fatalf("restored %d keys, %d resets", s2.Len(), s2.ResetCount())
		}
		if v, ok := s2.Get("k999"); !ok || v != "value 999" {
			t.Fatalf("k999 = %q %v", v, ok)
		}
		if v, _ := s2.Get("k1"); v != "value 1" {
			t.Fatalf("the view saw a later write: k1 = %q", v)
		}
	})
	t.Run("OK GetSnapshot JSON", func(t *testing.T) {
		js, _ := s.GetSnapshot()
		s2 := New()
		if err := s2.RestoreSnapshot(bytes.NewReader(js)); err != nil || s2.Len() != 1201 {
			t.Fatalf("restore JSON: %v, %d keys", err, s2.Len())
		}
	})
	for _, cut := range []int{5, buf.Len() / 2, buf.Len() - 1} {
		t.Run(fmt.Sprintf("ErrTruncated %d", cut), func(t *testing.T) {
			s2 := New()
			mustCommit(t, s2, "kept", "x")
			if err := s2.RestoreSnapshot(bytes.NewReader(buf.Bytes()[:cut])); err == nil {
				t.Fatalf("truncated snapshot accepted")
			}
			if s2.Len() != 1 || s2.ResetCount() != 0 {
				t.Fatalf("a refused restore changed the state")
			}
		})
	}
	t.Run("ErrTrailing", func(t *testing.T) {
		if err := New().RestoreSnapshot(bytes.NewReader(append(bytes.Clone(buf.Bytes()), 0))); err == nil {
			t.Fatalf("trailing data accepted")
		}
	})
}

func TestStoreViewLifecycle(t *testing.T) {
	t.Run("OK add reads the frozen value", func(t *testing.T) {
		s := New()
		mustCommit(t, s, "n", "40")
		v, _ := s.CaptureSnapshot()
		if err := s.Commit([]byte(`{"key":"n","add":2}`)); err != nil {
			t.Fatal(err)
		}
		v.Release()
		if got, _ := s.Get("n"); got != "42" {
			t.Fatalf("n = %q, want 42", got)
		}
	})
	t.Run("OK reset while a view is held", func(t *testing.T) {
		s := New()
		mustCommit(t, s, "old", "1")
		v, _ := s.CaptureSnapshot()
		mustCommit(t, s, "overlay", "1")
		if err := s.ResetSnap([]byte(`{"new":"1"}`)); err != nil {
			t.Fatal(err)
		}
		v.Release() // must not merge into the new state
		if got := fmt.Sprint(s.Snapshot()); got != "map[new:1]" {
			t.Fatalf("state %s, want map[new:1]", got)
		}
	})
	t.Run("OK second view while one is held", func(t *testing.T) {
		s := New()
		mustCommit(t, s, "a", "1")
		v1, _ := s.CaptureSnapshot()
		mustCommit(t, s, "b", "1")
		v2, _ := s.CaptureSnapshot() // a copy
		mustCommit(t, s, "c", "1")
		var b1, b2 bytes.Buffer
		v1.WriteTo(&b1)
		v2.WriteTo(&b2)
		v2.Release()
		v1.Release()
		for _, c := range []struct {
			buf  *bytes.Buffer
			want int
		}{{&b1, 1}, {&b2, 2}} {
			r := New()
			if err := r.RestoreSnapshot(c.buf); err != nil || r.Len() != c.want {
				t.Fatalf("restored %d keys (%v), want %d", r.Len(), err, c.want)
			}
		}
		if s.Len() != 3 {
			t.Fatalf("store has %d keys, want 3", s.Len())
		}
	})
}
