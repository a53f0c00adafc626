package reliability_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/embedraft/embedraft/internal/chaos"
)

// A standalone demo node loses no acknowledged write across kill -9, and
// those writes are part of the state when a second node joins.
func TestStandaloneKill9ThenJoin(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	c := chaos.NewStandalone(t, chaos.Options{Bin: demoBin, Spare: 1})
	a, b := c.Nodes[0], c.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	acked := 0
	for i := range 200 {
		code, body, err := a.Post(ctx, "/raft/api/set", map[string]string{"key": fmt.Sprintf("k%d", i), "value": "v"})
		if err != nil || code != 200 {
			t.Fatalf("standalone write %d: %d %v %s", i, code, err, body)
		}
		acked++
	}
	must(t, a.Kill())
	must(t, a.Restart())
	st, err := waitState(ctx, a, acked)
	if err != nil {
		t.Fatalf("after kill -9: %v", err)
	}
	if st.Mode != "standalone" {
		t.Fatalf("restarted standalone node is %s", st.Mode)
	}
	must(t, b.Start(c.JoinArgs(a)...))
	// Start does not wait for the joiner: wait until both serve as voters.
	must(t, c.WaitVoters(2, 30*time.Second))
	conv, err := c.WaitConverged(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(conv.State) != acked || len(c.Members()) != 2 {
		t.Fatalf("after the join: %d keys on %d members, want %d on 2", len(conv.State), len(c.Members()), acked)
	}
	// And once more after the switch: kill -9 both, restart, nothing lost.
	must(t, a.Kill())
	must(t, b.Kill())
	must(t, a.Restart())
	must(t, b.Restart())
	if conv, err = c.WaitConverged(30 * time.Second); err != nil || len(conv.State) != acked {
		t.Fatalf("after kill -9 of both: %d keys (%v), want %d", len(conv.State), err, acked)
	}
	for _, p := range c.LogProblems() {
		t.Error(p)
	}
}

// waitState waits until n answers with at least want keys.
func waitState(ctx context.Context, n *chaos.Node, want int) (chaos.Status, error) {
	for {
		st, err := n.Status(ctx)
		if err == nil {
			if m, err := n.State(ctx); err == nil && len(m) >= want {
				if len(m) != want {
					return st, fmt.Errorf("%d keys, want %d", len(m), want)
				}
				return st, nil
			}
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("node %d never came back with %d keys: %v", n.Index, want, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
