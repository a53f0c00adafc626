package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echoCounts counts what an echoLeader saw: streams opened, and writes
// waiting for hold.
type echoCounts struct{ opened, held atomic.Int32 }

// echoLeader serves forwarding streams whose answers echo the body, with
// the body's length as the index. hold, when not nil, blocks every write
// until it is closed. counts may be nil.
func echoLeader(t testing.TB, hold chan struct{}, counts *echoCounts) *httptest.Server {
	t.Helper()
	if counts == nil {
		counts = &echoCounts{}
	}
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != ForwardPath {
			http.NotFound(w, r)
			return
		}
		counts.opened.Add(1)
		ServeForward(w, r, stop, 1<<20, StreamHandlers{Write: func(ctx context.Context, body []byte) StreamAnswer {
			if hold != nil {
				counts.held.Add(1)
				defer counts.held.Add(-1)
				select {
				case <-hold:
				case <-ctx.Done():
					return StreamAnswer{Status: 504}
				}
			}
			return StreamAnswer{Status: 200, Index: uint64(len(body)), Body: body}
		}, Busy: func() StreamAnswer { return StreamAnswer{Status: 503, Body: []byte("busy")} }})
	}))
	t.Cleanup(func() {
		close(stop)
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

func TestStreamManyConcurrentWrites(t *testing.T) {
	var counts echoCounts
	srv := echoLeader(t, nil, &counts)
	f := NewForwarder(2, "", 5*time.Second, nil)
	defer f.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2000)
	for i := range 2000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprintf("write-%d", i))
			resp, err := f.Forward(context.Background(), srv.URL, 7, body)
			switch {
			case err != nil:
				errs <- err
			case resp.Status != 200 || string(resp.Body) != string(body) || resp.Index != uint64(len(body)):
				errs <- fmt.Errorf("write %d answered %d %q index %d", i, resp.Status, resp.Body, resp.Index)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := counts.opened.Load(); n != 1 {
		t.Fatalf("%d streams opened for one leader, want 1", n)
	}
}

// A write sent on a stream that breaks before its answer has an unknown
// outcome; a write to a leader that cannot be reached was not sent.
func TestStreamBrokenAndUnreachable(t *testing.T) {
	hold := make(chan struct{})
	srv := echoLeader(t, hold, nil)
	f := NewForwarder(2, "", 5*time.Second, nil)
	defer f.Close()
	got := make(chan error, 1)
	go func() {
		_, err := f.Forward(context.Background(), srv.URL, 7, []byte("x"))
		got <- err
	}()
	// Wait until the write is on the wire, then cut the connection.
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.streams.mu.Lock()
		var sent bool
		for _, s := range f.streams.open {
			s.mu.Lock()
			for _, c := range s.pending {
				sent = sent || c.sent.Load()
			}
			s.mu.Unlock()
		}
		f.streams.mu.Unlock()
		if sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the write was never sent")
		}
		time.Sleep(time.Millisecond)
	}
	srv.CloseClientConnections()
	select {
	case err := <-got:
		if !errors.Is(err, ErrStreamBroken) || errors.Is(err, ErrNotSent) {
			t.Fatalf("write on a broken stream: %v, want ErrStreamBroken", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer after the stream broke")
	}
	close(hold)

	_, err := f.Forward(context.Background(), "http://127.0.0.1:1", 7, []byte("x"))
	if !errors.Is(err, ErrNotSent) {
		t.Fatalf("write to an unreachable leader: %v, want ErrNotSent", err)
	}
}

// A leader that refuses the stream (not the leader) answers like a refused
// write, so the follower can decode it and try the next leader.
func TestStreamRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close") // as embedraft's route does: the body never ends
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"code":"not_leader"}`))
	}))
	defer srv.Close()
	f := NewForwarder(2, "", 5*time.Second, nil)
	defer f.Close()
	resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("x"))
	if err != nil || resp.Status != 503 || string(resp.Body) != `{"code":"not_leader"}` {
		t.Fatalf("refused stream: %v %+v", err, resp)
	}
}

// Past MaxStreamInFlight writes at once, the leader answers busy at once
// (503) without running the write, and the writes it holds are answered
// once it goes on.
func TestStreamBackPressure(t *testing.T) {
	hold := make(chan struct{})
	var counts echoCounts
	srv := echoLeader(t, hold, &counts)
	f := NewForwarder(2, "", 5*time.Second, nil)
	defer f.Close()
	var wg sync.WaitGroup
	var release sync.Once
	goOn := func() { release.Do(func() { close(hold) }) }
	// On a failure too, the held writes are answered before the test ends.
	defer wg.Wait()
	defer goOn()
	var answered atomic.Int32
	for range MaxStreamInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("x"))
			if err != nil || resp.Status != 200 {
				t.Errorf("held write: %+v, %v", resp, err)
			}
			answered.Add(1)
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for counts.held.Load() < MaxStreamInFlight && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := counts.held.Load(); n != MaxStreamInFlight {
		t.Fatalf("the leader holds %d writes, want %d", n, MaxStreamInFlight)
	}
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := f.Forward(ctx, srv.URL, 7, []byte("x"))
		cancel()
		if err != nil || resp.Status != 503 || string(resp.Body) != "busy" {
			t.Fatalf("write %d past the bound: %+v, %v; want the leader's 503 busy", i, resp, err)
		}
	}
	if n := answered.Load(); n != 0 || counts.held.Load() != MaxStreamInFlight {
		t.Fatalf("%d held writes answered, %d held, before the leader went on", n, counts.held.Load())
	}
	goOn()
	wg.Wait()
}

// Read-index frames share the stream with writes and are answered by the
// leader's ReadIndex handler; a leader without one (an older version) gets
// none, and its stream still carries writes.
func TestStreamReadIndex(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	serve := func(reads bool) *httptest.Server {
		h := StreamHandlers{
			Write: func(_ context.Context, body []byte) StreamAnswer {
				return StreamAnswer{Status: 200, Index: uint64(len(body)), Body: body}
			},
			Busy: func() StreamAnswer { return StreamAnswer{Status: 503} },
		}
		if reads {
			h.ReadIndex = func(term uint64) StreamAnswer {
				if term == 0 {
					return StreamAnswer{Status: 409, Body: []byte("stale term")}
				}
				return StreamAnswer{Status: 200, Index: term * 10}
			}
		}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ServeForward(w, r, stop, 1<<20, h)
		}))
		t.Cleanup(func() {
			srv.CloseClientConnections()
			srv.Close()
		})
		return srv
	}

	t.Run("OK interleaved with writes", func(t *testing.T) {
		srv := serve(true)
		f := NewForwarder(2, "", 5*time.Second, nil)
		defer f.Close()
		var wg sync.WaitGroup
		errs := make(chan error, 400)
		for i := 1; i <= 200; i++ {
			wg.Add(2)
			go func() {
				defer wg.Done()
				index, err := f.ReadIndex(context.Background(), srv.URL, 7, uint64(i))
				if err != nil || index != uint64(i)*10 {
					errs <- fmt.Errorf("read index for term %d: %d, %v", i, index, err)
				}
			}()
			go func() {
				defer wg.Done()
				body := []byte(fmt.Sprintf("write-%d", i))
				resp, err := f.Forward(context.Background(), srv.URL, 7, body)
				if err != nil || resp.Status != 200 || string(resp.Body) != string(body) {
					errs <- fmt.Errorf("write %d: %+v, %v", i, resp, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		srv := serve(true)
		f := NewForwarder(2, "", 5*time.Second, nil)
		defer f.Close()
		if index, err := f.ReadIndex(context.Background(), srv.URL, 7, 0); err == nil {
			t.Fatalf("refused read index answered %d", index)
		}
		if resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("after")); err != nil || resp.Status != 200 {
			t.Fatalf("write after a refused read index: %+v, %v", resp, err)
		}
	})
	t.Run("leader without reads", func(t *testing.T) {
		srv := serve(false)
		f := NewForwarder(2, "", 5*time.Second, nil)
		defer f.Close()
		if _, err := f.ReadIndex(context.Background(), srv.URL, 7, 3); !errors.Is(err, ErrNoStreamReads) {
			t.Fatalf("read index from a leader without reads: %v, want ErrNoStreamReads", err)
		}
		if resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("w")); err != nil || resp.Status != 200 {
			t.Fatalf("write: %+v, %v", resp, err)
		}
	})
}

// A read-index frame sent to a leader that does not serve them ends the
// stream (it cannot be framed), and one with a body other than a term too.
func TestServeForwardRefusesBadReadFrames(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	for _, tt := range []struct {
		name   string
		reads  bool
		length uint32
	}{
		{"not served", false, 8},
		{"short body", true, 4},
		{"long body", true, 16},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := StreamHandlers{
				Write: func(context.Context, []byte) StreamAnswer { return StreamAnswer{Status: 200} },
				Busy:  func() StreamAnswer { return StreamAnswer{Status: 503} },
			}
			if tt.reads {
				h.ReadIndex = func(uint64) StreamAnswer { return StreamAnswer{Status: 200, Index: 1} }
			}
			done := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(done)
				ServeForward(w, r, stop, 1<<20, h)
			}))
			defer srv.Close()
			frame := make([]byte, 12+tt.length)
			binary.BigEndian.PutUint64(frame, 1)
			binary.BigEndian.PutUint32(frame[8:], tt.length|readFrameFlag)
			pr, pw := io.Pipe()
			go func() { _, _ = pw.Write(frame) }() // the server stops reading: the pipe is closed below
			defer pw.Close()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+ForwardPath, pr)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the stream was not ended")
			}
			if b, _ := io.ReadAll(resp.Body); len(b) != 0 {
				t.Fatalf("answered %d bytes to a bad frame", len(b))
			}
		})
	}
}

// A leader's probe reaches a follower that answers probes, and its answer
// (the follower's term and leader) comes back to ProbeAck; a follower that
// does not answer them is never offered one.
func TestStreamProbes(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	type ack struct{ seq, term, lead uint64 }
	acks := make(chan ack, 16)
	probers := make(chan func(uint64) bool, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ServeForward(w, r, stop, 1<<20, StreamHandlers{
			Write: func(_ context.Context, body []byte) StreamAnswer { return StreamAnswer{Status: 200, Body: body} },
			Busy:  func() StreamAnswer { return StreamAnswer{Status: 503} },
			Probes: func(probe func(uint64) bool) func() {
				probers <- probe
				return func() {}
			},
			ProbeAck: func(seq, term, lead uint64) { acks <- ack{seq, term, lead} },
		})
	}))
	defer func() {
		srv.CloseClientConnections()
		srv.Close()
	}()

	plain := NewForwarder(3, "", 5*time.Second, nil)
	defer plain.Close()
	if resp, err := plain.Forward(context.Background(), srv.URL, 7, []byte("w")); err != nil || resp.Status != 200 {
		t.Fatalf("write: %+v, %v", resp, err)
	}
	select {
	case <-probers:
		t.Fatal("a stream that does not answer probes was offered them")
	default:
	}

	f := NewForwarder(2, "", 5*time.Second, nil)
	defer f.Close()
	// Each probe asks the view, which the test answers.
	asked := make(chan chan bool)
	f.AnswerProbes(func() (uint64, uint64, bool) {
		answer := make(chan bool)
		asked <- answer
		return 5, 1, <-answer
	})
	answerView := func(ok bool) {
		select {
		case a := <-asked:
			a <- ok
		case <-time.After(5 * time.Second):
			t.Fatal("the follower did not look at its view for a probe")
		}
	}
	if resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("w")); err != nil || resp.Status != 200 {
		t.Fatalf("write: %+v, %v", resp, err)
	}
	var probe func(uint64) bool
	select {
	case probe = <-probers:
	case <-time.After(5 * time.Second):
		t.Fatal("a stream that answers probes was not offered them")
	}
	if !probe(41) {
		t.Fatal("probe 41 not sent")
	}
	answerView(false) // the view says no: no answer
	if !probe(42) {
		t.Fatal("probe 42 not sent")
	}
	answerView(true)
	select {
	case a := <-acks:
		if a != (ack{42, 5, 1}) {
			t.Fatalf("probe answered %+v, want seq 42 term 5 leader 1", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("probe not answered")
	}
	// Writes still flow on the same stream.
	if resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("after")); err != nil || string(resp.Body) != "after" {
		t.Fatalf("write after probes: %+v, %v", resp, err)
	}
}

// nextReady takes what is queued, yields at most once per flush when
// nothing is, and reports a closed channel.
func TestNextReady(t *testing.T) {
	c := make(chan int, 2)
	c <- 7
	yielded := false
	if v, ok, queued := nextReady(c, &yielded); v != 7 || !ok || !queued || yielded {
		t.Fatalf("queued value: got %d %v %v, yielded %v", v, ok, queued, yielded)
	}
	if _, _, queued := nextReady(c, &yielded); queued || !yielded {
		t.Fatalf("empty channel: queued %v, yielded %v; want none taken after one yield", queued, yielded)
	}
	close(c)
	if _, ok, queued := nextReady(c, &yielded); ok || !queued {
		t.Fatalf("closed channel: ok %v, queued %v", ok, queued)
	}
}
