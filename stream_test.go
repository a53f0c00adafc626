package embedraft_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// Writes forwarded over the followers' streams while leadership moves four
// times in the middle of their batches: each is answered 200 (applied
// once), 503 (refused: applied nowhere) or 504 (outcome unknown); none is
// applied twice, and every acknowledged one is on every member.
func TestForwardStreamLeaderChangeMidBatch(t *testing.T) {
	c := tc.NewStatic(t, 3)
	c.WaitLeader(10 * time.Second)
	var mu sync.Mutex
	acked, refused := map[string]bool{}, map[string]bool{}
	statuses := map[int]int{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	// Registered after the cluster's, so it runs first: no writer outlives
	// a failed test's members.
	t.Cleanup(halt)
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := c.Running()[w%3]
				key := fmt.Sprintf("w%d-%d", w, i)
				code, _, err := c.Set(m, key, "v")
				mu.Lock()
				if err == nil {
					statuses[code]++
					switch code {
					case 200:
						acked[key] = true
					case 503:
						refused[key] = true
					}
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	for round := range 4 {
		target := count() + 200
		tc.Eventually(t, 20*time.Second, func() error {
			if n := count(); n < target {
				return fmt.Errorf("round %d: %d writes acknowledged", round, n)
			}
			return nil
		})
		to := c.Followers()[round%2]
		// Under this load a transfer may time out; the round needs it done.
		tc.Eventually(t, 30*time.Second, func() error {
			if l := c.WaitLeader(10 * time.Second); l.ID == to.ID {
				return nil
			} else if code, body, err := c.Post(l, "/raft/api/transferLeader", fmt.Appendf(nil, `{"to":%d}`, to.ID)); err != nil || code != 200 {
				return fmt.Errorf("round %d: transfer from %d to %d: %d %v %s", round, l.ID, to.ID, code, err, body)
			}
			if l := c.WaitLeader(10 * time.Second); l.ID != to.ID {
				return fmt.Errorf("round %d: leader %d after a transfer to %d", round, l.ID, to.ID)
			}
			return nil
		})
	}
	halt()
	state := c.WaitConverged(20 * time.Second)
	for k := range acked {
		if state[k] != "v" {
			t.Fatalf("acknowledged %s missing", k)
		}
	}
	for _, m := range c.Running() {
		// Every write is a new key: a write applied twice would show as
		// more commits than keys (the state has no other keys).
		if n := m.Store.CommitCount(); n != int64(len(state)) {
			t.Fatalf("member %d applied %d writes for %d keys: some twice", m.ID, n, len(state))
		}
	}
	for k := range refused {
		if _, ok := state[k]; ok {
			t.Fatalf("%s was answered 503 (nothing proposed) but is applied", k)
		}
	}
	for code := range statuses {
		if code != 200 && code != 503 && code != 504 {
			t.Fatalf("answers by status: %v", statuses)
		}
	}
	t.Logf("answers by status: %v, %d keys", statuses, len(state))
}
