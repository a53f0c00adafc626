package embedraft_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// transferLeader asks leader to hand leadership to id over HTTP.
func transferLeader(t *testing.T, c *tc.Cluster, leader *tc.Member, id uint64) {
	t.Helper()
	code, body, err := c.Post(leader, "/raft/api/transferLeader", []byte(`{"to":`+strconv.FormatUint(id, 10)+`}`))
	if err != nil || code != 200 {
		t.Fatalf("transfer leadership from %d to %d: %d %v %s", leader.ID, id, code, err, body)
	}
}

// waitEvent receives from ch until match accepts an event.
func waitEvent(t *testing.T, ch <-chan embedraft.Event, what string, match func(embedraft.Event) bool) embedraft.Event {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed waiting for %s", what)
			}
			if match(ev) {
				return ev
			}
		case <-deadline.C:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

// otherMember returns a member of c that is not m.
func otherMember(c *tc.Cluster, m *tc.Member) *tc.Member {
	for _, o := range c.Running() {
		if o != m {
			return o
		}
	}
	return nil
}

func TestSubscribe(t *testing.T) {
	t.Run("LeaderChanged", func(t *testing.T) {
		c := tc.NewStatic(t, 3)
		leader := c.WaitLeader(10 * time.Second)
		sub := c.Followers()[0]
		ch, cancel := sub.Node.Subscribe(16)
		defer cancel()
		first := waitEvent(t, ch, "the current leader", func(ev embedraft.Event) bool {
			_, ok := ev.(embedraft.LeaderChanged)
			return ok
		}).(embedraft.LeaderChanged)
		if first.Leader != leader.ID || first.IsLeader {
			t.Fatalf("first event %+v, want leader %d", first, leader.ID)
		}
		target := sub // the subscriber itself becomes leader
		transferLeader(t, c, leader, target.ID)
		ev := waitEvent(t, ch, "LeaderChanged to the new leader", func(ev embedraft.Event) bool {
			lc, ok := ev.(embedraft.LeaderChanged)
			return ok && lc.Leader == target.ID
		}).(embedraft.LeaderChanged)
		if ev.Term <= first.Term || !ev.IsLeader {
			t.Errorf("after the transfer: %+v, want term above %d and IsLeader", ev, first.Term)
		}
		cancel()
		for range ch { // closed by cancel
		}
	})
	t.Run("MembershipChanged", func(t *testing.T) {
		c := tc.NewStatic(t, 3)
		leader := c.WaitLeader(10 * time.Second)
		ch, cancel := leader.Node.Subscribe(16)
		defer cancel()
		joined := c.Join(leader)
		ev := waitEvent(t, ch, "MembershipChanged with the new member", func(ev embedraft.Event) bool {
			mc, ok := ev.(embedraft.MembershipChanged)
			_, has := mc.Members[joined.ID]
			return ok && has
		}).(embedraft.MembershipChanged)
		if ev.Index == 0 || len(ev.Members) != 4 {
			t.Errorf("MembershipChanged %+v: want an index and 4 members", ev)
		}
	})
	t.Run("Stopped", func(t *testing.T) {
		c := tc.NewSingle(t, func(cfg *embedraft.Config) { cfg.Cluster = true })
		m := c.Members[0]
		ch, _ := m.Node.Subscribe(4)
		m.Stop()
		var last embedraft.Event
		for ev := range ch { // closed when the node stops
			last = ev
		}
		if _, ok := last.(embedraft.Stopped); !ok {
			t.Errorf("last event %#v, want Stopped", last)
		}
	})
}

// A subscriber that never reads does not hold up writes or leader changes;
// once it reads, the last LeaderChanged it gets is the current leader.
func TestSubscribeSlowSubscriber(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(10 * time.Second)
	slow := c.Followers()[0]
	ch, cancel := slow.Node.Subscribe(1)
	defer cancel()
	for round := range 3 {
		for i := range 10 {
			c.MustSet(slow, fmt.Sprintf("r%d-%d", round, i), "x")
		}
		next := otherMember(c, leader)
		transferLeader(t, c, leader, next.ID)
		leader = c.WaitLeader(10 * time.Second)
	}
	c.Join(leader) // a MembershipChanged the full buffer drops
	var last embedraft.LeaderChanged
	tc.Eventually(t, 10*time.Second, func() error {
		for drained := false; !drained; {
			select {
			case ev := <-ch:
				if lc, ok := ev.(embedraft.LeaderChanged); ok {
					last = lc
				}
			default:
				drained = true
			}
		}
		st := slow.Node.Status()
		want := embedraft.LeaderChanged{Leader: st.Leader, Term: st.Term, IsLeader: st.Leader == slow.ID}
		if last != want {
			return fmt.Errorf("last event %+v, current state %+v", last, want)
		}
		return nil
	})
	if v := mustValue(t, scrape(t, c, slow), "embedraft_events_dropped_total", nil); v == 0 {
		t.Errorf("no dropped event counted for a subscriber that never read")
	}
}

// OnLeader runs fn on each new leader and cancels it on the old one; runs
// of one registration never overlap.
func TestOnLeader(t *testing.T) {
	c := tc.NewStatic(t, 3)
	leader := c.WaitLeader(10 * time.Second)
	type run struct {
		id, term uint64
		ended    chan struct{}
	}
	var mu sync.Mutex
	runs := map[uint64][]*run{}
	var overlaps atomic.Int32
	var stops []func()
	for _, m := range c.Members {
		var active atomic.Int32
		stops = append(stops, m.Node.OnLeader(func(ctx context.Context, term uint64) {
			if active.Add(1) != 1 {
				overlaps.Add(1)
			}
			defer active.Add(-1)
			r := &run{id: m.ID, term: term, ended: make(chan struct{})}
			mu.Lock()
			runs[m.ID] = append(runs[m.ID], r)
			mu.Unlock()
			<-ctx.Done()
			close(r.ended)
		}))
	}
	lastRun := func(id uint64) *run {
		mu.Lock()
		defer mu.Unlock()
		if rs := runs[id]; len(rs) > 0 {
			return rs[len(rs)-1]
		}
		return nil
	}
	var first *run
	tc.Eventually(t, 10*time.Second, func() error {
		if first = lastRun(leader.ID); first == nil {
			return fmt.Errorf("fn has not run on leader %d", leader.ID)
		}
		return nil
	})
	next := otherMember(c, leader)
	transferLeader(t, c, leader, next.ID)
	select {
	case <-first.ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("the old leader's ctx was not cancelled")
	}
	tc.Eventually(t, 10*time.Second, func() error {
		r := lastRun(next.ID)
		if r == nil {
			return fmt.Errorf("fn has not run on the new leader %d", next.ID)
		}
		if r.term <= first.term {
			return fmt.Errorf("new leader runs in term %d, old ran in %d", r.term, first.term)
		}
		return nil
	})
	for _, stop := range stops {
		stop()
	}
	if r := lastRun(next.ID); r != nil {
		select {
		case <-r.ended:
		default:
			t.Errorf("stop returned before fn did")
		}
	}
	if overlaps.Load() != 0 {
		t.Errorf("%d overlapping runs", overlaps.Load())
	}
}

// A standalone node is its own leader: OnLeader runs fn in term 0, and the
// run ends when the node closes.
func TestOnLeaderStandalone(t *testing.T) {
	c := tc.NewSingle(t)
	m := c.Members[0]
	started := make(chan uint64, 1)
	ended := make(chan struct{})
	stop := m.Node.OnLeader(func(ctx context.Context, term uint64) {
		started <- term
		<-ctx.Done()
		close(ended)
	})
	defer stop()
	select {
	case term := <-started:
		if term != 0 {
			t.Errorf("standalone run in term %d, want 0", term)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fn did not run on a standalone node")
	}
	m.Stop()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("fn's ctx was not cancelled when the node closed")
	}
}
