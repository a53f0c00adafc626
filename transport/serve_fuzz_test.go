package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fuzzMaxBody is the body limit the fuzzed leader serves with.
const fuzzMaxBody = 64

// streamRequests is what a leader must make of a forwarding stream's bytes:
// the frames up to the first one it refuses or that is cut short.
type streamRequests struct {
	writes []string // "id:body"
	reads  []string // "id:term"
	acks   []string // "seq:term:lead", in order
}

// parseRequestFrames is the frame format of stream.go, written out again
// as the reference the leader's reader is checked against.
func parseRequestFrames(b []byte) (want streamRequests) {
	for len(b) >= 12 {
		id := binary.BigEndian.Uint64(b)
		length := binary.BigEndian.Uint32(b[8:])
		read := length&readFrameFlag != 0
		n := int(length &^ readFrameFlag)
		if (read && n != readIndexBody && n != probeAckBody) || n > fuzzMaxBody || len(b)-12 < n {
			return want
		}
		body := b[12 : 12+n]
		switch {
		case read && n == probeAckBody:
			want.acks = append(want.acks, fmt.Sprintf("%d:%d:%d", binary.BigEndian.Uint64(body),
				binary.BigEndian.Uint64(body[8:]), binary.BigEndian.Uint64(body[16:])))
		case read:
			want.reads = append(want.reads, fmt.Sprintf("%d:%d", id, binary.BigEndian.Uint64(body)))
		default:
			want.writes = append(want.writes, fmt.Sprintf("%d:%q", id, body))
		}
		b = b[12+n:]
	}
	return want
}

// FuzzServeForward sends arbitrary bytes as a forwarding stream to the
// leader's side. Whatever they are, the leader ends the stream once they
// end, runs exactly the well-formed frames before the first bad one (never
// a write cut short or over the body limit), and answers each write and
// read-index request once, in well-formed answer frames.
func FuzzServeForward(f *testing.F) {
	frame := func(id uint64, length uint32, body []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, id)
		b = binary.BigEndian.AppendUint32(b, length)
		return append(b, body...)
	}
	u64s := func(v ...uint64) []byte {
		var b []byte
		for _, x := range v {
			b = binary.BigEndian.AppendUint64(b, x)
		}
		return b
	}
	f.Add([]byte{})
	f.Add(frame(1, 3, []byte("abc")))
	f.Add(slices.Concat(frame(1, 1, []byte("a")), frame(2, 0, nil), frame(1, 2, []byte("bc"))))
	f.Add(slices.Concat(frame(5, readIndexBody|readFrameFlag, u64s(7)), frame(6, 2, []byte("xy"))))
	f.Add(slices.Concat(frame(0, probeAckBody|readFrameFlag, u64s(9, 7, 1)), frame(3, 1, []byte("z"))))
	f.Add(slices.Concat(frame(1, 1, []byte("a")), frame(2, 16|readFrameFlag, make([]byte, 16))))
	f.Add(slices.Concat(frame(1, 1, []byte("a")), frame(2, fuzzMaxBody+1, make([]byte, fuzzMaxBody+1))))
	f.Add(slices.Concat(frame(1, 1, []byte("a")), frame(2, 10, []byte("short"))))
	f.Add(frame(1, 1, []byte("a"))[:7])
	// One leader for the whole run, so that the runs do not use up the
	// machine's ports; each run installs its own record of what it got.
	type record struct {
		mu     sync.Mutex
		acks   []string
		served chan struct{}
	}
	var current atomic.Pointer[record]
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := current.Load()
		defer close(rec.served)
		ServeForward(w, r, stop, fuzzMaxBody, StreamHandlers{
			Write: func(_ context.Context, body []byte) StreamAnswer {
				return StreamAnswer{Status: http.StatusCreated, Index: uint64(len(body)), Body: body}
			},
			Busy: func() StreamAnswer { return StreamAnswer{Status: 503} },
			ReadIndex: func(term uint64) StreamAnswer {
				return StreamAnswer{Status: http.StatusOK, Index: term}
			},
			ProbeAck: func(seq, term, lead uint64) {
				rec.mu.Lock()
				rec.acks = append(rec.acks, fmt.Sprintf("%d:%d:%d", seq, term, lead))
				rec.mu.Unlock()
			},
		})
	}))
	f.Cleanup(func() {
		close(stop)
		srv.Close()
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 12*1024 {
			t.Skip("more frames than a short fuzz input needs")
		}
		want := parseRequestFrames(in)
		rec := &record{served: make(chan struct{})}
		current.Store(rec)
		resp, err := http.Post(srv.URL+ForwardPath, "application/octet-stream", bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("read the answers: %v", err)
		}
		select {
		case <-rec.served:
		case <-time.After(10 * time.Second):
			t.Fatal("the leader did not end the stream after its body ended")
		}

		// The answers: one per write (its body back) and per read.
		answers := map[string]int{}
		for len(out) > 0 {
			if len(out) < 24 {
				t.Fatalf("%d bytes left: not an answer frame", len(out))
			}
			id := binary.BigEndian.Uint64(out)
			status := binary.BigEndian.Uint32(out[8:])
			index := binary.BigEndian.Uint64(out[12:])
			n := int(binary.BigEndian.Uint32(out[20:]))
			if len(out)-24 < n {
				t.Fatalf("answer %d: %d body bytes of %d", id, len(out)-24, n)
			}
			body := out[24 : 24+n]
			switch {
			case status == http.StatusCreated && index == uint64(n):
				answers[fmt.Sprintf("w %d:%q", id, body)]++
			case status == http.StatusOK && n == 0:
				answers[fmt.Sprintf("r %d:%d", id, index)]++
			default:
				t.Fatalf("answer %d: status %d, index %d, %d body bytes", id, status, index, n)
			}
			out = out[24+n:]
		}
		expected := map[string]int{}
		for _, w := range want.writes {
			expected["w "+w]++
		}
		for _, r := range want.reads {
			expected["r "+r]++
		}
		if !maps.Equal(answers, expected) {
			t.Fatalf("answers %v, want %v", answers, expected)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if strings.Join(rec.acks, " ") != strings.Join(want.acks, " ") {
			t.Fatalf("probe answers taken %v, want %v", rec.acks, want.acks)
		}
	})
}
