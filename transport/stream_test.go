package transport

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echoLeader serves forwarding streams whose answers echo the body, with
// the body's length as the index. hold, when not nil, blocks every write
// until it is closed.
func echoLeader(t *testing.T, hold chan struct{}, opened *atomic.Int32) *httptest.Server {
	t.Helper()
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != ForwardPath {
			http.NotFound(w, r)
			return
		}
		if opened != nil {
			opened.Add(1)
		}
		ServeForward(w, r, stop, 1<<20, func(ctx context.Context, body []byte) StreamAnswer {
			if hold != nil {
				select {
				case <-hold:
				case <-ctx.Done():
					return StreamAnswer{Status: 504}
				}
			}
			return StreamAnswer{Status: 200, Index: uint64(len(body)), Body: body}
		}, func() StreamAnswer { return StreamAnswer{Status: 503, Body: []byte("busy")} })
	}))
	t.Cleanup(func() {
		close(stop)
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

func TestStreamManyConcurrentWrites(t *testing.T) {
	var opened atomic.Int32
	srv := echoLeader(t, nil, &opened)
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
	if n := opened.Load(); n != 1 {
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

// Past MaxStreamInFlight writes at once, the leader answers busy at once.
func TestStreamBackPressure(t *testing.T) {
	hold := make(chan struct{})
	srv := echoLeader(t, hold, nil)
	f := NewForwarder(2, "", 5*time.Second, nil)
	defer f.Close()
	var wg sync.WaitGroup
	var busy, ok atomic.Int32
	for range MaxStreamInFlight + 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := f.Forward(context.Background(), srv.URL, 7, []byte("x"))
			switch {
			case err != nil && errors.Is(err, ErrBusy):
				busy.Add(1)
			case err != nil:
				t.Error(err)
			case resp.Status == 503:
				busy.Add(1)
			default:
				ok.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for busy.Load() < 50 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(hold)
	wg.Wait()
	if busy.Load() < 50 || int(ok.Load())+int(busy.Load()) != MaxStreamInFlight+50 {
		t.Fatalf("busy %d ok %d, want at least 50 busy and every write answered", busy.Load(), ok.Load())
	}
}
