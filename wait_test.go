package embedraft

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/raft/v3"
)

func TestWaitMap(t *testing.T) {
	type op struct {
		do    string // register, cancel, trigger or triggerEach
		key   string
		value int
		found bool // trigger: a waiter was there
		// triggerEach's arguments
		keys   []string
		values []int
	}
	tests := []struct {
		name string
		ops  []op
		want map[string]int // answers received, by registered key
		left int            // waiters still registered
	}{
		{"OK", []op{{do: "register", key: "a"}, {do: "trigger", key: "a", value: 7, found: true}}, map[string]int{"a": 7}, 0},
		{"TriggerWithoutWaiter", []op{{do: "trigger", key: "a", value: 7}}, map[string]int{}, 0},
		{"Cancelled", []op{{do: "register", key: "a"}, {do: "cancel", key: "a"}, {do: "trigger", key: "a", value: 7}}, map[string]int{}, 0},
		{"AnsweredOnce", []op{
			{do: "register", key: "a"},
			{do: "trigger", key: "a", value: 1, found: true},
			{do: "trigger", key: "a", value: 2}, // would block if it were delivered
		}, map[string]int{"a": 1}, 0},
		{"ByKey", []op{
			{do: "register", key: "a"}, {do: "register", key: "b"},
			{do: "trigger", key: "b", value: 2, found: true}, {do: "trigger", key: "c", value: 3},
		}, map[string]int{"b": 2}, 1},
		{"EachByKey", []op{
			{do: "register", key: "a"}, {do: "register", key: "b"}, {do: "register", key: "c"},
			{do: "triggerEach", keys: []string{"a", "x", "c"}, values: []int{1, 2, 3}},
		}, map[string]int{"a": 1, "c": 3}, 1},
		{"EachAnsweredOnce", []op{
			{do: "register", key: "a"},
			{do: "triggerEach", keys: []string{"a", "a"}, values: []int{1, 2}}, // the second would block
		}, map[string]int{"a": 1}, 0},
		{"EachEmpty", []op{{do: "register", key: "a"}, {do: "triggerEach"}}, map[string]int{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWaitMap[string, int]()
			chans := map[string]<-chan int{}
			for _, o := range tt.ops {
				switch o.do {
				case "register":
					chans[o.key] = w.register(o.key)
				case "cancel":
					w.cancel(o.key)
				case "triggerEach":
					w.triggerEach(o.keys, o.values)
				case "trigger":
					if found := w.trigger(o.key, o.value); found != o.found {
						t.Fatalf("trigger(%q) found a waiter: %v, want %v", o.key, found, o.found)
					}
				}
			}
			got := map[string]int{}
			for k, ch := range chans {
				select {
				case v := <-ch:
					got[k] = v
				default:
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("answers %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("answers %v, want %v", got, tt.want)
				}
			}
			if len(w.m) != tt.left {
				t.Fatalf("%d waiters left, want %d", len(w.m), tt.left)
			}
		})
	}
}

// proposeWait's outcomes: the waiter exists before propose runs, a refusal
// is reported as nothing proposed, and anything after propose was called
// that is not the apply is an unknown outcome.
func TestProposeWait(t *testing.T) {
	applied := func(n *Node) func(uint64) error {
		return func(reqID uint64) error {
			// The apply goroutine may answer before propose returns.
			if !n.waits.trigger(reqID, applyResult{index: 9}) {
				return errors.New("no waiter registered before proposing")
			}
			return nil
		}
	}
	refused := func(err error) func(*Node) func(uint64) error {
		return func(*Node) func(uint64) error { return func(uint64) error { return err } }
	}
	pending := func(*Node) func(uint64) error { return func(uint64) error { return nil } }
	for _, tt := range []struct {
		name    string
		propose func(*Node) func(uint64) error
		stop    bool
		want    []error // errors.Is; nil: success
		notWant error
	}{
		{name: "OK", propose: applied},
		{name: "ErrNotLeader/Dropped", propose: refused(raft.ErrProposalDropped), want: []error{ErrNotLeader}, notWant: ErrUnknownOutcome},
		{name: "ErrBusy", propose: refused(ErrBusy), want: []error{ErrBusy}, notWant: ErrUnknownOutcome},
		{name: "ErrUnknownOutcome/Propose", propose: refused(context.DeadlineExceeded), want: []error{ErrUnknownOutcome, context.DeadlineExceeded}},
		{name: "ErrUnknownOutcome/Ctx", propose: pending, want: []error{ErrUnknownOutcome, context.DeadlineExceeded}},
		{name: "ErrUnknownOutcome/Stopped", propose: pending, stop: true, want: []error{ErrUnknownOutcome, ErrStopped}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{waits: newWaitMap[uint64, applyResult](), stopc: make(chan struct{})}
			ctx := context.Background()
			if tt.stop {
				close(n.stopc)
			} else {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
				defer cancel()
			}
			reqID, r, err := n.proposeWait(ctx, "test", tt.propose(n))
			if reqID == 0 {
				t.Fatal("no request id")
			}
			if tt.want == nil && (err != nil || r.index != 9) {
				t.Fatalf("%+v, %v", r, err)
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Fatalf("%v, want %v", err, w)
				}
			}
			if tt.notWant != nil && errors.Is(err, tt.notWant) {
				t.Fatalf("%v is %v", err, tt.notWant)
			}
			if n.waits.trigger(reqID, applyResult{}) {
				t.Fatal("waiter left registered")
			}
		})
	}
}
