package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The forwarding stream carries a follower's client writes to the leader and
// the leader's answers back, many at a time, over one long-lived full-duplex
// HTTP request (POST ForwardPath): the follower writes request frames into
// the request body as they come, the leader writes answer frames into the
// response as writes are applied. Frames are flushed when no other frame is
// waiting, so a busy stream sends many frames per write system call.
//
//	request frame:  id uint64 | length uint32 | body
//	answer frame:   id uint64 | status uint32 | index uint64 | length uint32 | body
//
// A request frame whose length has readFrameFlag set asks for a read index
// instead of carrying a write: its body is the follower's raft term (8
// bytes), and the leader answers at once with its commit index (status 200)
// or refuses (any other status; the follower then uses raft's ReadIndex).
// A leader that serves such frames says so with HeaderStreamReads when it
// accepts the stream; a follower sends none to a leader that did not.
//
// A follower that opens the stream with HeaderStreamProbes answers probes:
// the leader writes an answer frame with id 0 and a sequence number as its
// index, and the follower writes back a read-index frame whose body is that
// sequence number, its raft term and the leader it follows (24 bytes),
// expecting no answer. The leader uses them to confirm its own read
// indexes (embedraft's readindex.go).
//
// A request that was never written to the stream was certainly not proposed
// (ErrNotSent: the caller may try another leader). A request written to a
// stream that broke before its answer came may have been proposed: its
// outcome is unknown (ErrStreamBroken).

// ForwardPath is the leader route that serves forwarding streams.
const ForwardPath = "/raft/node/forward"

// HeaderStreamReads, set on a leader's acceptance of a forwarding stream,
// says the leader answers read-index frames.
const HeaderStreamReads = "X-Embedraft-Stream-Reads"

// HeaderStreamProbes, set on a follower's forwarding stream request, says
// the follower answers the leader's probes.
const HeaderStreamProbes = "X-Embedraft-Stream-Probes"

// readFrameFlag marks a request frame as a read-index request or a probe's
// answer.
const readFrameFlag = 1 << 31

// Bodies of read frames: a read-index request, a probe's answer.
const (
	readIndexBody = 8
	probeAckBody  = 24
)

// Limits of the forwarding stream.
const (
	// MaxStreamQueue bounds the frames waiting to be written on one stream;
	// a write finding it full is refused with ErrBusy.
	MaxStreamQueue = 4096
	// MaxStreamInFlight bounds the writes the leader runs at once for one
	// stream; past it, a write is answered 503 at once.
	MaxStreamInFlight = 4096
	maxAnswerBytes    = maxResponseBytes
)

var (
	// ErrBusy reports that the stream's queue is full: nothing was sent.
	ErrBusy = errors.New("forwarding queue full")
	// ErrStreamBroken reports that the stream to the leader broke after the
	// write was sent: it may or may not have been proposed.
	ErrStreamBroken = errors.New("forwarding stream broke after the write was sent")
	// ErrNoStreamReads reports a leader that does not answer read-index
	// frames (an older version): nothing was sent.
	ErrNoStreamReads = errors.New("leader does not serve read indexes on the forwarding stream")
)

// frame is one request waiting to be written: a write, a read-index
// request whose body is the follower's term, or a probe's answer (which
// has no caller waiting).
type frame struct {
	id      uint64
	body    []byte
	read    bool
	noReply bool
}

// streamCall is a caller waiting for its answer.
type streamCall struct {
	answer chan *Response // buffered 1
	sent   atomic.Bool    // written to the stream (the leader may have it)
}

// stream is one open forwarding stream to a leader.
type stream struct {
	key     string
	sendc   chan frame
	body    *io.PipeWriter
	resp    *http.Response
	done    chan struct{} // closed when the stream is dead
	errOnce sync.Once
	err     error

	// reads is set when the leader serves read-index frames.
	reads bool
	// probeView answers the leader's probes (nil: they are ignored).
	probeView ProbeView

	mu      sync.Mutex
	pending map[uint64]*streamCall
}

// openStream starts a stream to leaderURL. It returns once the leader has
// accepted it (answered 200), or with an error wrapping ErrNotSent.
func (f *Forwarder) openStream(ctx context.Context, leaderURL string, clusterID uint64) (*stream, error) {
	pr, pw := io.Pipe()
	// The stream outlives the call that opened it: its request has a
	// context of its own, ended by kill.
	sctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, leaderURL+ForwardPath, pr)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: %v", ErrNotSent, err)
	}
	f.identify(req, clusterID, "application/octet-stream")
	if f.probeView != nil {
		req.Header.Set(HeaderStreamProbes, "1")
	}
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() { // ends when the leader answers or the request fails
		resp, err := f.streamClient.Do(req)
		got <- result{resp, err}
	}()
	var r result
	select {
	case r = <-got:
	case <-ctx.Done():
		cancel()
		pw.Close()
		return nil, fmt.Errorf("%w: open stream: %v", ErrNotSent, ctx.Err())
	}
	if r.err != nil {
		cancel()
		pw.Close()
		return nil, fmt.Errorf("%w: open stream: %v", ErrNotSent, r.err)
	}
	if r.resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(r.resp.Body, 64<<10))
		r.resp.Body.Close()
		cancel()
		pw.Close()
		// The leader's refusal (not leader, wrong cluster, no token): passed
		// on like an answer to the write.
		return nil, &streamRefusal{resp: &Response{Status: r.resp.StatusCode, Header: r.resp.Header, Body: b}}
	}
	s := &stream{
		key:     leaderURL,
		sendc:   make(chan frame, MaxStreamQueue),
		body:    pw,
		resp:    r.resp,
		done:    make(chan struct{}),
		reads:   r.resp.Header.Get(HeaderStreamReads) == "1",
		pending: map[uint64]*streamCall{},

		probeView: f.probeView,
	}
	go s.writeLoop()                   // ends when the stream dies
	go s.readLoop()                    // ends when the response body ends or fails
	go func() { <-s.done; cancel() }() // ends the request once the stream is dead
	return s, nil
}

// streamRefusal is a leader that refused to open a stream.
type streamRefusal struct{ resp *Response }

func (e *streamRefusal) Error() string {
	return fmt.Sprintf("leader refused the forwarding stream: %d %s", e.resp.Status, e.resp.Body)
}

// kill marks the stream dead with err and fails every waiting call: with
// ErrStreamBroken when it was sent, ErrNotSent otherwise.
func (s *stream) kill(err error) {
	s.errOnce.Do(func() {
		s.err = err
		close(s.done)
		s.body.CloseWithError(err)
		s.resp.Body.Close()
		s.mu.Lock()
		calls := s.pending
		s.pending = map[uint64]*streamCall{}
		s.mu.Unlock()
		for _, c := range calls {
			close(c.answer)
		}
	})
}

// writeLoop writes queued frames, flushing when the queue is empty.
func (s *stream) writeLoop() {
	w := bufio.NewWriterSize(s.body, 64<<10)
	var hdr [12]byte
	for {
		var f frame
		select {
		case f = <-s.sendc:
		case <-s.done:
			return
		}
		yielded := false // nextReady's, per flush
		for {
			var c *streamCall
			if !f.noReply {
				s.mu.Lock()
				c = s.pending[f.id]
				s.mu.Unlock()
				if c != nil {
					c.sent.Store(true)
				}
			}
			if c != nil || f.noReply { // nil: its caller gave up before it was sent
				length := uint32(len(f.body))
				if f.read {
					length |= readFrameFlag
				}
				binary.BigEndian.PutUint64(hdr[:8], f.id)
				binary.BigEndian.PutUint32(hdr[8:], length)
				if _, err := w.Write(hdr[:]); err != nil {
					s.kill(err)
					return
				}
				if _, err := w.Write(f.body); err != nil {
					s.kill(err)
					return
				}
			}
			// Client writes come in bursts (their clients were answered
			// together): they go out in one flush. sendc is never closed.
			next, _, queued := nextReady(s.sendc, &yielded)
			if !queued {
				break
			}
			f = next
		}
		if err := w.Flush(); err != nil {
			s.kill(err)
			return
		}
	}
}

// readLoop reads answer frames and hands each to its caller.
func (s *stream) readLoop() {
	r := bufio.NewReaderSize(s.resp.Body, 64<<10)
	var hdr [24]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			s.kill(fmt.Errorf("read answer: %w", err))
			return
		}
		id := binary.BigEndian.Uint64(hdr[:8])
		status := int(binary.BigEndian.Uint32(hdr[8:12]))
		index := binary.BigEndian.Uint64(hdr[12:20])
		n := binary.BigEndian.Uint32(hdr[20:24])
		if n > maxAnswerBytes {
			s.kill(fmt.Errorf("answer of %d bytes", n))
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			s.kill(fmt.Errorf("read answer: %w", err))
			return
		}
		if id == 0 {
			s.answerProbe(index)
			continue
		}
		s.mu.Lock()
		c := s.pending[id]
		delete(s.pending, id)
		s.mu.Unlock()
		if c != nil {
			c.answer <- &Response{Status: status, Body: body, Index: index}
		}
	}
}

// answerProbe queues the answer to the leader's probe seq, if this follower
// answers probes and the queue has room (a probe unanswered is asked again
// by other means).
func (s *stream) answerProbe(seq uint64) {
	if s.probeView == nil {
		return
	}
	term, lead, ok := s.probeView()
	if !ok {
		return
	}
	body := make([]byte, probeAckBody)
	binary.BigEndian.PutUint64(body, seq)
	binary.BigEndian.PutUint64(body[8:], term)
	binary.BigEndian.PutUint64(body[16:], lead)
	select {
	case s.sendc <- frame{body: body, read: true, noReply: true}:
	default:
	}
}

// call sends f on the stream and waits for its answer.
func (s *stream) call(ctx context.Context, f frame) (*Response, error) {
	id := f.id
	c := &streamCall{answer: make(chan *Response, 1)}
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %v", ErrNotSent, s.err)
	default:
	}
	s.pending[id] = c
	s.mu.Unlock()
	forget := func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}
	select {
	case s.sendc <- f:
	default:
		forget()
		return nil, fmt.Errorf("%w: %w", ErrNotSent, ErrBusy)
	}
	select {
	case resp, ok := <-c.answer:
		if ok {
			return resp, nil
		}
		if c.sent.Load() {
			return nil, fmt.Errorf("%w: %v", ErrStreamBroken, s.err)
		}
		return nil, fmt.Errorf("%w: %v", ErrNotSent, s.err)
	case <-ctx.Done():
		forget()
		if c.sent.Load() {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %v", ErrNotSent, ctx.Err())
	}
}

// streams is the forwarder's set of open streams, one per leader URL.
type streams struct {
	mu   sync.Mutex
	open map[string]*stream
	seq  atomic.Uint64
	// opening serializes opening a stream to one URL.
	opening sync.Mutex
}

// Forward sends a client write to the leader at leaderURL over the
// forwarding stream (opened on first use) and returns the leader's answer.
// An error wraps ErrNotSent when the write certainly did not reach the
// leader; ErrStreamBroken or a context error when it may have.
func (f *Forwarder) Forward(ctx context.Context, leaderURL string, clusterID uint64, body []byte) (*Response, error) {
	s, err := f.stream(ctx, leaderURL, clusterID)
	if err != nil {
		var refusal *streamRefusal
		if errors.As(err, &refusal) {
			return refusal.resp, nil
		}
		return nil, err
	}
	return s.call(ctx, frame{id: f.streams.seq.Add(1), body: body})
}

// ReadIndex asks the leader at leaderURL, over the forwarding stream, for a
// read index given this follower's raft term. It returns the leader's
// commit index, or an error: ErrNoStreamReads from a leader that does not
// serve them, a refusal (the leader could not vouch for the index), or a
// stream error. A read index has no side effect: on any error the caller
// may ask raft instead.
func (f *Forwarder) ReadIndex(ctx context.Context, leaderURL string, clusterID, term uint64) (uint64, error) {
	s, err := f.stream(ctx, leaderURL, clusterID)
	if err != nil {
		return 0, err
	}
	if !s.reads {
		return 0, ErrNoStreamReads
	}
	body := make([]byte, 8)
	binary.BigEndian.PutUint64(body, term)
	resp, err := s.call(ctx, frame{id: f.streams.seq.Add(1), body: body, read: true})
	if err != nil {
		return 0, err
	}
	if resp.Status != http.StatusOK {
		return 0, fmt.Errorf("leader refused a read index: %d %s", resp.Status, resp.Body)
	}
	return resp.Index, nil
}

func (f *Forwarder) stream(ctx context.Context, leaderURL string, clusterID uint64) (*stream, error) {
	key := leaderURL + "|" + strconv.FormatUint(clusterID, 16)
	ss := &f.streams
	ss.mu.Lock()
	s := ss.open[key]
	ss.mu.Unlock()
	if s != nil && !s.dead() {
		return s, nil
	}
	ss.opening.Lock()
	defer ss.opening.Unlock()
	ss.mu.Lock()
	s = ss.open[key]
	ss.mu.Unlock()
	if s != nil && !s.dead() {
		return s, nil
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := f.openStream(octx, leaderURL, clusterID)
	if err != nil {
		return nil, err
	}
	ss.mu.Lock()
	if ss.open == nil {
		ss.open = map[string]*stream{}
	}
	if old := ss.open[key]; old != nil {
		old.kill(errors.New("replaced"))
	}
	ss.open[key] = s
	ss.mu.Unlock()
	return s, nil
}

func (s *stream) dead() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// closeStreams ends every open stream.
func (f *Forwarder) closeStreams() {
	f.streams.mu.Lock()
	open := f.streams.open
	f.streams.open = nil
	f.streams.mu.Unlock()
	for _, s := range open {
		s.kill(errors.New("forwarder closed"))
	}
}
