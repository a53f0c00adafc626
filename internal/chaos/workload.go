package chaos

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// KVInput is one operation on one key.
type KVInput struct {
	Put   bool
	Key   string
	Value string
}

// KVOutput is what the operation observed.
type KVOutput struct {
	Value   string // for reads; "" means absent
	Unknown bool   // a write whose outcome is indeterminate
}

// Workload drives concurrent clients, each with one request in flight,
// writing unique values (client-seq) to a handful of hot keys, reading them
// back linearizably, and writing never-overwritten unique keys (to count
// lost acknowledged writes).
type Workload struct {
	Clients  int
	HotKeys  int
	Targets  func() []*Node // nodes a client may talk to
	Start    time.Time      // the history's time origin
	Timeout  time.Duration  // per request (default 3s)
	ReadFrac float64        // share of hot-key reads (default 0.4)
	TLS      *tls.Config    // for https nodes (Cluster.ClientTLS); nil for http

	mu       sync.Mutex
	ops      []porcupine.Operation
	acked    []string // unique keys acknowledged
	stats    Stats
	client   *http.Client
	acks     []ackTime
	failures []WriteFailure
	inFlight int
}

// WriteFailure is a write that was not acknowledged (a run's end cutting
// requests off is not counted).
type WriteFailure struct {
	Node         int // the node's Index
	Call, Return time.Time
	Key, Value   string
	Status       int    // the HTTP status; 0 when there was no answer
	Code         string // the answer's envelope code ("unknown_outcome", ...)
	Err          string // the client's error when there was no answer
}

// ackTime is when an acknowledged write was called and answered.
type ackTime struct{ call, ret time.Time }

// Stats counts what a run did.
type Stats struct {
	Attempted     int
	Acknowledged  int // writes answered 2xx
	Indeterminate int // writes that timed out, failed to connect or got 5xx
	Rejected      int // writes answered 4xx
	Reads         int // reads that returned a value or 404
	FailedReads   int
}

func (w *Workload) now() int64 { return time.Since(w.Start).Nanoseconds() }

// Run runs the clients until ctx ends.
func (w *Workload) Run(ctx context.Context) {
	if w.Timeout == 0 {
		w.Timeout = 3 * time.Second
	}
	if w.ReadFrac == 0 {
		w.ReadFrac = 0.4
	}
	w.client = &http.Client{Timeout: w.Timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: w.TLS}}
	var wg sync.WaitGroup
	for c := range w.Clients {
		wg.Add(1)
		go func() { // exits when ctx ends
			defer wg.Done()
			w.client1(ctx, c)
		}()
	}
	wg.Wait()
	w.client.CloseIdleConnections()
}

func (w *Workload) client1(ctx context.Context, id int) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(w.Start.UnixNano())))
	for seq := 0; ctx.Err() == nil; seq++ {
		targets := w.Targets()
		if len(targets) == 0 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		n := targets[rng.IntN(len(targets))]
		hot := fmt.Sprintf("hot%d", rng.IntN(w.HotKeys))
		switch r := rng.Float64(); {
		case r < w.ReadFrac:
			w.read(ctx, id, n, hot)
		case r < 0.8:
			w.write(ctx, id, n, hot, fmt.Sprintf("c%d-%d", id, seq), false)
		default:
			w.write(ctx, id, n, fmt.Sprintf("u-c%d-%d", id, seq), "1", true)
		}
	}
}

// write records a put; an indeterminate one gets an infinite return time,
// so porcupine may place it anywhere after its call (or not at all, when
// a later read shows it never happened... it must still linearize).
func (w *Workload) write(ctx context.Context, client int, n *Node, key, value string, unique bool) {
	body, _ := json.Marshal(map[string]string{"key": key, "value": value})
	w.count(func(*Stats) { w.inFlight++ })
	call := w.now()
	status, code, err := w.do(ctx, http.MethodPost, n.URL()+"/raft/api/set", body)
	ret := w.now()
	cut := ctx.Err() != nil && err != nil
	if cut {
		ret = math.MaxInt64 // cut off by the end of the run: unknown
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inFlight--
	w.stats.Attempted++
	if !cut && (err != nil || status/100 != 2) {
		f := WriteFailure{Node: n.Index, Call: w.Start.Add(time.Duration(call)), Return: w.Start.Add(time.Duration(ret)),
			Key: key, Value: value, Status: status, Code: code}
		if err != nil {
			f.Err = err.Error()
		}
		w.failures = append(w.failures, f)
	}
	in := KVInput{Put: true, Key: key, Value: value}
	switch {
	case err == nil && status/100 == 2:
		w.stats.Acknowledged++
		if unique {
			w.acked = append(w.acked, key)
		}
		w.acks = append(w.acks, ackTime{w.Start.Add(time.Duration(call)), w.Start.Add(time.Duration(ret))})
		w.ops = append(w.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: KVOutput{}, Return: ret})
	case err == nil && status/100 == 4, refused(err):
		// Definitely not applied (a 4xx, or the connection was never made):
		// not part of the history.
		w.stats.Rejected++
	default:
		w.stats.Indeterminate++
		w.ops = append(w.ops, porcupine.Operation{ClientId: client, Input: in, Call: call,
			Output: KVOutput{Unknown: true}, Return: math.MaxInt64})
	}
}

// refused reports an error from a connection that was never established,
// so the request never reached a node.
func refused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (w *Workload) read(ctx context.Context, client int, n *Node, key string) {
	w.count(func(*Stats) { w.inFlight++ })
	defer w.count(func(*Stats) { w.inFlight-- })
	call := w.now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/kv/"+key, nil)
	if err != nil {
		return
	}
	resp, err := w.client.Do(req)
	if err != nil {
		w.count(func(s *Stats) { s.FailedReads++ })
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ret := w.now()
	var out KVOutput
	switch resp.StatusCode {
	case 200:
		out.Value = string(b)
	case 404:
	default:
		w.count(func(s *Stats) { s.FailedReads++ })
		return
	}
	w.mu.Lock()
	w.stats.Reads++
	w.ops = append(w.ops, porcupine.Operation{ClientId: client, Input: KVInput{Key: key}, Call: call, Output: out, Return: ret})
	w.mu.Unlock()
}

// FinalReads reads every hot key linearizably from every node given (after
// healing) and adds the reads to the history. A read that fails has no
// effect, so it is retried until ctx ends (a loaded machine can take a
// while to confirm a ReadIndex).
func (w *Workload) FinalReads(ctx context.Context, nodes []*Node) error {
	for i, n := range nodes {
		for k := range w.HotKeys {
			key := fmt.Sprintf("hot%d", k)
			var last error
			for {
				op, err := w.finalRead(ctx, n, key)
				if err == nil {
					op.ClientId = w.Clients + i
					w.mu.Lock()
					w.ops = append(w.ops, op)
					w.mu.Unlock()
					break
				}
				last = err
				if ctx.Err() != nil {
					return fmt.Errorf("final read %s on node %d: %w", key, n.Index, last)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return nil
}

func (w *Workload) finalRead(ctx context.Context, n *Node, key string) (porcupine.Operation, error) {
	call := w.now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/kv/"+key, nil)
	if err != nil {
		return porcupine.Operation{}, err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return porcupine.Operation{}, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := KVOutput{}
	switch resp.StatusCode {
	case 200:
		out.Value = string(b)
	case 404:
	default:
		return porcupine.Operation{}, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return porcupine.Operation{Input: KVInput{Key: key}, Call: call, Output: out, Return: w.now()}, nil
}

func (w *Workload) count(f func(*Stats)) {
	w.mu.Lock()
	f(&w.stats)
	w.mu.Unlock()
}

// do sends one request and returns the status and, for an error answer,
// its envelope code.
func (w *Workload) do(ctx context.Context, method, url string, body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var env struct {
		Code string `json:"code"`
	}
	if resp.StatusCode/100 != 2 {
		_ = json.NewDecoder(resp.Body).Decode(&env)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, env.Code, nil
}

// History returns the recorded operations.
func (w *Workload) History() []porcupine.Operation {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]porcupine.Operation(nil), w.ops...)
}

// Stats returns the counters.
func (w *Workload) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// AckedUniqueKeys returns the unique keys whose writes were acknowledged.
func (w *Workload) AckedUniqueKeys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...)
}

// FirstAckAfter returns how long after t the first write called after t
// was acknowledged, or false if none was.
func (w *Workload) FirstAckAfter(t time.Time) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	best := time.Duration(math.MaxInt64)
	for _, a := range w.acks {
		if a.call.After(t) && a.ret.Sub(t) < best {
			best = a.ret.Sub(t)
		}
	}
	return best, best != math.MaxInt64
}

// InFlight is how many client requests are waiting for an answer.
func (w *Workload) InFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inFlight
}

// Failures returns the writes that were not acknowledged, in the order
// they were answered.
func (w *Workload) Failures() []WriteFailure {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]WriteFailure(nil), w.failures...)
}

// MaxAckGap returns the longest time between the answers of two
// consecutive acknowledged writes answered within [from, to], and when
// that gap began; zero if fewer than two were.
func (w *Workload) MaxAckGap(from, to time.Time) (gap time.Duration, at time.Time) {
	w.mu.Lock()
	var rets []time.Time
	for _, a := range w.acks {
		if !a.ret.Before(from) && !a.ret.After(to) {
			rets = append(rets, a.ret)
		}
	}
	w.mu.Unlock()
	slices.SortFunc(rets, time.Time.Compare)
	for i := 1; i < len(rets); i++ {
		if d := rets[i].Sub(rets[i-1]); d > gap {
			gap, at = d, rets[i-1]
		}
	}
	return gap, at
}
