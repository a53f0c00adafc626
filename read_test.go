package embedraft_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// Many concurrent linearizable reads, on the leader and on a follower,
// interleaved with writes through both: every read sees every write
// acknowledged before it started. With three voters the rounds are
// confirmed over the forwarding stream (a follower's by the leader's commit
// index, the leader's by a follower's answer to its probe), with five by
// raft's ReadIndex.
func TestLinearizableReadsConcurrentSeeAckedWrites(t *testing.T) {
	for _, tt := range []struct {
		members  int
		byStream bool
	}{{3, true}, {5, false}} {
		t.Run(fmt.Sprintf("%d members", tt.members), func(t *testing.T) {
			c := tc.NewStatic(t, tt.members)
			leader := c.WaitLeader(5 * time.Second)
			follower := c.Followers()[0]
			readsSeeAckedWrites(t, c, leader, follower)
			for _, m := range []*tc.Member{leader, follower} {
				mfs := scrape(t, c, m)
				byStream := mustValue(t, mfs, "embedraft_read_rounds_total", map[string]string{"via": "stream"})
				byRaft := mustValue(t, mfs, "embedraft_read_rounds_total", map[string]string{"via": "raft"})
				t.Logf("member %d's rounds: %v over the stream, %v by raft", m.ID, byStream, byRaft)
				if tt.byStream && byStream == 0 {
					t.Errorf("member %d: no round confirmed over the forwarding stream", m.ID)
				}
				if !tt.byStream && (byStream != 0 || byRaft == 0) {
					t.Errorf("with %d voters member %d's rounds: %v over the stream, %v by raft; want all by raft",
						tt.members, m.ID, byStream, byRaft)
				}
			}
		})
	}
}

func readsSeeAckedWrites(t *testing.T, c *tc.Cluster, leader, follower *tc.Member) {
	t.Helper()
	c.MustSet(leader, "ctr", "0")

	const writes = 60
	var acked atomic.Int64 // the highest value acknowledged so far
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	errc := make(chan error, 64)
	for _, m := range []*tc.Member{leader, follower} {
		for range 16 {
			wg.Add(1)
			go func() { // exits when the writer is done or on the first failure
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					before := acked.Load()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					err := m.Node.LinearizableRead(ctx)
					cancel()
					if err != nil {
						errc <- fmt.Errorf("read on member %d: %w", m.ID, err)
						return
					}
					s, _ := m.Store.Get("ctr")
					got, err := strconv.ParseInt(s, 10, 64)
					if err != nil || got < before {
						errc <- fmt.Errorf("read on member %d saw ctr=%q after %d was acknowledged", m.ID, s, before)
						return
					}
					reads.Add(1)
				}
			}()
		}
	}
	for i := 1; i <= writes; i++ {
		m := leader
		if i%2 == 0 {
			m = follower
		}
		c.MustSet(m, "ctr", strconv.Itoa(i))
		acked.Store(int64(i))
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if reads.Load() < writes {
		t.Errorf("only %d reads completed during %d writes", reads.Load(), writes)
	}
}

// A read on a member without a leader fails with ErrNoLeader within
// LeaderWait+ForwardTimeout (or when its context ends), and reads succeed
// again, seeing new writes, once a leader is back.
func TestLinearizableReadNoLeader(t *testing.T) {
	const leaderWait, forwardTimeout = time.Second, 2 * time.Second
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.LeaderWait = leaderWait
		cfg.ForwardTimeout = forwardTimeout
	})
	leader := c.WaitLeader(5 * time.Second)
	followers := c.Followers()
	alone, other := followers[0], followers[1]
	c.MustSet(leader, "k", "before")
	leader.Stop()
	other.Stop()

	t.Run("ErrNoLeader", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				err := alone.Node.LinearizableRead(context.Background())
				took := time.Since(start)
				if !errors.Is(err, embedraft.ErrNoLeader) {
					t.Errorf("read without a leader: %v, want ErrNoLeader", err)
				}
				// Generous slack: the machine may be busy; the point is
				// that the read does not hang.
				if bound := leaderWait + forwardTimeout; took > bound+5*time.Second {
					t.Errorf("read without a leader took %v, bound %v", took, bound)
				}
			}()
		}
		wg.Wait()
	})
	t.Run("ErrNoLeaderOnContext", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		err := alone.Node.LinearizableRead(ctx)
		if !errors.Is(err, embedraft.ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read without a leader, context ended: %v, want ErrNoLeader and DeadlineExceeded", err)
		}
	})

	leader.Restart()
	other.Restart()
	c.WaitLeader(10 * time.Second)
	c.SetEventually("k", "after", 10*time.Second)
	tc.Eventually(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return alone.Node.LinearizableRead(ctx)
	})
	if got, _ := alone.Store.Get("k"); got != "after" {
		t.Fatalf("read after the leader returned: k=%q, want %q", got, "after")
	}
}

// BenchmarkLinearizableRead measures concurrent linearizable reads on a
// 3-node in-process cluster (loopback, real WALs), on the leader and on a
// follower. Use -cpu to vary the readers (RunParallel runs GOMAXPROCS
// goroutines, times -benchtime's parallelism).
func BenchmarkLinearizableRead(b *testing.B) {
	c := tc.NewStatic(b, 3)
	leader := c.WaitLeader(5 * time.Second)
	for _, m := range []*tc.Member{leader, c.Followers()[0]} {
		name := "follower"
		if m == leader {
			name = "leader"
		}
		b.Run(name, func(b *testing.B) {
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if err := m.Node.LinearizableRead(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
