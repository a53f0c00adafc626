package embedraft_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// A service whose Commit stalls for longer than an election timeout does
// not cost the leader its leadership: the raft loop hands committed entries
// to the apply loop without waiting for it, so heartbeats and appends go on
// while writes keep coming, and a membership change committed meanwhile
// does not make the leader wait either. (With the old hand-off, a channel
// of 16 batches, the leader's raft loop blocked behind the service and the
// followers elected another leader; and every member waited for a
// committed membership change to be applied.) Every acknowledged write is
// applied.
func TestSlowCommitKeepsTheLeader(t *testing.T) {
	t.Run("writes", func(t *testing.T) { testSlowCommitKeepsTheLeader(t, false) })
	t.Run("membership change", func(t *testing.T) { testSlowCommitKeepsTheLeader(t, true) })
}

func testSlowCommitKeepsTheLeader(t *testing.T, change bool) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(5 * time.Second)
	term := leader.Node.Status().Term
	var stall atomic.Bool
	stall.Store(true)
	stalled := make(chan struct{})
	// The stall (three election timeouts) stands for a service that pauses
	// (a long GC, a slow disk, a call it makes): it is the behaviour under
	// test, not a wait.
	leader.Store.SetCommitHook(func() {
		if stall.CompareAndSwap(true, false) {
			close(stalled)
			time.Sleep(3 * time.Second)
		}
	})
	defer leader.Store.SetCommitHook(nil)
	// Writers that give up after 200 ms and write again keep proposing
	// while the leader's service is stalled.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var acked []string
	until := time.Now().Add(4 * time.Second)
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := c.Members[w%3]
			for i := 0; time.Now().Before(until); i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				if code, _, err := c.SetWithin(m, key, "v", 200*time.Millisecond); err == nil && code == 200 {
					mu.Lock()
					acked = append(acked, key)
					mu.Unlock()
				}
			}
		}()
	}
	if change {
		// A learner that never starts: its addition commits while the
		// leader's Commit is stalled.
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-stalled
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := leader.Node.AddMember(ctx, embedraft.JoinRequest{Addr: "http://127.0.0.1:9"}); err != nil {
				t.Errorf("add a learner: %v", err)
			}
		}()
	}
	wg.Wait()
	for _, m := range c.Members {
		if st := m.Node.Status(); st.Term != term || st.Leader != leader.ID {
			t.Fatalf("member %d: leader %d in term %d, want leader %d in term %d throughout", m.ID, st.Leader, st.Term, leader.ID, term)
		}
	}
	state := c.WaitConverged(20 * time.Second)
	if len(acked) == 0 {
		t.Fatalf("no write acknowledged")
	}
	for _, key := range acked {
		if state[key] != "v" {
			t.Fatalf("acknowledged write %s is missing", key)
		}
	}
}

// While the service is far behind (its oldest unapplied batch waited more
// than half of ForwardTimeout), a new write is refused at once with
// 503 and nothing is proposed; once the service catches up, writes are
// taken again, and the write that was waiting is acknowledged.
func TestApplyBacklogRefusesWrites(t *testing.T) {
	const forwardTimeout = 2 * time.Second // refusals past 1 s of backlog
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.ForwardTimeout = forwardTimeout })
	leader := c.WaitLeader(5 * time.Second)
	follower := c.Followers()[0]
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	defer release()
	for _, m := range c.Members {
		m.Store.SetCommitHook(func() { <-gate })
		defer m.Store.SetCommitHook(nil)
	}
	waiting := make(chan error, 1)
	go func() {
		code, body, err := c.Set(leader, "waiting", "1")
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d: %s", code, body)
		}
		waiting <- err
	}()
	// An attempt made before the backlog is old enough is taken and waits
	// behind the service; the client gives up on it, and only the keys of
	// refused writes are checked below.
	var refused []string
	for _, m := range []*tc.Member{leader, follower} {
		attempt := 0
		tc.Eventually(t, 10*time.Second, func() error {
			attempt++
			key := fmt.Sprintf("try-%d-%d", m.ID, attempt)
			code, body, err := c.SetWithin(m, key, "1", 300*time.Millisecond)
			switch {
			case err != nil:
				return err
			case code == 200:
				t.Fatalf("member %d acknowledged a write while its service was blocked", m.ID)
			case code != 503 || !bytes.Contains(body, []byte("still applying")):
				return fmt.Errorf("status %d: %s", code, body)
			}
			refused = append(refused, key)
			return nil
		})
	}
	release()
	if err := <-waiting; err != nil {
		t.Fatalf("the write waiting behind the service: %v", err)
	}
	// The follower's service may still be working through the backlog
	// the leader's answer did not wait for: it refuses until it catches up.
	tc.Eventually(t, 10*time.Second, func() error {
		if code, body, err := c.Set(follower, "after", "1"); err != nil || code != 200 {
			return fmt.Errorf("set after=1 on member %d: %d %v %s", follower.ID, code, err, body)
		}
		return nil
	})
	state := c.WaitConverged(10 * time.Second)
	for _, key := range refused {
		if _, ok := state[key]; ok {
			t.Fatalf("refused write %s was applied", key)
		}
	}
	if state["waiting"] != "1" || state["after"] != "1" {
		t.Fatalf("state %v: want waiting=1 and after=1", state)
	}
}
