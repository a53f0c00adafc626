package embedraft

import (
	"bytes"
	"testing"
)

func BenchmarkEntryCodec(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 128)
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			_ = entryEnvelope{Kind: kindPropose, ReqID: uint64(i), Origin: 3, Payload: payload}.marshal()
		}
	})
	b.Run("unmarshal", func(b *testing.B) {
		data := entryEnvelope{Kind: kindPropose, ReqID: 1 << 40, Origin: 3, Payload: payload}.marshal()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := unmarshalEntry(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	batch := make([]proposal, 64)
	for i := range batch {
		batch[i] = proposal{reqID: uint64(i) << 30, data: payload}
	}
	b.Run("batch-of-64/marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = marshalBatch(batch, false)
		}
	})
	b.Run("batch-of-64/unmarshal", func(b *testing.B) {
		data := marshalBatch(batch, false)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := unmarshalBatch(data, false); err != nil {
				b.Fatal(err)
			}
		}
	})
}
