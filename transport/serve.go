package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"
)

// The leader's side of the forwarding stream (see stream.go for the frames).

// StreamAnswer is the leader's answer to one forwarded write.
type StreamAnswer struct {
	Status int
	Index  uint64
	Body   []byte
}

// StreamHandlers are the leader's answers to a forwarding stream's frames.
type StreamHandlers struct {
	// Write runs one forwarded write.
	Write func(ctx context.Context, body []byte) StreamAnswer
	// Busy answers a write refused because MaxStreamInFlight are running.
	Busy func() StreamAnswer
	// ReadIndex answers a read-index request given the follower's term; it
	// must not block. Nil: the stream does not serve them.
	ReadIndex func(term uint64) StreamAnswer
	// Probes, when set, is called once the stream is open if the follower
	// answers probes, with a function that sends one (false when it could
	// not be queued or the stream is over); it returns a function called
	// when the stream ends. ProbeAck takes each answer; it must not block.
	Probes   func(probe func(seq uint64) bool) (end func())
	ProbeAck func(seq, term, lead uint64)
}

// ServeForward serves one forwarding stream on the leader: it reads request
// frames from r's body and runs h.Write for each write in a goroutine of its
// own (at most MaxStreamInFlight at once; past that a write is answered with
// h.Busy), and h.ReadIndex for each read-index request in turn, writing
// answer frames as they complete. It returns when the follower ends the
// stream, the connection fails, or stop is closed; it waits for the writes
// it started. maxBody bounds a request's body.
func ServeForward(w http.ResponseWriter, r *http.Request, stop <-chan struct{}, maxBody int64, h StreamHandlers) {
	rc := http.NewResponseController(w)
	if err := rc.EnableFullDuplex(); err != nil {
		http.Error(w, "forwarding stream needs HTTP/1.1 full duplex: "+err.Error(), http.StatusHTTPVersionNotSupported)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if h.ReadIndex != nil {
		w.Header().Set(HeaderStreamReads, "1")
	}
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	answers := make(chan answerFrame, MaxStreamInFlight)
	var inflight sync.WaitGroup
	writerDone := make(chan struct{})
	go func() { // the answer writer: ends when answers is closed
		defer close(writerDone)
		bw := bufio.NewWriterSize(w, 64<<10)
		var hdr [24]byte
		failed := false
		for a := range answers {
			yielded := false // nextReady's, per flush
			for {
				if !failed {
					binary.BigEndian.PutUint64(hdr[:8], a.id)
					binary.BigEndian.PutUint32(hdr[8:12], uint32(a.Status))
					binary.BigEndian.PutUint64(hdr[12:20], a.Index)
					binary.BigEndian.PutUint32(hdr[20:24], uint32(len(a.Body)))
					if _, err := bw.Write(hdr[:]); err == nil {
						_, err = bw.Write(a.Body)
						failed = err != nil
					} else {
						failed = true
					}
				}
				// The apply loop wakes a batch of writes at once: their
				// answers go out in one flush.
				next, ok, queued := nextReady(answers, &yielded)
				if !queued {
					break
				}
				if !ok {
					if !failed {
						_ = bw.Flush()
					}
					return
				}
				a = next
			}
			if !failed && (bw.Flush() != nil || rc.Flush() != nil) {
				failed = true
				cancel()
			}
		}
	}()
	// probeMu guards answers against a probe sent as it is closed.
	var probeMu sync.Mutex
	answersClosed := false
	if h.Probes != nil && h.ProbeAck != nil && r.Header.Get(HeaderStreamProbes) == "1" {
		end := h.Probes(func(seq uint64) bool {
			probeMu.Lock()
			defer probeMu.Unlock()
			if answersClosed {
				return false
			}
			select {
			case answers <- answerFrame{0, StreamAnswer{Index: seq}}:
				return true
			default:
				return false
			}
		})
		defer end()
	}
	defer func() {
		inflight.Wait()
		probeMu.Lock()
		answersClosed = true
		close(answers)
		probeMu.Unlock()
		<-writerDone
	}()
	sem := make(chan struct{}, MaxStreamInFlight)
	frames := make(chan frame)
	readErr := make(chan error, 1)
	go func() { // the request reader: ends at the body's end or error, or when ctx ends
		defer close(frames)
		br := bufio.NewReaderSize(r.Body, 64<<10)
		var hdr [12]byte
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				readErr <- err
				return
			}
			id := binary.BigEndian.Uint64(hdr[:8])
			length := binary.BigEndian.Uint32(hdr[8:])
			read := length&readFrameFlag != 0
			n := int64(length &^ readFrameFlag)
			switch {
			case read && !(n == readIndexBody && h.ReadIndex != nil) && !(n == probeAckBody && h.ProbeAck != nil):
				readErr <- fmt.Errorf("read-index frame of %d bytes not served", n)
				return
			case n > maxBody:
				readErr <- fmt.Errorf("request of %d bytes, limit %d", n, maxBody)
				return
			}
			body := make([]byte, n)
			if _, err := io.ReadFull(br, body); err != nil {
				readErr <- err
				return
			}
			select {
			case frames <- frame{id: id, body: body, read: read}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return
			}
			if f.read && len(f.body) == probeAckBody {
				h.ProbeAck(binary.BigEndian.Uint64(f.body), binary.BigEndian.Uint64(f.body[8:]),
					binary.BigEndian.Uint64(f.body[16:]))
				continue
			}
			if f.read {
				answers <- answerFrame{f.id, h.ReadIndex(binary.BigEndian.Uint64(f.body))}
				continue
			}
			select {
			case sem <- struct{}{}:
			default:
				a := h.Busy()
				answers <- answerFrame{f.id, a}
				continue
			}
			inflight.Add(1)
			go func() { // one forwarded write: ends when handle returns
				defer inflight.Done()
				a := h.Write(ctx, f.body)
				<-sem
				answers <- answerFrame{f.id, a}
			}()
		case <-stop:
			cancel()
			return
		case <-ctx.Done():
			return
		}
	}
}

type answerFrame struct {
	id uint64
	StreamAnswer
}

// nextReady takes a value queued on c without waiting for one to be sent.
// When none is queued and *yielded is false, it first yields the processor
// once (and sets *yielded), so that goroutines woken together can queue
// theirs and a stream writer sends them in one flush; once per flush, so a
// trickle cannot hold a flush back. queued is false when none was taken,
// ok false when c is closed.
func nextReady[T any](c <-chan T, yielded *bool) (v T, ok, queued bool) {
	select {
	case v, ok = <-c:
		return v, ok, true
	default:
	}
	if *yielded {
		return v, false, false
	}
	*yielded = true
	runtime.Gosched()
	select {
	case v, ok = <-c:
		return v, ok, true
	default:
		return v, false, false
	}
}
