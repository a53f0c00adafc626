package reliability_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/embedraft/embedraft/internal/chaos"
)

// Scenarios for the security and exactly-once features (issue 10): kill
// and isolation faults on a cluster over mutual TLS, and clients that
// retry indeterminate increments with the same Idempotency-Key.

// tlsScenarios are existing scenarios run over mutual TLS: every node has a
// certificate of one throwaway CA and advertises https://; the per-pair
// proxies forward the TLS bytes untouched.
func tlsScenarios() []scenario {
	var out []scenario
	for _, name := range []string{"kill-leader", "kill-follower", "isolate-leader"} {
		sc := scenarioNamed(name)
		sc.name, sc.tls = "tls-"+name, true
		out = append(out, sc)
	}
	return out
}

func scenarioNamed(name string) scenario {
	for _, sc := range scenarios {
		if sc.name == name {
			return sc
		}
	}
	panic("no scenario " + name)
}

// idempotentRetries kills the leader, then a follower, while increment
// clients run (next to the usual workload); the after hook checks the
// counter.
func idempotentRetries(r *run) {
	r.counter = &incrementer{targets: r.targets, tls: r.c.ClientTLS(), nonce: r.rng.Uint64()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.counter.run(ctx, 4) }() // ends once ctx is done and every increment has a definite answer
	r.sleep(500 * time.Millisecond)
	l := r.leader()
	r.leaderKills = append(r.leaderKills, time.Now())
	must(r.t, l.Kill())
	r.sleep(1500 * time.Millisecond)
	must(r.t, l.Restart())
	r.sleep(500 * time.Millisecond)
	f := r.follower()
	must(r.t, f.Kill())
	r.sleep(1500 * time.Millisecond)
	must(r.t, f.Restart())
	r.sleep(500 * time.Millisecond)
	cancel()
	<-done
}

// idempotentRetriesAfter waits for convergence, then reads the counter on
// every member: it must equal the number of increments answered 2xx, and
// those answers must be 1..N, each once.
func idempotentRetriesAfter(r *run) {
	inc := r.counter
	s := inc.stats()
	r.t.Logf("idempotent-retries: increments=%d acknowledged=%d rejected=%d gave-up=%d attempts=%d retries=%d "+
		"(indeterminate retried: %d timeouts, %d connection errors, %d 5xx; %d to another node) increments-retried=%d",
		s.increments, s.acked, s.rejected, s.gaveUp, s.attempts, s.attempts-s.increments,
		s.timeouts, s.connErrs, s.status5xx, s.otherNode, s.retried)
	if s.gaveUp > 0 {
		r.t.Errorf("%d increments never got a definite answer", s.gaveUp)
	}
	if s.retried == 0 {
		r.t.Logf("no increment needed a retry: the faults did not exercise exactly-once")
	}
	for _, rej := range inc.rejections() {
		r.t.Logf("increment answered 4xx: %s", rej)
	}
	if _, err := r.c.WaitConverged(45 * time.Second); err != nil {
		r.t.Errorf("idempotent-retries: %v", err)
		return
	}
	want := strconv.Itoa(s.acked)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: r.c.ClientTLS()}}
	inc.replay(r, client)
	for _, n := range r.c.Members() {
		code, b, err := get(client, n.URL()+"/kv/counter")
		if err != nil || code != 200 || string(b) != want {
			r.t.Errorf("node %d: GET /kv/counter = %d %v %q, want %s (the increments answered 2xx)", n.Index, code, err, b, want)
		}
	}
	seen := map[int]int{}
	for _, v := range inc.values() {
		seen[v]++
	}
	var dup, missing []int
	for v, k := range seen {
		if k > 1 {
			dup = append(dup, v)
		}
	}
	for v := 1; v <= s.acked; v++ {
		if seen[v] == 0 {
			missing = append(missing, v)
		}
	}
	if len(dup) > 0 {
		r.t.Errorf("%d counter values answered to more than one increment, e.g. %v", len(dup), dup[:min(5, len(dup))])
	}
	if len(missing) > 0 {
		r.t.Errorf("%d values in 1..%d answered to no increment, e.g. %v", len(missing), s.acked, missing[:min(5, len(missing))])
	}
}

// incrementer runs clients that add 1 to "counter", each logical increment
// with its own Idempotency-Key, retried with the same key on any node
// until it gets a definite answer (2xx or 4xx).
type incrementer struct {
	targets func() []*chaos.Node
	tls     *tls.Config
	nonce   uint64

	mu       sync.Mutex
	s        incStats
	vals     []int          // the counter value each 2xx answer reported
	byKey    map[string]int // the same, by Idempotency-Key
	retried  []string       // keys of increments answered 2xx after a retry
	rejected []string       // the 4xx answers
}

type incStats struct {
	increments, acked, rejected, gaveUp int
	attempts, retried                   int // retried: increments that needed more than one attempt
	timeouts, connErrs, status5xx       int // indeterminate attempts, each retried
	otherNode                           int // retries sent to another node than the previous attempt
}

// giveUp bounds one logical increment: a cluster that recovered answers
// well within it.
const giveUp = 60 * time.Second

func (inc *incrementer) run(ctx context.Context, clients int) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: inc.tls}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() { // exits when ctx is done and its increment has an answer
			defer wg.Done()
			rng := rand.New(rand.NewPCG(inc.nonce, uint64(c)))
			for seq := 0; ctx.Err() == nil; seq++ {
				inc.increment(client, rng, fmt.Sprintf("inc-%x-%d-%d", inc.nonce, c, seq))
			}
		}()
	}
	wg.Wait()
}

// increment drives one logical increment to a definite answer. It does not
// take the run's context: once sent, an increment is retried to the end.
func (inc *incrementer) increment(client *http.Client, rng *rand.Rand, key string) {
	inc.count(func(s *incStats) { s.increments++ })
	deadline := time.Now().Add(giveUp)
	var last *chaos.Node
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		targets := inc.targets()
		if len(targets) == 0 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		n := targets[rng.IntN(len(targets))]
		if n == last && len(targets) > 1 && rng.IntN(2) == 0 {
			n = targets[(rng.IntN(len(targets)-1)+1+indexOf(targets, n))%len(targets)] // often another node
		}
		inc.count(func(s *incStats) {
			s.attempts++
			if attempt == 1 {
				s.retried++
			}
			if attempt > 0 && n != last {
				s.otherNode++
			}
		})
		last = n
		code, body, err := postAdd(client, n.URL(), key)
		switch {
		case err != nil:
			inc.count(func(s *incStats) {
				if isTimeout(err) {
					s.timeouts++
				} else {
					s.connErrs++
				}
			})
		case code/100 == 5:
			inc.count(func(s *incStats) { s.status5xx++ })
		case code/100 == 2:
			var env struct {
				Data struct {
					Key   string `json:"key"`
					Value string `json:"value"`
				} `json:"data"`
			}
			v, perr := -1, json.Unmarshal(body, &env)
			if perr == nil {
				v, perr = strconv.Atoi(env.Data.Value)
			}
			inc.mu.Lock()
			inc.s.acked++
			if perr != nil || env.Data.Key != "counter" {
				inc.rejected = append(inc.rejected, fmt.Sprintf("%s on node %d: 2xx with an unreadable answer %q", key, n.Index, body))
			}
			inc.vals = append(inc.vals, v)
			if inc.byKey == nil {
				inc.byKey = map[string]int{}
			}
			inc.byKey[key] = v
			if attempt > 0 {
				inc.retried = append(inc.retried, key)
			}
			inc.mu.Unlock()
			return
		default: // 4xx: definitely not applied (or its first outcome was a 4xx)
			inc.mu.Lock()
			inc.s.rejected++
			inc.rejected = append(inc.rejected, fmt.Sprintf("%s on node %d: %d %s", key, n.Index, code, body))
			inc.mu.Unlock()
			return
		}
		time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond)
	}
	inc.count(func(s *incStats) { s.gaveUp++ })
}

// replay sends every retried increment, and a sample of the others, once
// more with its key to some member: each must get 2xx with the value it got
// first, and not be applied again (the counter is checked after).
func (inc *incrementer) replay(r *run, client *http.Client) {
	inc.mu.Lock()
	keys := append([]string(nil), inc.retried...)
	nRetried := len(keys)
	var others []string
	for k := range inc.byKey {
		others = append(others, k)
	}
	byKey := maps.Clone(inc.byKey)
	inc.mu.Unlock()
	keys = append(keys, spread(others, 20)...)
	members := r.c.Members()
	bad := 0
	for i, k := range keys {
		n := members[i%len(members)]
		code, body, err := postAdd(client, n.URL(), k)
		var env struct {
			Data struct {
				Value string `json:"value"`
			} `json:"data"`
		}
		if err == nil {
			err = json.Unmarshal(body, &env)
		}
		if err != nil || code != 200 || env.Data.Value != strconv.Itoa(byKey[k]) {
			if bad++; bad <= 5 {
				r.t.Errorf("replay of %s on node %d: %d %v %s, want 200 with value %d", k, n.Index, code, err, body, byKey[k])
			}
		}
	}
	r.t.Logf("replayed %d increment keys (%d of them retried during the run): %d answered otherwise than the first time", len(keys), nRetried, bad)
}

func postAdd(client *http.Client, base, key string) (int, []byte, error) {
	return postJSON(client, base+"/raft/api/set", `{"key":"counter","add":1}`, key)
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func indexOf(ns []*chaos.Node, n *chaos.Node) int {
	for i, m := range ns {
		if m == n {
			return i
		}
	}
	return 0
}

func (inc *incrementer) count(f func(*incStats)) {
	inc.mu.Lock()
	f(&inc.s)
	inc.mu.Unlock()
}

func (inc *incrementer) stats() incStats {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	return inc.s
}

func (inc *incrementer) values() []int {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	return append([]int(nil), inc.vals...)
}

func (inc *incrementer) rejections() []string {
	inc.mu.Lock()
	defer inc.mu.Unlock()
	return append([]string(nil), inc.rejected...)
}
