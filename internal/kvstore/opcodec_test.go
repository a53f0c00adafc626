package kvstore

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func int64p(n int64) *int64 { return &n }

func TestOpCodec(t *testing.T) {
	for _, op := range []Op{
		{Key: "k", Value: "v"},
		{Key: "k"},
		{Key: strings.Repeat("k", MaxKeyBytes), Value: strings.Repeat("v", 1<<16)},
		{Key: "ключ", Value: "é\x00\xff"},
		{Key: "n", Add: int64p(0)},
		{Key: "n", Add: int64p(-1 << 63)},
		{Key: "n", Add: int64p(1<<63 - 1)},
	} {
		got, err := decodeOp(encodeOp(op))
		if err != nil || !reflect.DeepEqual(got, op) {
			t.Errorf("decodeOp(encodeOp(%+v)) = %+v, %v", op, got, err)
		}
		legacy, _ := json.Marshal(op)
		if !utf8.ValidString(op.Value) {
			continue // JSON cannot carry it
		}
		if got, err := decodeOp(legacy); err != nil || !reflect.DeepEqual(got, op) {
			t.Errorf("decodeOp(%s) = %+v, %v", legacy, got, err)
		}
	}
	for _, bad := range []string{"", "\x01", "\x03\x01kv", "\x01\x05k", "\x02\x01n", "\x02\x01n\x02\x02", "{"} {
		if op, err := decodeOp([]byte(bad)); err == nil {
			t.Errorf("decodeOp(%q) = %+v, want an error", bad, op)
		}
	}
}

// parseSimpleOp agrees with the JSON decoder on every body it accepts.
func TestParseSimpleOpMatchesDecoder(t *testing.T) {
	for _, body := range []string{
		`{"key":"k","value":"v"}`, `{"key":"k"}`, `{"key":"","value":""}`, `{"key":"k","value":""}`,
		`{"key":"k","value":"v"} `, `{"key":"k","value":"v","x":1}`, `{"key":"k\"","value":"v"}`,
		`{"key":"k","value":"\u00e9"}`, `{"key":"é","value":"v"}`, `{"value":"v","key":"k"}`,
		`{"key":"k","add":1}`, `{"key":"k","value":"v"}{}`, `{"key":"k","value":"v"`, `{"key":"k`,
	} {
		simple, ok := parseSimpleOp([]byte(body))
		if !ok {
			continue
		}
		full, err := parseFullOp([]byte(body))
		if err != nil || simple != full {
			t.Errorf("%s: simple %+v, decoder %+v %v", body, simple, full, err)
		}
	}
	if _, ok := parseSimpleOp([]byte(`{"key":"k","value":"v"}`)); !ok {
		t.Error("the common shape is not taken by the fast path")
	}
}

func FuzzParseSimpleOp(f *testing.F) {
	f.Add([]byte(`{"key":"k","value":"v"}`))
	f.Add([]byte(`{"key":"k"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		simple, ok := parseSimpleOp(body)
		if !ok {
			return
		}
		full, err := parseFullOp(body)
		if err != nil || simple != full {
			t.Fatalf("%q: simple %+v, decoder %+v %v", body, simple, full, err)
		}
	})
}

// The per-write cost of the demo's own code on the leader (parse, check,
// encode) and on every member (decode at apply).
func BenchmarkPreProcessAndDecode(b *testing.B) {
	s := New()
	body := []byte(`{"key":"k12345","value":"` + strings.Repeat("v", 100) + `"}`)
	b.ReportAllocs()
	for b.Loop() {
		_, data, err := s.PreProcessData(body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := decodeOp(data); err != nil {
			b.Fatal(err)
		}
	}
}
