package reliability_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embedraft/embedraft/internal/chaos"
)

// A follower killed while its forwarding stream to the leader is full of
// batched writes (issue 8): every write the follower acknowledged is on
// every member once, every write it refused is on none, and one cut off by
// the kill is on every member at most once. Each write adds 1 to a key of
// its own, so a write applied twice would read 2.

// burstClients is how many clients write through the follower at once:
// enough that its stream carries batches and the kill finds many in flight.
const burstClients = 48

// burst is the writes sent through one follower until it is killed.
type burst struct {
	target    *chaos.Node
	transport *http.Transport
	nonce     uint64
	killed    atomic.Bool // set just before the kill: no new writes after it

	mu       sync.Mutex
	acked    []string
	refused  []string // answered 4xx or 503: nothing may have been applied
	cutOff   []string // no answer, or 504 / another 5xx: applied at most once
	problems []string
}

func (b *burst) run(clients int) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: b.transport}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() { // exits at its first write after killed is set
			defer wg.Done()
			for seq := 0; !b.killed.Load(); seq++ {
				b.write(client, fmt.Sprintf("burst-%x-%d-%d", b.nonce, c, seq))
			}
		}()
	}
	wg.Wait()
}

func (b *burst) write(client *http.Client, key string) {
	code, body, err := postJSON(client, b.target.URL()+"/raft/api/set", fmt.Sprintf(`{"key":%q,"add":1}`, key), "")
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err != nil || code == http.StatusGatewayTimeout || (code/100 == 5 && code != http.StatusServiceUnavailable):
		b.cutOff = append(b.cutOff, key)
	case code/100 == 2:
		var env struct {
			Data struct {
				Value string `json:"value"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &env); err != nil || env.Data.Value != "1" {
			b.problems = append(b.problems, fmt.Sprintf("%s answered %d %s, want the value 1", key, code, body))
		}
		b.acked = append(b.acked, key)
	default:
		b.refused = append(b.refused, key)
	}
}

func (b *burst) ackedCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.acked)
}

// killFollowerBusyStream kills a follower once its burst has had a few
// hundred writes acknowledged, then restarts it.
func killFollowerBusyStream(r *run) {
	f := r.follower()
	b := &burst{target: f, nonce: r.rng.Uint64(),
		transport: &http.Transport{TLSClientConfig: r.c.ClientTLS(), MaxIdleConnsPerHost: burstClients}}
	r.burst = b
	done := make(chan struct{})
	go func() { defer close(done); b.run(burstClients) }() // ends once killed is set and every client has its answer
	deadline := time.Now().Add(20 * time.Second)
	for b.ackedCount() < 300 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b.killed.Store(true)
	must(r.t, f.Kill())
	<-done
	// The leader keeps serving with answers owed to a dead stream.
	l := r.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	code, body, err := l.Post(ctx, "/raft/api/set", map[string]string{"key": fmt.Sprintf("burst-%x-after", b.nonce), "value": "1"})
	cancel()
	if err != nil || code != http.StatusOK {
		r.t.Errorf("write to the leader after the follower's kill: %d %v %s", code, err, body)
	}
	r.sleep(time.Second)
	must(r.t, f.Restart())
}

// killFollowerBusyStreamAfter checks every burst write against the
// converged state.
func killFollowerBusyStreamAfter(r *run) {
	b := r.burst
	conv, err := r.c.WaitConverged(45 * time.Second)
	if err != nil {
		r.t.Errorf("kill-follower-busy-stream: %v", err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	applied := 0
	for _, k := range b.cutOff {
		if _, ok := conv.State[k]; ok {
			applied++
		}
	}
	r.t.Logf("kill-follower-busy-stream: %d acknowledged, %d refused, %d cut off by the kill (%d clients), %d of them applied",
		len(b.acked), len(b.refused), len(b.cutOff), burstClients, applied)
	if len(b.acked) < 300 {
		r.t.Errorf("only %d writes acknowledged before the kill: the stream never carried batches", len(b.acked))
	}
	if len(b.cutOff) == 0 {
		r.t.Errorf("the kill found no write in flight")
	}
	report := func(what string, keys []string, ok func(v string, present bool) bool) {
		bad := 0
		for _, k := range keys {
			v, present := conv.State[k]
			if !ok(v, present) {
				if bad++; bad <= 5 {
					r.t.Errorf("%s write %s: the members hold %q (present %v)", what, k, v, present)
				}
			}
		}
		if bad > 5 {
			r.t.Errorf("%d %s writes in all held a wrong value", bad, what)
		}
	}
	report("acknowledged", b.acked, func(v string, present bool) bool { return present && v == "1" })
	report("refused", b.refused, func(_ string, present bool) bool { return !present })
	report("cut-off", b.cutOff, func(v string, present bool) bool { return !present || v == "1" })
	for _, p := range b.problems {
		r.t.Error(p)
	}
}

// postJSON posts body, with an Idempotency-Key when key is set, and reads
// the whole answer.
func postJSON(client *http.Client, url, body, key string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(body)))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err // an answer cut off is no answer
	}
	return resp.StatusCode, b, nil
}
