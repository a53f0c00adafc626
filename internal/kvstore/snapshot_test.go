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
	var buf bytes.Buffer
	n, err := v.WriteTo(&buf)
	v.Release()
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo: %d, %v (buffer %d)", n, err, buf.Len())
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
	})
	t.Run("OK GetSnapshot JSON", func(t *testing.T) {
		js, _ := s.GetSnapshot()
		s2 := New()
		if err := s2.RestoreSnapshot(bytes.NewReader(js)); err != nil || s2.Len() != 1001 {
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
